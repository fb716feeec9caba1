"""One writer per archive: the lease of :mod:`specufex_dask.io.lease`, held by real
processes, refused, released and, when stale, broken."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from specufex_dask.cli.main import main
from specufex_dask.ingest import ingest_arrays
from specufex_dask.io import archive
from specufex_dask.io.lease import (
    ArchiveBusy,
    LeaseHolder,
    archive_lease,
    lease_path,
    read_lease,
)
from specufex_dask.pipeline import SpecUFEx

HOLDER = textwrap.dedent(
    """
    import sys
    from specufex_dask.io.lease import archive_lease

    with archive_lease(sys.argv[1], "transform"):
        print("held", flush=True)
        sys.stdin.readline()  # until the test closes our input
    """
)


def _archive(path: Path) -> str:
    rng = np.random.default_rng(5)
    values = rng.gamma(1.0, 1.0, size=(6, 5, 4))
    events = [f"e{i}" for i in range(6)]
    return str(archive.write_spectrograms(path, values, events, np.arange(1.0, 6), np.arange(4.0)))


def _dead_pid() -> int:
    """The PID of a process that ran and was reaped."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return int(process.stdout)


def _plant(path: str, **fields) -> LeaseHolder:
    """Write a lease file as another process would have left it."""
    now = time.time()
    holder = LeaseHolder(
        **{
            "owner": "someone",
            "host": socket.gethostname(),
            "pid": _dead_pid(),
            "pid_start": None,
            "command": "fit",
            "argv": "specufex-dask fit",
            "started": now,
            "heartbeat": now,
            "token": "planted",
            **fields,
        }
    )
    lease_path(path).write_bytes(holder.to_bytes())
    return holder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path, capsys) -> None:
    path = _archive(tmp_path / "events.zarr")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        named = (f"`transform` (PID {holder.pid} on host {socket.gethostname()}", "since ")
        with pytest.raises(ArchiveBusy) as refused, archive_lease(path, "fit"):
            pass
        message = str(refused.value)
        assert all(part in message for part in named) and "\n" not in message
        assert f"remove {lease_path(path)}" in message
        # the writers of the package take it: nothing of theirs is written
        with pytest.raises(ArchiveBusy, match=f"PID {holder.pid}"):
            SpecUFEx(num_pat=2, num_state=2, nmf_steps=1, hmm_steps=1, client=False).fit(path)
        assert not (Path(path) / "model").exists()
        with pytest.raises(ArchiveBusy, match=f"PID {holder.pid}"):
            ingest_arrays(np.ones((2, 400)), path, sampling_rate=100.0, overwrite=True)
        assert archive.open_archive(path).sizes["event"] == 6
        capsys.readouterr()
        assert main(["cluster", path]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"PID {holder.pid}" in error[0]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert not lease_path(path).exists()  # released as the holder left its block
    with archive_lease(path, "fit") as mine:
        assert read_lease(path) == mine and mine.pid == os.getpid()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_the_lease_is_released_when_the_block_fails(tmp_path: Path, error) -> None:
    path = _archive(tmp_path / "events.zarr")
    with pytest.raises(error), archive_lease(path, "fit"):
        assert read_lease(path).command == "fit"
        raise error("stopped")
    assert not lease_path(path).exists()


def test_a_stale_lease_of_a_dead_process_is_broken_with_a_warning(tmp_path: Path, caplog) -> None:
    path = _archive(tmp_path / "events.zarr")
    stale = _plant(path, heartbeat=time.time() - 3600)
    with caplog.at_level(logging.WARNING), archive_lease(path, "transform") as mine:
        assert read_lease(path) == mine
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "broke the stale lease" in warnings[0] and f"PID {stale.pid}" in warnings[0]
    assert "last heartbeat 3600 s ago" in warnings[0] and "process is not running" in warnings[0]


@pytest.mark.parametrize(
    "fields, what",
    [
        ({"heartbeat_age": 5}, "a dead process's lease inside the timeout"),
        ({"heartbeat_age": 3600, "pid": os.getppid()}, "a running process's old heartbeat"),
    ],
)
def test_a_lease_that_is_not_stale_is_kept(tmp_path: Path, fields: dict, what: str) -> None:
    path = _archive(tmp_path / "events.zarr")
    fields = dict(fields)
    planted = _plant(path, heartbeat=time.time() - fields.pop("heartbeat_age"), **fields)
    with (
        pytest.raises(ArchiveBusy, match=f"PID {planted.pid} on host"),
        archive_lease(path, "fit"),
    ):
        pass
    assert read_lease(path) == planted, what


def test_another_hosts_lease_is_judged_by_its_heartbeat_alone(tmp_path: Path, caplog) -> None:
    path = _archive(tmp_path / "events.zarr")
    _plant(path, host="elsewhere", pid=os.getpid(), heartbeat=time.time() - 3600)
    with caplog.at_level(logging.WARNING), archive_lease(path, "fit") as mine:
        assert read_lease(path) == mine
    assert "host elsewhere has not refreshed it for over 60 s" in caplog.text


def test_the_heartbeat_is_refreshed_and_the_lease_is_reentrant(tmp_path: Path) -> None:
    path = _archive(tmp_path / "events.zarr")
    with archive_lease(path, "run", heartbeat_s=0.02) as outer:
        deadline = time.monotonic() + 30
        while read_lease(path).heartbeat == outer.heartbeat and time.monotonic() < deadline:
            time.sleep(0.01)
        beating = read_lease(path)
        assert beating.heartbeat > outer.heartbeat and beating.token == outer.token
        with archive_lease(path, "fit") as inner:  # a run's fit: the same process
            assert inner.token == outer.token
        assert read_lease(path).token == outer.token  # still held by the run
    assert beating.command == "run" and beating.started == outer.started
    assert not lease_path(path).exists()
