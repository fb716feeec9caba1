"""Rows of a plain local Zarr array, read and decoded on the calling thread.

Zarr's own read hands every chunk to its event-loop thread, reads the file and decodes
it on a thread pool, then hands the result back. A Dask worker already runs one task
per core it was given, so those threads compete with the other workers' tasks, and each
hand-off waits for a core. An archive's ``spectrogram`` is the simplest Zarr v3 array
there is (chunked along ``event`` only, little-endian, zstd, Blosc or no compression, one file
per chunk on a local disk, a crc32c after compression in archives written since
checksums were added): for it the chunk files are read, checked and decoded here, in
the task's own thread, as the Zarr v3 specification lays them out. So are the shards of
new archives (:class:`ShardedChunks`: one file of 256 events, each event an inner chunk
encoded alike, the index at the end with its own crc32c), of which a read takes only the
byte ranges of the rows it needs. Anything else (other codecs, a shard index first,
remote stores, Zarr v2) is left to Zarr.

Damage is named by its chunk file: a checksum that does not match, or a file that is
missing where the array's fill value is NaN (no valid spectrogram holds a NaN, so Zarr
never leaves such a chunk unwritten on purpose; the file was lost). In a shard, a
damaged inner chunk names the shard file and its own events, a damaged index or a
missing shard file all the shard's events.

On the 10k benchmark archive (8-event chunks, 60 + 60 steps of 64 events, medians of
four alternating runs) a 1-worker fit kept 0.95 cores busy in its worker instead of 1.12
for the same time (53.9 s against 54.3), and a 2-worker fit took 34.7 s instead of 39.6.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.io.archive import SPECTROGRAM, ArchiveError
from specufex_dask.io.location import ArchivePath, as_location, zarr_group
from specufex_dask.io.status import OUTPUTS, TRANSFORMED

__all__ = [
    "PlainChunks",
    "ShardedChunks",
    "damaged_chunks",
    "plain_chunks",
    "read_rows",
    "sharded_chunks",
]

# How Zarr's Crc32cCodec reports a mismatch (it raises a plain ValueError).
_ZARR_MISMATCH = "checksum do not match"
_MISMATCH = "checksum mismatch: the chunk is damaged"
REINGEST = "re-ingest the events"
"""What to do about a damaged chunk of the spectrograms."""
RETRANSFORM = "delete the output and run transform again for the events"
"""What to do about a damaged chunk of an output of the transform."""


@cache
def _crc32c() -> Callable[[Any], int]:
    import google_crc32c  # what Zarr's Crc32cCodec computes with

    return google_crc32c.value


@cache
def _decoder(codec: str) -> Any:
    """The numcodecs codec that decodes chunks of ``codec`` ("zstd" or "blosc"; a Blosc
    frame carries its own compressor and shuffle in its header)."""
    from numcodecs import Blosc, Zstd

    return {"zstd": Zstd, "blosc": Blosc}[codec]()


def _blosc_stored_bytes(data: np.ndarray) -> int:
    """The length a Blosc frame's header gives itself (bytes 12-15, little-endian; -1
    when there is no header)."""
    if len(data) < 16:
        return -1
    return int.from_bytes(data[12:16].tobytes(), "little")


class _Damaged(Exception):
    """What is wrong with a stored chunk's bytes (named by the caller, who knows where)."""


def _decoded(
    data: np.ndarray, crc32c: bool, codec: str | None, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """A chunk's values from its stored bytes (a uint8 array): the trailing crc32c
    checked when there is one, then decoded by ``codec`` ("zstd", "blosc", None: raw).

    Raises
    ------
    _Damaged
        The checksum does not match, or the bytes are not a chunk of ``shape``.
    """
    if crc32c:
        data, stored = data[:-4], data[-4:].tobytes()
        if len(stored) != 4 or _crc32c()(data).to_bytes(4, "little") != stored:
            raise _Damaged(_MISMATCH)
    try:
        if codec == "blosc" and _blosc_stored_bytes(data) != len(data):
            # Blosc decodes a frame cut short from past its end instead of failing
            raise ValueError(f"not a whole Blosc frame: {len(data)} bytes")
        if codec is not None:
            data = _decoder(codec).decode(data)
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except (RuntimeError, ValueError) as error:
        raise _Damaged(f"cannot be read as a {shape} {dtype} chunk ({error})") from error


def _damage(where: str, problem: str, events: str, remedy: str = REINGEST) -> ArchiveError:
    """The one-line error of a damaged chunk: where it is, what is wrong, what to redo."""
    return ArchiveError(f"{where}: {problem}; {remedy} {events}")


@dataclass(frozen=True)
class PlainChunks:
    """The chunk files of a local Zarr v3 array chunked along its first axis only.

    Attributes
    ----------
    directory : Path
        The array's directory (holding its ``zarr.json``).
    key : callable
        Chunk coordinates -> the chunk's file, relative to ``directory`` (Zarr's own
        chunk key encoding).
    chunk_shape : tuple of int
        Shape of every stored chunk (the last is stored whole, padded past the end).
    length : int
        Length of the array's first axis.
    dtype : numpy.dtype
        Little-endian element type.
    fill_value : Any
        What a chunk without a file holds.
    codec : str or None
        How chunks are compressed: ``"zstd"``, ``"blosc"``, or None (raw bytes).
    crc32c : bool, default=False
        Whether every chunk file ends with the crc32c (little-endian) of the bytes before.
    store : Path or None, default=None
        The store's root, named in errors (``directory``'s parent when None).
    remedy : str, default=REINGEST
        What the error of a damaged chunk says to do, before the events.
    """

    directory: Path
    key: Callable[[tuple[int, ...]], str]
    chunk_shape: tuple[int, ...]
    length: int
    dtype: np.dtype
    fill_value: Any
    codec: str | None
    crc32c: bool = False
    store: Path | None = None
    remedy: str = REINGEST

    def events(self, number: int) -> str:
        """The rows of chunk ``number`` as ``"i..j"`` (the last chunk ends at the array's)."""
        first = number * self.chunk_shape[0]
        return f"{first}..{min(first + self.chunk_shape[0], self.length) - 1}"

    def _damage(self, path: Path, number: int, problem: str) -> ArchiveError:
        store = self.directory.parent if self.store is None else self.store
        array = self.directory.relative_to(store).as_posix()
        key = path.relative_to(self.directory).as_posix()
        return _damage(f"store {store}, array {array!r}, chunk {key}: chunk file {path}",
                       problem, self.events(number), self.remedy)  # fmt: skip

    def chunk(self, number: int) -> np.ndarray:
        """Chunk ``number`` as stored (read-only; ``fill_value`` where no file is).

        Raises
        ------
        ArchiveError
            The file is not a chunk of this array (checksum mismatch, truncated,
            corrupted, wrong size), or it is missing and the fill value is NaN; the
            message names the file and the events to re-ingest.
        """
        path = self.directory / self.key((number,) + (0,) * (len(self.chunk_shape) - 1))
        try:
            # a uint8 view: slicing it copies nothing, and the crc32c takes it (as in Zarr)
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        except FileNotFoundError:
            if self.dtype.kind == "f" and np.isnan(self.fill_value):
                raise self._damage(path, number, "the chunk file is missing") from None
            return np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)
        try:
            return _decoded(data, self.crc32c, self.codec, self.chunk_shape, self.dtype)
        except _Damaged as damaged:
            raise self._damage(path, number, str(damaged)) from damaged.__cause__

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of the array: a slice with step 1, or sorted indices."""
        rows = _checked_rows(rows, self.length)
        values = np.empty((rows.size, *self.chunk_shape[1:]), dtype=self.dtype)
        per_chunk = self.chunk_shape[0]
        numbers = rows // per_chunk
        # rows are sorted, so each chunk's rows are one run: decoded once, copied once
        for first, stop in _runs(numbers):
            number = int(numbers[first])
            values[first:stop] = self.chunk(number)[rows[first:stop] - number * per_chunk]
        return values


def _runs(numbers: np.ndarray) -> list[tuple[int, int]]:
    """``(first, stop)`` of every run of equal values in sorted ``numbers``."""
    if not numbers.size:
        return []
    # a step reads one row from each of 32-64 shards: np.r_ and np.diff cost more here
    # than the comparison itself
    bounds = (np.flatnonzero(numbers[1:] != numbers[:-1]) + 1).tolist()
    return list(zip([0, *bounds], [*bounds, int(numbers.size)], strict=True))


def _checked_rows(rows: slice | np.ndarray, length: int) -> np.ndarray:
    """Sorted row indices of ``rows`` (a slice with step 1, or sorted indices) checked
    against an array of ``length`` rows."""
    if isinstance(rows, slice):
        start, stop, step = rows.indices(length)
        if step != 1:
            raise ValueError(f"rows must be a slice with step 1, got {rows}")
        rows = np.arange(start, stop)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows[0] < 0 or rows[-1] >= length):
        raise IndexError(f"rows {rows[0]}..{rows[-1]} out of 0..{length - 1}")
    return rows


def plain_chunks(array: Any) -> PlainChunks | None:
    """The chunk files of ``array`` (an opened ``zarr.Array``) if it is plain enough to
    read directly (see the module's docstring), else None."""
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    metadata = array.metadata
    if metadata.zarr_format != 3 or not isinstance(array.store, LocalStore):
        return None
    grid = metadata.chunk_grid
    if not isinstance(grid, RegularChunkGrid) or grid.chunk_shape[1:] != array.shape[1:]:
        return None
    return _plain_layout(array, tuple(grid.chunk_shape), tuple(metadata.codecs))


def _plain_layout(
    array: Any, chunk_shape: tuple[int, ...], codecs: tuple[Any, ...]
) -> PlainChunks | None:
    """The :class:`PlainChunks` of ``array`` (an opened local ``zarr.Array``) whose chunks
    of ``chunk_shape`` are encoded by ``codecs``, if those are plain, else None."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

    crc32c = bool(codecs) and type(codecs[-1]) is Crc32cCodec
    codecs = codecs[:-1] if crc32c else codecs
    if not codecs or type(codecs[0]) is not BytesCodec or len(codecs) > 2:
        return None
    compressors = {ZstdCodec: "zstd", BloscCodec: "blosc"}
    if len(codecs) == 2 and type(codecs[1]) not in compressors:
        return None
    dtype = np.dtype(array.dtype)
    little = dtype.byteorder in "<|" or (dtype.byteorder == "=" and np.little_endian)
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if not little or (dtype.itemsize > 1 and endian != "little"):
        return None
    return PlainChunks(
        directory=Path(array.store.root) / array.path,
        key=array.metadata.encode_chunk_key,
        chunk_shape=chunk_shape,
        length=int(array.shape[0]),
        dtype=dtype,
        fill_value=array.fill_value,
        codec=compressors[type(codecs[1])] if len(codecs) == 2 else None,
        crc32c=crc32c,
        store=Path(array.store.root),
    )


# Zarr's sharding codec marks an inner chunk without bytes by this offset and length.
_NO_CHUNK = 2**64 - 1
# Shard indexes kept per process (least recently used dropped first): 4 kB each for
# 256-event shards of 1-event chunks, so 1024 of them cover 262k events in 4 MB.
INDEX_CACHE = 1024
_INDEX_DTYPE = np.dtype("<u8")
# Keyed by the array's directory, the shard's number and the file's inode, size and modification
# time: Zarr rewrites a shard (an append's last one) as a new file renamed into place, so a
# rewritten shard misses.
_indexes: OrderedDict[tuple[Path, int, int, int, int], np.ndarray] = OrderedDict()


@dataclass(frozen=True)
class ShardedChunks:
    """The shard files of a local Zarr v3 array sharded along its first axis only.

    Every shard file holds the inner chunks of ``shard_events`` rows, each encoded as
    a :class:`PlainChunks` chunk is, then the shard index: (offset, length) of every
    inner chunk as little-endian uint64 pairs in C order, and its crc32c (the layout
    of the Zarr v3 sharding specification, ``zarr/codecs/sharding.py``). A read takes
    the index (cached, see :data:`INDEX_CACHE`) and then only the byte ranges of the
    inner chunks holding the rows asked for.

    Attributes
    ----------
    chunks : PlainChunks
        The inner chunks' layout and encoding (its ``key`` names shard files and its
        ``chunk_shape`` is an inner chunk's).
    shard_events : int
        Rows per shard (all but the last hold them all; the last is stored whole).
    index_crc32c : bool
        Whether the shard index ends with its crc32c.
    """

    chunks: PlainChunks
    shard_events: int
    index_crc32c: bool

    @property
    def inner_events(self) -> int:
        """Rows per inner chunk."""
        return self.chunks.chunk_shape[0]

    @property
    def n_inner(self) -> int:
        """Inner chunks per shard."""
        return self.shard_events // self.inner_events

    def _rows(self, first: int, stop: int) -> str:
        return f"{first}..{min(stop, self.chunks.length) - 1}"

    def _damage(self, path: Path, problem: str, events: str) -> ArchiveError:
        chunks = self.chunks
        store = chunks.directory.parent if chunks.store is None else chunks.store
        array = chunks.directory.relative_to(store).as_posix()
        key = path.relative_to(chunks.directory).as_posix()
        return _damage(f"store {store}, array {array!r}, shard {key}: shard file {path}",
                       problem, events, chunks.remedy)  # fmt: skip

    def _shard_damage(self, number: int, problem: str) -> ArchiveError:
        first = number * self.shard_events
        events = self._rows(first, first + self.shard_events)
        return self._damage(self.path(number), problem, events)

    def path(self, number: int) -> Path:
        """The file of shard ``number``."""
        key = self.chunks.key((number,) + (0,) * (len(self.chunks.chunk_shape) - 1))
        return self.chunks.directory / key

    def index(self, number: int, file: Any) -> np.ndarray:
        """The (n_inner, 2) offsets and lengths of shard ``number`` read from ``file`` (an
        open binary file), checked; cached by the file's identity, size and time."""
        status = os.fstat(file.fileno())
        cache_key = (self.chunks.directory, number, status.st_ino, status.st_size,
                     status.st_mtime_ns)  # fmt: skip
        index = _indexes.get(cache_key)
        if index is not None:
            _indexes.move_to_end(cache_key)
            return index
        size = 16 * self.n_inner + 4 * self.index_crc32c
        if status.st_size < size:
            problem = f"the file ({status.st_size} bytes) is too short for its shard index"
            raise self._shard_damage(number, problem)
        stored = np.frombuffer(os.pread(file.fileno(), size, status.st_size - size), np.uint8)
        try:
            pairs = _decoded(stored, self.index_crc32c, None, (self.n_inner, 2), _INDEX_DTYPE)
        except _Damaged as damaged:
            problem = "checksum mismatch: the shard index is damaged"
            if str(damaged) != _MISMATCH:
                problem = f"the shard index {damaged}"
            raise self._shard_damage(number, problem) from None
        ends = pairs[:, 0] + pairs[:, 1]
        present = pairs[:, 0] != _NO_CHUNK
        if np.any(ends[present] > status.st_size - size):
            problem = "the shard index points past the end of the file (a damaged index)"
            raise self._shard_damage(number, problem)
        _indexes[cache_key] = pairs
        if len(_indexes) > INDEX_CACHE:
            _indexes.popitem(last=False)
        return pairs

    def _inner(self, number: int, inner: int, data: np.ndarray | None) -> np.ndarray:
        """Inner chunk ``inner`` of shard ``number`` from its stored bytes (None when the
        index has none)."""
        chunks = self.chunks
        if data is None:
            if chunks.dtype.kind == "f" and np.isnan(chunks.fill_value):
                problem = f"inner chunk {inner} is missing from the shard"
                raise self._inner_damage(number, inner, problem)
            return np.full(chunks.chunk_shape, chunks.fill_value, dtype=chunks.dtype)
        try:
            return _decoded(data, chunks.crc32c, chunks.codec, chunks.chunk_shape, chunks.dtype)
        except _Damaged as damaged:
            problem = f"inner chunk {inner}: {damaged}"
            raise self._inner_damage(number, inner, problem) from damaged.__cause__

    def _inner_damage(self, number: int, inner: int, problem: str) -> ArchiveError:
        first = number * self.shard_events + inner * self.inner_events
        events = self._rows(first, first + self.inner_events)
        return self._damage(self.path(number), problem, events)

    def shard_rows(self, number: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (sorted, within the shard) of shard ``number``; only the inner
        chunks holding them are read and decoded.

        Raises
        ------
        ArchiveError
            Naming the shard file and the events of a missing shard, of a damaged
            index or of a damaged inner chunk.
        """
        chunks = self.chunks
        values = np.empty((local.size, *chunks.chunk_shape[1:]), dtype=chunks.dtype)
        if not local.size:
            return values
        path = self.path(number)
        try:
            file = path.open("rb", buffering=0)
        except FileNotFoundError:
            if chunks.dtype.kind == "f" and np.isnan(chunks.fill_value):
                raise self._shard_damage(number, "the shard file is missing") from None
            values[:] = chunks.fill_value
            return values
        with file:
            index = self.index(number, file)
            inner_of = local // self.inner_events
            runs = _runs(inner_of)
            whole = None
            if 2 * len(runs) >= self.n_inner:
                # most of the shard: one read of the file beats a read per inner chunk
                whole = np.frombuffer(file.read(), np.uint8)
            for first, stop in runs:
                inner = int(inner_of[first])
                offset, length = index[inner].tolist()
                data = None
                if offset != _NO_CHUNK and whole is not None:
                    data = whole[offset : offset + length]
                elif offset != _NO_CHUNK:
                    data = np.frombuffer(os.pread(file.fileno(), length, offset), np.uint8)
                rows = local[first:stop] - inner * self.inner_events
                values[first:stop] = self._inner(number, inner, data)[rows]
        return values

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of the array: a slice with step 1, or sorted indices."""
        rows = _checked_rows(rows, self.chunks.length)
        values = np.empty((rows.size, *self.chunks.chunk_shape[1:]), dtype=self.chunks.dtype)
        numbers = rows // self.shard_events
        for first, stop in _runs(numbers):
            number = int(numbers[first])
            local = rows[first:stop] - number * self.shard_events
            values[first:stop] = self.shard_rows(number, local)
        return values

    def problems(self, number: int) -> list[ArchiveError]:
        """Every damaged or missing part of shard ``number`` (an empty list when sound)."""
        first = number * self.shard_events
        stop = min(first + self.shard_events, self.chunks.length)
        local = np.arange(stop - first)
        try:
            self.shard_rows(number, local)
        except ArchiveError as first_problem:
            # a missing file or a bad index spoils the whole shard: nothing more to name
            if "inner chunk" not in str(first_problem):
                return [first_problem]
        else:
            return []
        found = []
        for inner in range(-(-local.size // self.inner_events)):
            try:
                self.shard_rows(number, local[inner * self.inner_events :][:1])
            except ArchiveError as problem:
                found.append(problem)
        return found


def sharded_chunks(array: Any) -> ShardedChunks | None:
    """The shard files of ``array`` (an opened ``zarr.Array``) if it is sharded along its
    first axis only and its inner chunks are plain (see :func:`plain_chunks`), else None."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    metadata = array.metadata
    if metadata.zarr_format != 3 or not isinstance(array.store, LocalStore):
        return None
    codecs = tuple(metadata.codecs)
    if len(codecs) != 1 or type(codecs[0]) is not ShardingCodec:
        return None
    sharding = codecs[0]
    grid = metadata.chunk_grid
    inner_shape = tuple(sharding.chunk_shape)
    if (
        not isinstance(grid, RegularChunkGrid)
        or tuple(grid.chunk_shape[1:]) != tuple(array.shape[1:])
        or inner_shape[1:] != tuple(array.shape[1:])
        or getattr(sharding.index_location, "value", sharding.index_location) != "end"
    ):
        return None
    index_codecs = tuple(type(codec) for codec in sharding.index_codecs)
    if index_codecs not in ((BytesCodec,), (BytesCodec, Crc32cCodec)):
        return None
    index_endian = getattr(sharding.index_codecs[0], "endian", None)
    if getattr(index_endian, "value", index_endian) != "little":
        return None
    inner = _plain_layout(array, inner_shape, tuple(sharding.codecs))
    if inner is None:
        return None
    return ShardedChunks(inner, int(grid.chunk_shape[0]), len(index_codecs) == 2)


def read_rows(array: Any, rows: slice | np.ndarray) -> np.ndarray:
    """Rows (a slice with step 1, or sorted indices) of ``array`` (an opened
    ``zarr.Array`` chunked along its first axis): directly when it is plain, else
    through Zarr; a checksum mismatch is named by its chunk either way."""
    direct = plain_chunks(array) or sharded_chunks(array)
    if direct is not None:
        return direct.read(rows)
    try:
        return _zarr_rows(array, rows)
    except ValueError as error:
        if _ZARR_MISMATCH not in str(error):
            raise
        raise _zarr_damage(array, rows) from error


def _zarr_rows(array: Any, rows: slice | np.ndarray) -> np.ndarray:
    if isinstance(rows, slice):
        return np.asarray(array[rows])
    selection = (np.asarray(rows), *(slice(None),) * (array.ndim - 1))
    return np.asarray(array.get_orthogonal_selection(selection))


def _zarr_damage(array: Any, rows: slice | np.ndarray) -> ArchiveError:
    """The error naming the first stored chunk (a shard, when sharded) among those of
    ``rows`` that fails its checksum; found again chunk by chunk, only after a failure."""
    per_file = (array.shards or array.chunks)[0]
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(array.shape[0]))
    root, url = _store_names(array.store)
    where = f"store {root}, array {array.path!r}"
    for number in np.unique(np.asarray(rows) // per_file).tolist():
        first, stop = number * per_file, min((number + 1) * per_file, array.shape[0])
        try:
            array[first:stop]
        except ValueError as error:
            if _ZARR_MISMATCH not in str(error):
                raise
            where = _chunk_where(array, _chunk_key(array, number))
            return _damage(where, _MISMATCH, f"{first}..{stop - 1}")
    return _damage(where, _MISMATCH, f"{rows[0]}..{rows[-1]}")


def _chunk_key(array: Any, number: int) -> str:
    """The key of stored chunk (shard) ``number`` along the first axis, under the array."""
    key: str = array.metadata.encode_chunk_key((number,) + (0,) * (array.ndim - 1))
    return key


def _chunk_where(array: Any, key: str) -> str:
    """How errors name the stored chunk ``key`` of ``array``: store, array and chunk, and
    its file (a local store) or object (a URL)."""
    root, url = _store_names(array.store)
    where = f"store {root}, array {array.path!r}, chunk {key}"
    if isinstance(root, Path):
        return f"{where}: chunk file {root / array.path / key}"
    if url is not None:
        return f"{where}: object {url}/{array.path}/{key}"
    return where


def _store_names(store: Any) -> tuple[Any, str | None]:
    """How errors name a store: a LocalStore's folder; an FsspecStore's URL (twice: the
    object keys are under it); else the store itself."""
    root = getattr(store, "root", None)  # a LocalStore's folder
    if root is not None:
        return root, None
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is None or path is None:
        return store, None
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    url = f"{protocol}://{path.rstrip('/')}"
    return url, url


def damaged_chunks(path: ArchivePath, limit: int = 10) -> list[str]:
    """Check every chunk of an archive's event arrays: the damaged or missing ones.

    A full pass over the files, for when a read failed without saying where (a checksum
    that Zarr found wrong, NaN values in a written output), or to check an archive. The
    spectrograms are checked everywhere; the transform's outputs only in chunks whose
    events are all marked transformed (elsewhere a missing file is a transform not yet
    done). Plain local arrays (:func:`plain_chunks`, :func:`sharded_chunks`) are checked
    file by file; anything else (an archive on an object store, another layout) chunk
    by chunk through Zarr, a chunk without an object being missing where the fill value
    is NaN.

    Parameters
    ----------
    path : str, Path or ArchiveLocation
        The archive: a folder or a URL.
    limit : int, default=10
        Stop after this many problems.

    Returns
    -------
    list of str
        One line per damaged or missing chunk file (store, array, chunk, file, what is
        wrong, what to redo); empty when every chunk checked is sound.
    """
    import zarr

    group = zarr_group(path, mode="r")
    # through fsspec's own blocking calls: Zarr's async store calls, run from here, can
    # wait forever on an object store's file system made in another event loop
    fs, root = as_location(path).filesystem()

    def stored(key: str) -> bool:
        return bool(fs.exists(f"{root}/{key}"))

    done = None
    if TRANSFORMED in group:
        markers = group[TRANSFORMED]
        done = np.asarray(markers[:], dtype=bool) if isinstance(markers, zarr.Array) else None
    problems: list[str] = []
    for name in (SPECTROGRAM, *OUTPUTS):
        array = group.get(name)
        if not isinstance(array, zarr.Array) or array.ndim == 0:
            continue
        if name == SPECTROGRAM and (sharded := sharded_chunks(array)) is not None:
            problems += _shard_problems(sharded, limit - len(problems))
            if len(problems) >= limit:
                return problems
            continue
        plain = plain_chunks(array)
        if plain is None:
            problems += _zarr_problems(array, name, done, stored, limit - len(problems))
            if len(problems) >= limit:
                return problems
            continue
        if name in OUTPUTS:
            plain = PlainChunks(**{**plain.__dict__, "remedy": RETRANSFORM})
        per_chunk = plain.chunk_shape[0]
        for number in range(-(-plain.length // per_chunk)):
            first, stop = number * per_chunk, min((number + 1) * per_chunk, plain.length)
            if name in OUTPUTS and (done is None or not done[first:stop].all()):
                continue
            try:
                plain.chunk(number)
            except ArchiveError as error:
                problems.append(str(error))
                if len(problems) >= limit:
                    return problems
    return problems


def _zarr_problems(
    array: Any, name: str, done: np.ndarray | None, stored: Callable[[str], bool], limit: int
) -> list[str]:
    """Up to ``limit`` lines naming the damaged or missing stored chunks (shards, when
    sharded) of ``array``, read through Zarr: the check of an archive on an object store
    or of a layout the direct readers do not take.

    A chunk is damaged when Zarr cannot decode it, and missing when no object holds it
    while the array's fill value is NaN; the transform's outputs are checked only where
    ``done`` marks every event of the chunk transformed. ``stored`` tells whether an
    object key under the archive's root exists.
    """
    per_file = (array.shards or array.chunks)[0]
    length = int(array.shape[0])
    remedy = RETRANSFORM if name in OUTPUTS else REINGEST
    nan_fill = np.dtype(array.dtype).kind == "f" and np.isnan(array.fill_value)
    problems: list[str] = []
    for number in range(-(-length // per_file)):
        first, stop = number * per_file, min((number + 1) * per_file, length)
        if name in OUTPUTS and (done is None or not done[first:stop].all()):
            continue
        key = _chunk_key(array, number)
        where = _chunk_where(array, key)
        events = f"{first}..{stop - 1}"
        if nan_fill and not stored(f"{array.path}/{key}"):
            problems.append(str(_damage(where, "the object is missing", events, remedy)))
        else:
            try:
                array[first:stop]
            except Exception as error:  # noqa: BLE001 - whatever stops Zarr decoding it
                problem = _MISMATCH if _ZARR_MISMATCH in str(error) else f"unreadable ({error})"
                problems.append(str(_damage(where, problem, events, remedy)))
        if len(problems) >= limit:
            break
    return problems


def _shard_problems(sharded: ShardedChunks, limit: int) -> list[str]:
    """Up to ``limit`` lines naming the damaged or missing parts of every shard."""
    problems: list[str] = []
    for number in range(-(-sharded.chunks.length // sharded.shard_events)):
        problems += [str(problem) for problem in sharded.problems(number)]
        if len(problems) >= limit:
            return problems[:limit]
    return problems
