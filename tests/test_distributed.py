"""Fault tolerance on a real cluster: a scheduler and workers in their own processes.

One worker is SIGKILLed while it runs a task of a fit or a transform (workers run without
a nanny, so nothing restarts it); the job must finish on the other worker with the same
bits as a run without a cluster. A gate installed in the workers holds the task that is
killed, so the kill always lands in the middle of work instead of between steps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dask
import distributed
import numpy as np
import pytest
import xarray as xr
import zarr

from specufex_dask.io import archive
from specufex_dask.parallel import engine
from specufex_dask.pipeline import SpecUFEx


@pytest.fixture(autouse=True)
def one_task_per_chunk(monkeypatch):
    """These tests count and kill tasks per storage chunk: do not merge chunks."""
    monkeypatch.setattr(engine, "TASK_EVENTS", 1)


N_EVENTS, N_FREQUENCIES, N_TIMES = 40, 30, 20
CHUNK_EVENTS = 2  # 20 chunks: plenty left when the first one is done
SETTINGS = {
    "num_pat": 6,
    "num_state": 3,
    "nmf_steps": 10,
    "hmm_steps": 6,
    "batch_size": 10,
    "random_state": 5,
    "checkpoint_every": 100,
}
OUTPUTS = ("activation", "state_probability", "transition", "fingerprint")
WAIT_S = 120  # bound of every wait; a healthy run needs a few seconds


# ----------------------------------------------------------------------------- processes


@dataclass
class Cluster:
    """A scheduler and workers started with the ``dask`` command line tools."""

    folder: Path
    scheduler: subprocess.Popen
    address: str
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen:
        log = open(self.folder / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                "--nthreads", "1", "--no-nanny", "--death-timeout", "60",
                "--local-directory", str(self.folder),
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.workers.append(worker)
        return worker

    def alive_workers(self) -> list[subprocess.Popen]:
        return [worker for worker in self.workers if worker.poll() is None]

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.kill()
        for process in [*self.workers, self.scheduler]:
            process.wait(timeout=30)


def _wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"waited {WAIT_S} s for {what}")


def _scheduler_address(scheduler_file: Path, process: subprocess.Popen) -> str:
    import json

    def address() -> str | None:
        if process.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {process.returncode}")
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    return str(_wait_for(address, "the scheduler file"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("dask-cluster")
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
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[distributed.Client]:
    with distributed.Client(cluster.address, timeout=WAIT_S) as connected:
        yield connected


def _registered_pids(client: distributed.Client) -> dict[str, int]:
    return client.run(os.getpid)


def _ensure_workers(cluster: Cluster, client: distributed.Client, count: int) -> dict[int, str]:
    """Start or stop workers until exactly ``count`` are alive and registered.

    Returns pid -> address of the registered workers.
    """
    while len(cluster.alive_workers()) < count:
        cluster.start_worker()
    for extra in cluster.alive_workers()[count:]:
        extra.terminate()
        extra.wait(timeout=WAIT_S)
    ours = {worker.pid for worker in cluster.alive_workers()}

    def registered() -> dict[int, str] | None:
        pids = {pid: address for address, pid in _registered_pids(client).items()}
        return pids if set(pids) == ours else None

    return _wait_for(registered, f"{count} registered workers")  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the gate


def _install_gate(client: distributed.Client, task: str, gate: Path, hold_others: bool) -> None:
    """Wrap ``engine.<task>`` in every worker so that one call can be caught running.

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

    client.run(install)


class Killer(threading.Thread):
    """SIGKILL the worker that claimed the gate, as soon as it has."""

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


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    rng = np.random.default_rng(1984)
    patterns = rng.gamma(2.0, 1.0, size=(N_FREQUENCIES, 3))
    activations = rng.gamma(0.5, 1.0, size=(N_EVENTS, 3, N_TIMES))
    values = np.einsum("dk,nkt->ndt", patterns, activations)
    values += rng.gamma(1.0, 0.1, size=values.shape)
    path = tmp_path_factory.mktemp("pristine") / "events.zarr"
    archive.write_spectrograms(
        path,
        values,
        [f"ev{i:03d}" for i in range(N_EVENTS)],
        np.linspace(1.0, 30.0, N_FREQUENCIES),
        np.arange(N_TIMES) * 0.5,
        chunk_events=CHUNK_EVENTS,
    )
    return str(path)


@dataclass
class Reference:
    path: str
    model: SpecUFEx


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pristine: str) -> Reference:
    """Fit and transform without a cluster (dask's threads, whatever client exists)."""
    path = str(tmp_path_factory.mktemp("reference") / "events.zarr")
    shutil.copytree(pristine, path)
    with dask.config.set(scheduler="threads"):
        model = SpecUFEx(**SETTINGS, client=False).fit(path)
        model.transform_to_zarr(path)
    return Reference(path, model)


def _assert_same_model(left: SpecUFEx, right: SpecUFEx) -> None:
    for name in ("W1", "W2", "A1", "A2"):
        assert np.array_equal(getattr(left.nmf_, name), getattr(right.nmf_, name)), name
    for name in ("B1", "B2", "gain"):
        assert np.array_equal(getattr(left.hmm_, name), getattr(right.hmm_, name)), name
    assert left.nmf_.elbo_ == right.nmf_.elbo_
    assert left.hmm_.elbo_ == right.hmm_.elbo_


def _outputs(path: str) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path)
    return {name: ds[name].values for name in OUTPUTS}


def _assert_killed(cluster: Cluster, client: distributed.Client, killer: Killer) -> None:
    assert killer.killed is not None, "no worker was caught running the gated task"
    victim = next(worker for worker in cluster.workers if worker.pid == killer.killed)
    assert victim.wait(timeout=WAIT_S) == -signal.SIGKILL
    gone = killer.ours[killer.killed]
    _wait_for(lambda: gone not in _registered_pids(client), "the scheduler to drop the worker")


# ----------------------------------------------------------------------------- tests


def test_fit_survives_a_killed_worker(
    cluster: Cluster, client, reference: Reference, pristine: str, tmp_path: Path
) -> None:
    ours = _ensure_workers(cluster, client, 2)
    gate = tmp_path / "gate"
    gate.mkdir()
    _install_gate(client, "task_nodes", gate, hold_others=False)
    path = str(tmp_path / "events.zarr")
    shutil.copytree(pristine, path)
    steps: list[tuple[str, int]] = []

    def arm_at_step_four(stage: str, info: dict) -> None:
        steps.append((stage, info["step"]))
        if (stage, info["step"]) == ("nmf", 4):
            (gate / "armed").touch()  # a task of step 5 is caught and killed

    killer = Killer(gate, ours)
    killer.start()
    try:
        model = SpecUFEx(**SETTINGS, client=client, progress=arm_at_step_four).fit(path)
    finally:
        killer.done.set()
        killer.join(timeout=WAIT_S)
    _assert_killed(cluster, client, killer)
    assert len(steps) == SETTINGS["nmf_steps"] + SETTINGS["hmm_steps"]
    _assert_same_model(model, reference.model)
    _assert_same_model(SpecUFEx.from_archive(path, client=False), reference.model)


def test_transform_survives_a_killed_worker(
    cluster: Cluster, client, reference: Reference, tmp_path: Path
) -> None:
    ours = _ensure_workers(cluster, client, 2)
    gate = tmp_path / "gate"
    gate.mkdir()
    _install_gate(client, "_task_transform_to_zarr", gate, hold_others=True)
    path = str(tmp_path / "events.zarr")
    shutil.copytree(reference.path, path)
    chunks_done: list[int] = []

    def arm_after_first_chunk(stage: str, info: dict) -> None:
        chunks_done.append(info["chunk"])
        if info["chunk"] == 1:
            (gate / "armed").touch()

    killer = Killer(gate, ours)
    killer.start()
    model = SpecUFEx.from_archive(path, client=client, progress=arm_after_first_chunk)
    try:
        model.transform_to_zarr(path)
    finally:
        killer.done.set()
        killer.join(timeout=WAIT_S)
    _assert_killed(cluster, client, killer)
    n_chunks = N_EVENTS // CHUNK_EVENTS
    assert chunks_done == list(range(1, n_chunks + 1))
    group = zarr.open_group(path, mode="r")
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is True
    assert group[engine.TRANSFORMED][:].all()
    expected = _outputs(reference.path)
    for name, values in _outputs(path).items():
        assert np.array_equal(values, expected[name]), name


def test_a_replacement_worker_finishes_the_job(
    cluster: Cluster, client, reference: Reference, pristine: str, tmp_path: Path
) -> None:
    """Kill the only worker: the job waits, a new worker joins and completes it."""
    ours = _ensure_workers(cluster, client, 1)
    gate = tmp_path / "gate"
    gate.mkdir()
    _install_gate(client, "task_nodes", gate, hold_others=False)
    path = str(tmp_path / "events.zarr")
    shutil.copytree(pristine, path)
    replaced: list[int] = []

    def arm_at_the_last_nmf_step(stage: str, info: dict) -> None:
        if (stage, info["step"]) == ("nmf", SETTINGS["nmf_steps"]):
            (gate / "armed").touch()  # a task of the first HMM step is caught

    class Replacing(Killer):
        def run(self) -> None:
            super().run()
            if self.killed is not None:
                replaced.append(cluster.start_worker().pid)

    killer = Replacing(gate, ours)
    killer.start()
    try:
        model = SpecUFEx(**SETTINGS, client=client, progress=arm_at_the_last_nmf_step).fit(path)
    finally:
        killer.done.set()
        killer.join(timeout=WAIT_S)
    _assert_killed(cluster, client, killer)
    assert replaced and set(_registered_pids(client).values()) == set(replaced)
    _assert_same_model(model, reference.model)
