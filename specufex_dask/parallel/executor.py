"""The one interface between the pipeline and Dask: an executor maps pure functions over
events on the workers, a bounded number of tasks at a time, and folds step statistics
in the fixed summation tree.

Everything above this module (the engine's passes and SVI steps, the ingest driver, the
pipeline) hands its work to an :class:`Executor`; only the executors submit tasks, keep
futures or compute on a client. Two implementations:

* :class:`TaskExecutor` (here): every call is ordinary Dask tasks (``client.compute`` and
  futures on a cluster, dask's current scheduler without one). Tasks are rerun by the
  scheduler when a worker is lost, so this is the fault-tolerant path.
* :class:`specufex_dask.parallel.runners.ActorExecutor`: SVI steps are direct calls on
  one actor per worker that keeps per-worker state (rows read a step ahead); passes over
  all events, and any step that fails on the actors, run as tasks as above.

Both give the same bits: a step's tasks return nodes of the summation tree of
:mod:`specufex_dask.inference.stats` for fixed minibatch positions, and :meth:`fold` adds
them in the same fixed order whoever computed them.

This module loads neither Dask nor distributed until an executor is used, so layers that
take an executor (``io``, ``ingest``) still import without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from specufex_dask.common import available_cores
from specufex_dask.inference.stats import tree_root
from specufex_dask.parallel.tasks import stored_task

__all__ = [
    "IN_FLIGHT_PER_THREAD",
    "WINDOW_LOOKUP_S",
    "Executor",
    "StepRequest",
    "TaskExecutor",
    "executor_for",
]

# Tasks of a pass kept submitted per worker thread: one running, one ready behind it.
IN_FLIGHT_PER_THREAD = 2
# How often an executor looks up the cluster's workers and threads (job-queue workers
# may join late, and workers come and go).
WINDOW_LOOKUP_S = 5.0

OnResult = Callable[[int, Any], None]


@dataclass(frozen=True)
class StepRequest:
    """The work of one SVI step, as :meth:`Executor.step` takes it.

    Attributes
    ----------
    function : callable
        Called as ``function(source, local, ids, position, total, *arguments)`` per task
        (see :func:`specufex_dask.parallel.tasks.stored_task`); returns a dict of nodes of
        the fixed summation tree.
    chunks : EventChunks
        The data (an :class:`specufex_dask.parallel.engine.EventChunks`).
    index : ndarray of int
        The sorted event indices of the minibatch.
    arguments : tuple
        The arguments after the task's own.
    following : ndarray of int, optional
        The next step's minibatch (an executor may read it ahead).
    group_events : int
        About the most events one call takes.
    """

    function: Callable
    chunks: Any
    index: NDArray[np.integer]
    arguments: tuple
    following: NDArray[np.integer] | None
    group_events: int


@runtime_checkable
class Executor(Protocol):
    """What the pipeline asks of a cluster (or of dask's local scheduler).

    ``function`` arguments are plain module-level functions (sent to the workers by
    reference) of picklable arguments; they must be pure in the sense that rerunning one
    (after a lost worker) gives the same result, or rewrites the same region.
    """

    def threads(self) -> int:
        """Worker threads available now (the local cores without a cluster)."""
        ...

    def share(self, *values: Any) -> tuple:
        """``values`` as handles every task of a pass may take as an argument, sent to
        each worker once for the whole pass rather than once per task."""
        ...

    def map_events(
        self, function: Callable, arguments: Iterable[tuple], on_result: OnResult | None = None
    ) -> int:
        """Run ``function(*args)`` for every tuple of ``arguments`` on the workers, at most
        ``IN_FLIGHT_PER_THREAD`` tasks per worker thread submitted at a time.

        ``arguments`` is consumed lazily, one tuple as an earlier task finishes, so the
        driver and the scheduler hold a window of tasks whatever the number of events.
        ``on_result(number, value)`` sees every result in completion order (``number``:
        the position in ``arguments``). The first failure is raised once the tasks still
        pending are cancelled. Returns the number of tasks run.
        """
        ...

    def write_outputs(
        self, function: Callable, arguments: Iterable[tuple], on_result: OnResult | None = None
    ) -> int:
        """:meth:`map_events` of tasks that write their own region of an archive and
        return only a small acknowledgement (nothing large travels back)."""
        ...

    def step(self, request: StepRequest) -> dict:
        """Tree nodes of one SVI step (:class:`StepRequest`): the dicts of nodes of all
        its tasks, merged. A step has few tasks: they are all submitted at once."""
        ...

    def fold(self, nodes: Mapping, total: int) -> Any:
        """The statistics of a step: ``nodes`` added in the fixed summation tree of
        :func:`specufex_dask.inference.stats.tree_root` over ``total`` leaves."""
        ...

    def close(self) -> None:
        """Release what the executor holds on the workers."""
        ...


def _delayed(function: Callable, args: tuple):
    import dask

    return dask.delayed(function)(*args)


class TaskExecutor:
    """An :class:`Executor` of ordinary Dask tasks on ``client`` (None: dask's current
    scheduler). Tasks recover from a lost worker: the scheduler reruns them.

    Parameters
    ----------
    client : distributed.Client or None
    window : callable, optional
        ``window()``: the tasks a pass keeps submitted at once, looked up at the start of
        a pass and every ``lookup_s`` after (default :meth:`window`).
    lookup_s : float, optional
        How often a pass looks the window up again (default ``WINDOW_LOOKUP_S``).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        window: Callable[[], int] | None = None,
        lookup_s: float | None = None,
    ) -> None:
        self.client = client
        self._window = self.window if window is None else window
        self._lookup_s = lookup_s

    def __enter__(self) -> TaskExecutor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: tasks hold no state on the workers."""

    def threads(self) -> int:
        if self.client is None:
            return available_cores()
        return max(1, sum(self.client.nthreads().values()))

    def window(self) -> int:
        """Tasks of a pass kept submitted at once: enough to keep every worker thread
        busy, few enough that memory does not grow with the number of events."""
        return IN_FLIGHT_PER_THREAD * self.threads()

    def share(self, *values: Any) -> tuple:
        """One graph key per value (pure, so equal values share it); on a cluster a future,
        recomputed from the scheduler's copy should the worker holding it die."""
        import dask

        shared = tuple(dask.delayed(value, pure=True) for value in values)
        return shared if self.client is None else tuple(self.client.compute(list(shared)))

    def gather(self, function: Callable, arguments: Iterable[tuple]) -> list:
        """``function(*args)`` for every tuple of ``arguments``, all submitted at once,
        results in order: for the few tasks of one step."""
        tasks = [_delayed(function, args) for args in arguments]
        if self.client is None:
            import dask

            return list(dask.compute(*tasks))
        return self.client.gather(self.client.compute(tasks))

    def map_events(
        self, function: Callable, arguments: Iterable[tuple], on_result: OnResult | None = None
    ) -> int:
        on_result = on_result or (lambda _number, _value: None)
        lookup_s = WINDOW_LOOKUP_S if self._lookup_s is None else self._lookup_s
        window = self._window()
        numbered = enumerate(arguments)
        count = 0
        if self.client is None:
            import dask

            while wave := list(islice(numbered, window)):
                values = dask.compute(*(_delayed(function, args) for _, args in wave))
                for (number, _), value in zip(wave, values, strict=True):
                    on_result(number, value)
                count += len(wave)
            return count
        from distributed import as_completed

        client = self.client
        pending: dict[str, tuple[int, Any]] = {}

        def submit(n_tasks: int) -> list:
            futures = []
            for number, args in islice(numbered, max(0, n_tasks)):
                future = client.compute(_delayed(function, args))
                pending[future.key] = (number, future)
                futures.append(future)
            return futures

        queue = as_completed(submit(window), loop=client.loop)
        next_lookup = time.monotonic() + lookup_s
        try:
            for future in queue:
                number, _ = pending.pop(future.key)
                value = future.result()
                if time.monotonic() >= next_lookup:
                    window = self._window()
                    next_lookup = time.monotonic() + lookup_s
                for new in submit(window - len(pending)):
                    queue.add(new)
                on_result(number, value)
                count += 1
        finally:
            if pending:
                client.cancel([future for _, future in pending.values()])
        return count

    def write_outputs(
        self, function: Callable, arguments: Iterable[tuple], on_result: OnResult | None = None
    ) -> int:
        return self.map_events(function, arguments, on_result)

    def step(self, request: StepRequest) -> dict:
        """One task per group of whole chunks (:meth:`EventChunks.step_groups`) of an
        archive read by path, or per dask block otherwise; ``following`` and
        ``group_events`` are not used (the chunks' own step grouping applies)."""
        chunks, index, arguments = request.chunks, request.index, request.arguments
        total = len(index)
        if chunks.stored:
            calls = [
                stored_task(chunks, index, first, stop, arguments)
                for first, stop in chunks.step_groups(index)
            ]
        else:
            calls = [
                (chunks.blocks[chunk], local, chunks.event[index[position:][: len(local)]],
                 position, total, *arguments)
                for chunk, local, position in chunks.split(index)
            ]  # fmt: skip
        nodes: dict = {}
        for part in self.gather(request.function, calls):
            nodes.update(part)
        return nodes

    def fold(self, nodes: Mapping, total: int) -> Any:
        return tree_root(dict(nodes), total)


def executor_for(client: Any) -> Executor:
    """``client`` itself when it is an :class:`Executor`, else a :class:`TaskExecutor`
    on it (None: dask's current scheduler)."""
    if isinstance(client, Executor):
        return client
    return TaskExecutor(client)
