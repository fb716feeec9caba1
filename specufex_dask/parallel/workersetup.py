"""What the package sets up on the Dask workers it uses: one BLAS thread per process,
an allocator that keeps the kernels' work arrays
(:func:`specufex_dask.parallel.allocator.keep_work_arrays`), and, for the command line,
quiet task failures.

Bits must not depend on how a worker was started. A nanny starts its worker with
``OPENBLAS_NUM_THREADS=1`` (distributed's ``pre-spawn-environ``), but ``dask worker
--no-nanny`` does not, and a worker thread then computes with as many BLAS threads as
the machine has cores, which rounds some products differently. So every executor on a
client registers :class:`SingleThreadedBlas`, a worker plugin that limits BLAS to one
thread for good when a worker starts (and on the workers already there); the scheduler
hands it to every worker that joins later. ``dask worker --preload
specufex_dask.parallel.workersetup`` does the same from the start of a worker's life.
Inside the tasks, :func:`specufex_dask.inference.steps.single_threaded_blas` holds the
limit too, so tasks run with dask's own schedulers get the same bits.

A task that fails on a worker is logged there by distributed ("Compute Failed", with the
task's traceback); the workers of a local cluster write their logs on the terminal of
the command that started them, ahead of the command's one-line error.
:func:`quiet_task_failures` registers :class:`QuietTaskFailures`, which drops those
records on the workers while the command runs (the error itself reaches the command,
which prints it); ``--debug`` leaves them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from specufex_dask.inference.steps import hold_single_threaded_blas
from specufex_dask.parallel.allocator import keep_work_arrays

__all__ = [
    "BLAS_PLUGIN",
    "QUIET_PLUGIN",
    "QuietTaskFailures",
    "SingleThreadedBlas",
    "dask_setup",
    "limit_worker_blas",
    "quiet_task_failures",
]

logger = logging.getLogger(__name__)

BLAS_PLUGIN = "specufex-dask-single-threaded-blas"
QUIET_PLUGIN = "specufex-dask-quiet-task-failures"
TASK_FAILURE_LOGGER = "distributed.worker"
TASK_FAILURE_START = "Compute Failed"

_IMPORTED_NS = time.time_ns()


def _this_process() -> str:
    """This process, as no other process on any machine is: a pid alone is not
    (containers number their processes from 1), nor an import time (a forked child
    inherits it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_IMPORTED_NS}"


# Clients whose workers have the BLAS plugin: executors are made often (one per pass),
# and registering again would cost a round trip to the scheduler and every worker.
_limited_clients: weakref.WeakSet = weakref.WeakSet()


def dask_setup(worker: Any = None) -> None:
    """Entry point of ``dask worker --preload specufex_dask.parallel.workersetup``."""
    hold_single_threaded_blas()
    keep_work_arrays()


class SingleThreadedBlas(WorkerPlugin):
    """Worker plugin: BLAS limited to one thread in the worker's process, for good, and
    the allocator's thresholds raised (:func:`~specufex_dask.parallel.allocator.keep_work_arrays`).

    Idempotent: registering it again (another executor, another fit) does nothing on
    the workers that have it. A worker in the process that registers it (a cluster of
    threads, ``processes=False``) is left alone: that process is the user's, and its
    tasks hold the limit themselves.
    """

    idempotent = True

    def __init__(self) -> None:
        self.registered_from = _this_process()

    def setup(self, worker: Any) -> None:
        if self.registered_from != _this_process():
            hold_single_threaded_blas()
            keep_work_arrays()


def _is_task_failure(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith(TASK_FAILURE_START)


class QuietTaskFailures(WorkerPlugin):
    """Worker plugin: distributed's "Compute Failed" records are dropped on the worker
    while it is registered (its teardown puts them back)."""

    idempotent = False

    def __init__(self) -> None:
        self._filter: Any = None

    def setup(self, worker: Any) -> None:
        def keep(record: logging.LogRecord) -> bool:
            return not _is_task_failure(record)

        self._filter = keep
        logging.getLogger(TASK_FAILURE_LOGGER).addFilter(keep)

    def teardown(self, worker: Any) -> None:
        if self._filter is not None:
            logging.getLogger(TASK_FAILURE_LOGGER).removeFilter(self._filter)
            self._filter = None


def limit_worker_blas(client: Any) -> None:
    """Register :class:`SingleThreadedBlas` on ``client``'s cluster (once per client)."""
    if client in _limited_clients:
        return
    client.register_plugin(SingleThreadedBlas(), name=BLAS_PLUGIN)
    _limited_clients.add(client)


@contextlib.contextmanager
def quiet_task_failures(client: Any) -> Iterator[None]:
    """No "Compute Failed" logged on ``client``'s workers inside the ``with`` block."""
    client.register_plugin(QuietTaskFailures(), name=QUIET_PLUGIN)
    try:
        yield
    finally:
        try:
            client.unregister_worker_plugin(QUIET_PLUGIN)
        except Exception as error:  # noqa: BLE001 - a cluster already gone has no logs left
            logger.debug("could not unregister %s: %r", QUIET_PLUGIN, error)
