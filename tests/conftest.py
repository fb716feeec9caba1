"""Shared fixtures: paths to the shared golden data and seeded generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "data" / "golden"
BAV = SHARED / "data" / "bav_ncsn_1984"


@pytest.fixture
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden data folder not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def bav_dir() -> Path:
    if not BAV.is_dir():
        pytest.fail(f"BAV waveform folder not found at {BAV}")
    return BAV


@pytest.fixture
def rng(request) -> np.random.Generator:
    seed = 20181
    print(f"rng seed {seed} for {request.node.name}")
    return np.random.default_rng(seed)


@pytest.fixture
def local_cluster():
    """An in-process Dask cluster on 127.0.0.1 (one worker, one thread) and its client."""
    import distributed

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
        host="127.0.0.1", dashboard_address="127.0.0.1:0",
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        yield cluster, client


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A ``dask scheduler`` in its own process on 127.0.0.1, for one test module; the
    tests start (and kill) its workers (tests/workerprocesses.py)."""
    from workerprocesses import start_scheduler

    started = start_scheduler(tmp_path_factory.mktemp("dask-cluster"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(cluster):
    """A client of :func:`cluster`'s scheduler."""
    import distributed
    from workerprocesses import WAIT_S

    with distributed.Client(cluster.address, timeout=WAIT_S) as connected:
        yield connected
