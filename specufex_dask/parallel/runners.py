"""SVI steps run as direct calls on one Dask actor per worker, reading a step ahead.

A fit is a chain of a few hundred short steps, each waiting on the previous one's global
update. Submitted as tasks, every step pays for a graph update on the scheduler, task
transitions and a gather; on the 2-core benchmark machine that cost 18 ms of driver CPU
and 28 ms of wall time per step of 4 tasks doing nothing, against 6 and 9 ms for the
same 4 calls on actors. The driver therefore calls a :class:`StepRunner` living on each
worker directly, one call per worker and step, with the step's events shared evenly
between the workers' threads (whole storage chunks each, so no chunk is read twice).

While the driver folds a step's statistics and updates the globals, the workers would
sit idle, and reading a task's rows (decompressing every chunk a minibatch event sits
in) is a third of a fit task's time. So each call also names the rows the runner will
get in the next step (the minibatches are drawn from the seed and the step number only,
so they are known a step ahead), and the runner reads them on a thread of its own,
started when the step's tasks end, so that the read fills the gap of the answer's
travel and the driver's update. A runner then holds the rows of two steps at most.

The read used to start with the tasks, to use a core they leave free. It cost the tasks
more than it took: the kernels release and take back the GIL at every NumPy call on
arrays of a few hundred values, and each time the reader's Python holds it, they wait.
In one process (``benchmarks/bench_readahead.py``), an NMF fit step of 32 events at 12
patterns took 25.6 ms alone and 48.6 ms beside a thread reading rows of an archive
(1638 ms beside a thread of pure Python). On the 10k benchmark archive (300 + 200
steps of 64 events, two alternations, ``bench_archive.py --profile``) a worker's
compute of its 32 events went from 59-63 to 43 ms (NMF) and 53-54 to 36-38 ms (HMM)
with two workers, the fit from 43.7 / 40.9 s to 37.6 / 35.7 s; with one worker the step
waits 10-11 ms for the read and the fit took 55.8 / 54.2 s against 54.3 / 57.7.

The driver reaches the runners through :class:`ActorExecutor`, the actor implementation
of :class:`specufex_dask.parallel.executor.Executor`. Actors are not fault tolerant by
themselves. Any failure of a call (a worker lost, or an error in the step itself) makes
the executor drop its runners and run that step as ordinary tasks
(:class:`specufex_dask.parallel.executor.TaskExecutor`), which the scheduler reruns on a
lost worker and which raise the step's own error; steps go on as tasks for
``RETRY_AFTER_S``, then new runners start on the workers present. The runners also
follow the cluster's workers as they come and go (looked up every
``executor.WINDOW_LOOKUP_S``). The statistics are the same bits on either path.

What the runners get from the engine is the step task contract of
:mod:`specufex_dask.parallel.tasks` (the task function travels with every call); they use
none of the engine's own names.

On the 10k benchmark archive (40 + 40 steps of 64 events, medians of three alternating
runs) a fit took 36.9 s with one worker and 25.2 s with two as tasks, 34.2 and 22.1 s on
runners, and 32.0 and 21.1 s on runners reading ahead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from specufex_dask.inference.steps import map_groups
from specufex_dask.parallel import executor
from specufex_dask.parallel.executor import StepRequest, TaskExecutor
from specufex_dask.parallel.tasks import StoredRows, stored_task

__all__ = ["ActorExecutor", "StepRunner", "StepRunners"]

logger = logging.getLogger(__name__)

# How long to wait on a runner's call before asking the scheduler whether its worker is
# still there (a worker that vanishes without closing its connections never answers).
LIVENESS_CHECK_S = 10.0
# How long a new runner may take to start on its worker, and how often its start is
# looked at meanwhile.
START_TIMEOUT_S = 60.0
START_POLL_S = 0.02
# After a failure, steps run as tasks this long before runners are tried again.
RETRY_AFTER_S = 30.0
# Rows read ahead for the whole cluster at most (a full-batch step reads none ahead).
READ_AHEAD_MAX_BYTES = 256 * 2**20
# Timings of this many recent calls are kept in each process (a few floats per step).
TIMES_KEPT = 10_000

CALL_TIMES: deque[dict[str, float]] = deque(maxlen=TIMES_KEPT)
"""On a worker, per call of its :class:`StepRunner` (``time.time()`` stamps, seconds):
``start`` and ``end`` of the call, ``wait_read`` (waiting for the read ahead still
running), ``compute`` (the tasks: reads not done ahead, kernels, summation tree),
``read_ahead`` (the previous call's read ahead, on its own thread) and ``events``.
What ``benchmarks/bench_archive.py --profile`` collects; nothing else reads it."""

STEP_TIMES: deque[dict[str, float]] = deque(maxlen=TIMES_KEPT)
"""On the driver, per step of :meth:`StepRunners.nodes`: ``start``, ``sent`` (every
worker's call made), ``end`` (every result back), ``events`` and ``calls``."""


def _calls_direct(client: Any) -> bool:
    """Whether the driver calls the runners' workers directly rather than through the
    scheduler, which otherwise relays every call and its answer (both a few hundred kB:
    the step's parameters, its statistics).

    Dask's own setting (``direct_to_workers`` of the client) decides when given. Else
    direct when the scheduler runs in this process (the client's cluster object is
    here) or on this host's loopback: the workers it reaches, this process reaches too.
    A remote scheduler may be all a driver can reach, so its calls stay relayed.
    """
    setting = getattr(client, "direct_to_workers", None)
    if setting is not None:
        return bool(setting)
    if getattr(client, "cluster", None) is not None:
        return True
    address = str(getattr(getattr(client, "scheduler", None), "address", ""))
    return any(f"://{host}:" in address for host in ("127.0.0.1", "localhost", "[::1]"))


@functools.cache
def _direct_actor_class() -> type:
    """Distributed's actor handle, calling the actor's worker directly from a client.

    Distributed's own relays a client's calls through the scheduler unless the client
    is set to talk to workers directly for everything (its gathers too).
    """
    from distributed.actor import Actor

    class DirectActor(Actor):
        @property
        def _worker_rpc(self) -> Any:
            if self._worker is None and self._client is not None:
                return self._client.rpc(self._address)
            return super()._worker_rpc

    return DirectActor


def _direct_actor(actor: Any, client: Any) -> Any:
    """A copy of the handle ``actor`` whose calls from ``client`` go straight to its
    worker (made without binding a client anew); anything but a distributed actor as
    it is."""
    from distributed.actor import Actor

    if not isinstance(actor, Actor):
        return actor
    direct: Any = object.__new__(_direct_actor_class())
    direct.key = actor.key
    vars(direct).update(vars(actor))
    direct._client = client
    return direct


def _rows_key(source: StoredRows) -> tuple:
    rows = source.rows
    if isinstance(rows, slice):
        return source.path, rows.start, rows.stop
    return source.path, np.asarray(rows, dtype=np.int64).tobytes()


def _row_bytes(chunks: Any) -> int:
    """Bytes of one event's spectrogram as a task holds it (float64 at most)."""
    return 8 * int(np.prod(chunks.shape[1:]))


class StepRunner:
    """Computes the tasks of SVI steps on the worker it lives on (a Dask actor).

    Calls run one at a time on the worker's actor thread, reads ahead on a thread of
    their own. Rows read ahead are found by path and rows: a task whose rows were not
    read ahead reads them itself.
    """

    def __init__(self) -> None:
        self._ahead: dict[tuple, np.ndarray] = {}
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="specufex-read-ahead")
        self._reading: Future | None = None
        self._read_s = 0.0  # the last read ahead's seconds

    def read_ahead(self, sources: list[StoredRows]) -> int:
        """Read the rows of the next step's tasks, replacing what an earlier call read.

        A read that fails is left for the step, which reads again and reports it.
        Returns how many sources were read.
        """
        began = time.perf_counter()
        read: dict[tuple, np.ndarray] = {}
        for source in sources:
            try:
                read[_rows_key(source)] = source.read()
            except Exception:  # noqa: BLE001 - the step's own read raises it properly
                logger.debug("reading %s ahead failed; the step will read it", source.path)
        self._ahead = read
        self._read_s = time.perf_counter() - began
        return len(read)

    def run(
        self,
        function: Callable,
        tasks: list[tuple],
        threads: int = 1,
        ahead: Sequence[StoredRows] = (),
    ) -> dict:
        """Tree nodes of ``function(*task, values=...)`` for every step task of ``tasks``
        (see :mod:`specufex_dask.parallel.tasks`), merged; then :meth:`read_ahead` of
        ``ahead`` starts on the runner's reader thread.

        Rows read ahead are used once, for the task with the same path and rows (rows
        left unused are dropped); a read ahead still running is waited for first. The
        next one starts when the tasks end, so that it reads the next step's rows while
        the answer travels and the driver folds and updates. Read beside the tasks, it
        slowed them by more than it took: the kernels release and take back the GIL
        many times a step, and each time a thread running Python holds it they wait
        (module docstring). With ``threads`` > 1 the tasks run on that many threads.
        """
        start, began = time.time(), time.perf_counter()
        if self._reading is not None:
            self._reading.result()  # read_ahead leaves its failures to the steps
            self._reading = None
        waited = time.perf_counter()
        current, self._ahead = self._ahead, {}
        read_s, self._read_s = self._read_s, 0.0

        def nodes_of(task: tuple) -> dict:
            source, *rest = task
            values = current.pop(_rows_key(source), None)
            return function(source, *rest, values=values)

        merged: dict = {}
        for part in map_groups(nodes_of, tasks, threads):
            merged.update(part)
        computed = time.perf_counter()
        if ahead:
            self._reading = self._reader.submit(self.read_ahead, list(ahead))
        CALL_TIMES.append({
            "start": start, "end": time.time(), "wait_read": waited - began,
            "compute": computed - waited, "read_ahead": read_s,
            "events": float(sum(len(task[2]) for task in tasks)),
        })  # fmt: skip
        return merged


class StepRunners:
    """The :class:`StepRunner` actors of one fit, one per worker of ``client``'s cluster.

    Use as a context manager; leaving it releases the actors.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._futures: list = []
        self._runners: list = []
        self._addresses: list[str] = []
        self._threads: list[int] = []
        self._next_lookup = 0.0
        self._paused_until = 0.0

    def __enter__(self) -> StepRunners:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def release(self) -> None:
        """Drop the actors; the next step starts new ones."""
        for future in self._futures:
            future.release()
        self._futures, self._runners, self._addresses, self._threads = [], [], [], []

    def ready(self) -> bool:
        """Whether steps should run on the runners (not just after a failure)."""
        return time.monotonic() >= self._paused_until

    def failed(self) -> None:
        """Drop the actors after a failed step and run steps as tasks for a while."""
        self.release()
        self._paused_until = time.monotonic() + RETRY_AFTER_S

    def _follow_cluster(self) -> None:
        """Start runners on the cluster's workers if they are not those of the runners."""
        now = time.monotonic()
        if self._runners and now < self._next_lookup:
            return
        self._next_lookup = now + executor.WINDOW_LOOKUP_S
        nthreads = self._client.nthreads()
        addresses = sorted(nthreads)
        if addresses == self._addresses and self._runners:
            return
        self.release()
        if not addresses:
            raise OSError("the cluster has no workers")
        futures = [
            self._client.submit(StepRunner, actor=True, workers=[address], pure=False)
            for address in addresses
        ]
        self._futures = futures
        self._wait_for_start(futures, addresses)
        self._runners = [future.result() for future in futures]
        if _calls_direct(self._client):
            self._runners = [_direct_actor(runner, self._client) for runner in self._runners]
        self._addresses = addresses
        self._threads = [int(nthreads[address]) for address in addresses]

    def _wait_for_start(self, futures: list, addresses: list[str]) -> None:
        """Wait for the runners to start, checking every ``LIVENESS_CHECK_S`` that their
        workers are still there: a runner is pinned to its worker, so one that left
        would hold the start for the whole ``START_TIMEOUT_S``. Raises OSError then, or
        when the start takes longer (the caller runs the steps as tasks). It polls the
        futures' own state rather than waiting with a timeout, which leaves no timed-out
        waits behind."""
        now = time.monotonic()
        deadline, next_check = now + START_TIMEOUT_S, now + LIVENESS_CHECK_S
        while not all(future.done() for future in futures):
            now = time.monotonic()
            if now >= next_check:
                gone = sorted(set(addresses) - set(self._client.nthreads()))
                if gone:
                    raise OSError(
                        f"worker {gone[0]} left the cluster while its step runner started"
                    )
                next_check = now + LIVENESS_CHECK_S
            if now >= deadline:
                raise OSError(f"the step runners did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(START_POLL_S)

    def _slots(self) -> list[int]:
        """Runner of each worker thread, the runners taking turns."""
        return [
            runner
            for turn in range(max(self._threads))
            for runner, threads in enumerate(self._threads)
            if threads > turn
        ]

    def _groups(
        self, chunks: Any, index: np.ndarray, group_events: int
    ) -> list[list[tuple[int, int]]]:
        """The minibatch positions each runner takes: for each worker thread, about the
        same number of events, in groups of whole chunks of at most about
        ``group_events``."""
        slots = self._slots()
        rounds = -(-len(index) // (group_events * len(slots)))
        assigned: list[list[tuple[int, int]]] = [[] for _ in self._runners]
        for number, group in enumerate(chunks.balanced_groups(index, rounds * len(slots))):
            assigned[slots[number % len(slots)]].append(group)
        return assigned

    def _ahead(self, chunks: Any, following: np.ndarray | None, group_events: int) -> list[list]:
        """Per runner, the rows of the step ``following`` it will get (none for a
        minibatch of more than ``READ_AHEAD_MAX_BYTES``)."""
        if following is None or _row_bytes(chunks) * len(following) > READ_AHEAD_MAX_BYTES:
            return [[] for _ in self._runners]
        return [
            [StoredRows(chunks.path, following[first:stop]) for first, stop in groups]
            for groups in self._groups(chunks, following, group_events)
        ]

    def _result(self, call: Any, address: str) -> dict:
        while True:
            try:
                return call.result(timeout=LIVENESS_CHECK_S)
            except (TimeoutError, asyncio.TimeoutError):  # distinct before Python 3.11
                if address not in self._client.nthreads():
                    raise OSError(f"worker {address} left the cluster") from None

    def nodes(self, request: StepRequest) -> dict:
        """Tree nodes of the step tasks ``request.function`` over the minibatch ``index``
        of an archive's events, merged; the rows of the minibatch ``following`` are read
        ahead for the next step. Raises on any failure of a call."""
        chunks, index, group_events = request.chunks, request.index, request.group_events
        start = time.time()
        self._follow_cluster()
        calls = []
        for runner, address, threads, groups, ahead in zip(
            self._runners, self._addresses, self._threads,
            self._groups(chunks, index, group_events),
            self._ahead(chunks, request.following, group_events), strict=True,
        ):  # fmt: skip
            tasks = [
                stored_task(chunks, index, first, stop, request.arguments)
                for first, stop in groups
            ]
            if tasks or ahead:
                calls.append((runner.run(request.function, tasks, threads, ahead), address))
        sent = time.time()
        nodes: dict = {}
        for call, address in calls:
            nodes.update(self._result(call, address))
        STEP_TIMES.append({
            "start": start, "sent": sent, "end": time.time(), "events": float(len(index)),
            "calls": float(len(calls)),
        })  # fmt: skip
        return nodes


class ActorExecutor(TaskExecutor):
    """An :class:`specufex_dask.parallel.executor.Executor` whose SVI steps of an archive
    run on :class:`StepRunners` (one actor per worker, reading the next step ahead).

    Everything else (passes over all events, steps over in-memory data, the steps after
    a failed call for ``RETRY_AFTER_S``) runs as tasks, as :class:`TaskExecutor` does.
    Use as a context manager; leaving it releases the actors.

    Parameters
    ----------
    client : distributed.Client
    runners : StepRunners, optional
        The runners to use (new ones on ``client`` by default).
    """

    def __init__(self, client: Any, runners: StepRunners | None = None) -> None:
        super().__init__(client)
        self.runners = StepRunners(client) if runners is None else runners

    def __enter__(self) -> ActorExecutor:
        return self

    def close(self) -> None:
        self.runners.release()

    def step(self, request: StepRequest) -> dict:
        if request.chunks.stored and self.runners.ready():
            try:
                return self.runners.nodes(request)
            except Exception as error:  # noqa: BLE001 - the tasks below raise a real error again
                logger.info(
                    "a step on the step runners failed (%r); running steps as tasks", error
                )
                self.runners.failed()
        return super().step(request)
