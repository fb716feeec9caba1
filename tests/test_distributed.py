"""Fault tolerance on a real cluster: a scheduler and workers in their own processes.

One worker is SIGKILLed while it runs a task of a fit or a transform (workers run without
a nanny, so nothing restarts it); the job must finish on the other worker with the same
bits as a run without a cluster. A gate installed in the workers holds the task that is
killed, so the kill always lands in the middle of work instead of between steps.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import distributed
import numpy as np
import pytest
import zarr
from workerprocesses import (
    WAIT_S,
    Cluster,
    Killer,
    Reference,
    assert_killed,
    assert_same_model,
    ensure_workers,
    fit_reference,
    install_gate,
    registered_pids,
    stored_outputs,
    write_planted_archive,
)

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


# ----------------------------------------------------------------------------- processes


# ``cluster`` and ``client``: a scheduler in its own process and a client of it, per
# module (tests/conftest.py)


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("pristine")
    shape = (N_EVENTS, N_FREQUENCIES, N_TIMES)
    return write_planted_archive(folder / "events.zarr", shape, 3, CHUNK_EVENTS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pristine: str) -> Reference:
    """Fit and transform without a cluster (dask's threads, whatever client exists)."""
    folder = tmp_path_factory.mktemp("reference")
    return fit_reference(pristine, folder / "events.zarr", SETTINGS, "threads")


def _assert_killed(cluster: Cluster, client: distributed.Client, killer: Killer) -> None:
    assert_killed(client, killer)
    victim = next(worker for worker in cluster.workers if worker.pid == killer.killed)
    assert victim.wait(timeout=WAIT_S) == -signal.SIGKILL


# ----------------------------------------------------------------------------- tests


def test_fit_survives_a_killed_worker(
    cluster: Cluster, client, reference: Reference, pristine: str, tmp_path: Path
) -> None:
    ours = ensure_workers(cluster, client, 2)
    gate = tmp_path / "gate"
    gate.mkdir()
    install_gate(client, "task_nodes", gate, hold_others=False)
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
    assert_same_model(model, reference.model)
    assert_same_model(SpecUFEx.from_archive(path, client=False), reference.model)


def test_transform_survives_a_killed_worker(
    cluster: Cluster, client, reference: Reference, tmp_path: Path
) -> None:
    ours = ensure_workers(cluster, client, 2)
    gate = tmp_path / "gate"
    gate.mkdir()
    install_gate(client, "_task_transform_to_zarr", gate, hold_others=True)
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
    expected = stored_outputs(reference.path)
    for name, values in stored_outputs(path).items():
        assert np.array_equal(values, expected[name]), name


def test_a_replacement_worker_finishes_the_job(
    cluster: Cluster, client, reference: Reference, pristine: str, tmp_path: Path
) -> None:
    """Kill the only worker: the job waits, a new worker joins and completes it."""
    ours = ensure_workers(cluster, client, 1)
    gate = tmp_path / "gate"
    gate.mkdir()
    install_gate(client, "task_nodes", gate, hold_others=False)
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
    assert replaced and set(registered_pids(client).values()) == set(replaced)
    assert_same_model(model, reference.model)
