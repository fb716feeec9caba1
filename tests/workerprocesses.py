"""A Dask scheduler and workers in processes of their own, for the fault tests, and the
comparison of what a job on them gives with a reference.

Everything listens on 127.0.0.1. A gate installed in the workers holds one call of a
task function until the worker running it is SIGKILLed, so that a kill always lands in
the middle of work instead of between steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import distributed
import numpy as np
import psutil
import xarray as xr

from specufex_dask.io import archive
from specufex_dask.pipeline import SpecUFEx

WAIT_S = 120  # bound of every wait; a healthy run needs a few seconds
# What a shell may set that would make a worker without a nanny single-threaded anyway.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"waited {WAIT_S} s for {what}")


@dataclass
class Cluster:
    """A scheduler and workers started with the ``dask`` command line tools."""

    folder: Path
    scheduler: subprocess.Popen
    address: str
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, *, nthreads: int = 1, nanny: bool = False) -> subprocess.Popen:
        """A worker of ``nthreads`` threads, without a nanny unless ``nanny``, in an
        environment that does not limit its BLAS threads (as a plain shell's)."""
        log = open(self.folder / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        environment = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                "--nthreads", str(nthreads), "--nanny" if nanny else "--no-nanny",
                "--death-timeout", "60", "--local-directory", str(self.folder),
            ],
            stdout=log, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
        log.close()
        self.workers.append(worker)
        return worker

    def alive_workers(self) -> list[subprocess.Popen]:
        return [worker for worker in self.workers if worker.poll() is None]

    def stop_workers(self) -> None:
        for worker in self.alive_workers():
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=30)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.kill()
        for process in [*self.workers, self.scheduler]:
            process.wait(timeout=30)


def _scheduler_address(scheduler_file: Path, process: subprocess.Popen) -> str:
    def address() -> str | None:
        if process.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {process.returncode}")
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    return str(wait_for(address, "the scheduler file"))


def start_scheduler(folder: Path) -> Cluster:
    """A scheduler on 127.0.0.1 with no workers yet (call :meth:`Cluster.stop`)."""
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "scheduler.log", "wb")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1", "--port", "0",
            "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
            "--scheduler-file", str(scheduler_file),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    started = Cluster(folder, scheduler, "")
    try:
        started.address = _scheduler_address(scheduler_file, scheduler)
    except BaseException:
        started.stop()
        raise
    return started


def registered_pids(client: distributed.Client) -> dict[str, int]:
    return client.run(os.getpid)


def ensure_workers(
    cluster: Cluster, client: distributed.Client, count: int, **options: object
) -> dict[int, str]:
    """Start or stop workers until exactly ``count`` are alive and registered
    (``options``: those of :meth:`Cluster.start_worker` for new ones).

    Returns pid -> address of the registered worker processes (a nanny's worker is a
    child of the process started).
    """
    while len(cluster.alive_workers()) < count:
        cluster.start_worker(**options)
    for extra in cluster.alive_workers()[count:]:
        extra.terminate()
        extra.wait(timeout=WAIT_S)
    ours = {worker.pid for worker in cluster.alive_workers()}

    def registered() -> dict[int, str] | None:
        pids = {pid: address for address, pid in registered_pids(client).items()}
        started = {pid if pid in ours else psutil.Process(pid).ppid() for pid in pids}
        return pids if len(pids) == count and started == ours else None

    return wait_for(registered, f"{count} registered workers")  # type: ignore[return-value]


def install_gate(
    client: distributed.Client,
    task: str,
    gate: Path,
    hold_others: bool,
    workers: list[str] | None = None,
) -> None:
    """Wrap ``engine.<task>`` in every worker (or those of ``workers``) so that one call
    can be caught running.

    Once ``<gate>/armed`` exists, the first call to start claims the gate, leaves
    ``running-<pid>`` and waits there to be killed. With ``hold_others`` the very first
    call runs freely and every later call waits for the gate to be armed, so work is
    left when the kill comes.
    """
    folder = str(gate)

    def install() -> None:
        import os
        import time
        from pathlib import Path

        import specufex_dask.parallel.engine as worker_engine

        original = getattr(worker_engine, task)

        def wait_for(path: Path) -> None:
            deadline = time.monotonic() + 120  # only a failed test gets this far
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)

        def claim(path: Path) -> bool:
            try:
                path.mkdir()  # atomic across processes
            except FileExistsError:
                return False
            return True

        def gated(*args, **kwargs):
            root = Path(folder)
            if hold_others and not claim(root / "first"):
                wait_for(root / "armed")
            if (root / "armed").exists() and claim(root / "claimed"):
                (root / f"running-{os.getpid()}").touch()
                wait_for(root / "never")
            return original(*args, **kwargs)

        setattr(worker_engine, task, gated)

    client.run(install, workers=workers)


class Killer(threading.Thread):
    """SIGKILL the worker that claimed the gate, as soon as it has (only a worker
    process of ``ours``: pid -> address)."""

    def __init__(self, gate: Path, ours: dict[int, str]) -> None:
        super().__init__(daemon=True)
        self.gate = gate
        self.ours = ours
        self.killed: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not self.done.is_set():
            running = list(self.gate.glob("running-*"))
            if running:
                pid = int(running[0].name.split("-")[1])
                if pid in self.ours:  # only a process this test started
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                return
            time.sleep(0.01)


def assert_killed(client: distributed.Client, killer: Killer) -> None:
    """The killer killed a worker, and the scheduler has dropped it."""
    assert killer.killed is not None, "no worker was caught running the gated task"
    gone = killer.ours[killer.killed]
    wait_for(lambda: gone not in registered_pids(client), "the scheduler to drop the worker")


OUTPUTS = ("activation", "state_probability", "transition", "fingerprint")


def assert_same_model(left: Any, right: Any) -> None:
    """Two fitted ``SpecUFEx`` with the same bits."""
    for name in ("W1", "W2", "A1", "A2"):
        assert np.array_equal(getattr(left.nmf_, name), getattr(right.nmf_, name)), name
    for name in ("B1", "B2", "gain"):
        assert np.array_equal(getattr(left.hmm_, name), getattr(right.hmm_, name)), name
    assert left.nmf_.elbo_ == right.nmf_.elbo_
    assert left.hmm_.elbo_ == right.hmm_.elbo_


def stored_outputs(path: str) -> dict[str, np.ndarray]:
    """The four outputs a transform wrote into the archive ``path``."""
    ds = xr.open_zarr(path)
    return {name: ds[name].values for name in OUTPUTS}


def write_planted_archive(
    path: Path, shape: tuple[int, int, int], n_patterns: int, chunk_events: int
) -> str:
    """An archive of ``shape`` (events, frequencies, times) spectrograms made of
    ``n_patterns`` planted patterns and noise, seeded, in shards of ``chunk_events``."""
    n_events, n_frequencies, n_times = shape
    rng = np.random.default_rng(1984)
    patterns = rng.gamma(2.0, 1.0, size=(n_frequencies, n_patterns))
    activations = rng.gamma(0.5, 1.0, size=(n_events, n_patterns, n_times))
    values = np.einsum("dk,nkt->ndt", patterns, activations)
    values += rng.gamma(1.0, 0.1, size=values.shape)
    archive.write_spectrograms(
        path,
        values,
        [f"ev{i:03d}" for i in range(n_events)],
        np.linspace(1.0, 30.0, n_frequencies),
        np.arange(n_times) * 0.5,
        shard_events=chunk_events,  # tasks of whole shards: ranges of chunk_events
    )
    return str(path)


@dataclass
class Reference:
    """A fit and transform made without a cluster: the archive and the model."""

    path: str
    model: Any


def fit_reference(pristine: str, path: Path, settings: dict, scheduler: str) -> Reference:
    """Fit and transform a copy of ``pristine`` at ``path`` on dask's ``scheduler``."""
    shutil.copytree(pristine, path)
    with dask.config.set(scheduler=scheduler):
        model = SpecUFEx(**settings, client=False).fit(str(path))
        model.transform_to_zarr(str(path))
    return Reference(str(path), model)
