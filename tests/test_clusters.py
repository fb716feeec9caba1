"""Tests of specufex_dask.parallel.clusters: local, existing-scheduler, SLURM/PBS, TLS clusters."""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dask
import dask.array as da
import distributed
import numpy as np
import psutil
import pytest

from specufex_dask.parallel import clusters
from specufex_dask.parallel.clusters import ClusterError, ClusterHandle, connect

LOOPBACK_HOSTS = {"127.0.0.1", "::1"}


def listening_sockets(process: psutil.Process) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of ``process`` and its descendants."""
    found = set()
    for proc in [process, *process.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                found.add((proc.pid, conn.laddr.ip, conn.laddr.port))
    return found


def host_of(address: str) -> str:
    return distributed.comm.get_address_host(address)


def gram_sum(client: distributed.Client, matrix: np.ndarray) -> float:
    """Sum of matrix.T @ matrix computed on the cluster from 4 row chunks."""
    array = da.from_array(matrix, chunks=(matrix.shape[0] // 4, matrix.shape[1]))
    return float(client.compute((array.T @ array).sum()).result(timeout=60))


@pytest.fixture(scope="module")
def local_handle() -> Iterator[ClusterHandle]:
    handle = connect(
        workers=2,
        threads_per_worker=1,
        memory_limit="1GiB",
        dashboard_address="127.0.0.1:0",
    )
    try:
        handle.client.wait_for_workers(2, timeout=60)
        yield handle
    finally:
        handle.close()


def test_local_cluster_binds_only_loopback_and_computes(rng):
    this_process = psutil.Process()
    before = listening_sockets(this_process)
    handle = connect(
        workers=2, threads_per_worker=1, memory_limit="1GiB", dashboard_address="127.0.0.1:0"
    )
    try:
        assert handle.owns and handle.owns_client
        assert isinstance(handle.cluster, distributed.LocalCluster)
        handle.client.wait_for_workers(2, timeout=60)
        info = handle.client.scheduler_info()
        assert host_of(handle.scheduler_address) == "127.0.0.1"
        assert len(info["workers"]) == 2
        for address, worker in info["workers"].items():
            assert host_of(address) == "127.0.0.1", address
            assert host_of(worker["nanny"]) == "127.0.0.1", worker["nanny"]

        opened = listening_sockets(this_process) - before
        # scheduler + dashboard + 2 workers + 2 nannies at least
        assert len(opened) >= 6, opened
        assert {ip for _, ip, _ in opened} <= LOOPBACK_HOSTS, opened

        link = handle.dashboard_link
        assert link is not None and "127.0.0.1" in link
        health = link.replace("/status", "/health")
        with urllib.request.urlopen(health, timeout=10) as response:
            assert response.read().decode() == "ok"

        matrix = rng.standard_normal((400, 30))
        assert gram_sum(handle.client, matrix) == pytest.approx(
            float((matrix.T @ matrix).sum()), rel=1e-10
        )
        worker_pids = {pid for pid, _, _ in opened} - {this_process.pid}
        assert worker_pids, "worker processes expected to listen"
    finally:
        handle.close()
    assert handle.cluster.status.name == "closed"
    gone, alive = psutil.wait_procs(
        [psutil.Process(pid) for pid in worker_pids if psutil.pid_exists(pid)], timeout=30
    )
    assert not alive


def test_local_cluster_runs_with_rarer_bookkeeping(local_handle):
    """The intervals reach the scheduler and the worker processes, not only the driver."""
    from dask.utils import parse_timedelta

    intervals = {
        key: parse_timedelta(value) for key, value in clusters.LOCAL_CLUSTER_INTERVALS.items()
    }
    tick = intervals["distributed.admin.tick.interval"]
    assert tick != parse_timedelta(clusters._dask_default("distributed.admin.tick.interval"))

    def worker_timings(dask_worker) -> dict:
        callbacks = dask_worker.periodic_callbacks
        return {
            "tick": dask_worker._tick_interval,
            "monitor": callbacks["monitor"].callback_time / 1000,
            "memory": callbacks["memory_monitor"].callback_time / 1000,
            "profile": callbacks["profile"].callback_time / 1000,
            "profile-cycle": callbacks["profile-cycle"].callback_time / 1000,
        }

    expected = {
        "tick": tick,
        "monitor": intervals["distributed.admin.system-monitor.interval"],
        "memory": intervals["distributed.worker.memory.monitor-interval"],
        "profile": intervals["distributed.worker.profile.interval"],
        "profile-cycle": intervals["distributed.worker.profile.cycle"],
    }
    timings = local_handle.client.run(worker_timings)
    assert len(timings) == 2
    assert all(found == expected for found in timings.values()), timings
    scheduler_tick = local_handle.client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler._tick_interval
    )
    assert scheduler_tick == tick
    # the driver's own settings are left as they were
    assert dask.config.get("distributed.admin.tick.interval") == clusters._dask_default(
        "distributed.admin.tick.interval"
    )


def test_rarer_bookkeeping_keeps_the_users_settings():
    profile, tick = "distributed.worker.profile.interval", "distributed.admin.tick.interval"
    with dask.config.set({profile: "30ms"}), clusters.quiet_local_cluster():
        assert dask.config.get(profile) == "30ms"
        assert dask.config.get(tick) == clusters.LOCAL_CLUSTER_INTERVALS[tick]
    assert dask.config.get(profile) == clusters._dask_default(profile)


def test_connect_to_existing_scheduler_address(local_handle, rng):
    address = local_handle.scheduler_address
    matrix = rng.standard_normal((200, 8))
    expected = float((matrix.T @ matrix).sum())
    with connect(address, timeout=30) as joined:
        assert joined.cluster is None and not joined.owns
        assert joined.scheduler_address == address
        assert gram_sum(joined.client, matrix) == pytest.approx(expected, rel=1e-10)
    # closing a joined handle leaves the scheduler running
    assert joined.client.status == "closed"
    assert local_handle.client.status == "running"
    assert gram_sum(local_handle.client, matrix) == pytest.approx(expected, rel=1e-10)

    # host:port without protocol means tcp
    with connect(address.removeprefix("tcp://"), timeout=30) as joined:
        assert joined.scheduler_address == address


def test_connect_uses_a_given_client_as_is(local_handle):
    handle = connect(local_handle.client)
    assert handle.client is local_handle.client
    assert not handle.owns and not handle.owns_client
    handle.close()
    assert local_handle.client.status == "running"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "non-empty"),
        ("http://127.0.0.1:8786", "unknown protocol 'http'"),
        ("tcp://127.0.0.1:port", "protocol://host:port"),
        ("tcp://:8786", "needs a host"),
        ("tcp://127.0.0.1:70000", "1..65535"),
    ],
)
def test_bad_scheduler_address_is_a_clear_value_error(address, message):
    assert issubclass(ClusterError, ValueError)
    with pytest.raises(ClusterError, match=message):
        connect(address)


def test_parse_scheduler_address_normalizes():
    assert clusters.parse_scheduler_address("example.org") == "tcp://example.org:8786"
    assert clusters.parse_scheduler_address("TLS://10.0.0.5:9000") == "tls://10.0.0.5:9000"
    assert clusters.parse_scheduler_address("[::1]:8786") == "tcp://[::1]:8786"


def test_tls_address_without_security_is_refused():
    with pytest.raises(ValueError, match="uses TLS but no security"):
        connect("tls://127.0.0.1:8786")


def free_loopback_port() -> int:
    """A loopback port that nothing listens on (just closed by us)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_scheduler_names_the_address():
    address = f"tcp://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(ConnectionError, match=address):
        connect(address, timeout=1)


@pytest.mark.parametrize("kind", ["kubernetes", "LOCALHOST", ""])
def test_unknown_cluster_kind_is_named(kind):
    with pytest.raises(ValueError, match=f"unknown cluster kind {kind!r}"):
        connect(cluster=kind)


def test_dashboard_on_all_interfaces_is_refused():
    with pytest.raises(ValueError, match="all interfaces"):
        connect(dashboard_address=":8787")


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_bad_worker_count(bad):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        connect(workers=bad)


# --------------------------------------------------------------------------------------
# SLURM / PBS

JOB_OPTIONS = {
    "cores": 8,
    "memory": "32GB",
    "processes": 2,
    "queue": "normal",
    "account": "geophys",
    "walltime": "02:30:00",
    "job-extra-directives": ["--constraint=cpu"],
    "interface": "ib0",
}


def worker_command_line(script: str) -> str:
    lines = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    assert len(lines) == 1, script
    return lines[0]


def test_slurm_job_script_has_requested_resources():
    script = clusters.jobqueue_job_script(
        "slurm", JOB_OPTIONS, scheduler_address="tcp://10.1.2.3:8786"
    )
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH -p normal" in directives
    assert "#SBATCH -A geophys" in directives
    assert "#SBATCH --cpus-per-task=8" in directives
    # dask-jobqueue requests memory in whole GiB, rounded down: 32 GB = 29.8 GiB
    assert "#SBATCH --mem=29G" in directives or "#SBATCH --mem=30G" in directives
    assert "#SBATCH -t 02:30:00" in directives
    assert "#SBATCH --constraint=cpu" in directives
    command = worker_command_line(script)
    assert " tcp://10.1.2.3:8786 " in command
    assert "--nworkers 2" in command and "--nthreads 4" in command
    assert "--interface ib0" in command
    assert "--no-dashboard" in command


def test_pbs_job_script_has_requested_resources():
    script = clusters.jobqueue_job_script("pbs", JOB_OPTIONS, scheduler_address="tcp://h:8786")
    directives = [line for line in script.splitlines() if line.startswith("#PBS")]
    assert "#PBS -q normal" in directives
    assert "#PBS -A geophys" in directives
    assert "#PBS -l walltime=02:30:00" in directives
    select = [line for line in directives if line.startswith("#PBS -l select=")]
    assert select and "ncpus=8" in select[0] and "mem=" in select[0]
    command = worker_command_line(script)
    assert " tcp://h:8786 " in command and "--nworkers 2" in command


def test_jobqueue_cluster_object_binds_named_host_and_scripts_its_address():
    options = dict(JOB_OPTIONS, scheduler_options={"host": "127.0.0.1"})
    options.pop("interface")
    cluster = clusters.build_jobqueue_cluster("slurm", options)
    try:
        address = cluster.scheduler_address
        assert host_of(address) == "127.0.0.1"
        assert f" {address} " in worker_command_line(cluster.job_script())
        assert "127.0.0.1" in cluster.dashboard_link
        assert len(cluster.workers) == 0  # nothing submitted
    finally:
        cluster.close()


def test_jobqueue_refuses_host_and_wildcard_scheduler_host():
    with pytest.raises(ValueError, match="'host' is not supported"):
        clusters.jobqueue_job_script("pbs", {"cores": 1, "memory": "1GB", "host": "x"})
    with pytest.raises(ValueError, match="all interfaces"):
        clusters.build_jobqueue_cluster(
            "pbs", {"cores": 1, "memory": "1GB", "scheduler_options": {"host": "0.0.0.0"}}
        )


def test_jobqueue_unknown_option_is_named():
    with pytest.raises(ValueError, match="cores_per_node"):
        clusters.jobqueue_job_script("slurm", {"cores": 1, "memory": "1GB", "cores_per_node": 3})


def fake_batch_system(folder: Path, submit: str, cancel: str) -> Path:
    """Write stand-in submit/cancel commands that record the scripts they are given."""
    record = folder / "record"
    record.mkdir()
    submit_path = folder / submit
    # the shell's process id serves as a unique job id even for concurrent submissions
    submit_path.write_text(
        f'#!/bin/sh\ncp "$1" "{record}/job-$$.sh"\necho "Submitted batch job $$"\n'
    )
    cancel_path = folder / cancel
    cancel_path.write_text(f'#!/bin/sh\necho "$@" >> "{record}/cancelled"\n')
    for path in (submit_path, cancel_path):
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return record


@pytest.mark.parametrize(
    ("kind", "submit", "cancel", "cores_directive"),
    [
        ("slurm", "sbatch", "scancel", "#SBATCH --cpus-per-task=8"),
        ("pbs", "qsub", "qdel", "#PBS -l select=1:ncpus=8"),
    ],
)
def test_connect_submits_requested_jobs_and_cancels_them_on_close(
    tmp_path, monkeypatch, kind, submit, cancel, cores_directive
):
    record = fake_batch_system(tmp_path, submit, cancel)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    options = dict(JOB_OPTIONS, jobs=2, scheduler_options={"host": "127.0.0.1"})
    options.pop("interface")
    handle = connect(cluster=kind, jobqueue=options, dashboard_address="127.0.0.1:0")
    try:
        assert handle.owns and host_of(handle.scheduler_address) == "127.0.0.1"
        deadline = time.monotonic() + 30
        while len(list(record.glob("job-*.sh"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        scripts = sorted(record.glob("job-*.sh"))
        assert len(scripts) == 2
        for script in scripts:
            text = script.read_text()
            assert cores_directive in text
            assert f" {handle.scheduler_address} " in worker_command_line(text)
    finally:
        handle.close()
    cancelled = (record / "cancelled").read_text().split()
    assert sorted(cancelled) == sorted(path.stem.removeprefix("job-") for path in scripts)


def test_config_section_becomes_connect_options():
    options = clusters.connect_options_from_config(
        {
            "kind": "SLURM",
            "workers": 4,
            "jobqueue": {"cores": 4, "job-extra-directives": ["--exclusive"]},
            "security": {"tls-ca-file": "/x/ca.pem"},
        }
    )
    assert options == {
        "cluster": "slurm",
        "workers": 4,
        "jobqueue": {"cores": 4, "job_extra_directives": ["--exclusive"]},
        "security": {"tls_ca_file": "/x/ca.pem"},
    }
    with pytest.raises(ValueError, match="unknown keys \\['nodes'\\]"):
        clusters.connect_options_from_config({"nodes": 3})


def test_config_dataclass_defaults_give_a_loopback_local_cluster_request():
    from specufex_dask.cli.config import ClusterConfig

    options = clusters.connect_options_from_config(ClusterConfig())
    assert options == {"cluster": "local", "dashboard_address": "127.0.0.1:8787"}
    assert clusters.make_security({}) is None


# --------------------------------------------------------------------------------------
# TLS


def test_security_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown security settings \\['tls_cert'\\]"):
        clusters.make_security({"tls_cert": "a.pem"})
    with pytest.raises(ValueError, match="tls_ca_file: file .*missing.pem"):
        clusters.make_security({"tls_ca_file": str(tmp_path / "missing.pem")})


def test_tls_cluster_on_loopback_accepts_only_tls_clients(tmp_path, rng):
    settings = clusters.write_self_signed_tls(tmp_path / "tls")
    assert stat.S_IMODE(os.stat(settings["tls_client_key"]).st_mode) == 0o600
    matrix = rng.standard_normal((120, 6))
    expected = float((matrix.T @ matrix).sum())
    with connect(
        workers=1, threads_per_worker=1, security=settings, dashboard_address="127.0.0.1:0"
    ) as handle:
        address = handle.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        handle.client.wait_for_workers(1, timeout=60)
        worker_addresses = list(handle.client.scheduler_info()["workers"])
        assert all(a.startswith("tls://127.0.0.1:") for a in worker_addresses)
        assert gram_sum(handle.client, matrix) == pytest.approx(expected, rel=1e-10)

        client_only = {
            key: settings[key] for key in ("tls_ca_file", "tls_client_cert", "tls_client_key")
        }
        with connect(address, security=client_only, timeout=20) as joined:
            assert gram_sum(joined.client, matrix) == pytest.approx(expected, rel=1e-10)

        # the same address over plain TCP is not served
        with pytest.raises(ConnectionError):
            connect(address.replace("tls://", "tcp://"), timeout=2)


def test_local_tls_cluster_needs_scheduler_and_worker_certificates(tmp_path):
    settings = clusters.write_self_signed_tls(tmp_path)
    client_only = {k: settings[k] for k in ("tls_ca_file", "tls_client_cert", "tls_client_key")}
    with pytest.raises(ValueError, match="tls_scheduler_cert"):
        connect(security=client_only)
