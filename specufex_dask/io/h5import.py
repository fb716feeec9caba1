"""Import SpecUFEx workflow HDF5 files into an archive.

The workflow layout: ``spectrograms/transformed_spectrograms/<id>`` (frequency, time),
``spectrograms/fSTFT``, ``spectrograms/tSTFT``, and when present ``ACM/<id>`` (pattern, time),
``STM/<id>`` (state, time), ``SpecUFEx_output/As/<id>`` (state, next_state) and
``fingerprints/<id>`` (state, next_state). They become ``spectrogram``, ``activation``,
``state_probability``, ``transition`` and ``fingerprint`` with ``event`` first, in the order
the h5 group lists the ids. Values are copied unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.io.archive import (
    ACTIVATION,
    DEFAULT_CHUNK_EVENTS,
    EVENT,
    FINGERPRINT,
    INPUT_FILE,
    MEDIAN,
    NEXT_STATE,
    PATTERN,
    SPECTROGRAM,
    STATE,
    STATE_PROBABILITY,
    TIME,
    TRANSITION,
    ArchiveError,
    ArchiveWriter,
    write_region,
)
from specufex_dask.io.location import ArchiveLocation, ArchivePath, as_location

logger = logging.getLogger(__name__)

SPECTROGRAM_GROUP = "spectrograms/transformed_spectrograms"
FREQUENCY_DATASET = "spectrograms/fSTFT"
TIME_DATASET = "spectrograms/tSTFT"
# h5 group -> (archive variable, dims after event)
OUTPUT_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ACM": (ACTIVATION, (PATTERN, TIME)),
    "STM": (STATE_PROBABILITY, (STATE, TIME)),
    "SpecUFEx_output/As": (TRANSITION, (STATE, NEXT_STATE)),
    "fingerprints": (FINGERPRINT, (STATE, NEXT_STATE)),
}


def _workflow_parameters(h5: Any) -> dict[str, Any]:
    """Our parameter names from the workflow's ``spectrograms`` and ``sgram_attrs`` attrs."""
    spectrogram_attrs = dict(h5["spectrograms"].attrs)
    workflow_attrs = dict(h5["sgram_attrs"].attrs) if "sgram_attrs" in h5 else {}
    pairs = {
        "fs": spectrogram_attrs.get("fs"),
        "window_s": workflow_attrs.get("winLen_Sec"),
        "overlap": workflow_attrs.get("fracOverlap"),
        "nfft": spectrogram_attrs.get("nfft", workflow_attrs.get("nfft")),
        "fmin": spectrogram_attrs.get("fmin", workflow_attrs.get("fmin")),
        "fmax": spectrogram_attrs.get("fmax", workflow_attrs.get("fmax")),
        "normalize_waveform": workflow_attrs.get("norm_waveforms"),
        "nperseg": spectrogram_attrs.get("nperseg"),
        "noverlap": spectrogram_attrs.get("noverlap"),
        "mode": spectrogram_attrs.get("mode"),
        "scaling": spectrogram_attrs.get("scaling"),
    }
    return {k: _plain(v) for k, v in pairs.items() if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _present_outputs(h5: Any, ids: list[str], where: str) -> dict[str, tuple[str, tuple]]:
    """Output groups that hold every id; a group holding only some ids is an error."""
    present = {}
    for group, (name, dims) in OUTPUT_GROUPS.items():
        if group not in h5:
            continue
        members = set(h5[group].keys())
        missing = [i for i in ids if i not in members]
        if missing:
            raise ArchiveError(
                f"{where}: group {group!r} lacks {len(missing)} of the {len(ids)} event ids, "
                f"e.g. {missing[:5]}"
            )
        shape = h5[group][ids[0]].shape
        if len(shape) != len(dims):
            raise ArchiveError(f"{where}: {group}/{ids[0]} has shape {shape}, expected {dims}")
        present[group] = (name, dims)
    return present


def import_specufex_h5(
    h5_path: str | Path,
    out_path: ArchivePath,
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    overwrite: bool = False,
    include_outputs: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> Path | ArchiveLocation:
    """Convert a SpecUFEx workflow HDF5 file into an archive.

    Parameters
    ----------
    h5_path : str or Path
        The workflow file.
    out_path : str, Path or ArchiveLocation
        The archive to create: a folder, or a URL (with its storage options in an
        :class:`~specufex_dask.io.location.ArchiveLocation`).
    chunk_events : int, default=8
        Events per Zarr chunk; also how many events are held in memory at once.
    overwrite : bool, default=False
        Replace an existing archive.
    include_outputs : bool, default=True
        Also import ACM, STM, As and fingerprints when present.
    attrs : mapping, optional
        More archive attributes.

    Returns
    -------
    Path or ArchiveLocation
        The archive: a :class:`~pathlib.Path` for a local one.

    Raises
    ------
    ArchiveError
        Missing groups, an output group lacking some ids, or inconsistent shapes.

    Examples
    --------
    >>> import_specufex_h5("SpecUFEx_test1.h5", "test1.zarr")  # doctest: +SKIP
    """
    import h5py

    h5_path = Path(h5_path)
    where = str(h5_path)
    if not h5_path.is_file():
        raise ArchiveError(f"SpecUFEx h5 file not found: {h5_path}")
    with h5py.File(h5_path, "r") as h5:
        for required in (SPECTROGRAM_GROUP, FREQUENCY_DATASET, TIME_DATASET):
            if required not in h5:
                raise ArchiveError(f"{where}: {required!r} is missing")
        ids = [str(i) for i in h5[SPECTROGRAM_GROUP].keys()]
        if not ids:
            raise ArchiveError(f"{where}: {SPECTROGRAM_GROUP!r} holds no spectrogram")
        frequency = h5[FREQUENCY_DATASET][()]
        time = h5[TIME_DATASET][()]
        expected = (frequency.size, time.size)
        outputs = _present_outputs(h5, ids, where) if include_outputs else {}
        extra_variables = {
            name: ((EVENT, *dims), h5[group][ids[0]].shape)
            for group, (name, dims) in outputs.items()
        }
        dtype = h5[SPECTROGRAM_GROUP][ids[0]].dtype
        writer = ArchiveWriter.create(
            out_path,
            event_coords={
                EVENT: np.array(ids, dtype=object),
                INPUT_FILE: np.array([f"{h5_path.name}:{SPECTROGRAM_GROUP}/{i}" for i in ids]),
                MEDIAN: np.full(len(ids), np.nan),
            },
            frequency=frequency,
            time=time,
            parameters=_workflow_parameters(h5),
            attrs={"imported_from": str(h5_path), **dict(attrs or {})},
            chunk_events=chunk_events,
            dtype=dtype,
            extra_variables=extra_variables,
            overwrite=overwrite,
        )
        try:
            for start, stop in writer.regions:
                chunk_ids = ids[start:stop]
                block = _stack(h5, SPECTROGRAM_GROUP, chunk_ids, expected, where)
                write_region(writer.store_path, SPECTROGRAM, start, block)
                for group, (name, _) in outputs.items():
                    shape = extra_variables[name][1]
                    write_region(
                        writer.store_path, name, start, _stack(h5, group, chunk_ids, shape, where)
                    )
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    logger.info("imported %d events from %s into %s", len(ids), h5_path, out_path)
    location = as_location(out_path)
    return Path(location.url) if location.local else location


def _stack(h5: Any, group: str, ids: list[str], shape: tuple[int, ...], where: str) -> np.ndarray:
    arrays = []
    for event in ids:
        values = h5[group][event][()]
        if values.shape != tuple(shape):
            raise ArchiveError(
                f"{where}: {group}/{event} has shape {values.shape}, expected {tuple(shape)}"
            )
        arrays.append(values)
    return np.stack(arrays)
