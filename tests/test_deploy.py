"""Tests of the deployment files: Dockerfile, docker-compose.yml and deploy/ (no Docker needed).

The compose services' commands are run as local processes on the loopback interface
(``compose_cluster`` fixture); the SLURM/PBS job scripts are generated with dask-jobqueue
from the example configs; the Kubernetes manifests are checked for what the Dask operator
and the pipeline job need.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import dask.array as da
import dask.config
import distributed
import numpy as np
import psutil
import pytest
import yaml

from specufex_dask.cli.config import load_config
from specufex_dask.parallel import clusters

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEDULER_SERVICE = "scheduler"
COMPOSE_SCHEDULER_PORT = 8786
COMPOSE_DASHBOARD_PORT = 8787
LOOPBACK = "127.0.0.1"
PROCESS_STOP_SECONDS = 15
_DEFAULTED_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
_ADDRESS = re.compile(r"^(?P<scheme>\w+://)?(?P<host>[\w.-]*):(?P<port>\d+)$")


# --------------------------------------------------------------------------------------
# helpers: compose file -> local processes


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate_defaults(value: str) -> str:
    """Apply compose's interpolation with defaults only: ``${VAR:-default}``, ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group("default") is None:
            raise AssertionError(f"compose variable {match.group(0)} has no default")
        return match.group("default")

    parts = value.split("$$")  # an escaped $ is left for the container's shell
    return "$".join(_DEFAULTED_VARIABLE.sub(replace, part) for part in parts)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@dataclass
class LoopbackMap:
    """How compose host names and ports translate to this machine."""

    ports: dict[int, int]
    hosts: dict[str, str] = field(default_factory=lambda: {SCHEDULER_SERVICE: LOOPBACK})

    def address(self, value: str) -> str:
        match = _ADDRESS.match(value)
        if match is None:
            return self.hosts.get(value, value)
        host = self.hosts.get(match.group("host"), match.group("host"))
        port = self.ports.get(int(match.group("port")), int(match.group("port")))
        return f"{match.group('scheme') or ''}{host}:{port}"

    def text(self, value: str) -> str:
        """Rewrite every ``[scheme://]service:port`` inside a shell command line."""
        names = "|".join(re.escape(name) for name in self.hosts)
        pattern = re.compile(rf"(?<![\w.-])(\w+://)?({names}):(\d+)")
        return pattern.sub(lambda m: self.address(m.group(0)), value)


def to_local_command(command: list[str], mapping: LoopbackMap) -> list[str]:
    """Rewrite a compose service command to run here, bound to the loopback interface.

    Service host names become 127.0.0.1 and the published ports free local ports;
    nothing else changes, so the binding flags under test are the compose file's own.
    A ``sh -c`` command keeps its script, with addresses rewritten the same way.
    """
    tokens = [interpolate_defaults(str(token)) for token in command]
    if tokens[:2] == ["sh", "-c"]:
        return ["sh", "-c", mapping.text(tokens[2]), *tokens[3:]]
    rewritten: list[str] = []
    previous = ""
    for token in tokens:
        if previous == "--port":
            token = str(mapping.ports.get(int(token), int(token)))
        elif previous in ("--host", "--dashboard-address") or "://" in token:
            token = mapping.address(token)
        rewritten.append(token)
        previous = token if token.startswith("--") else ""
    return rewritten


def container_like_path(folder: Path) -> str:
    """PATH with ``dask`` running this interpreter and ``hostname -i`` giving 127.0.0.1.

    Stands in for the image, where ``hostname -i`` prints the container's addresses.
    """
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    stubs = {
        "dask": f'#!/bin/sh\nexec "{sys.executable}" -m dask "$@"\n',
        "hostname": f'#!/bin/sh\n[ "$1" = "-i" ] && echo "{LOOPBACK} ::1" && exit 0\nexit 1\n',
    }
    for name, text in stubs.items():
        stub = bin_dir / name
        stub.write_text(text)
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def binds_explicitly(command: list[str]) -> bool:
    """The dask command names the address to listen on (and its HTTP endpoint's)."""
    text = " ".join(command)
    if "dask worker" in text and "--dashboard-address" not in text:
        return False
    return "--host" in text or "--listen-address" in text


@dataclass
class LocalProcess:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def start_process(
    name: str, command: list[str], folder: Path, env: dict[str, str] | None = None
) -> LocalProcess:
    log = folder / f"{name}.log"
    with open(log, "wb") as output:
        popen = subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
            start_new_session=True,  # own process group: the nanny's worker goes with it
        )
    return LocalProcess(name, popen, log)


def stop_processes(processes: list[LocalProcess]) -> None:
    """Terminate each process group we started; kill what has not ended in time."""
    for process in processes:
        if process.popen.poll() is None:
            try:
                os.killpg(process.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for process in processes:
        try:
            process.popen.wait(timeout=PROCESS_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.popen.wait(timeout=PROCESS_STOP_SECONDS)


def listening_addresses(processes: list[LocalProcess]) -> set[tuple[str, int]]:
    found = set()
    for process in processes:
        try:
            root = psutil.Process(process.popen.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        found.add((conn.laddr.ip, conn.laddr.port))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return found


def connect_client(address: str, processes: list[LocalProcess], **kwargs) -> distributed.Client:
    try:
        return distributed.Client(address, timeout=60, **kwargs)
    except OSError as error:
        logs = "\n".join(process.tail() for process in processes)
        raise AssertionError(f"no scheduler at {address}: {error}\n{logs}") from error


def gram_sum(client: distributed.Client, matrix: np.ndarray) -> float:
    array = da.from_array(matrix, chunks=(matrix.shape[0] // 4, matrix.shape[1]))
    return float(client.compute((array.T @ array).sum()).result(timeout=60))


@dataclass
class ComposeCluster:
    """The compose file's scheduler and workers running as local processes."""

    scheduler_address: str
    dashboard_url: str
    mapping: LoopbackMap
    processes: list[LocalProcess]
    compose: dict[str, Any]

    def job_command(self, data_folder: str | Path) -> list[str]:
        """The compose ``job`` command rewritten to run here against this cluster.

        ``/data`` (the shared volume) becomes ``data_folder``.
        """
        command = [
            interpolate_defaults(str(t)) for t in self.compose["services"]["job"]["command"]
        ]
        rewritten = []
        for token in command:
            if token.startswith("/data"):
                token = str(Path(data_folder) / token.removeprefix("/data").lstrip("/"))
            elif "://" in token:
                token = self.mapping.address(token)
            rewritten.append(token)
        return rewritten


@pytest.fixture(scope="module")
def compose_cluster(tmp_path_factory) -> Iterator[ComposeCluster]:
    """Run docker-compose.yml's scheduler and two workers (``--scale worker=2``) here."""
    compose = load_compose()
    folder = tmp_path_factory.mktemp("compose")
    mapping = LoopbackMap(
        ports={
            COMPOSE_SCHEDULER_PORT: free_loopback_port(),
            COMPOSE_DASHBOARD_PORT: free_loopback_port(),
        }
    )
    services = compose["services"]
    processes: list[LocalProcess] = []
    client = None
    env = dict(os.environ, PATH=container_like_path(folder))
    try:
        scheduler_command = to_local_command(services["scheduler"]["command"], mapping)
        processes.append(start_process("scheduler", scheduler_command, folder, env))
        worker_command = to_local_command(services["worker"]["command"], mapping)
        for index in range(2):
            processes.append(start_process(f"worker-{index}", worker_command, folder, env))
        address = f"tcp://{LOOPBACK}:{mapping.ports[COMPOSE_SCHEDULER_PORT]}"
        client = connect_client(address, processes)
        try:
            client.wait_for_workers(2, timeout=90)
        except TimeoutError as error:
            logs = "\n".join(process.tail() for process in processes)
            raise AssertionError(f"workers did not join {address}\n{logs}") from error
        client.close()
        client = None
        yield ComposeCluster(
            scheduler_address=address,
            dashboard_url=f"http://{LOOPBACK}:{mapping.ports[COMPOSE_DASHBOARD_PORT]}",
            mapping=mapping,
            processes=processes,
            compose=compose,
        )
    finally:
        if client is not None:
            client.close()
        stop_processes(processes)


# --------------------------------------------------------------------------------------
# docker-compose.yml and Dockerfile


def test_compose_publishes_only_on_loopback_and_binds_named_addresses():
    services = load_compose()["services"]
    assert set(services) == {"scheduler", "worker", "job"}
    assert services["scheduler"]["ports"] == ["127.0.0.1:8786:8786", "127.0.0.1:8787:8787"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        # a fixed container name or host port would break `--scale worker=N`
        assert "container_name" not in service, name
        assert service["image"] == services["scheduler"]["image"]
        assert service["build"]["context"] == "."
        assert (REPO / service["build"]["dockerfile"]).is_file()
        command = [str(token) for token in service["command"]]
        assert "0.0.0.0" not in " ".join(command), name
    for name in ("scheduler", "worker"):
        assert binds_explicitly([str(t) for t in services[name]["command"]]), name
    assert "ports" not in services["worker"]
    worker_script = services["worker"]["command"][-1]
    assert "exec dask worker tcp://scheduler:8786" in worker_script
    assert "--no-dashboard" in worker_script


def test_compose_workers_and_job_share_the_archive_volume():
    compose = load_compose()
    services = compose["services"]
    mounts = {}
    for name in ("worker", "job"):
        (volume,) = services[name]["volumes"]
        source, target = interpolate_defaults(volume).split(":")
        mounts[name] = (source, target)
    assert mounts["worker"] == mounts["job"]
    source, target = mounts["job"]
    assert target == "/data"
    assert source in compose["volumes"]  # the default is a declared named volume


def test_compose_job_runs_specufex_run_against_the_scheduler_service():
    services = load_compose()["services"]
    command = [str(token) for token in services["job"]["command"]]
    assert command[:3] == ["specufex-dask", "run", "/data/archive.zarr"]
    scheduler = command[command.index("--scheduler") + 1]
    scheduler_command = [str(t) for t in services["scheduler"]["command"]]
    host = scheduler_command[scheduler_command.index("--host") + 1]
    port = scheduler_command[scheduler_command.index("--port") + 1]
    assert scheduler == f"tcp://{host}:{port}"
    assert host == SCHEDULER_SERVICE
    assert clusters.parse_scheduler_address(scheduler) == scheduler
    assert services["job"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert services["job"]["restart"] == "no"


def test_compose_scheduler_and_workers_run_on_loopback(compose_cluster, rng):
    with distributed.Client(compose_cluster.scheduler_address, timeout=30) as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        for address, worker in info["workers"].items():
            assert distributed.comm.get_address_host(address) == LOOPBACK
            assert distributed.comm.get_address_host(worker["nanny"]) == LOOPBACK
        matrix = rng.standard_normal((400, 25))
        assert gram_sum(client, matrix) == pytest.approx(
            float((matrix.T @ matrix).sum()), rel=1e-10
        )
    listening = listening_addresses(compose_cluster.processes)
    # scheduler, dashboard, 2 nannies, 2 workers
    assert len(listening) >= 6, listening
    assert {ip for ip, _ in listening} == {LOOPBACK}, listening
    with urllib.request.urlopen(f"{compose_cluster.dashboard_url}/health", timeout=10) as reply:
        assert reply.read().decode() == "ok"


def test_compose_job_command_helper_targets_the_local_cluster(compose_cluster, tmp_path):
    command = compose_cluster.job_command(tmp_path)
    assert command == [
        "specufex-dask",
        "run",
        str(tmp_path / "archive.zarr"),
        "--scheduler",
        compose_cluster.scheduler_address,
    ]


def test_compose_job_runs_the_pipeline_through_the_compose_scheduler(
    compose_cluster, tmp_path, golden_dir
):
    """The compose job command, run here, fits and transforms through the compose workers.

    The result must equal an in-process run with the same settings bit for bit (the
    engine's sums do not depend on which worker computed what).
    """
    import h5py
    import xarray as xr

    from specufex_dask.io import archive
    from specufex_dask.pipeline import SpecUFEx

    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as file:
        ids = list(file["ACM"])
        group = file["spectrograms/transformed_spectrograms"]
        spectrograms = np.stack([group[i][()] for i in ids])
        frequency = file["spectrograms/fSTFT"][()]
        time = file["spectrograms/tSTFT"][()]
    path = tmp_path / "archive.zarr"
    archive.write_spectrograms(path, spectrograms, ids, frequency, time, chunk_events=4)
    settings = ["--num-pat", "12", "--num-state", "4", "--nmf-steps", "8", "--hmm-steps", "6",
                "--batch-size", "5", "--tol", "none", "--quiet"]  # fmt: skip
    command = compose_cluster.job_command(tmp_path) + settings
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    expected = SpecUFEx(12, 4, nmf_steps=8, hmm_steps=6, batch_size=5, client=False)
    outputs = expected.fit(spectrograms_array(spectrograms, ids)).transform(
        spectrograms_array(spectrograms, ids)
    )
    stored = xr.open_zarr(path)
    for name in ("activation", "state_probability", "fingerprint"):
        np.testing.assert_array_equal(stored[name].values, outputs[name].values)


def spectrograms_array(values: np.ndarray, ids: list[str]):
    """Spectrograms as an in-memory DataArray with the archive's dims."""
    import xarray as xr

    return xr.DataArray(values, dims=("event", "frequency", "time"), coords={"event": ids})


def test_dockerfile_is_pinned_non_root_and_installs_extras():
    text = (REPO / "Dockerfile").read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert image is not None
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image.group(1)), image.group(1)
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    install = re.search(r'pip install --constraint (\S+) "\.\[([\w,]+)\]"', text)
    assert install is not None
    extras = set(metadata("specufex-dask").get_all("Provides-Extra") or [])
    assert set(install.group(2).split(",")) <= extras
    constraints = REPO / "deploy" / "docker" / install.group(1)
    assert f"COPY deploy/docker/{install.group(1)}" in text
    pins = [
        line
        for line in constraints.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[\w.-]+==[\w.]+", line) for line in pins), pins
    pinned = {line.split("==")[0].lower() for line in pins}
    assert {"dask", "distributed", "numpy", "zarr", "xarray", "bokeh"} <= pinned


def test_dockerignore_keeps_data_and_secrets_out_of_the_image():
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in (".git", "*.zarr", "tests", "deploy/tls/*.pem"):
        assert pattern in ignored


# --------------------------------------------------------------------------------------
# SLURM / PBS

SLURM_DIRECTIVES = {
    "queue": "#SBATCH -p {}",
    "account": "#SBATCH -A {}",
    "cores": "#SBATCH --cpus-per-task={}",
    "walltime": "#SBATCH -t {}",
}
PBS_DIRECTIVES = {
    "queue": "#PBS -q {}",
    "account": "#PBS -A {}",
    "walltime": "#PBS -l walltime={}",
}


@pytest.mark.parametrize(
    ("kind", "directives", "prefix"),
    [("slurm", SLURM_DIRECTIVES, "#SBATCH"), ("pbs", PBS_DIRECTIVES, "#PBS")],
)
def test_hpc_example_config_generates_the_job_script(kind, directives, prefix):
    config = load_config(DEPLOY / kind / "config.yaml")
    options = clusters.connect_options_from_config(config.cluster)
    assert options["cluster"] == kind
    assert options["dashboard_address"].startswith("127.0.0.1:")
    jobqueue = options["jobqueue"]
    assert isinstance(jobqueue["jobs"], int) and jobqueue["jobs"] >= 1
    script = clusters.jobqueue_job_script(kind, jobqueue, scheduler_address="tcp://10.0.0.5:8786")
    lines = script.splitlines()
    for key, template in directives.items():
        assert template.format(jobqueue[key]) in lines, (key, script)
    for extra in jobqueue["job_extra_directives"]:
        assert f"{prefix} {extra}" in lines
    if kind == "pbs":
        (select,) = [line for line in lines if line.startswith("#PBS -l select=")]
        assert f"ncpus={jobqueue['cores']}" in select
    assert jobqueue["job_script_prologue"][0] in lines
    (worker,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    threads = jobqueue["cores"] // jobqueue["processes"]
    assert worker.startswith(f"{jobqueue['python']} -m distributed.cli.dask_worker ")
    assert " tcp://10.0.0.5:8786 " in worker
    assert f"--nworkers {jobqueue['processes']}" in worker
    assert f"--nthreads {threads}" in worker
    assert f"--interface {jobqueue['interface']}" in worker
    assert "--no-dashboard" in worker


def test_hpc_job_script_starts_a_worker_bound_to_the_chosen_interface(tmp_path, rng):
    """Run the SLURM worker job script from the example config, with interface lo."""
    config = load_config(DEPLOY / "slurm" / "config.yaml")
    jobqueue = dict(clusters.connect_options_from_config(config.cluster)["jobqueue"])
    jobqueue.update(
        interface="lo",
        python=sys.executable,
        cores=1,
        processes=1,
        memory="1GB",
        local_directory=str(tmp_path / "scratch"),
    )
    venv = tmp_path / "specufex-venv" / "bin"  # the prologue sources $HOME/specufex-venv
    venv.mkdir(parents=True)
    (venv / "activate").write_text("export SPECUFEX_TEST_ACTIVATED=1\n")
    scheduler = distributed.LocalCluster(
        n_workers=0, host=LOOPBACK, dashboard_address=f"{LOOPBACK}:0", processes=True
    )
    processes: list[LocalProcess] = []
    try:
        script = clusters.jobqueue_job_script(
            "slurm", jobqueue, scheduler_address=scheduler.scheduler_address
        )
        (tmp_path / "job.sh").write_text(script)
        env = dict(os.environ, HOME=str(tmp_path))
        processes.append(start_process("job", ["bash", str(tmp_path / "job.sh")], tmp_path, env))
        with distributed.Client(scheduler) as client:
            try:
                client.wait_for_workers(1, timeout=90)
            except TimeoutError as error:
                raise AssertionError(processes[0].tail()) from error
            (address,) = client.scheduler_info()["workers"]
            assert distributed.comm.get_address_host(address) == LOOPBACK
            matrix = rng.standard_normal((80, 5))
            assert gram_sum(client, matrix) == pytest.approx(
                float((matrix.T @ matrix).sum()), rel=1e-10
            )
        listening = listening_addresses(processes)
        assert len(listening) >= 3, listening  # nanny, worker, worker HTTP endpoint
        assert {ip for ip, _ in listening} == {LOOPBACK}, listening
    finally:
        stop_processes(processes)
        scheduler.close()


def stub_environment(folder: Path) -> tuple[Path, Path]:
    """A fake virtualenv whose activate puts a recording ``specufex-dask`` on PATH."""
    bin_dir = folder / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    record = folder / "argv.txt"
    stub = bin_dir / "specufex-dask"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return folder / "venv", record


@pytest.mark.parametrize(
    ("kind", "script", "how"),
    [
        ("slurm", "run-specufex.sbatch", "arguments"),
        ("pbs", "run-specufex.pbs", "environment"),
    ],
)
def test_batch_script_runs_specufex_run_with_the_cluster_kind(tmp_path, kind, script, how):
    venv, record = stub_environment(tmp_path)
    archive = "/scratch/someone/archive.zarr"
    config = str(DEPLOY / kind / "config.yaml")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SPECUFEX_VENV": str(venv)}
    arguments: list[str] = []
    if how == "arguments":
        arguments = [archive, config]
        env["SLURM_SUBMIT_DIR"] = str(tmp_path)
    else:
        env.update(ARCHIVE=archive, CONFIG=config, PBS_O_WORKDIR=str(tmp_path))
    result = subprocess.run(
        ["bash", str(DEPLOY / kind / script), *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == [
        "run",
        archive,
        "--cluster",
        kind,
        "--config",
        config,
    ]
    assert (tmp_path / "dask-logs").is_dir()  # log_directory of the worker jobs


def test_batch_script_without_archive_stops_with_usage(tmp_path):
    venv, record = stub_environment(tmp_path)
    result = subprocess.run(
        ["bash", str(DEPLOY / "slurm" / "run-specufex.sbatch")],
        env={"PATH": os.environ["PATH"], "SPECUFEX_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "usage" in result.stderr
    assert not record.exists()


# --------------------------------------------------------------------------------------
# Kubernetes


def load_manifests() -> dict[str, dict[str, Any]]:
    manifests = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            manifests[document["kind"]] = document
    return manifests


def test_kubernetes_daskcluster_has_what_the_operator_needs():
    manifests = load_manifests()
    cluster = manifests["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    name = cluster["metadata"]["name"]
    worker = cluster["spec"]["worker"]
    assert isinstance(worker["replicas"], int) and worker["replicas"] >= 1
    worker_container = worker["spec"]["containers"][0]
    assert worker_container["image"]
    assert worker_container["args"][:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in worker_container["args"]
    scheduler_container = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheduler_container["image"] == worker_container["image"]
    assert scheduler_container["args"][:2] == ["dask", "scheduler"]
    container_ports = {p["name"]: p["containerPort"] for p in scheduler_container["ports"]}
    assert container_ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    args = scheduler_container["args"]
    assert args[args.index("--port") + 1] == "8786"
    assert args[args.index("--dashboard-address") + 1].endswith(":8787")
    assert scheduler_container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = cluster["spec"]["scheduler"]["service"]
    assert service["type"] == "ClusterIP"
    assert service["selector"] == {
        "dask.org/cluster-name": name,
        "dask.org/component": "scheduler",
    }
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["ports"]}
    assert service_ports == {
        "tcp-comm": (8786, "tcp-comm"),
        "http-dashboard": (8787, "http-dashboard"),
    }
    for spec in (worker["spec"], cluster["spec"]["scheduler"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_kubernetes_job_runs_the_pipeline_against_the_scheduler_service():
    manifests = load_manifests()
    cluster = manifests["DaskCluster"]
    job = manifests["Job"]
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    command = container["command"]
    assert command[:2] == ["specufex-dask", "run"]
    service_port = next(
        p["port"]
        for p in cluster["spec"]["scheduler"]["service"]["ports"]
        if p["name"] == "tcp-comm"
    )
    # the operator names the scheduler Service "<cluster name>-scheduler"
    expected = f"tcp://{cluster['metadata']['name']}-scheduler:{service_port}"
    assert command[command.index("--scheduler") + 1] == expected
    assert container["image"] == cluster["spec"]["worker"]["spec"]["containers"][0]["image"]

    archive = command[2]
    claim = manifests["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for spec, container_spec in (
        (pod, container),
        (cluster["spec"]["worker"]["spec"], cluster["spec"]["worker"]["spec"]["containers"][0]),
    ):
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        (mount,) = container_spec["volumeMounts"]
        assert volumes[mount["name"]] == claim["metadata"]["name"]
        assert archive.startswith(mount["mountPath"] + "/")


def test_kubernetes_network_policy_admits_workers_job_and_operator_only():
    manifests = load_manifests()
    cluster_name = manifests["DaskCluster"]["metadata"]["name"]
    policy = manifests["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {
        "dask.org/cluster-name": cluster_name,
        "dask.org/component": "scheduler",
    }
    (rule,) = policy["ingress"]
    pod_selectors = [s["podSelector"]["matchLabels"] for s in rule["from"] if "podSelector" in s]
    job_labels = manifests["Job"]["spec"]["template"]["metadata"]["labels"]
    assert any(selector.items() <= job_labels.items() for selector in pod_selectors)
    assert {"dask.org/cluster-name": cluster_name, "dask.org/component": "worker"} in (
        pod_selectors
    )
    assert sorted(p["port"] for p in rule["ports"]) == [8786, 8787]


# --------------------------------------------------------------------------------------
# TLS


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def with_paths_in(settings: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """Point every ``*.pem`` path of an example file at the generated file of that name."""
    folder = Path(files["tls_ca_file"]).parent
    return {
        key: str(folder / Path(value).name) if str(value).endswith(".pem") else value
        for key, value in settings.items()
    }


def test_tls_dask_config_snippet_configures_security(tmp_path):
    files = clusters.write_self_signed_tls(tmp_path)
    snippet = flatten(yaml.safe_load((DEPLOY / "tls" / "distributed.yaml").read_text()))
    with dask.config.set(with_paths_in(snippet, files)):
        security = distributed.Security()
    assert security.require_encryption is True
    assert security.tls_ca_file == files["tls_ca_file"]
    for role in ("scheduler", "worker", "client"):
        assert getattr(security, f"tls_{role}_cert") == files[f"tls_{role}_cert"]
        assert getattr(security, f"tls_{role}_key") == files[f"tls_{role}_key"]


def test_tls_commands_and_client_config_work_on_loopback(tmp_path, rng):
    files = clusters.write_self_signed_tls(tmp_path / "tls")
    config = load_config(DEPLOY / "tls" / "config.yaml")
    client_settings = with_paths_in(
        clusters.connect_options_from_config(config.cluster)["security"], files
    )
    tls_flags = [
        "--tls-ca-file",
        files["tls_ca_file"],
        "--tls-cert",
        files["tls_scheduler_cert"],
        "--tls-key",
        files["tls_scheduler_key"],
    ]
    port, dashboard = free_loopback_port(), free_loopback_port()
    address = f"tls://{LOOPBACK}:{port}"
    dask_cli = [sys.executable, "-m", "dask"]
    scheduler = [
        *dask_cli,
        "scheduler",
        "--protocol",
        "tls",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        *tls_flags,
        "--dashboard-address",
        f"{LOOPBACK}:{dashboard}",
    ]
    worker = [
        *dask_cli,
        "worker",
        address,
        "--host",
        LOOPBACK,
        "--dashboard-address",
        f"{LOOPBACK}:0",
        "--no-dashboard",
        *tls_flags,
    ]
    processes: list[LocalProcess] = []
    try:
        processes.append(start_process("tls-scheduler", scheduler, tmp_path))
        processes.append(start_process("tls-worker", worker, tmp_path))
        matrix = rng.standard_normal((80, 5))
        with clusters.connect(address, security=client_settings, timeout=60) as handle:
            handle.client.wait_for_workers(1, timeout=60)
            (worker_address,) = handle.client.scheduler_info()["workers"]
            assert worker_address.startswith(f"tls://{LOOPBACK}:")
            assert gram_sum(handle.client, matrix) == pytest.approx(
                float((matrix.T @ matrix).sum()), rel=1e-10
            )
        listening = listening_addresses(processes)
        assert {ip for ip, _ in listening} == {LOOPBACK}, listening
    finally:
        stop_processes(processes)
