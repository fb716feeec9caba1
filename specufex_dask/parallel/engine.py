"""The Dask side of the pipeline: per-event tasks, the fixed-order reducer, checkpoints.

Workers run the functions prefixed ``_task_``: they get some events of the spectrogram
array, the small global parameters of the step, and return either nodes of the fixed
summation tree (:func:`specufex_dask.inference.stats.tree_nodes`) or, for the transform, write
their own region of the output arrays. Spectrograms never travel to the driver; the
driver folds the nodes (:func:`specufex_dask.inference.stats.tree_root`) and applies the global
update.

Tasks run on an executor (:mod:`specufex_dask.parallel.executor`), the module's one way
to the workers: passes over all events a bounded number of tasks at a time, SVI steps as
a few tasks or as calls on step runners.

Data opened from an archive path is read by the tasks themselves (:class:`StoredRows`:
the path and the rows, opened with Zarr where the task runs), so a task's graph is one
small node whatever the archive's size; other data goes through its dask blocks. On a
cluster, the steps of an archive's fit call the same task function on one actor per
worker instead (:class:`specufex_dask.parallel.runners.ActorExecutor`), falling back to
tasks when that fails.

Minibatches are drawn from the seed and the step number only, every event's statistics
are computed on its own (:mod:`specufex_dask.inference.steps`) and summed in a tree fixed by the
minibatch, so a fit gives the same bits for any chunking, any grouping of events into
tasks and any number of workers.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from specufex_dask.inference import initialise
from specufex_dask.inference.stats import tree_nodes
from specufex_dask.inference.steps import (
    HMMStepParameters,
    NMFStepParameters,
    hmm_leaves,
    hmm_outputs,
    nmf_activations,
    nmf_leaves,
)
from specufex_dask.io import archive
from specufex_dask.io.archive import (
    MODEL_VERSION_ATTR,
    TRANSFORM_COMPLETE_ATTR,
    TRANSFORM_TOKEN_ATTR,
)
from specufex_dask.io.location import ArchiveLocation, ArchivePath, store_or_path, zarr_group
from specufex_dask.io.modelgroup import (
    model_attribute,
    read_model_dataset,
    stored_frequency,
    write_model_dataset,
)
from specufex_dask.io.status import TRANSFORMED as TRANSFORMED  # re-exported: the done markers
from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
from specufex_dask.parallel import tasks
from specufex_dask.parallel.executor import (
    IN_FLIGHT_PER_THREAD as IN_FLIGHT_PER_THREAD,  # re-exported: the tasks per thread of a pass
)
from specufex_dask.parallel.executor import (
    WINDOW_LOOKUP_S,
    Executor,
    StepRequest,
    TaskExecutor,
    executor_for,
)
from specufex_dask.parallel.tasks import StoredRows
from specufex_dask.persistence import FORMAT_VERSION, build_model, model_state

__all__ = [
    "BackgroundCheckpoints",
    "BadValues",
    "EventChunks",
    "StoredRows",
    "bad_values",
    "emission_frames",
    "spectrogram_frames",
    "hmm_statistics",
    "naming_every_bad_event",
    "nmf_statistics",
    "read_model_group",
    "transform_chunks",
]

logger = logging.getLogger(__name__)

# Events per task of a pass over all events (at least) and of an SVI step (at most).
TASK_EVENTS = 256
# An SVI step's tasks hold at least this many events, so a task's fixed cost (scheduling,
# opening the array, the HMM's time loop: 1.1 ms per sequence in calls of 8, 0.63 in
# calls of 16, 0.43 in calls of 64 at 513 x 51 float32 on one thread) stays small
# against its kernels, and about STEP_TASKS of them spread a larger minibatch over the
# workers (a minibatch of 64 makes 4 tasks: 2 per worker on 2 workers).
STEP_TASK_EVENTS = 16
STEP_TASKS = 16


class BadValues(archive.ArchiveError):
    """Negative or non-finite spectrogram values; the message names the events."""


def _bad_values_message(problems: Sequence[tuple[str, str]], where: str = "") -> str:
    listing = "; ".join(f"{event}: {reason}" for event, reason in problems[:10])
    more = f" ... ({len(problems)} events in all)" if len(problems) > 10 else ""
    of = f" of {where}" if where else ""
    return f"bad spectrogram values{of} in events {listing}{more}"


# ----------------------------------------------------------------------------- data


def _merge_runs(sizes: Sequence[int], minimum: int) -> list[int]:
    """Sum consecutive ``sizes`` into runs of at least ``minimum`` (the last may be less)."""
    runs, current = [], 0
    for size in sizes:
        current += int(size)
        if current >= minimum:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def _bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of ``sizes`` from 0."""
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _step_task_events(n_events: int) -> int:
    """Least events per task of an SVI step over ``n_events`` (see ``STEP_TASKS``)."""
    return min(TASK_EVENTS, max(STEP_TASK_EVENTS, -(-n_events // STEP_TASKS)))


def _spectrogram_of(data: Any) -> xr.DataArray:
    """The checked ``spectrogram`` DataArray of a Dataset or DataArray."""
    if isinstance(data, xr.Dataset):
        if archive.SPECTROGRAM not in data:
            raise archive.ArchiveError(
                f"dataset has no {archive.SPECTROGRAM!r} variable (has {list(data)})"
            )
        data = data[archive.SPECTROGRAM]
    if not isinstance(data, xr.DataArray):
        raise TypeError(f"expected an archive path, xarray Dataset or DataArray, got {type(data)}")
    dims = (archive.EVENT, archive.FREQUENCY, archive.TIME)
    if data.dims != dims:
        raise archive.ArchiveError(f"spectrogram dims are {data.dims}, expected {dims}")
    if data.sizes[archive.EVENT] == 0:
        raise archive.ArchiveError("spectrogram has no events")
    return data


def _shows_stored_values(data: xr.DataArray) -> bool:
    """Whether xarray shows the stored values unchanged (no scale, offset or fill mask).

    Only then may tasks read the Zarr array directly and see what the user sees.
    """
    encoding = data.encoding
    if "scale_factor" in encoding or "add_offset" in encoding:
        return False
    fill = encoding.get("_FillValue")
    if fill is not None and not (isinstance(fill, (float, np.floating)) and np.isnan(fill)):
        return False
    return np.dtype(encoding.get("dtype", data.dtype)) == data.dtype


def _event_ids(data: xr.DataArray, path: str | ArchiveLocation | None) -> Any:
    """The event ids of ``data``: left in the archive at ``path`` when given (tasks read
    them by path, and only to name bad events), else an object array of str."""
    if archive.EVENT not in data.coords:
        return np.arange(data.shape[0]).astype(str)
    if path is not None:
        return tasks.StoredEventIds(path, int(data.shape[0]))
    return np.array([str(v) for v in data[archive.EVENT].values.tolist()], dtype=object)


@dataclass
class EventChunks:
    """A spectrogram collection split into ranges of consecutive events, one per task.

    Attributes
    ----------
    bounds : list of (start, stop)
        Event range of every task: the storage chunks, or runs of whole storage chunks
        after :meth:`merged`.
    event : ndarray of str or StoredEventIds
        Event ids; left in the archive when ``stored`` (indexing gives the ids of those
        events, read when first used; ``np.asarray`` reads them all).
    frequency : ndarray
        Frequencies (Hz), or bin indices when unknown.
    shape : (N, D, M)
    dtype : numpy dtype
    storage_chunk_events : int
        Events per storage chunk (all but the last): per shard when the array is sharded.
    path : str, ArchiveLocation or None
        The archive, when the data came from one: its absolute path, or the location
        of a URL (with its storage options; workers open it where they run).
    array : dask.array.Array or None
        The spectrograms, in their storage chunks; None when ``stored``.
    frequency_known : bool
        Whether ``frequency`` came from the data.
    stored : bool
        Tasks read their events from ``path`` themselves (:class:`StoredRows`): the data
        came from an archive path and xarray shows the stored values unchanged.
        Otherwise they get dask blocks of ``array``.
    """

    bounds: list[tuple[int, int]]
    event: np.ndarray
    frequency: np.ndarray
    shape: tuple[int, int, int]
    dtype: np.dtype
    storage_chunk_events: int
    path: str | ArchiveLocation | None = None
    array: Any = None
    frequency_known: bool = True
    stored: bool = False

    @classmethod
    def from_data(cls, data: Any, chunk_events: int = archive.DEFAULT_CHUNK_EVENTS):
        """From an archive path, URL or location, an xarray Dataset (with
        ``spectrogram``) or DataArray."""
        path = None
        if isinstance(data, (str, os.PathLike, ArchiveLocation)):
            # Workers open it by this path (their working folder may not be ours), or by
            # the URL and storage options of a location.
            path = store_or_path(data)
            # No dask array yet: its graph grows with the number of storage chunks (12 MiB
            # of driver memory at 100k events) and tasks that read by path never use it.
            # No index of the ids either (213 MiB at 1M events): they stay in the store.
            data = archive.open_archive(path, with_dask=False, indexed=False)
        data = _spectrogram_of(data)
        stored = path is not None and _shows_stored_values(data)
        if path is not None and not stored:
            data = _spectrogram_of(archive.open_archive(path))
        common: dict[str, Any] = {
            "event": _event_ids(data, path if stored else None),
            "frequency": (
                data[archive.FREQUENCY].values
                if archive.FREQUENCY in data.coords
                else np.arange(data.shape[1], dtype=float)
            ),
            "shape": tuple(int(v) for v in data.shape),
            "path": path,
            "frequency_known": archive.FREQUENCY in data.coords,
        }
        if stored:
            # a shard is one stored file, read by one task of a step (its index once)
            storage_chunk = int((data.encoding.get("shards") or data.encoding["chunks"])[0])
            n_full, rest = divmod(data.shape[0], storage_chunk)
            return cls(
                bounds=_bounds([storage_chunk] * n_full + ([rest] if rest else [])),
                dtype=data.dtype if data.dtype.kind == "f" else np.dtype(np.float64),
                storage_chunk_events=storage_chunk,
                stored=True,
                **common,
            )
        if data.dtype.kind != "f":
            data = data.astype(np.float64)
        array = data.data
        if not isinstance(array, dask.array.Array):
            array = dask.array.from_array(np.asarray(array), chunks=(chunk_events, -1, -1))
        else:
            array = array.rechunk({1: -1, 2: -1})
        return cls(
            bounds=_bounds(array.chunks[0]),
            dtype=array.dtype,
            storage_chunk_events=int(array.chunks[0][0]),
            array=array,
            **common,
        )

    @cached_property
    def blocks(self) -> list:
        """One dask block per range of ``bounds``; computing one reads that range only.

        Built on first use: data read by path never needs them.
        """
        sizes = tuple(stop - start for start, stop in self.bounds)
        array = self.array if self.array.chunks[0] == sizes else self.array.rechunk({0: sizes})
        return list(array.to_delayed().ravel())

    @cached_property
    def starts(self) -> np.ndarray:
        """First event of every range of ``bounds``."""
        return np.array([start for start, _ in self.bounds], dtype=np.int64)

    def merged(self, min_events: int | None = None) -> EventChunks:
        """The same data in ranges of whole consecutive chunks, each >= ``min_events``.

        Kernels amortise their per-call work over a batch (the HMM's time loop above
        all), so a pass over every event wants larger tasks than an SVI step does.
        """
        min_events = TASK_EVENTS if min_events is None else min_events
        sizes = _merge_runs([stop - start for start, stop in self.bounds], min_events)
        if len(sizes) == len(self.bounds):
            return self
        return replace(self, bounds=_bounds(sizes))

    def sources(self) -> Iterator[tuple[int, int, Any]]:
        """``(start, stop, source)`` of every range: :class:`StoredRows` or a dask block."""
        for number, (start, stop) in enumerate(self.bounds):
            if self.stored:
                assert self.path is not None  # stored values are read by path
                yield start, stop, StoredRows(self.path, slice(start, stop))
            else:
                yield start, stop, self.blocks[number]

    def _range_of(self, index: np.ndarray) -> np.ndarray:
        """Which range of ``bounds`` holds each event of ``index``."""
        return np.searchsorted(self.starts, index, side="right") - 1

    def _events_per_range(self, index: np.ndarray) -> np.ndarray:
        """Events of sorted ``index`` in each range of ``bounds`` holding any, in order."""
        return np.unique(self._range_of(index), return_counts=True)[1]

    def split(self, index: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
        """``(chunk, local indices, first minibatch position)`` for sorted event indices."""
        chunk_of = self._range_of(index)
        parts = []
        position = 0
        for chunk in np.unique(chunk_of):
            local = index[chunk_of == chunk] - self.starts[chunk]
            parts.append((int(chunk), local, position))
            position += len(local)
        return parts

    def step_groups(self, index: np.ndarray) -> list[tuple[int, int]]:
        """Minibatch positions ``(first, stop)`` of each task of a step over ``index``.

        ``index`` holds sorted event indices. A task takes the minibatch events of whole
        ranges of ``bounds``, so a storage chunk is read by one task of the step only.
        """
        per_chunk = self._events_per_range(index)
        return _bounds(_merge_runs(per_chunk.tolist(), _step_task_events(len(index))))

    def balanced_groups(self, index: np.ndarray, parts: int) -> list[tuple[int, int]]:
        """Minibatch positions ``(first, stop)`` of ``parts`` groups of about equal size.

        Like :meth:`step_groups`, each group takes the events of whole ranges of
        ``bounds``: a group ends at the range end nearest its share of the events (so
        there are fewer groups when fewer ranges hold the events).
        """
        ends = np.cumsum(self._events_per_range(index))
        targets = len(index) * np.arange(1, parts) / parts
        after = np.minimum(np.searchsorted(ends, targets), len(ends) - 1)
        before = np.maximum(after - 1, 0)
        nearest = np.where(targets - ends[before] <= ends[after] - targets, before, after)
        cuts = np.unique(np.concatenate([[0], ends[nearest], [len(index)]]))
        return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _on_workers(params):
    """Parameters as one graph key that every task of a pass over all events shares.

    Dask already runs one task per worker thread, so the kernels get one thread; the
    shared key sends the (frequencies x patterns) arrays once per worker, not per task.
    A pass has many tasks, so the scheduler's pull towards the worker holding the key
    is soon balanced; an SVI step's few tasks carry their own copy instead.
    """
    return dask.delayed(replace(params, threads=1), pure=True)


# ----------------------------------------------------------------------------- worker tasks


def _read(source: Any, local: np.ndarray | None = None) -> np.ndarray:
    """A task's events: read by path, or the ``local`` rows of a block dask computed."""
    if isinstance(source, StoredRows):
        return source.read()
    block = np.asarray(source)
    return block if local is None else block[local]


def _where(source: Any) -> str:
    return str(source.path) if isinstance(source, StoredRows) else ""


def _checked(block: np.ndarray, ids: np.ndarray, where: str = "") -> np.ndarray:
    problems = archive.check_spectrogram_values(block, ids)
    if problems:
        raise BadValues(_bad_values_message(problems, where))
    return block


def _task_check(source: Any, ids: np.ndarray) -> list[tuple[str, str]]:
    return archive.check_spectrogram_values(_read(source), ids)


def _nmf_leaves(X: np.ndarray, nmf: NMFStepParameters) -> list:
    return nmf_leaves(X, nmf)


def _hmm_leaves(X: np.ndarray, nmf: NMFStepParameters, hmm: HMMStepParameters) -> list:
    return hmm_leaves(nmf_activations(X, nmf), hmm)


def _frame_leaves(X: np.ndarray, nmf: NMFStepParameters, hmm: HMMStepParameters) -> list:
    """Every event's emission frames (M, K), each in a list of its own: the summation
    tree's additions then concatenate them in minibatch order (see :func:`emission_frames`).
    """
    V = np.asarray(nmf_activations(X, nmf), dtype=hmm.dtype)
    return [[frames] for frames in initialise.emission_frames(V, hmm.gain)]


def _spectrogram_frame_leaves(X: np.ndarray) -> list:
    """Every event's spectrogram frames (M, D), each in a list of its own (see
    :func:`_frame_leaves`)."""
    return [
        [frames] for frames in initialise.spectrogram_frames(X).reshape(len(X), -1, X.shape[1])
    ]


def stored_task(chunks: EventChunks, index: np.ndarray, first: int, stop: int, leaves,
                params: tuple) -> tuple:  # fmt: skip
    """Arguments of :func:`task_nodes` for minibatch positions ``first:stop`` of an
    archive's sorted event indices ``index`` (:func:`specufex_dask.parallel.tasks.stored_task`)."""
    return tasks.stored_task(chunks, index, first, stop, (leaves, *params))


def task_nodes(source, local, ids, position, total, leaves, *params, values=None) -> dict:
    """Tree nodes of a run of minibatch events (``leaves``: per-event statistics).

    ``source`` is a :class:`StoredRows` of exactly these events, or a chunk's block
    with ``local`` selecting them; ``values``, when given, are its rows already read.
    """
    X = _checked(_read(source, local) if values is None else values, ids, _where(source))
    return tree_nodes(leaves(X, *params), position, total)


def _task_transform(source, ids, nmf: NMFStepParameters, hmm: HMMStepParameters):
    X = _checked(_read(source), ids, _where(source))
    activation = nmf_activations(X, nmf)
    fingerprint, transition, state_probability = hmm_outputs(activation, hmm)
    return activation, state_probability, transition, fingerprint


def _task_transform_to_zarr(source, ids, start, path, nmf, hmm) -> tuple[int, int]:
    outputs = _task_transform(source, ids, nmf, hmm)
    for name, values in zip(OUTPUT_NAMES, outputs, strict=True):
        archive.write_region(path, name, start, values)
    # Written last: a chunk counts as done only once all its outputs are on disk.
    return archive.write_region(path, TRANSFORMED, start, np.ones(len(ids), dtype=bool))


# ----------------------------------------------------------------------------- driver side


def require_writable(path: ArchivePath, what: str) -> None:
    """Fail before any work when the archive cannot take ``what`` (at a URL, the lease
    is the first write: a bucket refusing writes is named when it is taken)."""
    if isinstance(path, ArchiveLocation) and not path.local:
        return
    archive.require_zarr_v3(path, what)
    folder = Path(str(path))
    # Root may write anywhere; an archive whose write bits are all cleared was still
    # meant to be left alone.
    if not all(
        os.access(item, os.W_OK) and item.stat().st_mode & 0o222
        for item in (folder, folder / "zarr.json")
    ):
        raise archive.ArchiveError(f"archive {path} is read-only: cannot write the {what}")


def _in_flight(client: Any) -> int:
    """Tasks of a pass kept submitted at once (:meth:`TaskExecutor.window`)."""
    return TaskExecutor(client).window()


def _pass_executor(client: Any) -> Executor:
    """The executor of a pass over all events: ``client`` when it is one, else tasks on
    it, the window given by :func:`_in_flight` and looked up every ``WINDOW_LOOKUP_S``
    of this module (both read when the pass starts)."""
    if isinstance(client, Executor):
        return client
    return TaskExecutor(client, window=lambda: _in_flight(client), lookup_s=WINDOW_LOOKUP_S)


def bad_values(chunks: EventChunks, client: Any) -> BadValues | None:
    """One parallel pass over every event: an error naming those with bad values, or None.

    ``client``: a Dask client, None for dask's current scheduler, or an :class:`Executor`.
    """
    chunks = chunks.merged()
    found: dict[int, list[tuple[str, str]]] = {}
    arguments = ((source, chunks.event[start:stop]) for start, stop, source in chunks.sources())
    _pass_executor(client).map_events(_task_check, arguments, found.__setitem__)
    problems = [problem for number in sorted(found) for problem in found[number]]
    return BadValues(_bad_values_message(problems, str(chunks.path or ""))) if problems else None


@contextmanager
def naming_every_bad_event(chunks: EventChunks, client: Any) -> Iterator[None]:
    """Turn a task's :class:`BadValues` into one error naming every bad event of the data.

    Tasks check only the events they read, so a fit meets bad values when a minibatch
    draws one, and a transform when it reaches one; a pass over all events then lists
    them all, so that the archive can be repaired in one go.
    """
    try:
        yield
    except BadValues as met:
        logger.warning("%s; checking every event to name them all", met)
        every = bad_values(chunks, client)
        raise (every or met) from None


def _step_executor(client: Any, runners: Executor | None) -> Executor:
    """The executor of a step: ``runners`` (e.g. an
    :class:`specufex_dask.parallel.runners.ActorExecutor`), else tasks on ``client``."""
    return runners if runners is not None else executor_for(client)


def _minibatch_statistics(
    chunks: EventChunks, index: np.ndarray, client, leaves, *params, runners=None, following=None
):
    """Statistics of the minibatch ``index`` (sorted event indices), folded in fixed order.

    ``leaves(X, *params)`` gives one leaf per event of ``X``; the leaves are added in the
    fixed tree of :func:`specufex_dask.inference.stats.tree_nodes` (lists are concatenated).

    The step runs on the executor ``runners`` when given (the step runners of
    :class:`specufex_dask.parallel.runners.ActorExecutor` read the minibatch
    ``following`` ahead, and fall back to tasks themselves), else as tasks on ``client``.
    Each task carries the parameters itself (a few hundred kB): a shared key would be a
    dependency, and the scheduler would place every task of the step on the one worker
    holding it.
    """
    params = tuple(replace(p, threads=1) for p in params)
    executor = _step_executor(client, runners)
    nodes = executor.step(
        StepRequest(task_nodes, chunks, index, (leaves, *params), following, TASK_EVENTS)
    )
    return executor.fold(nodes, len(index))


def nmf_statistics(
    chunks: EventChunks, index: np.ndarray, params, client: Any, runners=None, following=None
):
    """NMF statistics of the minibatch ``index`` (sorted event indices); see
    :func:`_minibatch_statistics` for ``runners`` and ``following``."""
    return _minibatch_statistics(
        chunks, index, client, _nmf_leaves, params, runners=runners, following=following
    )


def hmm_statistics(
    chunks: EventChunks, index: np.ndarray, nmf_params, hmm_params, client, runners=None,
    following=None,
):  # fmt: skip
    """HMM statistics of the minibatch; activations are computed where the events are read."""
    return _minibatch_statistics(
        chunks, index, client, _hmm_leaves, nmf_params, hmm_params, runners=runners,
        following=following,
    )  # fmt: skip


def emission_frames(
    chunks: EventChunks, index: np.ndarray, nmf_params, hmm_params, client, runners=None
) -> np.ndarray:
    """Emission frames ``U = diag(gain) V`` of the events ``index`` (sorted event indices),
    computed where the events are read: what :meth:`BayesianHMM.start_from_frames` takes.

    Returns an array (len(index) * M, K): each event's frames ``U[:, t]`` in time order,
    the events in the order of ``index``, in the HMM's dtype (``hmm_params.dtype``).
    One step's worth of tasks (or calls on the step ``runners``), like a minibatch's.
    """
    frames = _minibatch_statistics(
        chunks, index, client, _frame_leaves, nmf_params, hmm_params, runners=runners
    )
    return np.concatenate(frames, axis=0)


def spectrogram_frames(chunks: EventChunks, index: np.ndarray, client, runners=None) -> np.ndarray:
    """Spectrogram frames of the events ``index`` (sorted event indices), read on the
    workers in one step's worth of tasks: what :meth:`BayesianNonparametricNMF.start_from_frames`
    takes, an array (len(index) * M, D) in the order of ``index``."""
    frames = _minibatch_statistics(
        chunks, index, client, _spectrogram_frame_leaves, runners=runners
    )
    return np.concatenate(frames, axis=0)


OUTPUT_NAMES = (
    archive.ACTIVATION,
    archive.STATE_PROBABILITY,
    archive.TRANSITION,
    archive.FINGERPRINT,
)


def output_dims() -> dict[str, tuple[str, ...]]:
    """Dimensions of every output variable."""
    e, p, s, n, t = (
        archive.EVENT, archive.PATTERN, archive.STATE, archive.NEXT_STATE, archive.TIME
    )  # fmt: skip
    return {
        archive.ACTIVATION: (e, p, t),
        archive.STATE_PROBABILITY: (e, s, t),
        archive.TRANSITION: (e, s, n),
        archive.FINGERPRINT: (e, s, n),
    }


def lazy_transform(chunks: EventChunks, nmf_params, hmm_params) -> xr.Dataset:
    """The four outputs as a lazy Dataset (nothing computed yet)."""
    chunks = chunks.merged()
    M = chunks.shape[2]
    K = nmf_params.log_basis.shape[1]
    S = hmm_params.rate.shape[0]
    dtype = np.dtype(nmf_params.dtype)
    nmf_params, hmm_params = _on_workers(nmf_params), _on_workers(hmm_params)
    pieces: dict[str, list] = {name: [] for name in OUTPUT_NAMES}
    for start, stop, source in chunks.sources():
        outputs = dask.delayed(_task_transform, nout=4)(
            source, chunks.event[start:stop], nmf_params, hmm_params
        )
        n = stop - start
        shapes = [(n, K, M), (n, S, M), (n, S, S), (n, S, S)]
        for name, value, shape in zip(OUTPUT_NAMES, outputs, shapes, strict=True):
            pieces[name].append(dask.array.from_delayed(value, shape=shape, dtype=dtype))
    dims = output_dims()
    variables = {
        name: (dims[name], dask.array.concatenate(parts, axis=0)) for name, parts in pieces.items()
    }
    return xr.Dataset(variables, coords={archive.EVENT: np.asarray(chunks.event)})


def output_chunk_events(tasks: EventChunks) -> int:
    """Events per Zarr chunk of the transform's outputs, given its task ranges.

    One task's range when they are all alike (the last may be shorter): a task then
    writes one whole chunk per output, and the many small per-chunk writes of the
    archive's own chunking (a few ms each in Zarr) are avoided. Otherwise the storage
    chunk, which every task range is made of.
    """
    sizes = [stop - start for start, stop in tasks.bounds]
    if all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0]:
        return sizes[0]
    return tasks.storage_chunk_events


def _prepare_outputs(
    path: ArchivePath,
    shape: tuple[int, int, int],
    chunk_events: int,
    K: int,
    S: int,
    dtype,
    token: str,
) -> None:
    """Create empty output arrays, ``chunk_events`` per chunk, and the done markers."""

    N, _, M = shape
    group = zarr_group(path, mode="r+")
    shapes = {
        archive.ACTIVATION: (N, K, M),
        archive.STATE_PROBABILITY: (N, S, M),
        archive.TRANSITION: (N, S, S),
        archive.FINGERPRINT: (N, S, S),
    }
    for name, shape in shapes.items():
        # each output names its model: open_archive flags outputs of another model
        group.create_array(
            name, shape=shape, chunks=(chunk_events,) + shape[1:], dtype=dtype,
            fill_value=np.nan, dimension_names=output_dims()[name], overwrite=True,
            attributes={TRANSFORM_TOKEN_ATTR: token}, compressors=archive.checksummed(),
        )  # fmt: skip
    group.create_array(
        TRANSFORMED, shape=(N,), chunks=(chunk_events,), dtype=bool, fill_value=False,
        dimension_names=(archive.EVENT,), overwrite=True, compressors=archive.checksummed(),
    )  # fmt: skip
    group.attrs.update({TRANSFORM_TOKEN_ATTR: token, TRANSFORM_COMPLETE_ATTR: False})
    archive.consolidate(path)


def _resumable(
    path: ArchivePath, n_events: int, chunk_events: int, token: str
) -> np.ndarray | None:
    """Done markers of an earlier transform with the same model and chunks, or None."""
    import zarr

    group = zarr_group(path, mode="r")
    if group.attrs.get(TRANSFORM_TOKEN_ATTR) != token or TRANSFORMED not in group:
        return None
    markers = group[TRANSFORMED]
    if not isinstance(markers, zarr.Array):
        return None
    # Tasks of other ranges could share an output chunk and race on it.
    if markers.shape != (n_events,) or markers.chunks[0] != chunk_events:
        return None
    return np.asarray(markers[:])


def _mark_complete(path: ArchivePath, complete: bool, token: str) -> None:
    """Set the transform's completeness, with the token of the model it used (which an
    attribute write of another program may have dropped since the outputs were made)."""

    group = zarr_group(path, mode="r+")
    group.attrs.update({TRANSFORM_COMPLETE_ATTR: complete, TRANSFORM_TOKEN_ATTR: token})
    archive.consolidate(path)


def transform_chunks(
    chunks: EventChunks,
    nmf_params,
    hmm_params,
    token: str,
    client: Any,
    *,
    resume: bool = False,
    progress=None,
) -> int:
    """Write the outputs of every chunk into the archive from the workers.

    Tasks are submitted a few at a time (:meth:`Executor.write_outputs`), so memory stays
    flat in the number of events. Returns the number of tasks computed (ranges already
    done are skipped on resume).
    """
    if chunks.path is None:
        raise ValueError("transform_to_zarr needs data opened from an archive path")
    path = chunks.path
    require_writable(path, "transform outputs")
    K = nmf_params.log_basis.shape[1]
    S = hmm_params.rate.shape[0]
    chunks = chunks.merged()
    chunk_events = output_chunk_events(chunks)
    done = _resumable(path, chunks.shape[0], chunk_events, token) if resume else None
    dtype = np.dtype(nmf_params.dtype)
    if done is None:
        _prepare_outputs(path, chunks.shape, chunk_events, K, S, dtype, token)
        done = np.zeros(chunks.shape[0], dtype=bool)
    todo = [
        (start, stop, source)
        for start, stop, source in chunks.sources()
        if not done[start:stop].all()
    ]
    if todo and resume:
        _mark_complete(path, False, token)  # whatever an earlier run left, this one is not done
    executor = _pass_executor(client)
    nmf_params, hmm_params = executor.share(
        replace(nmf_params, threads=1), replace(hmm_params, threads=1)
    )
    arguments = (
        (source, chunks.event[start:stop], start, path, nmf_params, hmm_params)
        for start, stop, source in todo
    )
    finished = 0

    def report(_: int, __: Any) -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress("transform", {"chunk": finished, "n_chunks": len(todo)})

    n_todo = sum(stop - start for start, stop, _ in todo)
    n_bytes = n_todo * (K * chunks.shape[2] + S * chunks.shape[2] + 2 * S * S) * dtype.itemsize
    intact = "the outputs written so far are kept; free space and rerun with --resume"
    with archive.naming_disk_full(path, f"the outputs of {n_todo} events", n_bytes, intact):
        executor.write_outputs(_task_transform_to_zarr, arguments, report)
    _mark_complete(path, True, token)
    return len(todo)


# ----------------------------------------------------------------------------- model group


def _state_variables(model: Any, kind: str) -> dict[str, tuple]:
    arrays, _, _ = model_state(model)
    if kind == "nmf":
        fp = (archive.FREQUENCY, archive.PATTERN)
        return {
            "W1": (fp, arrays["W1"]),
            "W2": (fp, arrays["W2"]),
            "A1": ((archive.PATTERN,), arrays["A1"].ravel()),
            "A2": ((archive.PATTERN,), arrays["A2"].ravel()),
            "EW": (fp, model.EW),
            "EA": ((archive.PATTERN,), model.EA.ravel()),
            "ElnWA": (fp, model.ElnWA),
            "gain": ((archive.PATTERN,), model.gain),
        }
    sp = (archive.STATE, archive.PATTERN)
    return {
        "B1": (sp, arrays["B1"]),
        "B2": (sp, arrays["B2"]),
        "EB": (sp, model.EB),
        "ElnB": (sp, model.ElnB),
        "hmm_gain": ((archive.PATTERN,), arrays["gain"]),
    }


def model_group_dataset(
    nmf: BayesianNonparametricNMF, hmm: BayesianHMM | None, progress: dict
) -> xr.Dataset:
    """The fit state as the ``model`` group's Dataset: a copy the fit may go on changing."""
    variables = _state_variables(nmf, "nmf")
    attrs: dict[str, Any] = {
        MODEL_VERSION_ATTR: FORMAT_VERSION,
        "progress": json.dumps(progress),
        "nmf_state": json.dumps(_scalars_and_settings(nmf)),
    }
    if hmm is not None:
        variables.update(_state_variables(hmm, "hmm"))
        attrs["hmm_state"] = json.dumps(_scalars_and_settings(hmm))
    return xr.Dataset(variables, attrs=attrs).copy(deep=True)


class BackgroundCheckpoints:
    """Checkpoints of a fit written on a thread of their own, one at a time, in order.

    A checkpoint (15 small Zarr arrays, two renames, the archive's metadata) takes about
    100 ms; written in line, every worker would sit idle that long each time.
    :meth:`write` copies the models at once, so the fit goes on changing them, and first
    waits for the previous write, raising its error: a failed checkpoint stops the fit
    at the next one. The rest (the derived arrays, ``E[ln W]`` a digamma over the whole
    dictionary, and the Dataset) is built on the writer thread: in line it cost the fit
    a few ms per checkpoint, as long as the driver's whole global update. Leaving the
    ``with`` block waits for the last write, also when the fit is failing, so its last
    checkpoint is on disk.

    Parameters
    ----------
    path : str or None
        The archive; None (spectrograms given in memory) writes nothing.
    """

    def __init__(self, path: ArchivePath | None):
        self._path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="specufex-checkpoint")
        self._pending: Future | None = None
        self._frequency: np.ndarray | None = None  # read from the archive once

    def write(
        self, nmf: BayesianNonparametricNMF, hmm: BayesianHMM | None, progress: dict
    ) -> None:
        """Start writing this state (copied now) once the previous write has finished."""
        if self._path is None:
            return
        self.wait()
        state = copy.deepcopy((nmf, hmm, progress))
        self._pending = self._executor.submit(self._write, self._path, *state)

    def _write(
        self,
        path: ArchivePath,
        nmf: BayesianNonparametricNMF,
        hmm: BayesianHMM | None,
        progress: dict,
    ) -> None:
        dataset = model_group_dataset(nmf, hmm, progress)
        if self._frequency is None:
            self._frequency = stored_frequency(path, dataset.sizes[archive.FREQUENCY])
        dataset = dataset.assign_coords({archive.FREQUENCY: self._frequency})
        write_model_dataset(path, dataset)

    def wait(self) -> None:
        """Wait for the write in progress; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> BackgroundCheckpoints:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.wait()
        except Exception:
            if error is None:
                raise
            logger.exception("the last checkpoint failed too")  # the fit's error goes on
        finally:
            self._executor.shutdown(wait=True)


def _scalars_and_settings(model: Any) -> dict[str, Any]:
    _, scalars, settings = model_state(model)
    return {"scalars": scalars, "settings": settings, "elbo_": list(map(float, model.elbo_))}


def read_model_group(path: ArchivePath):
    """``(nmf, hmm or None, progress)`` from ``<archive>/model``, or None without one."""
    dataset = read_model_dataset(path, FORMAT_VERSION)
    if dataset is None:
        return None
    where = f"{path}/{archive.MODEL_GROUP}"
    nmf_state = model_attribute(dataset, "nmf_state", path)
    nmf = build_model(
        BayesianNonparametricNMF,
        {
            "W1": dataset["W1"].values,
            "W2": dataset["W2"].values,
            "A1": dataset["A1"].values[None, :],
            "A2": dataset["A2"].values[None, :],
            **nmf_state["scalars"],
            "elbo_": nmf_state["elbo_"],
        },
        nmf_state["settings"],
        where=where,
    )
    hmm = None
    if "hmm_state" in dataset.attrs:
        hmm_state = model_attribute(dataset, "hmm_state", path)
        hmm = build_model(
            BayesianHMM,
            {
                "B1": dataset["B1"].values,
                "B2": dataset["B2"].values,
                "gain": dataset["hmm_gain"].values,
                **hmm_state["scalars"],
                "elbo_": hmm_state["elbo_"],
            },
            hmm_state["settings"],
            where=where,
        )
    return nmf, hmm, model_attribute(dataset, "progress", path)
