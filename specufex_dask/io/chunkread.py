"""Rows of a plain local Zarr array, read and decoded on the calling thread.

Zarr's own read hands every chunk to its event-loop thread, reads the file and decodes
it on a thread pool, then hands the result back. A Dask worker already runs one task
per core it was given, so those threads compete with the other workers' tasks, and each
hand-off waits for a core. An archive's ``spectrogram`` is the simplest Zarr v3 array
there is (chunked along ``event`` only, little-endian, zstd or no compression, one file
per chunk on a local disk, a crc32c after compression in archives written since
checksums were added): for it the chunk files are read, checked and decoded here, in
the task's own thread, as the Zarr v3 specification lays them out. Anything else
(sharding, other codecs, remote stores, Zarr v2) is left to Zarr.

Damage is named by its chunk file: a checksum that does not match, or a file that is
missing where the array's fill value is NaN (no valid spectrogram holds a NaN, so Zarr
never leaves such a chunk unwritten on purpose; the file was lost).

On the 10k benchmark archive (8-event chunks, 60 + 60 steps of 64 events, medians of
four alternating runs) a 1-worker fit kept 0.95 cores busy in its worker instead of 1.12
for the same time (53.9 s against 54.3), and a 2-worker fit took 34.7 s instead of 39.6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.io.archive import SPECTROGRAM, ArchiveError
from specufex_dask.io.location import ArchivePath, zarr_group
from specufex_dask.io.status import OUTPUTS, TRANSFORMED

__all__ = ["PlainChunks", "damaged_chunks", "plain_chunks", "read_rows"]

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
def _zstd() -> Any:
    from numcodecs import Zstd

    return Zstd()


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
    zstd : bool
        Whether chunks are zstd frames (raw bytes otherwise).
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
    zstd: bool
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
        if self.crc32c:
            data, stored = data[:-4], data[-4:].tobytes()
            if len(stored) != 4 or _crc32c()(data).to_bytes(4, "little") != stored:
                raise self._damage(path, number, _MISMATCH)
        try:
            if self.zstd:
                data = _zstd().decode(data)
            return np.frombuffer(data, dtype=self.dtype).reshape(self.chunk_shape)
        except (RuntimeError, ValueError) as error:
            problem = f"cannot be read as a {self.chunk_shape} {self.dtype} chunk ({error})"
            raise self._damage(path, number, problem) from error

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of the array: a slice with step 1, or sorted indices."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.length)
            if step != 1:
                raise ValueError(f"rows must be a slice with step 1, got {rows}")
            rows = np.arange(start, stop)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows[0] < 0 or rows[-1] >= self.length):
            raise IndexError(f"rows {rows[0]}..{rows[-1]} out of 0..{self.length - 1}")
        values = np.empty((rows.size, *self.chunk_shape[1:]), dtype=self.dtype)
        per_chunk = self.chunk_shape[0]
        numbers = rows // per_chunk
        # rows are sorted, so each chunk's rows are one run: decoded once, copied once
        bounds = np.flatnonzero(np.diff(numbers)) + 1
        for first, stop in zip(np.r_[0, bounds], np.r_[bounds, rows.size], strict=True):
            if first == stop:
                continue
            number = int(numbers[first])
            values[first:stop] = self.chunk(number)[rows[first:stop] - number * per_chunk]
        return values


def plain_chunks(array: Any) -> PlainChunks | None:
    """The chunk files of ``array`` (an opened ``zarr.Array``) if it is plain enough to
    read directly (see the module's docstring), else None."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    metadata = array.metadata
    if metadata.zarr_format != 3 or not isinstance(array.store, LocalStore):
        return None
    grid = metadata.chunk_grid
    if not isinstance(grid, RegularChunkGrid) or grid.chunk_shape[1:] != array.shape[1:]:
        return None
    codecs = tuple(metadata.codecs)
    crc32c = bool(codecs) and type(codecs[-1]) is Crc32cCodec
    codecs = codecs[:-1] if crc32c else codecs
    if not codecs or type(codecs[0]) is not BytesCodec or len(codecs) > 2:
        return None
    if len(codecs) == 2 and type(codecs[1]) is not ZstdCodec:
        return None
    dtype = np.dtype(array.dtype)
    little = dtype.byteorder in "<|" or (dtype.byteorder == "=" and np.little_endian)
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if not little or (dtype.itemsize > 1 and endian != "little"):
        return None
    return PlainChunks(
        directory=Path(array.store.root) / array.path,
        key=metadata.encode_chunk_key,
        chunk_shape=tuple(grid.chunk_shape),
        length=int(array.shape[0]),
        dtype=dtype,
        fill_value=array.fill_value,
        zstd=len(codecs) == 2,
        crc32c=crc32c,
        store=Path(array.store.root),
    )


def read_rows(array: Any, rows: slice | np.ndarray) -> np.ndarray:
    """Rows (a slice with step 1, or sorted indices) of ``array`` (an opened
    ``zarr.Array`` chunked along its first axis): directly when it is plain, else
    through Zarr; a checksum mismatch is named by its chunk either way."""
    plain = plain_chunks(array)
    if plain is not None:
        return plain.read(rows)
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
            key = array.metadata.encode_chunk_key((number,) + (0,) * (array.ndim - 1))
            where = f"{where}, chunk {key}"
            if isinstance(root, Path):
                where = f"{where}: chunk file {root / array.path / key}"
            elif url is not None:
                where = f"{where}: object {url}/{array.path}/{key}"
            return _damage(where, _MISMATCH, f"{first}..{stop - 1}")
    return _damage(where, _MISMATCH, f"{rows[0]}..{rows[-1]}")


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
    done). Arrays that are not plain (:func:`plain_chunks`) are skipped.

    Parameters
    ----------
    path : str or Path
        A local archive.
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
    done = None
    if TRANSFORMED in group:
        markers = group[TRANSFORMED]
        done = np.asarray(markers[:], dtype=bool) if isinstance(markers, zarr.Array) else None
    problems: list[str] = []
    for name in (SPECTROGRAM, *OUTPUTS):
        array = group.get(name)
        if not isinstance(array, zarr.Array) or array.ndim == 0:
            continue
        plain = plain_chunks(array)
        if plain is None:
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
