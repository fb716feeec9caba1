"""Waveform readers: files, arrays and continuous traces as picklable units of records.

A *unit* (e.g. 256 event files, one continuous file) is what one task of the ingest driver
(:mod:`specufex_dask.ingest.driver`) reads; ``load`` yields one record per input, with the
waveform, its metadata or the reason it was rejected.

ObsPy is an optional extra, imported only when files or traces are read.
"""

from __future__ import annotations

import functools
import glob
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.io.archive import (
    CHANNEL,
    INPUT_FILE,
    LOCATION,
    NETWORK,
    STARTTIME,
    STATION,
)

WAVEFORM_SUFFIXES = frozenset(
    {".mseed", ".miniseed", ".ms", ".msd", ".seed", ".sac", ".gse2", ".segy", ".sgy", ".wav"}
)
_METADATA_KEYS = (NETWORK, STATION, LOCATION, CHANNEL)


def import_obspy() -> Any:
    try:
        import obspy
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'reading waveforms needs ObsPy: pip install "specufex-dask[obspy]"'
        ) from error
    return obspy


# ----------------------------------------------------------------------------- reading


@functools.cache
def _waveform_plugin(format_name: str) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """ObsPy's (isFormat, readFormat) of one format, through its public entry points.

    ``obspy.read`` resolves its plugins' distribution metadata on every call, which costs
    more than decoding a small miniSEED file; loading them once per process avoids that.
    """
    from importlib.metadata import entry_points

    points = {ep.name: ep for ep in entry_points(group=f"obspy.plugin.waveform.{format_name}")}
    if "isFormat" not in points or "readFormat" not in points:
        return None
    return points["isFormat"].load(), points["readFormat"].load()


def _read_stream(path: str, format: str | None, hint: list[str]) -> Any:
    """Read one file; try the format given (or of the previous file) before autodetection.

    ``hint`` holds the format of the last file read in this unit. A file it does not
    recognise goes through ``obspy.read``'s autodetection, which then becomes the hint.
    """
    obspy = import_obspy()
    candidate = format.upper() if format else (hint[0] if hint else None)
    plugin = _waveform_plugin(candidate) if candidate else None
    if plugin is not None and Path(path).is_file():
        is_format, read_format = plugin
        if format or is_format(path):
            stream = read_format(path)
            for trace in stream:
                trace.stats._format = candidate
            if len(stream):
                return stream
    stream = obspy.read(path, format=format)
    if len(stream):
        hint[:] = [str(stream[0].stats._format)]
    return stream


# ----------------------------------------------------------------------------- units


@dataclass(frozen=True)
class _Record:
    """One input as loaded on a worker: a waveform, or the reason it has none."""

    index: int
    event: str
    source: str
    metadata: tuple[tuple[str, Any], ...] = ()
    waveform: np.ndarray | None = None
    sampling_rate: float | None = None
    reason: str | None = None


def _trace_metadata(trace: Any, start_ns: int | None = None) -> tuple[tuple[str, Any], ...]:
    stats = trace.stats
    start = stats.starttime.ns if start_ns is None else start_ns
    return (
        (NETWORK, str(stats.network)),
        (STATION, str(stats.station)),
        (LOCATION, str(stats.location)),
        (CHANNEL, str(stats.channel)),
        (STARTTIME, int(start)),
    )


def _select(stream: Any, select: tuple[tuple[str, str], ...]) -> Any:
    return stream.select(**dict(select)) if select else stream


@dataclass(frozen=True)
class FileUnit:
    """A group of event files, one event per file."""

    paths: tuple[str, ...]
    events: tuple[str, ...]
    starttimes: tuple[str | None, ...]
    stations: tuple[str | None, ...]
    select: tuple[tuple[str, str], ...] = ()
    format: str | None = None

    def load(self, indices: Sequence[int] | None = None) -> Iterator[_Record]:
        obspy = import_obspy()
        wanted = range(len(self.paths)) if indices is None else indices
        hint: list[str] = []
        for index in wanted:
            path, event = self.paths[index], self.events[index]
            try:
                stream = _read_stream(path, self.format, hint)
            except Exception as error:  # any reader failure means "unreadable"
                yield _Record(index, event, path, reason=f"unreadable: {error}".strip())
                continue
            stream = _select(stream, self.select)
            if self.stations[index]:
                stream = stream.select(station=self.stations[index])
            if self.starttimes[index]:
                stream.trim(starttime=obspy.UTCDateTime(self.starttimes[index]))
            yield _single_trace_record(stream, index, event, path)


def _single_trace_record(stream: Any, index: int, event: str, source: str) -> _Record:
    if len(stream) == 0:
        return _Record(index, event, source, reason="no trace (after selection)")
    ids = sorted({trace.id for trace in stream})
    if len(ids) > 1:
        return _Record(index, event, source, reason=f"several channels {ids}: pass select=")
    if len(stream) > 1:
        return _Record(index, event, source, reason=f"gaps: {len(stream)} traces for {ids[0]}")
    trace = stream[0]
    if np.ma.isMaskedArray(trace.data) and np.ma.getmaskarray(trace.data).any():
        return _Record(index, event, source, reason="gaps: masked samples")
    return _Record(
        index,
        event,
        source,
        metadata=_trace_metadata(trace),
        waveform=np.asarray(trace.data),
        sampling_rate=float(trace.stats.sampling_rate),
    )


@dataclass(frozen=True)
class ArrayUnit:
    """A block of rows of a waveform array."""

    data: np.ndarray
    events: tuple[str, ...]
    sampling_rate: float
    first_row: int
    starttimes: tuple[int | None, ...]

    def load(self, indices: Sequence[int] | None = None) -> Iterator[_Record]:
        wanted = range(len(self.events)) if indices is None else indices
        for index in wanted:
            start = self.starttimes[index]
            metadata = () if start is None else ((STARTTIME, start),)
            yield _Record(
                index,
                self.events[index],
                f"array[{self.first_row + index}]",
                metadata=metadata,
                waveform=self.data[index],
                sampling_rate=self.sampling_rate,
            )


@dataclass(frozen=True)
class ContinuousUnit:
    """One continuous file (or in-memory stream) cut into fixed windows."""

    window_length_s: float
    step_s: float
    path: str | None = None
    stream: Any = None
    select: tuple[tuple[str, str], ...] = ()
    format: str | None = None

    @property
    def source(self) -> str:
        return self.path if self.path is not None else "stream"

    def load(self, indices: Sequence[int] | None = None) -> Iterator[_Record]:
        if self.path is not None:
            try:
                stream = _read_stream(self.path, self.format, [])
            except Exception as error:
                yield _Record(0, "", self.path, reason=f"unreadable: {error}".strip())
                return
        else:
            stream = self.stream.copy()
        stream = _select(stream, self.select)
        # Gaps become masked samples, so windows across a gap are found and rejected.
        stream.merge(method=0, fill_value=None)
        wanted = None if indices is None else set(indices)
        index = 0
        for trace in stream:
            yield from self._windows(trace, index, wanted)
            index += self._count(trace)

    def _sizes(self, trace: Any) -> tuple[int, int]:
        fs = float(trace.stats.sampling_rate)
        return round(self.window_length_s * fs), round(self.step_s * fs)

    def _count(self, trace: Any) -> int:
        length, step = self._sizes(trace)
        return 0 if trace.stats.npts < length else (trace.stats.npts - length) // step + 1

    def _windows(self, trace: Any, first: int, wanted: set[int] | None) -> Iterator[_Record]:
        fs = float(trace.stats.sampling_rate)
        length, step = self._sizes(trace)
        data = trace.data
        for k in range(self._count(trace)):
            if wanted is not None and first + k not in wanted:
                continue
            offset = k * step
            start_ns = trace.stats.starttime.ns + round(offset * 1e9 / fs)
            event = f"{trace.id}.{np.datetime64(start_ns, 'ns')}"
            source = f"{self.source}#{event}"
            window = data[offset : offset + length]
            if np.ma.isMaskedArray(window) and np.ma.getmaskarray(window).any():
                yield _Record(first + k, event, source, reason="gaps: masked samples in window")
                continue
            yield _Record(
                first + k,
                event,
                source,
                metadata=(*_trace_metadata(trace, start_ns), (INPUT_FILE, self.source)),
                waveform=np.asarray(window),
                sampling_rate=fs,
            )


def default_event_id(path: str | Path) -> str:
    """The file name without a known waveform extension (``.mseed``, ``.sac``...).

    Examples
    --------
    >>> default_event_id("/data/ev123.mseed"), default_event_id("BAV.NC.EHZ..D.1984.075.10633")
    ('ev123', 'BAV.NC.EHZ..D.1984.075.10633')
    """
    path = Path(path)
    return path.stem if path.suffix.lower() in WAVEFORM_SUFFIXES else path.name


def expand_sources(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files named by a folder (its visible files, sorted), a glob, a file, or a list of them."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[Path] = []
    for source in sources:
        text = str(source)
        if any(char in text for char in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text))
            files.extend(p for p in matches if p.is_file())
        elif Path(text).is_dir():
            files.extend(
                sorted(
                    p for p in Path(text).iterdir() if p.is_file() and not p.name.startswith(".")
                )
            )
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise FileNotFoundError(f"waveform source not found: {text}")
    return files


def select_tuple(select: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((select or {}).items()))
