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

Every wait of an executor on a cluster's tasks is watched (:class:`WorkerWatch`): with
no worker in the cluster for a while it warns once, and after
:func:`no_worker_timeout` seconds it fails with :class:`NoWorkersError` rather than
wait for a worker that may never come (a fit's checkpoints stay, to be resumed).

This module loads neither Dask nor distributed until an executor is used, so layers that
take an executor (``io``, ``ingest``) still import without them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from specufex_dask.common import available_cores
from specufex_dask.inference.params import PIPELINE_PARAMETERS
from specufex_dask.inference.stats import tree_root
from specufex_dask.parallel.tasks import stored_task

__all__ = [
    "IN_FLIGHT_PER_THREAD",
    "NO_WORKER_TIMEOUT_S",
    "WINDOW_LOOKUP_S",
    "Executor",
    "NoWorkersError",
    "StepRequest",
    "TaskExecutor",
    "WorkerWatch",
    "executor_for",
    "no_worker_timeout",
    "waiting_for_workers",
]

logger = logging.getLogger(__name__)

# Tasks of a pass kept submitted per worker thread: one running, one ready behind it.
IN_FLIGHT_PER_THREAD = 2
# How often an executor looks up the cluster's workers and threads (job-queue workers
# may join late, and workers come and go).
WINDOW_LOOKUP_S = 5.0

# How long a job waits without any worker before it fails (None: for ever), by default,
# and the Dask configuration key of the job's own setting (see waiting_for_workers).
NO_WORKER_TIMEOUT_S = PIPELINE_PARAMETERS["no_worker_timeout"].default
NO_WORKER_TIMEOUT_KEY = "specufex-dask.no-worker-timeout"
# The warning comes after this long without workers (or half the timeout if shorter).
NO_WORKER_WARNING_S = 30.0
# How often a wait with nothing finishing asks the scheduler whether it has workers.
WORKER_CHECK_S = 1.0

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


class NoWorkersError(RuntimeError):
    """The cluster had no worker for longer than the job's ``no_worker_timeout``."""


def no_worker_timeout() -> float | None:
    """Seconds a job waits without workers before failing (None: for ever)."""
    import dask

    return dask.config.get(NO_WORKER_TIMEOUT_KEY, default=NO_WORKER_TIMEOUT_S)


@contextlib.contextmanager
def waiting_for_workers(seconds: float | None) -> Iterator[None]:
    """Executors inside the ``with`` block wait ``seconds`` without workers, then fail.

    A Dask setting rather than an argument: the executors of a fit are made in many
    places (every pass makes its own), and all of them should wait as long.
    """
    import dask

    with dask.config.set({NO_WORKER_TIMEOUT_KEY: seconds}):
        yield


class WorkerWatch:
    """Waits on a cluster's futures, failing when the cluster has no workers for long.

    While nothing finishes, the scheduler is asked every ``WORKER_CHECK_S`` (at most a
    quarter of the timeout) whether it has workers. Once it has had none for
    ``NO_WORKER_WARNING_S`` (or half the timeout), one warning is logged; after the
    timeout, :class:`NoWorkersError`. A worker joining starts the count again.

    Parameters
    ----------
    client : distributed.Client
    timeout : float or None
        Seconds without workers before failing; None waits for ever (warning once).
    """

    def __init__(self, client: Any, timeout: float | None) -> None:
        self.client = client
        self.timeout = timeout
        limit = float("inf") if timeout is None else float(timeout)
        self.check_s = min(WORKER_CHECK_S, limit / 4)
        self.warn_after = min(NO_WORKER_WARNING_S, limit / 2)
        self._since: float | None = None
        self._warned = False

    def _address(self) -> str:
        return str(getattr(self.client.scheduler, "address", self.client.scheduler))

    def check(self) -> None:
        """Note whether the cluster has workers now; warn or raise when it is time."""
        if self.client.nthreads():
            self._since = None
            return
        now = time.monotonic()
        if self._since is None:
            # first seen without workers; they may have gone up to check_s before
            self._since = now - self.check_s
        waited = now - self._since
        if self.timeout is not None and waited >= self.timeout:
            raise NoWorkersError(
                f"no Dask worker at the scheduler {self._address()} for {waited:.0f} s "
                f"(no_worker_timeout {self.timeout:g} s): stopped; start workers and run "
                "again with --resume (resume=True) to go on from where it stopped"
            )
        if not self._warned and waited >= self.warn_after:
            self._warned = True
            until = "" if self.timeout is None else f", failing after {self.timeout:g} s"
            logger.warning(
                "no Dask worker at the scheduler %s for %.0f s: waiting for one to join%s",
                self._address(), waited, until,
            )  # fmt: skip

    def next_finished(self, finished: queue.SimpleQueue) -> Any:
        """The next future put in ``finished`` (by its done callback), checking the
        cluster's workers while none comes."""
        while True:
            try:
                return finished.get(timeout=self.check_s)
            except queue.Empty:
                self.check()

    def gather(self, futures: list) -> list:
        """The results of ``futures`` in order, once they have all finished."""
        finished: queue.SimpleQueue = queue.SimpleQueue()
        for future in futures:
            future.add_done_callback(finished.put)
        for _ in futures:
            self.next_finished(finished)
        return self.client.gather(futures)


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
        if client is not None:
            from specufex_dask.parallel.workersetup import limit_worker_blas

            limit_worker_blas(client)

    def _watch(self) -> WorkerWatch:
        return WorkerWatch(self.client, no_worker_timeout())

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
        return self._watch().gather(self.client.compute(tasks))

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
        client = self.client
        watch = self._watch()
        pending: dict[str, tuple[int, Any]] = {}
        # futures as they finish, put by their done callbacks (distributed's threads)
        finished: queue.SimpleQueue = queue.SimpleQueue()

        def submit(n_tasks: int) -> None:
            for number, args in islice(numbered, max(0, n_tasks)):
                future = client.compute(_delayed(function, args))
                pending[future.key] = (number, future)
                future.add_done_callback(finished.put)

        next_lookup = time.monotonic() + lookup_s
        try:
            submit(window)
            while pending:
                future = watch.next_finished(finished)
                number, _ = pending.pop(future.key)
                value = future.result()
                if time.monotonic() >= next_lookup:
                    window = self._window()
                    next_lookup = time.monotonic() + lookup_s
                submit(window - len(pending))
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
