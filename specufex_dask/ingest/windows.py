"""Event windows cut from an SDS archive or from day-long files, per event and station.

A catalog (QuakeML or CSV) gives each event's origin time (and, in QuakeML, its P picks);
each (event, station) pair becomes a :class:`WindowRequest`: ``pre`` seconds before and
``post`` seconds after the origin time or the station's P pick. Requests are grouped into
picklable units whose ``load`` reads their own data on a worker (an SDS unit its SDS days,
a day-file unit the files that overlap its windows) and yields one record per request, with
the window or the reason it has none.

ObsPy is an optional extra, imported only when data are read.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.ingest.readers import _Record, _trace_metadata, import_obspy
from specufex_dask.io.archive import (
    DEPTH,
    EVENT_ID,
    INPUT_FILE,
    LATITUDE,
    LONGITUDE,
    MAGNITUDE,
    MAGNITUDE_TYPE,
    ORIGIN_TIME,
    RejectedInput,
)

__all__ = [
    "CatalogEvent", "DayFileUnit", "SDSUnit", "WindowRequest", "csv_events", "cut_window",
    "index_day_files", "parse_station_ids", "plan_windows", "quakeml_events", "sds_day_files",
    "short_event_id", "with_day_files",
]  # fmt: skip

Nslc = tuple[str, str, str, str]
_NS = 1_000_000_000
_P_PHASES = frozenset({"P", "Pg", "Pn", "Pb"})


def parse_station_ids(stations: str | Sequence[str]) -> list[Nslc]:
    """Full SEED ids ``NET.STA.LOC.CHA`` (comma-separated or a list) as 4-tuples.

    Examples
    --------
    >>> parse_station_ids("NC.BAV..EHZ,IU.ANMO.00.BHZ")
    [('NC', 'BAV', '', 'EHZ'), ('IU', 'ANMO', '00', 'BHZ')]
    """
    items = stations.split(",") if isinstance(stations, str) else list(stations)
    ids: list[Nslc] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        parts = item.split(".")
        if len(parts) != 4 or not parts[0] or not parts[1] or not parts[3]:
            raise ValueError(
                f"station {item!r} is not a full SEED id NET.STA.LOC.CHA (e.g. NC.BAV..EHZ)"
            )
        ids.append((parts[0], parts[1], parts[2], parts[3]))
    if not ids:
        raise ValueError("no station given: pass stations as NET.STA.LOC.CHA,...")
    if len(set(ids)) < len(ids):
        raise ValueError(f"a station is given twice in {items}")
    return ids


@dataclass(frozen=True)
class WindowRequest:
    """One window to cut: an event at one station.

    Attributes
    ----------
    event : str
        The archive's event id, ``<event>.<NET.STA.LOC.CHA>``.
    nslc : tuple of str
        Network, station, location, channel.
    start_ns : int
        Window start, ns since 1970 (UTC).
    length_s : float
        Window length, s.
    reference : str
        What the window is cut around, for rejection reasons.
    files : tuple of str
        The day-long files overlapping the window (day-file sources only).
    """

    event: str
    nslc: Nslc
    start_ns: int
    length_s: float
    reference: str
    files: tuple[str, ...] = ()

    @property
    def seed_id(self) -> str:
        return ".".join(self.nslc)


@dataclass(frozen=True)
class CatalogEvent:
    """An event of a catalog: its id, times and the row of its catalog columns.

    ``origin_ns`` is None when the catalog gives no origin time (then ``problem`` says
    why); ``picks`` maps (network, station) to the time of its first P pick, in ns.
    """

    event: str
    row: int
    origin_ns: int | None
    picks: Mapping[tuple[str, str], int]
    problem: str | None = None


def _iso(ns: int) -> str:
    return f"{np.datetime64(ns, 'ns')}Z"


def _reference(event: CatalogEvent, nslc: Nslc, relative_to: str) -> tuple[int | None, str]:
    """The reference time of a window, or None with the reason there is none."""
    if relative_to == "origin":
        if event.origin_ns is None:
            return None, event.problem or "no origin time"
        return event.origin_ns, f"origin time {_iso(event.origin_ns)}"
    pick = event.picks.get((nslc[0], nslc[1]))
    if pick is None:
        return None, f"no P pick for {nslc[0]}.{nslc[1]} in the catalog"
    return pick, f"P pick {_iso(pick)}"


def plan_windows(
    events: Sequence[CatalogEvent],
    stations: Sequence[Nslc],
    window: tuple[float, float],
    relative_to: str,
    source: str,
) -> tuple[list[WindowRequest], list[int], list[RejectedInput]]:
    """One request per (event, station), in catalog order then station order.

    Parameters
    ----------
    events : sequence of CatalogEvent
    stations : sequence of (network, station, location, channel)
    window : (pre_s, post_s)
        Seconds before and after the reference time.
    relative_to : {"origin", "P"}
        The origin time or the station's P pick.
    source : str
        The catalog, named in rejections.

    Returns
    -------
    requests, rows, rejected
        The requests, the catalog row of each, and the pairs without a reference time.
    """
    pre, post = (float(w) for w in window)
    if not pre + post > 0:
        raise ValueError(f"window (pre, post) = ({pre}, {post}) s must have a positive length")
    if relative_to not in ("origin", "P"):
        raise ValueError(f"relative_to must be 'origin' or 'P', got {relative_to!r}")
    requests, rows, rejected = [], [], []
    for event in events:
        for nslc in stations:
            name = f"{event.event}.{'.'.join(nslc)}"
            time, reference = _reference(event, nslc, relative_to)
            if time is None:
                rejected.append(RejectedInput(f"{source}#{event.event}", reference, name))
                continue
            start = time - round(pre * _NS)
            requests.append(WindowRequest(name, nslc, start, pre + post, reference))
            rows.append(event.row)
    return requests, rows, rejected


# ----------------------------------------------------------------------------- QuakeML


def short_event_id(resource_id: str) -> str:
    """The last part of a resource id (``smi:local/event/10633`` -> ``10633``).

    Examples
    --------
    >>> short_event_id("quakeml:nc.anss.org/Event/NC/72282711"), short_event_id("smi:x?id=7")
    ('72282711', '7')
    """
    text = resource_id.rstrip("/")
    for separator in ("/", "=", ":"):
        text = text.rsplit(separator, 1)[-1]
    return text or resource_id


def _first_p_picks(event: Any) -> dict[tuple[str, str], int]:
    picks: dict[tuple[str, str], int] = {}
    for pick in event.picks:
        if pick.phase_hint not in _P_PHASES or pick.time is None:
            continue
        key = (str(pick.waveform_id.network_code), str(pick.waveform_id.station_code))
        picks[key] = min(picks.get(key, pick.time.ns), pick.time.ns)
    return picks


def quakeml_events(quakeml: str | Path) -> tuple[list[CatalogEvent], dict[str, np.ndarray]]:
    """The events of a QuakeML file and their SeisBench-named columns.

    Returns
    -------
    events : list of CatalogEvent
        In file order; an event without origin time has ``origin_ns`` None.
    columns : dict of name -> ndarray
        ``source_origin_time`` (datetime64[ns]), ``source_latitude_deg``,
        ``source_longitude_deg``, ``source_depth_km``, ``source_magnitude`` (float, NaN
        when absent), ``source_magnitude_type`` and ``source_event_id`` (the resource id),
        one value per event. The preferred origin and magnitude are used, else the first.
    """
    obspy = import_obspy()
    catalog = obspy.read_events(str(quakeml))
    events, values = [], []
    for row, event in enumerate(catalog):
        resource = str(event.resource_id)
        origin = event.preferred_origin() or (event.origins[0] if event.origins else None)
        magnitude = event.preferred_magnitude() or (
            event.magnitudes[0] if event.magnitudes else None
        )
        time = origin.time.ns if origin is not None and origin.time is not None else None
        problem = None if time is not None else f"no origin time: event {resource}"
        events.append(
            CatalogEvent(short_event_id(resource), row, time, _first_p_picks(event), problem)
        )
        values.append((time, origin, magnitude, resource))
    return events, _quakeml_columns(values)


def _number(value: Any, scale: float = 1.0) -> float:
    return np.nan if value is None else float(value) * scale


def _quakeml_columns(values: Sequence[tuple[Any, Any, Any, str]]) -> dict[str, np.ndarray]:
    origins = [origin for _, origin, _, _ in values]
    magnitudes = [magnitude for _, _, magnitude, _ in values]
    return {
        ORIGIN_TIME: np.array(
            [np.datetime64("NaT") if t is None else np.datetime64(t, "ns") for t, *_ in values],
            dtype="datetime64[ns]",
        ),
        LATITUDE: np.array([_number(o and o.latitude) for o in origins]),
        LONGITUDE: np.array([_number(o and o.longitude) for o in origins]),
        # QuakeML depths are in metres
        DEPTH: np.array([_number(o and o.depth, 1e-3) for o in origins]),
        MAGNITUDE: np.array([_number(m and m.mag) for m in magnitudes]),
        MAGNITUDE_TYPE: np.array(
            [(m and m.magnitude_type) or "" for m in magnitudes], dtype=object
        ),
        EVENT_ID: np.array([r for *_, r in values], dtype=object),
    }


def csv_events(events: Sequence[str], origin_times: np.ndarray, column: str) -> list[CatalogEvent]:
    """The events of a CSV catalog: ids and typed origin times (NaT: missing)."""
    found = []
    for row, (event, time) in enumerate(zip(events, origin_times, strict=True)):
        if np.isnat(time):
            found.append(CatalogEvent(event, row, None, {}, f"empty origin time ({column!r})"))
        else:
            found.append(
                CatalogEvent(event, row, int(time.astype("datetime64[ns]").view("i8")), {})
            )
    return found


# ----------------------------------------------------------------------------- units


def _covering_trace(stream: Any, start: Any, end: Any) -> Any | None:
    """The one trace spanning [start, end], merging only the pieces that overlap it."""
    obspy = import_obspy()
    pieces = [t for t in stream if t.stats.endtime >= start and t.stats.starttime <= end]
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0]
    # Gaps become masked samples, so a window across a gap is found and rejected.
    merged = obspy.Stream(pieces).merge(method=0, fill_value=None)
    return merged[0] if len(merged) == 1 else None


def _data_span(stream: Any) -> str:
    if not len(stream):
        return "no data read"
    return "data " + ", ".join(f"{t.stats.starttime}-{t.stats.endtime}" for t in stream)


def cut_window(stream: Any, request: WindowRequest, source: str, index: int) -> _Record:
    """The record of one request from the data read for it.

    The window is obspy's ``Trace.slice(start, start + length)`` (nearest samples), cut to
    ``round(length * fs)`` samples; a window the data do not fully cover is rejected.
    """
    obspy = import_obspy()
    start = obspy.UTCDateTime(ns=request.start_ns)
    end = start + request.length_s
    stream = stream.select(id=request.seed_id)
    trace = _covering_trace(stream, start, end)
    uncovered = f"window not fully covered by the data: {start}-{end} ({request.reference})"
    if trace is None:
        return _Record(index, request.event, source, reason=f"{uncovered}; {_data_span(stream)}")
    fs = float(trace.stats.sampling_rate)
    n = round(request.length_s * fs)
    piece = trace.slice(start, end)
    data = piece.data[:n]
    masked = np.ma.isMaskedArray(data) and np.ma.getmaskarray(data).any()
    if len(data) < n or abs(piece.stats.starttime - start) > 0.5 / fs or masked:
        return _Record(index, request.event, source, reason=f"{uncovered}; {_data_span(stream)}")
    return _Record(
        index,
        request.event,
        source,
        metadata=(*_trace_metadata(piece), (INPUT_FILE, source)),
        waveform=np.asarray(data),
        sampling_rate=fs,
    )


def sds_day_files(
    root: str, nslc: Nslc, start_ns: int, end_ns: int, sds_type: str = "D"
) -> list[str]:
    """The SDS file of every day that [start, end] touches."""
    from obspy.clients.filesystem.sds import SDS_FMTSTR

    days = np.arange(
        np.datetime64(start_ns, "ns").astype("datetime64[D]"),
        np.datetime64(end_ns, "ns").astype("datetime64[D]") + 1,
    )
    files = []
    for day in days:
        year = int(str(day)[:4])
        doy = int((day - day.astype("datetime64[Y]")).astype(int)) + 1
        name = SDS_FMTSTR.format(
            year=year, doy=doy, sds_type=sds_type, network=nslc[0], station=nslc[1],
            location=nslc[2], channel=nslc[3],
        )  # fmt: skip
        files.append(os.path.join(root, name))
    return files


def _spans(
    requests: Mapping[int, tuple[WindowRequest, tuple[str, ...]]],
) -> dict[tuple[Nslc, tuple[str, ...]], tuple[int, int]]:
    """The time span of the windows of each channel and set of days, in ns.

    A unit reads each span once, not once per window: the windows of one day of one
    channel come from a single read of its SDS file.
    """
    spans: dict[tuple[Nslc, tuple[str, ...]], tuple[int, int]] = {}
    for request, days in requests.values():
        end = request.start_ns + round(request.length_s * _NS)
        key = (request.nslc, days)
        low, high = spans.get(key, (request.start_ns, end))
        spans[key] = (min(low, request.start_ns), max(high, end))
    return spans


@dataclass(frozen=True)
class SDSUnit:
    """Windows read from an SDS archive (``obspy.clients.filesystem.sds.Client``)."""

    root: str
    requests: tuple[WindowRequest, ...]
    sds_type: str = "D"
    format: str = "MSEED"

    def load(self, indices: Sequence[int] | None = None) -> Iterator[_Record]:
        from obspy.clients.filesystem.sds import Client

        client = Client(self.root, sds_type=self.sds_type, format=self.format)
        wanted = list(range(len(self.requests)) if indices is None else indices)
        days = {i: self._days(self.requests[i]) for i in wanted}
        spans = _spans({i: (self.requests[i], days[i]) for i in wanted})
        read: dict[tuple[Nslc, tuple[str, ...]], Any] = {}
        for index in wanted:
            request = self.requests[index]
            source = days[index][0]
            problem = self._missing(request.nslc, days[index])
            if problem is not None:
                yield _Record(index, request.event, source, reason=problem)
                continue
            key = (request.nslc, days[index])
            try:
                if key not in read:
                    read[key] = self._read(client, request.nslc, *spans[key])
            except Exception as error:  # any reader failure means "unreadable"
                yield _Record(index, request.event, source, reason=f"unreadable: {error}")
                continue
            yield cut_window(read[key], request, source, index)

    def _days(self, request: WindowRequest) -> tuple[str, ...]:
        end_ns = request.start_ns + round(request.length_s * _NS)
        files = sds_day_files(self.root, request.nslc, request.start_ns, end_ns, self.sds_type)
        return tuple(files)

    @staticmethod
    def _read(client: Any, nslc: Nslc, start_ns: int, end_ns: int) -> Any:
        """The data of [start, end] and a second around it: the client's trim may keep
        only the sample after a start between two samples, where the window takes the
        nearest one."""
        obspy = import_obspy()
        start, end = obspy.UTCDateTime(ns=start_ns), obspy.UTCDateTime(ns=end_ns)
        return client.get_waveforms(*nslc, start - 1, end + 1)

    def _missing(self, nslc: Nslc, days: Sequence[str]) -> str | None:
        """Why an SDS request cannot be read: an unknown station or a missing day."""
        pattern = os.path.join(
            glob.escape(self.root), "*", glob.escape(nslc[0]), glob.escape(nslc[1])
        )
        if not glob.glob(pattern):
            return f"unknown station {nslc[0]}.{nslc[1]}: not in the SDS archive {self.root}"
        absent = [d for d in days if not os.path.isfile(d)]
        if absent:
            return f"SDS day file does not exist: {absent[0]}"
        return None


@dataclass(frozen=True)
class DayFileUnit:
    """Windows read from day-long (or any continuous) files."""

    requests: tuple[WindowRequest, ...]
    format: str | None = None

    def load(self, indices: Sequence[int] | None = None) -> Iterator[_Record]:
        obspy = import_obspy()
        wanted = range(len(self.requests)) if indices is None else indices
        for index in wanted:
            request = self.requests[index]
            source = request.files[0] if request.files else "day files"
            if not request.files:
                reason = f"no day file covers the window: {request.seed_id} at {request.reference}"
                yield _Record(index, request.event, source, reason=reason)
                continue
            start = obspy.UTCDateTime(ns=request.start_ns)
            stream = obspy.Stream()
            try:
                for path in request.files:
                    stream += obspy.read(
                        path, format=self.format, starttime=start - 1,
                        endtime=start + request.length_s + 1,
                    )  # fmt: skip
            except Exception as error:  # any reader failure means "unreadable"
                yield _Record(index, request.event, source, reason=f"unreadable: {error}")
                continue
            yield cut_window(stream, request, source, index)


def index_day_files(
    files: Sequence[str | Path], format: str | None = None
) -> dict[str, list[tuple[int, int, str]]]:
    """(start ns, end ns, path) of every trace of the files, by SEED id (headers only)."""
    obspy = import_obspy()
    index: dict[str, list[tuple[int, int, str]]] = {}
    for path in files:
        for trace in obspy.read(str(path), format=format, headonly=True):
            span = (trace.stats.starttime.ns, trace.stats.endtime.ns, str(path))
            index.setdefault(trace.id, []).append(span)
    return index


def with_day_files(
    requests: Sequence[WindowRequest], index: Mapping[str, Sequence[tuple[int, int, str]]]
) -> list[WindowRequest]:
    """Each request with the files whose traces overlap its window."""
    found = []
    for request in requests:
        end = request.start_ns + round(request.length_s * _NS)
        files = sorted(
            {p for s, e, p in index.get(request.seed_id, ()) if e >= request.start_ns and s <= end}
        )
        found.append(
            WindowRequest(
                request.event, request.nslc, request.start_ns, request.length_s,
                request.reference, tuple(files),
            )
        )  # fmt: skip
    return found
