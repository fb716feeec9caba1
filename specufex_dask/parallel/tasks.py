"""What the engine hands its executors for an SVI step: the rows a task reads and the
arguments of a step task.

The engine (:mod:`specufex_dask.parallel.engine`) owns the task functions; the executors
(:mod:`specufex_dask.parallel.executor`, :mod:`specufex_dask.parallel.runners`) decide where
and how they run. Between the two, a step task is a call

    function(source, local, ids, position, total, *arguments) -> dict of tree nodes

with ``source`` a :class:`StoredRows` (the task reads its events from the archive itself,
``local`` None) or a block of in-memory data with ``local`` selecting the events;
``ids`` the event ids; ``position`` the minibatch position of its first event and
``total`` the minibatch's size, which fix the nodes of the summation tree it returns;
``arguments`` the leaf function and the step's parameters. :func:`stored_task` builds
those arguments for a run of an archive's minibatch; an executor may pass ``values=``
(the rows already read, see :class:`specufex_dask.parallel.runners.StepRunner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from specufex_dask.io import archive
from specufex_dask.io.chunkread import read_rows
from specufex_dask.io.location import ArchiveLocation, zarr_array

__all__ = ["StoredEventIds", "StoredIds", "StoredRows", "stored_task"]


@dataclass(frozen=True, eq=False)
class StoredRows:
    """Events of an archive's ``spectrogram`` that a task reads itself, by path.

    The task opens the Zarr array where it runs and reads only these rows (of a sharded
    array only their inner chunks are decompressed, of a plain one every chunk they
    touch; a local archive is read on the task's own thread, see
    :mod:`specufex_dask.io.chunkread`), so no dask-array
    graph of the archive is built or sent, and a task rerun after a lost worker simply
    reads them again.

    Attributes
    ----------
    path : str or ArchiveLocation
        The archive: its path, or the location of a URL (opened where the task runs).
    rows : slice or ndarray of int
        A range of events, or sorted event indices.
    """

    path: str | ArchiveLocation
    rows: slice | np.ndarray

    def read(self) -> np.ndarray:
        """The rows as an (n, D, M) float array (other dtypes become float64, as in
        :meth:`specufex_dask.parallel.engine.EventChunks.from_data`)."""
        array = zarr_array(self.path, archive.SPECTROGRAM, mode="r")
        values = read_rows(array, self.rows)
        return values if values.dtype.kind == "f" else values.astype(np.float64)


def _rows_length(rows: slice | np.ndarray) -> int:
    if isinstance(rows, slice):
        return len(range(rows.start or 0, rows.stop, rows.step or 1))
    return len(rows)


@dataclass(frozen=True, eq=False)
class StoredIds:
    """Ids of the events ``rows`` of the archive at ``path`` (as in :class:`StoredRows`),
    read from its ``event`` array when first asked for: a task names its events only
    when they hold bad values, so a step neither sends ids nor reads them."""

    path: str | ArchiveLocation
    rows: slice | np.ndarray

    def __len__(self) -> int:
        return _rows_length(self.rows)

    def __getitem__(self, position: int) -> str:
        return str(self.values[position])

    @cached_property
    def values(self) -> np.ndarray:
        """The ids as an object array of str (what ``EventChunks.from_data`` makes)."""
        array = zarr_array(self.path, archive.EVENT)
        rows = self.rows if isinstance(self.rows, slice) else np.asarray(self.rows)
        ids = array.get_orthogonal_selection((rows,))
        return np.array([str(v) for v in np.asarray(ids).tolist()], dtype=object)


@dataclass(frozen=True, eq=False)
class StoredEventIds:
    """The ``event`` column of an archive of ``n_events``, not held in memory: indexing
    it with a slice or sorted indices gives their :class:`StoredIds`, and
    ``np.asarray`` reads it all.

    A driver holding every id as a Python str would need about 70 bytes an event (70
    MB at 1M events) for ids it uses only to name bad events.
    """

    path: str | ArchiveLocation
    n_events: int

    def __len__(self) -> int:
        return self.n_events

    def __getitem__(self, rows: slice | np.ndarray) -> StoredIds:
        if isinstance(rows, slice):
            rows = slice(*rows.indices(self.n_events))
        return StoredIds(self.path, rows)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self[:].values
        return values if dtype is None else values.astype(dtype)


def stored_task(chunks: Any, index: np.ndarray, first: int, stop: int, arguments: tuple) -> tuple:
    """Arguments of a step task for minibatch positions ``first:stop`` of an archive's
    sorted event indices ``index`` (``chunks``: its ``EventChunks``, read by path)."""
    rows = index[first:stop]
    return (StoredRows(chunks.path, rows), None, chunks.event[rows], first, len(index),
            *arguments)  # fmt: skip
