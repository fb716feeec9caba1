"""Seismograms to a spectrogram archive, in parallel on Dask, with a table of rejected inputs.

Inputs are files (a folder, a glob, a list), a catalog table, NumPy arrays of waveforms, or
continuous traces cut into fixed windows. Every input is grouped into small picklable *units*
(e.g. 256 event files, one continuous file) and processed in two passes:

1. **inspect** (one task per unit): read, check and compute the spectrogram of every input;
   return only a small report per input (event id, metadata, sampling rate, length, median
   or rejection reason). The driver then drops bad inputs and duplicate ids, checks that the
   survivors share one sampling rate and length, and creates the store's metadata.
2. **write** (one task per Zarr chunk of the final archive): re-read and recompute only the
   good inputs of that chunk and write them straight into the store from the worker.

The recomputation costs a second pass, but nothing is ever staged or shipped back to the
driver, and the archive holds only good events, with no placeholder rows. A new archive is
built in a hidden sibling and renamed into place at the end; appends are marked incomplete
until committed (see :mod:`specufex_dask.io.archive`).

ObsPy is an optional extra, imported only when files or traces are read.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import time as _time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from specufex_dask.common import check_positive_int, spans
from specufex_dask.ingest.catalog import (
    STANDARD_COLUMNS,
    catalog_coordinates,
    read_catalog_columns,
)
from specufex_dask.ingest.preprocessing import (
    WAVEFORM_STEP_DEFAULTS,
    InvalidWaveformError,
    Spectrogram,
    SpectrogramParameters,
    spectrogram_axes,
    waveform_to_spectrogram,
)
from specufex_dask.ingest.readers import (
    ArrayUnit,
    ContinuousUnit,
    FileUnit,
    default_event_id,
    expand_sources,
    import_obspy,
    select_tuple,
)
from specufex_dask.ingest.waveform import apply_waveform_steps, check_inventory
from specufex_dask.ingest.windows import (
    CatalogEvent,
    DayFileUnit,
    SDSUnit,
    csv_events,
    index_day_files,
    parse_station_ids,
    plan_windows,
    quakeml_events,
    with_day_files,
)
from specufex_dask.io.archive import (
    DEFAULT_CHUNK_EVENTS,
    DEFAULT_SHARD_EVENTS,
    EVENT,
    INPUT_FILE,
    MEDIAN,
    ORIGIN_TIME,
    SPECTROGRAM,
    STARTTIME,
    ArchiveWriter,
    RejectedInput,
    left_intact,
    naming_disk_full,
    open_archive,
    spectrogram_parameters,
    write_region,
)
from specufex_dask.io.lease import archive_lease
from specufex_dask.io.location import ArchiveLocation, ArchivePath, as_location
from specufex_dask.parallel.executor import executor_for

logger = logging.getLogger(__name__)


class IngestError(ValueError):
    """No input could be ingested, or the inputs do not fit the archive.

    Attributes
    ----------
    rejected : tuple of RejectedInput
        The inputs left out, with reasons.
    """

    def __init__(self, message: str, rejected: Sequence[RejectedInput] = ()) -> None:
        super().__init__(message)
        self.rejected = tuple(rejected)


@dataclass(frozen=True)
class IngestReport:
    """What an ingest wrote and left out.

    Attributes
    ----------
    path : Path or ArchiveLocation
        The archive (its location, at a URL).
    n_inputs : int
        Inputs seen (files, array rows, windows).
    n_written : int
        Events written.
    rejected : tuple of RejectedInput
        Inputs left out, with reasons (also stored in the archive).
    seconds : float
        Wall time.
    parameters : dict
        The resolved preprocessing parameters stored in the archive.
    """

    path: Path | ArchiveLocation
    n_inputs: int
    n_written: int
    rejected: tuple[RejectedInput, ...]
    seconds: float
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        """Number of inputs left out."""
        return len(self.rejected)

    @property
    def waveforms_per_second(self) -> float:
        """Inputs processed per second of wall time."""
        return self.n_inputs / self.seconds if self.seconds > 0 else math.inf

    def summary(self) -> str:
        """One line for logs, with rejection counts by kind."""
        text = (
            f"ingested {self.n_written} of {self.n_inputs} inputs into {self.path} in "
            f"{self.seconds:.2f} s ({self.waveforms_per_second:.1f} inputs/s)"
        )
        if self.rejected:
            text += f"; rejected {self.n_rejected}: {_reason_counts(self.rejected)}"
        return text


@dataclass(frozen=True)
class _Inspection:
    """The small per-input report of the inspect pass."""

    unit: int
    index: int
    event: str
    source: str
    metadata: tuple[tuple[str, Any], ...]
    sampling_rate: float | None
    n_samples: int
    median: float
    reason: str | None


@dataclass(frozen=True)
class _Writing:
    """Where an ingest runs and how it writes: the keywords every public function takes."""

    client: Any
    chunk_events: int
    append: bool
    overwrite: bool
    dtype: npt.DTypeLike


@dataclass(frozen=True)
class _FileInputs:
    """Event files and what is known of each before reading it."""

    paths: Sequence[str]
    events: Sequence[str]
    starttimes: Sequence[str | None]
    stations: Sequence[str | None]
    catalog: Mapping[str, np.ndarray] | None = None
    """The catalog's other columns (:func:`~specufex_dask.ingest.catalog.read_catalog_columns`),
    one value per event, for the events' coordinates."""


def _reason_counts(rejected: Iterable[RejectedInput]) -> str:
    # Numbers are replaced so that e.g. all wrong sampling rates count as one kind.
    counts = Counter(re.sub(r"\d[\d.]*", "N", r.reason.split(":", 1)[0]) for r in rejected)
    return ", ".join(f"{n} x {kind}" for kind, n in counts.most_common())


# ----------------------------------------------------------------------------- tasks


def _inspect_unit(unit_id: int, unit: Any, params: SpectrogramParameters) -> list[_Inspection]:
    """Pass 1 on a worker: compute every spectrogram, return only small reports."""
    reports = []
    for record in unit.load():
        reason, median, n_samples = record.reason, math.nan, 0
        if reason is None:
            n_samples = len(record.waveform)
            if params.n_samples is not None:
                n_samples = min(n_samples, int(params.n_samples))
            try:
                median = _spectrogram(record, params).median
            except InvalidWaveformError as error:
                reason = str(error)
        reports.append(
            _Inspection(
                unit_id,
                record.index,
                record.event,
                record.source,
                record.metadata,
                record.sampling_rate,
                n_samples,
                median,
                reason,
            )
        )
    return reports


def _spectrogram(record: Any, params: SpectrogramParameters) -> Spectrogram:
    """The spectrogram of a good record, after the waveform steps ``params`` turns on."""
    waveform = record.waveform
    if params.has_waveform_steps:
        waveform = apply_waveform_steps(
            waveform, record.sampling_rate, dict(record.metadata), params
        )
    return waveform_to_spectrogram(waveform, params, record.sampling_rate)


def _write_unit_region(
    store_path: str | ArchiveLocation,
    start: int,
    pieces: Sequence[tuple[Any, Sequence[int]]],
    params: SpectrogramParameters,
    dtype: str,
) -> tuple[int, list[float]]:
    """Pass 2 on a worker: recompute the good inputs of one chunk and write them."""
    blocks, medians = [], []
    for unit, indices in pieces:
        for record in unit.load(indices):
            if record.reason is not None:
                raise RuntimeError(
                    f"{record.source} was valid in the first pass but now fails: {record.reason}"
                )
            spectrogram = _spectrogram(record, params)
            blocks.append(spectrogram.transformed.astype(dtype, copy=False))
            medians.append(spectrogram.median)
    write_region(store_path, SPECTROGRAM, start, np.stack(blocks))
    return start, medians


def _map(function: Any, arguments: Iterable[tuple], client: Any) -> list[Any]:
    """``function(*args)`` for every tuple of ``arguments`` on the executor of ``client``
    (a bounded number of tasks at a time), results in the order of ``arguments``."""
    results: dict[int, Any] = {}
    executor_for(client).map_events(function, arguments, results.__setitem__)
    return [results[number] for number in range(len(results))]


# ----------------------------------------------------------------------------- driver


def _run(
    units: Sequence[Any],
    out_path: ArchivePath,
    params: SpectrogramParameters,
    writing: _Writing,
    pre_rejected: Sequence[RejectedInput] = (),
    catalog: tuple[Sequence[str], Mapping[str, np.ndarray]] | None = None,
) -> IngestReport:
    """:func:`_write_archive` holding the lease of ``out_path``: one writer at a time.

    ``catalog``: the event id of every catalog row and the catalog's columns, stored as
    coordinates of the events written."""
    with archive_lease(out_path, "ingest"):
        return _write_archive(units, out_path, params, writing, pre_rejected, catalog)


def _write_archive(
    units: Sequence[Any],
    out_path: ArchivePath,
    params: SpectrogramParameters,
    writing: _Writing,
    pre_rejected: Sequence[RejectedInput] = (),
    catalog: tuple[Sequence[str], Mapping[str, np.ndarray]] | None = None,
) -> IngestReport:
    started = _time.perf_counter()
    location = as_location(out_path)
    target = location.path if location.local else location
    client, append = writing.client, writing.append
    check_positive_int("chunk_events", writing.chunk_events, allow_none=False)
    if params.remove_response is not None:
        try:
            check_inventory(params.remove_response)
        except ValueError as error:
            raise IngestError(f"{error}; nothing written to {target}") from None
    if not append and location.exists() and not writing.overwrite:
        raise IngestError(f"{target} already exists; pass append=True or overwrite=True")
    existing: set[str] = set()
    archive_parameters: dict[str, Any] = {}
    if append:
        archive = open_archive(target)
        existing = {str(e) for e in archive[EVENT].values.tolist()}
        archive_parameters = spectrogram_parameters(archive)
        archive.close()

    if append and archive_parameters.get("fs") is not None:
        # Refuse different preprocessing before reading anything.
        fs = params.fs if params.fs is not None else archive_parameters["fs"]
        n_samples = params.n_samples or archive_parameters.get("n_samples")
        expected = replace(params.resolved(fs), n_samples=n_samples)
        _check_same_parameters(target, archive_parameters, expected)

    arguments = ((i, unit, params) for i, unit in enumerate(units))
    inspections = [
        report for reports in _map(_inspect_unit, arguments, client) for report in reports
    ]
    n_inputs = len(inspections) + len(pre_rejected)

    rejected = list(pre_rejected)
    good: list[_Inspection] = []
    first_source: dict[str, str] = {}
    for report in inspections:
        if report.reason is not None:
            rejected.append(RejectedInput(report.source, report.reason, report.event))
        elif report.event in existing:
            rejected.append(
                RejectedInput(
                    report.source, "duplicate event id: already in the archive", report.event
                )
            )
        elif report.event in first_source:
            rejected.append(
                RejectedInput(
                    report.source,
                    f"duplicate event id: also from {first_source[report.event]}",
                    report.event,
                )
            )
        else:
            first_source[report.event] = report.source
            good.append(report)

    resolved, good = _resolve_shape(params, good, archive_parameters, rejected)
    if not good:
        message = f"no valid input among {n_inputs}: {_reason_counts(rejected)}"
        examples = "; ".join(f"{r.source}: {r.reason}" for r in rejected[:5])
        raise IngestError(f"{message} (e.g. {examples}); nothing written to {target}", rejected)
    if append:
        _check_same_parameters(target, archive_parameters, resolved)

    # _resolve_shape fixed both once there is a good input
    assert resolved.fs is not None and resolved.n_samples is not None
    frequency, time = spectrogram_axes(resolved, resolved.fs, resolved.n_samples)
    coords = _event_coords(good)
    if catalog is not None:
        coords.update(catalog_coordinates(catalog[1], catalog[0], [r.event for r in good]))
    n_bytes = len(good) * frequency.size * time.size * np.dtype(writing.dtype).itemsize
    with naming_disk_full(
        target, f"{len(good)} spectrograms", n_bytes, left_intact(target, append)
    ):
        _write(units, good, target, coords, frequency, time, resolved, rejected, writing)
    report = IngestReport(
        path=target,
        n_inputs=n_inputs,
        n_written=len(good),
        rejected=tuple(rejected),
        seconds=_time.perf_counter() - started,
        parameters=resolved.to_dict(),
    )
    logger.info(report.summary())
    return report


def _write(
    units: Sequence[Any],
    good: Sequence[_Inspection],
    out_path: Path | ArchiveLocation,
    coords: dict[str, np.ndarray],
    frequency: np.ndarray,
    time: np.ndarray,
    resolved: SpectrogramParameters,
    rejected: Sequence[RejectedInput],
    writing: _Writing,
) -> None:
    """Pass 2: write the good inputs and the rejected table, or leave nothing changed."""
    if writing.append:
        writer = ArchiveWriter.append(out_path, event_coords=_only_known(out_path, coords))
    else:
        writer = ArchiveWriter.create(
            out_path,
            event_coords=coords,
            frequency=frequency,
            time=time,
            parameters=resolved.to_dict(),
            chunk_events=writing.chunk_events,
            dtype=writing.dtype,
            overwrite=writing.overwrite,
            # write tasks fill whole shards (writer.regions), so workers never share one
            shard_events=DEFAULT_SHARD_EVENTS,
        )
    try:
        write_arguments = (
            (
                writer.target, start,
                _group_by_unit(good[start - writer.start : stop - writer.start], units),
                resolved, np.dtype(writing.dtype).str,
            )
            for start, stop in writer.regions
        )  # fmt: skip
        results = _map(_write_unit_region, write_arguments, writing.client)
        _check_medians(results, good, writer.start)
        writer.commit(rejected)
    except BaseException:
        writer.abort()
        raise


def _resolve_shape(
    params: SpectrogramParameters,
    good: list[_Inspection],
    archive_parameters: Mapping[str, Any],
    rejected: list[RejectedInput],
) -> tuple[SpectrogramParameters, list[_Inspection]]:
    """Fix one sampling rate and length for the archive; reject inputs that differ."""
    fs = params.fs if params.fs is not None else archive_parameters.get("fs")
    n_samples = params.n_samples
    if n_samples is None:
        n_samples = archive_parameters.get("n_samples")
    origin = "expected"
    if good and fs is None:
        fs, origin = good[0].sampling_rate, f"the rate of {good[0].source}"
    if good and n_samples is None:
        n_samples = good[0].n_samples
    if fs is None or n_samples is None:
        # only without inputs (each has its rate and length): the caller rejects that
        return params, []
    kept = []
    for report in good:
        # a good input was read, and every reader gives the rate of what it reads
        assert report.sampling_rate is not None
        if not math.isclose(report.sampling_rate, fs, rel_tol=1e-9):
            reason = f"sampling rate {report.sampling_rate:g} Hz, expected {fs:g} Hz ({origin})"
            rejected.append(RejectedInput(report.source, reason, report.event))
        elif report.n_samples != n_samples:
            reason = f"{report.n_samples} samples, expected {n_samples} (set n_samples)"
            rejected.append(RejectedInput(report.source, reason, report.event))
        else:
            kept.append(report)
    return replace(params.resolved(fs), n_samples=int(n_samples)), kept


def _check_same_parameters(
    path: Path | ArchiveLocation,
    archive_parameters: Mapping[str, Any],
    resolved: SpectrogramParameters,
) -> None:
    new = resolved.to_dict()
    # An archive written before the waveform steps existed had them all off.
    archive_parameters = {**WAVEFORM_STEP_DEFAULTS, **archive_parameters}
    differing = sorted(
        key
        for key in set(new) | set(archive_parameters)
        if key in archive_parameters and archive_parameters.get(key) != new.get(key)
    )
    if differing:
        details = ", ".join(
            f"{k}: archive {archive_parameters.get(k)!r} vs {new.get(k)!r}" for k in differing
        )
        raise IngestError(f"cannot append to {path}: preprocessing parameters differ ({details})")


def _event_coords(good: Sequence[_Inspection]) -> dict[str, np.ndarray]:
    keys: dict[str, None] = {}
    for report in good:
        for key, _ in report.metadata:
            keys.setdefault(key, None)
    coords: dict[str, np.ndarray] = {
        EVENT: np.array([r.event for r in good], dtype=object),
        INPUT_FILE: np.array([r.source for r in good], dtype=object),
        MEDIAN: np.array([r.median for r in good], dtype=np.float64),
    }
    for key in keys:
        values = [dict(r.metadata).get(key) for r in good]
        if key == STARTTIME:
            coords[key] = np.array(
                [np.datetime64("NaT") if v is None else np.datetime64(v, "ns") for v in values],
                dtype="datetime64[ns]",
            )
        elif key != INPUT_FILE:
            coords[key] = np.array(["" if v is None else str(v) for v in values], dtype=object)
        else:
            coords[key] = np.array([str(v) for v in values], dtype=object)
    return coords


def _only_known(
    path: Path | ArchiveLocation, coords: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    archive = open_archive(path)
    known = set(map(str, archive.coords))
    archive.close()
    dropped = sorted(set(coords) - known)
    if dropped:
        logger.warning("appending to %s without per-event coordinates %s", path, dropped)
    return {k: v for k, v in coords.items() if k in known}


def _group_by_unit(
    chosen: Sequence[_Inspection], units: Sequence[Any]
) -> list[tuple[Any, list[int]]]:
    pieces: list[tuple[Any, list[int]]] = []
    current = None
    for report in chosen:
        if report.unit != current:
            pieces.append((units[report.unit], []))
            current = report.unit
        pieces[-1][1].append(report.index)
    return pieces


def _check_medians(
    results: Sequence[tuple[int, list[float]]], good: Sequence[_Inspection], offset: int
) -> None:
    for start, medians in results:
        expected = [r.median for r in good[start - offset : start - offset + len(medians)]]
        # Same code on the same data; a tolerance only covers FFTs differing across CPUs.
        if not np.allclose(medians, expected, rtol=1e-9, atol=0):
            raise RuntimeError(
                f"inputs changed between the two passes (rows {start}:{start + len(medians)})"
            )


def _ingest_files(
    inputs: _FileInputs,
    out_path: ArchivePath,
    params: SpectrogramParameters | None,
    writing: _Writing,
    select: Mapping[str, str] | None,
    format: str | None,
) -> IngestReport:
    if not inputs.paths:
        raise IngestError(f"no waveform files given; nothing written to {out_path}")
    units = [
        FileUnit(
            tuple(inputs.paths[block]),
            tuple(inputs.events[block]),
            tuple(inputs.starttimes[block]),
            tuple(inputs.stations[block]),
            select_tuple(select),
            format,
        )
        for block in spans(len(inputs.paths), writing.chunk_events)
    ]
    catalog = None
    if inputs.catalog:
        catalog = (list(inputs.events), inputs.catalog)
    return _run(units, out_path, params or SpectrogramParameters(), writing, catalog=catalog)


def _ingest_catalog_windows(
    catalog: Path,
    out_path: ArchivePath,
    params: SpectrogramParameters | None,
    event_column: str | None,
    windows: _Windows,
    writing: _Writing,
) -> IngestReport:
    """:func:`ingest_catalog` of windows cut around the catalog's origin times."""
    if windows.window == (0.0, 0.0):
        raise ValueError("a catalog with waveforms= needs window=(pre_s, post_s)")
    with catalog.open(newline="") as handle:
        header = csv.DictReader(handle).fieldnames or []
    event_key = _column(header, event_column, _EVENT_COLUMNS, "event")
    columns = read_catalog_columns(catalog, exclude=[event_key])
    if ORIGIN_TIME not in columns:
        raise ValueError(
            f"catalog {catalog} has no origin time column (one of "
            f"{list(STANDARD_COLUMNS['source_origin_time'])}; columns: {list(header)})"
        )
    origin = columns[ORIGIN_TIME]
    if origin.dtype.kind != "M":
        raise ValueError(f"catalog {catalog}: the origin time column holds non-times")
    with catalog.open(newline="") as handle:
        events = [row[event_key].strip() for row in csv.DictReader(handle)]
    found = csv_events(events, origin, ORIGIN_TIME)
    return _ingest_windows(found, columns, str(catalog), out_path, params, windows, writing)


def _column(header: Sequence[str], given: str | None, aliases: Sequence[str], what: str) -> str:
    if given is not None:
        if given not in header:
            raise ValueError(f"catalog has no {what} column {given!r} (columns: {list(header)})")
        return given
    for name in aliases:
        if name in header:
            return name
    raise ValueError(
        f"catalog has no {what} column: tried {list(aliases)} (columns: {list(header)}); "
        f"pass {what}_column="
    )


def _pre_post(window: Sequence[float] | None) -> tuple[float, float]:
    """The (pre, post) seconds of a window around its reference time."""
    if window is None:
        return 0.0, 0.0
    if len(window) != 2:
        raise ValueError(f"window must be (seconds before, seconds after), got {window!r}")
    return float(window[0]), float(window[1])


# ----------------------------------------------------------------------------- public API


def ingest_waveforms(
    sources: str | Path | Iterable[str | Path],
    out_path: ArchivePath,
    params: SpectrogramParameters | None = None,
    *,
    client: Any = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    append: bool = False,
    overwrite: bool = False,
    event_id: Callable[[Path], str] = default_event_id,
    select: Mapping[str, str] | None = None,
    format: str | None = None,
    dtype: npt.DTypeLike = np.float64,
) -> IngestReport:
    """Ingest event files (one event per file) into an archive.

    Parameters
    ----------
    sources : str, Path or iterable of them
        A folder, a glob pattern, a file, or a list of those.
    out_path : str, Path or ArchiveLocation
        The archive to create (or extend with ``append=True``): a path, or a URL
        (with its storage options, an ``ArchiveLocation``).
    params : SpectrogramParameters, optional
        Preprocessing; defaults to ``SpectrogramParameters()``.
    client : distributed.Client, optional
        Where to run; None uses dask's current default scheduler.
    chunk_events : int, default=8
        Events per Zarr chunk (and per write task).
    append : bool, default=False
        Add events to an existing archive (same parameters; duplicate ids are rejected).
    overwrite : bool, default=False
        Replace an existing archive.
    event_id : callable, default=default_event_id
        File path to event id (runs on the driver).
    select : mapping, optional
        ``Stream.select`` keywords (network, station, location, channel) for every file.
    format : str, optional
        ObsPy format name; None lets ObsPy detect it.
    dtype : dtype, default=float64
        Of the stored spectrograms.

    Returns
    -------
    IngestReport

    Raises
    ------
    IngestError
        If no input is valid (nothing is written), or appended inputs do not fit the archive.
    ArchiveBusy
        If another process writes to the archive (holds its lease); nothing is written.
    """
    files = expand_sources(sources)
    unknown = [None] * len(files)
    inputs = _FileInputs([str(p) for p in files], [event_id(p) for p in files], unknown, unknown)
    return _ingest_files(
        inputs, out_path, params, _Writing(client, chunk_events, append, overwrite, dtype),
        select, format,
    )  # fmt: skip


_EVENT_COLUMNS = ("event", "event_id", "ev_ID", "evid", "id")
_FILE_COLUMNS = ("file", "filename", "path", "waveform")


def ingest_catalog(
    catalog: str | Path,
    out_path: ArchivePath,
    params: SpectrogramParameters | None = None,
    *,
    waveform_dir: str | Path | None = None,
    event_column: str | None = None,
    file_column: str | None = None,
    starttime_column: str | None = None,
    station_column: str | None = None,
    client: Any = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    append: bool = False,
    overwrite: bool = False,
    select: Mapping[str, str] | None = None,
    format: str | None = None,
    dtype: npt.DTypeLike = np.float64,
    keep_columns: bool = True,
    waveforms: str | Path | Iterable[str | Path] | None = None,
    stations: str | Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
    sds_type: str = "D",
) -> IngestReport:
    """Ingest the events of a catalog table (CSV), in the table's order.

    Parameters
    ----------
    catalog : str or Path
        CSV with a header row.
    out_path : str, Path or ArchiveLocation
        The archive.
    params : SpectrogramParameters, optional
        Preprocessing.
    waveform_dir : str or Path, optional
        Folder for relative file names; defaults to the catalog's folder.
    event_column, file_column : str, optional
        Column names; by default the first of ``event, event_id, ev_ID, evid, id`` and
        ``file, filename, path, waveform`` present.
    starttime_column : str, optional
        If given, each trace is cut to start at this time (ISO 8601) before taking
        ``n_samples`` samples.
    station_column : str, optional
        If given, only that station's traces are read from each file.
    client, chunk_events, append, overwrite, select, format, dtype
        As in :func:`ingest_waveforms`.
    keep_columns : bool, default=True
        Store the catalog's other columns as coordinates on ``event``, typed (times as
        datetime64, numbers as numbers), the standard ones under SeisBench's names
        (:data:`specufex_dask.ingest.catalog.STANDARD_COLUMNS`: ``source_origin_time``,
        ``source_latitude_deg``, ``source_longitude_deg``, ``source_depth_km``,
        ``source_magnitude``...), names the archive uses itself as ``catalog_<name>``.
    waveforms : str, Path or iterable of them, optional
        An SDS root or day-long files, as in :func:`ingest_quakeml`: then no file column
        is needed, and each event's window is cut around its origin time (the catalog's
        origin time column, e.g. ``timestamp``) at every one of ``stations``, one archive
        row per (event, station) with id ``<event>.<NET.STA.LOC.CHA>``; a row without
        origin time is rejected.
    stations : str or sequence of str, optional
        With ``waveforms``: full SEED ids ``NET.STA.LOC.CHA``.
    window : (float, float), optional
        With ``waveforms``: seconds before and after the origin time.
    sds_type : str, default="D"
        With ``waveforms``: SDS data type.

    Returns
    -------
    IngestReport
    """
    catalog = Path(catalog)
    if waveforms is not None:
        return _ingest_catalog_windows(
            catalog,
            out_path,
            params,
            event_column,
            _Windows(waveforms, stations or (), _pre_post(window), "origin", sds_type, format),
            _Writing(client, chunk_events, append, overwrite, dtype),
        )
    base = Path(waveform_dir) if waveform_dir is not None else catalog.parent
    with catalog.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    event_key = _column(header, event_column, _EVENT_COLUMNS, "event")
    file_key = _column(header, file_column, _FILE_COLUMNS, "file")
    for key, what in ((starttime_column, "starttime"), (station_column, "station")):
        if key is not None:
            _column(header, key, (), what)
    paths = [str(base / row[file_key]) for row in rows]
    events = [row[event_key].strip() for row in rows]
    empty = [i + 2 for i, e in enumerate(events) if not e]
    if empty:
        raise ValueError(f"catalog {catalog}: empty event id on line(s) {empty[:5]}")
    starttimes = [row[starttime_column] or None if starttime_column else None for row in rows]
    station_codes = [row[station_column] or None if station_column else None for row in rows]
    used = [key for key in (event_key, file_key) if key is not None]
    columns = read_catalog_columns(catalog, exclude=used) if keep_columns else None
    inputs = _FileInputs(paths, events, starttimes, station_codes, columns)
    return _ingest_files(
        inputs, out_path, params, _Writing(client, chunk_events, append, overwrite, dtype),
        select, format,
    )  # fmt: skip


def ingest_arrays(
    waveforms: npt.ArrayLike,
    out_path: ArchivePath,
    params: SpectrogramParameters | None = None,
    *,
    sampling_rate: float | None = None,
    event: Sequence[str] | None = None,
    starttime: npt.ArrayLike | None = None,
    client: Any = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    append: bool = False,
    overwrite: bool = False,
    dtype: npt.DTypeLike = np.float64,
) -> IngestReport:
    """Ingest waveforms held in a NumPy array of shape (n_events, n_samples).

    Parameters
    ----------
    waveforms : array-like of shape (n_events, n_samples)
        One waveform per row (NaN rows, constant rows... are rejected like bad files).
    out_path : str, Path or ArchiveLocation
        The archive.
    params : SpectrogramParameters, optional
        Preprocessing.
    sampling_rate : float, optional
        Hz; defaults to ``params.fs`` (one of them is required).
    event : sequence of str, optional
        Ids; default "0", "1", ...
    starttime : array-like of datetime64, optional
        Per-event start times.
    client, chunk_events, append, overwrite, dtype
        As in :func:`ingest_waveforms`.

    Returns
    -------
    IngestReport
    """
    params = params or SpectrogramParameters()
    data = np.asarray(waveforms)
    if data.ndim != 2:
        raise ValueError(f"waveforms must have shape (n_events, n_samples), got {data.shape}")
    fs = sampling_rate if sampling_rate is not None else params.fs
    if fs is None:
        raise ValueError("the sampling rate is unknown: give sampling_rate or params.fs")
    events = [str(i) for i in range(len(data))] if event is None else [str(e) for e in event]
    if len(events) != len(data):
        raise ValueError(f"{len(events)} event ids for {len(data)} waveforms")
    starts: list[int | None] = [None] * len(data)
    if starttime is not None:
        times = np.asarray(starttime).astype("datetime64[ns]")
        starts = [None if np.isnat(t) else int(t.astype(np.int64)) for t in times]
    units = [
        ArrayUnit(
            data[block],
            tuple(events[block]),
            float(fs),
            block.start,
            tuple(starts[block]),
        )
        for block in spans(len(data), chunk_events)
    ]
    if not units:
        raise IngestError(f"no waveforms given; nothing written to {out_path}")
    return _run(units, out_path, params, _Writing(client, chunk_events, append, overwrite, dtype))


def ingest_continuous(
    traces: Any,
    out_path: ArchivePath,
    window_length_s: float,
    step_s: float,
    params: SpectrogramParameters | None = None,
    *,
    client: Any = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    append: bool = False,
    overwrite: bool = False,
    select: Mapping[str, str] | None = None,
    format: str | None = None,
    dtype: npt.DTypeLike = np.float64,
) -> IngestReport:
    """Cut continuous traces into fixed windows and ingest each window as an event.

    Windows start every ``step_s`` seconds from each trace's first sample; a window across a
    gap is rejected. Event ids are ``<trace id>.<window start ISO 8601>`` and the window
    start is the ``starttime`` coordinate.

    Parameters
    ----------
    traces : obspy Stream or Trace, or files as in :func:`ingest_waveforms`
        Continuous data; each file is one task.
    out_path : str, Path or ArchiveLocation
        The archive.
    window_length_s, step_s : float
        Window length and the step between window starts, in seconds.
    params : SpectrogramParameters, optional
        Preprocessing (``n_samples`` defaults to the window length).
    client, chunk_events, append, overwrite, select, format, dtype
        As in :func:`ingest_waveforms`.

    Returns
    -------
    IngestReport
    """
    if not (window_length_s > 0 and step_s > 0):
        raise ValueError(
            f"window_length_s and step_s must be positive, got {window_length_s}, {step_s}"
        )
    chosen = select_tuple(select)
    if hasattr(traces, "stats") or hasattr(traces, "traces"):
        obspy = import_obspy()
        stream = traces if hasattr(traces, "traces") else obspy.Stream([traces])
        units = [ContinuousUnit(window_length_s, step_s, stream=stream, select=chosen)]
    else:
        files = expand_sources(traces)
        if not files:
            raise IngestError(f"no continuous files given; nothing written to {out_path}")
        units = [
            ContinuousUnit(window_length_s, step_s, path=str(p), select=chosen, format=format)
            for p in files
        ]
    writing = _Writing(client, chunk_events, append, overwrite, dtype)
    return _run(units, out_path, params or SpectrogramParameters(), writing)


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class _Windows:
    """Where event windows come from and how they are cut."""

    waveforms: str | Path | Iterable[str | Path]
    stations: str | Sequence[str]
    window: tuple[float, float]
    relative_to: str
    sds_type: str = "D"
    format: str | None = None


def is_sds_root(path: str | Path) -> bool:
    """Whether ``path`` is a folder laid out as SDS: ``<root>/<year>/<net>/<sta>/...``."""
    path = Path(path)
    return path.is_dir() and any(
        child.is_dir() and child.name.isdigit() and len(child.name) == 4
        for child in path.iterdir()
    )


def _window_units(
    requests: Sequence[Any], windows: _Windows, chunk: int
) -> tuple[list[Any], list[RejectedInput]]:
    """Units of ``chunk`` requests each, reading SDS days or the day files they need."""
    waveforms = windows.waveforms
    if isinstance(waveforms, (str, Path)) and is_sds_root(waveforms):
        root = str(waveforms)
        return [
            SDSUnit(root, tuple(requests[block]), windows.sds_type, windows.format or "MSEED")
            for block in spans(len(requests), chunk)
        ], []
    files = expand_sources(waveforms)
    if not files:
        raise ValueError(f"no day files in {waveforms}")
    index = index_day_files(files, windows.format)
    rejected, kept = [], []
    for request in with_day_files(requests, index):
        if request.seed_id not in index:
            reason = f"unknown station {request.seed_id}: in none of the {len(files)} day files"
        elif not request.files:
            reason = f"no day file covers the window: {request.seed_id} at {request.reference}"
        else:
            kept.append(request)
            continue
        rejected.append(RejectedInput(f"day files#{request.event}", reason, request.event))
    units = [DayFileUnit(tuple(kept[block]), windows.format) for block in spans(len(kept), chunk)]
    return units, rejected


def _ingest_windows(
    events: Sequence[CatalogEvent],
    columns: Mapping[str, np.ndarray],
    source: str,
    out_path: ArchivePath,
    params: SpectrogramParameters | None,
    windows: _Windows,
    writing: _Writing,
) -> IngestReport:
    """One archive row per (event, station) window, with the catalog's columns."""
    stations = parse_station_ids(windows.stations)
    requests, rows, rejected = plan_windows(
        events, stations, windows.window, windows.relative_to, source
    )
    units, unreadable = _window_units(requests, windows, writing.chunk_events)
    rejected += unreadable
    if not units:
        raise IngestError(
            f"no window to cut among {len(rejected)} (event, station) pairs: "
            f"{_reason_counts(rejected)}; nothing written to {out_path}",
            rejected,
        )
    positions = np.array(rows, dtype=np.intp)
    per_window = {name: np.asarray(values)[positions] for name, values in columns.items()}
    catalog = ([r.event for r in requests], per_window)
    return _run(
        units, out_path, params or SpectrogramParameters(), writing, rejected, catalog=catalog
    )


def ingest_quakeml(
    quakeml: str | Path,
    out_path: ArchivePath,
    params: SpectrogramParameters | None = None,
    *,
    waveforms: str | Path | Iterable[str | Path],
    stations: str | Sequence[str],
    window: tuple[float, float],
    relative_to: str = "origin",
    sds_type: str = "D",
    client: Any = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    append: bool = False,
    overwrite: bool = False,
    format: str | None = None,
    dtype: npt.DTypeLike = np.float64,
) -> IngestReport:
    """Ingest a window per event of a QuakeML catalog and per station.

    Each (event, station) pair is one archive row with id ``<event>.<NET.STA.LOC.CHA>``
    (``<event>`` the last part of the event's resource id), and the coordinates
    ``source_origin_time``, ``source_latitude_deg``, ``source_longitude_deg``,
    ``source_depth_km``, ``source_magnitude``, ``source_magnitude_type`` and
    ``source_event_id`` (the resource id) from the event's preferred origin and magnitude,
    besides ``network``, ``station``, ``location``, ``channel`` and the window's
    ``starttime``. Pairs without a reference time, windows on an unknown station, a
    missing SDS day or not fully covered by the data are rejected with their reason.

    Parameters
    ----------
    quakeml : str or Path
        Read with ``obspy.read_events``.
    out_path : str, Path or ArchiveLocation
        The archive.
    params : SpectrogramParameters, optional
        Preprocessing (``n_samples`` defaults to the window's length).
    waveforms : str, Path or iterable of them
        An SDS root (``<root>/<year>/<net>/<sta>/<cha>.D/...``, read with
        ``obspy.clients.filesystem.sds.Client``), or day-long files (a folder, a glob, a
        list) whose headers are indexed first.
    stations : str or sequence of str
        Full SEED ids ``NET.STA.LOC.CHA``, comma-separated or a list.
    window : (float, float)
        Seconds before and after the reference time.
    relative_to : {"origin", "P"}, default="origin"
        The event's origin time, or the station's first P pick (phase P, Pg, Pn or Pb)
        in the QuakeML.
    sds_type : str, default="D"
        SDS data type of the archive's files.
    client, chunk_events, append, overwrite, format, dtype
        As in :func:`ingest_waveforms`.

    Returns
    -------
    IngestReport
        The windows written and the (event, station) pairs rejected, with reasons.

    Raises
    ------
    IngestError
        If no window can be ingested (nothing is written).
    """
    events, columns = quakeml_events(quakeml)
    windows = _Windows(
        waveforms, stations, (float(window[0]), float(window[1])), relative_to, sds_type, format
    )
    writing = _Writing(client, chunk_events, append, overwrite, dtype)
    return _ingest_windows(events, columns, str(quakeml), out_path, params, windows, writing)
