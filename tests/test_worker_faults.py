"""What the workers' start and fate must not change: the bits, and what the user sees.

* Bits: two workers of two threads each, one started without a nanny (its BLAS would
  use every core) and one with a nanny, lose the latter to SIGKILL in the middle of a
  fit; the model and the outputs must be those of a one-thread run in this process.
  The spectrograms are just large enough (200 frequencies x 41 times, 75 patterns) for
  a two-thread OpenBLAS to round the NMF's products differently.
* A fit whose only worker is killed waits ``no_worker_timeout``, warns once, fails with
  one clear error, and its last checkpoint resumes to the uninterrupted fit's model; a
  transform without workers fails the same way and stays marked incomplete.
* A task failing on a worker of the command line's local cluster ends the command with
  one error line: no traceback and no "Compute Failed" report unless ``--debug``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from threadpoolctl import OpenBLASController, threadpool_info, threadpool_limits
from workerprocesses import (
    THREAD_VARIABLES,
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
    wait_for,
    write_planted_archive,
)

from specufex_dask.inference.steps import single_threaded_blas
from specufex_dask.io import archive
from specufex_dask.parallel import engine
from specufex_dask.parallel.executor import NoWorkersError
from specufex_dask.pipeline import SpecUFEx

N_EVENTS, N_FREQUENCIES, N_TIMES = 12, 200, 41
CHUNK_EVENTS = 2
SETTINGS = {
    "num_pat": 75,
    "num_state": 3,
    "nmf_steps": 4,
    "hmm_steps": 3,
    "batch_size": 6,
    "random_state": 5,
    "checkpoint_every": 2,
}


@pytest.fixture(autouse=True)
def one_task_per_chunk(monkeypatch):
    """A transform of many small tasks: the two threads of a worker run them together."""
    monkeypatch.setattr(engine, "TASK_EVENTS", 1)


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


# ----------------------------------------------------------------------------- in process


def test_a_thread_leaving_its_blas_limit_leaves_the_others_limited() -> None:
    """Thread A enters, B enters, A leaves: B must still compute with one BLAS thread,
    and once both have left the process has its own threads back."""
    entered, second_in, left = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with single_threaded_blas():
            entered.set()
            second_in.wait(WAIT_S)
        left.set()

    with threadpool_limits(limits=2, user_api="blas"):
        assert set(_blas_threads()) == {2}
        # as in a fresh process (a worker without a nanny): no thread has taken control
        # of OpenBLAS's count through threadpoolctl
        OpenBLASController.clear_controlling_thread(force=True)
        thread = threading.Thread(target=first)
        thread.start()
        entered.wait(WAIT_S)
        with single_threaded_blas():
            second_in.set()
            left.wait(WAIT_S)
            inside = _blas_threads()
        thread.join(WAIT_S)
        after = _blas_threads()
    assert set(inside) == {1}
    assert set(after) == {2}


def test_the_worker_preload_holds_one_blas_thread_for_good() -> None:
    """``dask worker --preload specufex_dask.parallel.workersetup``: one BLAS thread from
    the start, which no task leaving its own limit gives back."""
    code = textwrap.dedent("""
        import json
        from threadpoolctl import threadpool_info, threadpool_limits
        from specufex_dask.inference.steps import single_threaded_blas
        from specufex_dask.parallel import workersetup

        def blas():
            return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

        threadpool_limits(limits=2, user_api="blas")
        before = blas()
        workersetup.dask_setup(None)
        with single_threaded_blas():
            pass
        print(json.dumps([before, blas()]))
    """)
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment,
        timeout=WAIT_S, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout.splitlines()[-1]) == [[2], [1]]


_MAPPED_BLOCKS = textwrap.dedent("""
    import ctypes
    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = MallInfo2

    def mapped_for_a_frame_block():
        \"\"\"Blocks glibc maps of its own for one 8 x 513 x 51 float32 array (837 kB).\"\"\"
        before = _libc.mallinfo2().hblks
        block = np.ones((8, 513, 51), dtype=np.float32)
        mapped = _libc.mallinfo2().hblks - before
        del block
        return mapped
""")


def test_workers_keep_the_kernels_work_arrays_on_the_heap() -> None:
    """With the nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` every array above 128 kB is
    mapped and unmapped anew; the worker setup (preload and plugin) keeps such an array
    on the heap. Both in a fresh process and on a nanny's worker."""
    from distributed import Client, LocalCluster

    from specufex_dask.parallel.workersetup import limit_worker_blas

    code = _MAPPED_BLOCKS + textwrap.dedent("""
        from specufex_dask.parallel import workersetup
        before = mapped_for_a_frame_block()
        workersetup.dask_setup(None)
        print(before, mapped_for_a_frame_block())
    """)
    environment = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment,
        timeout=WAIT_S, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["1", "0"]

    # the helper goes to the worker as text (a ctypes structure does not pickle)
    count = (
        f"(lambda ns: (exec({_MAPPED_BLOCKS!r}, ns), ns['mapped_for_a_frame_block']())[1])({{}})"
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        before = next(iter(client.run(eval, count).values()))
        limit_worker_blas(client)
        after = next(iter(client.run(eval, count).values()))
    assert (before, after) == (1, 0)


# ----------------------------------------------------------------------------- processes


# ``cluster`` and ``client``: a scheduler in its own process and a client of it, per
# module (tests/conftest.py)


@pytest.fixture
def workers(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, whose workers this test starts and which are stopped after it."""
    yield cluster
    cluster.stop_workers()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("pristine")
    shape = (N_EVENTS, N_FREQUENCIES, N_TIMES)
    return write_planted_archive(folder / "events.zarr", shape, 8, CHUNK_EVENTS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pristine: str) -> Reference:
    """Fit and transform in this process, on one thread."""
    folder = tmp_path_factory.mktemp("reference")
    return fit_reference(pristine, folder / "events.zarr", SETTINGS, "sync")


def _arm_at(gate: Path, stage: str, step: int):
    """A progress callback that arms the gate after ``step`` of ``stage``."""

    def progress(seen_stage: str, info: dict) -> None:
        if (seen_stage, info.get("step")) == (stage, step):
            (gate / "armed").touch()

    return progress


def _fit_with_a_kill(client, ours: dict[int, str], path: str, gate: Path, **options) -> SpecUFEx:
    """Fit ``path`` on ``client``, a worker killed in a task of the third NMF step."""
    killer = Killer(gate, ours)
    killer.start()
    try:
        model = SpecUFEx(**SETTINGS, client=client, progress=_arm_at(gate, "nmf", 2), **options)
        return model.fit(path)
    finally:
        killer.done.set()
        killer.join(timeout=WAIT_S)
        assert_killed(client, killer)


def test_bits_do_not_depend_on_how_workers_start_or_die(
    workers: Cluster, client, reference: Reference, pristine: str, tmp_path: Path
) -> None:
    """A worker without a nanny and one with a nanny, of two threads each; the nanny's
    worker is killed in the third NMF step (its nanny starts a new one)."""
    bare = workers.start_worker(nthreads=2)
    ours = ensure_workers(workers, client, 2, nthreads=2, nanny=True)
    victim = next(address for pid, address in ours.items() if pid != bare.pid)
    gate = tmp_path / "gate"
    gate.mkdir()
    install_gate(client, "task_nodes", gate, hold_others=False, workers=[victim])
    path = str(tmp_path / "events.zarr")
    shutil.copytree(pristine, path)
    model = _fit_with_a_kill(client, ours, path, gate)
    assert_same_model(model, reference.model)
    model.transform_to_zarr(path)
    expected = stored_outputs(reference.path)
    for name, values in stored_outputs(path).items():
        assert np.array_equal(values, expected[name]), name

    def blas_threads() -> list[int]:  # sent by value: the workers cannot import this module
        from threadpoolctl import threadpool_info

        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    # every worker computes with one BLAS thread, the nanny's new one too
    for threads in client.run(blas_threads).values():
        assert threads and set(threads) == {1}


def test_a_fit_without_workers_fails_after_the_timeout_and_resumes(
    workers: Cluster, client, reference: Reference, pristine: str, tmp_path: Path, caplog
) -> None:
    ours = ensure_workers(workers, client, 1)
    gate = tmp_path / "gate"
    gate.mkdir()
    install_gate(client, "task_nodes", gate, hold_others=False)
    path = str(tmp_path / "events.zarr")
    shutil.copytree(pristine, path)
    caplog.set_level(logging.WARNING, logger="specufex_dask.parallel.executor")
    with pytest.raises(NoWorkersError) as failure:
        _fit_with_a_kill(client, ours, path, gate, no_worker_timeout=2.0)
    message = str(failure.value)
    assert "\n" not in message
    assert workers.address in message and "--resume" in message and "2 s" in message
    warnings = [r for r in caplog.records if r.name == "specufex_dask.parallel.executor"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert workers.address in warnings[0].getMessage()
    assert "no Dask worker" in warnings[0].getMessage()
    # the checkpoint of step 2 is there, and resumes to the uninterrupted fit
    progress = zarr.open_group(path, mode="r")["model"].attrs["progress"]
    assert '"nmf_steps": 2' in progress and '"stage": "nmf"' in progress
    with dask.config.set(scheduler="sync"):
        resumed = SpecUFEx(**SETTINGS, client=False).fit(path, resume=True)
    assert_same_model(resumed, reference.model)


def test_a_transform_without_workers_fails_after_the_timeout(
    workers: Cluster, client, reference: Reference, tmp_path: Path, caplog
) -> None:
    wait_for(lambda: not registered_pids(client), "the cluster to have no workers")
    path = str(tmp_path / "events.zarr")
    shutil.copytree(reference.path, path)
    model = SpecUFEx.from_archive(path, client=client)
    model.no_worker_timeout = 1.0
    caplog.set_level(logging.WARNING, logger="specufex_dask.parallel.executor")
    with pytest.raises(NoWorkersError, match="--resume"):
        model.transform_to_zarr(path)
    assert len([r for r in caplog.records if "no Dask worker" in r.getMessage()]) == 1
    assert zarr.open_group(path, mode="r").attrs[engine.TRANSFORM_COMPLETE_ATTR] is False


# ----------------------------------------------------------------------------- command line


def test_the_no_worker_timeout_flag_reaches_the_pipeline_not_the_cluster() -> None:
    from specufex_dask.cli.base import dask_client
    from specufex_dask.cli.fit import make_pipeline
    from specufex_dask.cli.main import parse_args
    from specufex_dask.cli.options import effective_config
    from specufex_dask.cli.progress import Reporter

    config = effective_config(parse_args(["fit", "x.zarr", "--no-worker-timeout", "7.5"]))
    assert config.dask.no_worker_timeout == 7.5
    assert make_pipeline(config, None, Reporter(quiet=True)).no_worker_timeout == 7.5
    config = effective_config(parse_args(["fit", "x.zarr", "--no-worker-timeout", "none"]))
    assert config.dask.no_worker_timeout is None
    with pytest.raises(SystemExit):
        parse_args(["fit", "x.zarr", "--no-worker-timeout", "soon"])
    # connecting takes the other dask settings only (an unknown one would be refused)
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        config = effective_config(
            parse_args(["fit", "x.zarr", "--scheduler", "tcp://127.0.0.1:1", "--quiet"])
        )
        with dask_client(replace_timeout(config, 0.5), Reporter(quiet=True)):
            pass


def replace_timeout(config, seconds: float):
    """``config`` with a short wait for its scheduler."""
    import dataclasses

    return dataclasses.replace(config, dask=dataclasses.replace(config.dask, timeout=seconds))


def test_a_task_failing_on_a_worker_is_one_line_unless_debug(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    path = tmp_path / "bad.zarr"
    ids = [f"ev{i}" for i in range(12)]
    values = rng.gamma(1.0, 1.0, size=(12, 20, 10))
    archive.write_spectrograms(path, values, ids, np.linspace(1, 20, 20), np.arange(10) * 0.5,
                               chunk_events=2)  # fmt: skip
    zarr.open_array(path, path=archive.SPECTROGRAM, mode="r+")[5, 3, 4] = np.nan
    # one archive each: the two runs at once would otherwise meet the archive's lease
    loud_path = tmp_path / "bad-debug.zarr"
    shutil.copytree(path, loud_path)
    command = [
        sys.executable, "-m", "specufex_dask.cli", "fit", "--workers", "1",
        "--threads-per-worker", "1", "--dashboard-address", "127.0.0.1:0", "--num-pat", "4",
        "--num-state", "3", "--nmf-steps", "3", "--hmm-steps", "2", "--batch-size", "12",
    ]  # fmt: skip
    # both at once: most of each run is starting and stopping its cluster
    runs = {
        debug: subprocess.Popen(
            [*command, str(loud_path), "--debug"] if debug else [*command, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for debug in (False, True)
    }
    done = {debug: run.communicate(timeout=WAIT_S) for debug, run in runs.items()}
    expected = (
        f"specufex-dask: error: bad spectrogram values of {path} in events ev5: "
        "1 non-finite value(s)"
    )
    _, quiet = done[False]
    assert runs[False].returncode == 1
    assert quiet.strip().splitlines()[-1] == expected
    assert "Traceback" not in quiet and "Compute Failed" not in quiet
    _, loud = done[True]
    assert runs[True].returncode == 1
    assert "Compute Failed" in loud and "Traceback" in loud and "BadValues" in loud


def test_a_worker_killed_while_its_step_runner_starts_is_noticed(workers: Cluster, client) -> None:
    """A runner is pinned to its worker: when that worker dies between the look at the
    cluster and the runner's start, the start fails within a liveness check instead of
    waiting out the start timeout (and the step then runs as tasks). The race is made
    certain: the runners see the cluster as it was before a worker was SIGKILLed."""
    import signal

    from specufex_dask.parallel import runners

    ours = ensure_workers(workers, client, 2)
    pid, address = sorted(ours.items())[0]
    before = client.nthreads()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: address not in client.nthreads(), "the scheduler to drop the worker")
    live, looks = client.nthreads, iter([before])
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runners, "LIVENESS_CHECK_S", 1.0)
        # the runners' first look sees the worker; every later one asks the scheduler
        patch.setattr(client, "nthreads", lambda: next(looks, None) or live())
        with pytest.raises(OSError, match=f"worker {address} left the cluster while its step"):
            runners.StepRunners(client)._follow_cluster()
    assert time.monotonic() - started < 30.0
