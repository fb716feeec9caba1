"""Create or connect to the Dask clusters that run specufex-dask.

This module is the one place where the package starts or joins a Dask cluster:

* an existing scheduler (``tcp://host:8786`` or ``tls://host:8786``) or an existing
  :class:`distributed.Client`;
* a :class:`distributed.LocalCluster` of worker processes on this machine, bound to
  127.0.0.1 only;
* a SLURM or PBS cluster through dask-jobqueue (the ``hpc`` extra), whose workers are
  batch jobs.

Everything started here listens on the loopback interface unless the caller names
another host or interface explicitly: a Dask scheduler executes whatever its clients
send, so an open scheduler port is an open door to the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import distributed
import distributed.utils
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.security import Security

from specufex_dask.common import check_positive_int

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_DASHBOARD_ADDRESS = f"{LOOPBACK}:8787"
DEFAULT_SCHEDULER_PORT = 8786
# Messages each batched connection keeps for debugging (distributed's default: 1000).
MESSAGE_LOG_LENGTH = 20
# Bookkeeping intervals of a local cluster (distributed's defaults: 20 ms, 500 ms, 100 ms,
# 10 ms, 1 s); see :func:`quiet_local_cluster`.
LOCAL_CLUSTER_INTERVALS = {
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.worker.profile.interval": "100ms",
    "distributed.worker.profile.cycle": "10s",
}
CLUSTER_KINDS = ("local", "slurm", "pbs")
JOBQUEUE_KINDS = ("slurm", "pbs")
SCHEDULER_PROTOCOLS = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
WORKER_HOST_VARIABLE = "SPECUFEX_WORKER_HOST"
HPC_EXTRA_HINT = 'pip install "specufex-dask[hpc]"'

# Options of a dask-jobqueue *cluster* (as opposed to the per-job options such as cores,
# memory, queue, which are passed through to the job class).
_JOBQUEUE_CLUSTER_OPTIONS = (
    "scheduler_options",
    "shared_temp_directory",
    "protocol",
    "interface",
    "dashboard_address",
    "silence_logs",
    "name",
)
_TLS_ROLE_KEYS = {
    "scheduler": ("tls_scheduler_cert", "tls_scheduler_key"),
    "worker": ("tls_worker_cert", "tls_worker_key"),
    "client": ("tls_client_cert", "tls_client_key"),
}


class ClusterError(ValueError):
    """Invalid cluster request: unknown kind, bad address or bad options."""


@dataclass
class ClusterHandle:
    """A Dask client together with the cluster it talks to.

    Attributes
    ----------
    client : distributed.Client
        The client to submit work with.
    cluster : distributed.deploy.Cluster or None
        The cluster object when this module started it; ``None`` when we joined an
        existing scheduler or were handed a client.
    owns : bool
        True when this handle started the cluster (closing the handle stops it).
    owns_client : bool
        True when this handle created the client (closing the handle closes it).
    """

    client: distributed.Client
    cluster: Any | None = None
    owns: bool = False
    owns_client: bool = True
    _closed: bool = field(default=False, repr=False)

    @property
    def dashboard_link(self) -> str | None:
        """URL of the scheduler's diagnostic dashboard, or None when it has none."""
        if self.cluster is not None:
            try:
                return self.cluster.dashboard_link
            except (AttributeError, KeyError):
                return None
        try:
            return self.client.dashboard_link
        except (AttributeError, KeyError):
            return None

    @property
    def scheduler_address(self) -> str:
        """Address of the scheduler the client is connected to."""
        return self.client.scheduler.address

    def close(self) -> None:
        """Close the client and the cluster if, and only if, this handle started them."""
        if self._closed:
            return
        self._closed = True
        if self.owns_client:
            self.client.close()
        if self.owns and self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    scheduler: str | distributed.Client | None = None,
    *,
    cluster: str = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    jobqueue: Mapping[str, Any] | None = None,
    security: Mapping[str, Any] | Security | None = None,
    dashboard_address: str = DEFAULT_DASHBOARD_ADDRESS,
    timeout: float | None = None,
) -> ClusterHandle:
    """Connect to a Dask scheduler, or start a cluster, and return a handle to it.

    Parameters
    ----------
    scheduler : str or distributed.Client, optional
        Address of a running scheduler (``tcp://host:8786``, ``tls://host:8786`` or
        ``host:port``), or a client to use as it is. When given, ``cluster`` and the
        sizing options are ignored.
    cluster : {"local", "slurm", "pbs"}, default="local"
        Kind of cluster to start when ``scheduler`` is None.
    workers : int, optional
        Local: number of worker processes. Job queue: number of workers to request
        (when ``jobqueue`` has no ``jobs`` entry).
    threads_per_worker : int, optional
        Local cluster only: threads in each worker process.
    memory_limit : str, optional
        Local cluster only: memory limit per worker (``"4GiB"``, ``"auto"``).
    jobqueue : mapping, optional
        SLURM/PBS options passed through to dask-jobqueue (``cores``, ``memory``,
        ``queue``, ``account``, ``walltime``, ``job_extra_directives``, ...), plus
        ``jobs``: how many batch jobs to submit. Keys may use ``-`` or ``_``.
    security : mapping or distributed.Security, optional
        TLS settings (``tls_ca_file``, ``tls_client_cert``, ``tls_client_key``,
        ``tls_scheduler_cert``, ..., ``require_encryption``). A started cluster then
        uses the ``tls://`` protocol.
    dashboard_address : str, default="127.0.0.1:8787"
        Where a started scheduler serves its dashboard; loopback by default (reach it
        through an SSH tunnel). A busy port falls back to a free one.
    timeout : float, optional
        Seconds to wait when connecting to an existing scheduler.

    Returns
    -------
    ClusterHandle

    Raises
    ------
    ClusterError
        Unknown cluster kind, malformed scheduler address or invalid options.
    ConnectionError
        No scheduler answered at the given address.
    ImportError
        ``cluster`` is "slurm" or "pbs" and dask-jobqueue is not installed.
    """
    sec = make_security(security)
    if isinstance(scheduler, distributed.Client):
        return ClusterHandle(client=scheduler, cluster=None, owns=False, owns_client=False)
    with short_message_logs():
        if scheduler is not None:
            return _connect_to_scheduler(scheduler, sec, timeout)

        kind = _check_cluster_kind(cluster)
        if kind == "local":
            local = start_local_cluster(
                workers=workers,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                security=sec,
                dashboard_address=dashboard_address,
            )
            return _handle_for_started(local)

        options = dict(normalize_option_keys(jobqueue or {}, where="jobqueue"))
        jobs = options.pop("jobs", None)
        if threads_per_worker is not None or memory_limit is not None:
            logger.warning(
                "threads_per_worker/memory_limit apply to local clusters only; set cores, "
                "processes and memory in the jobqueue options for %s",
                kind,
            )
        options.setdefault("dashboard_address", dashboard_address)
        jq_cluster = build_jobqueue_cluster(kind, options, security=sec)
        try:
            _scale_jobqueue_cluster(jq_cluster, jobs=jobs, workers=workers)
        except Exception:
            jq_cluster.close()
            raise
        return _handle_for_started(jq_cluster)


@contextlib.contextmanager
def short_message_logs() -> Iterator[None]:
    """Dask settings for clients and clusters started inside: short message logs.

    Every batched connection of ``distributed`` keeps its last
    ``distributed.admin.low-level-log-length`` messages (1000 by default) for
    debugging, and an SVI step's task messages carry the step's parameters (0.3 MB at
    513 frequencies x 75 patterns in float64): over a long fit the client's and the
    local scheduler's logs held up to 1000 steps of them in the driver (+0.37 MiB per
    step measured with 2 workers). A smaller setting of the user's is kept; a worker
    that registers later (a restarted one) gets the setting of that time.
    """
    key = "distributed.admin.low-level-log-length"
    with dask.config.set({key: min(int(dask.config.get(key)), MESSAGE_LOG_LENGTH)}):
        yield


def _dask_default(key: str) -> Any:
    """The value of ``key`` in the defaults Dask and distributed ship, before any user
    configuration (files, environment variables, ``dask.config.set``)."""
    shipped: dict = {}
    for layer in dask.config.defaults:
        dask.config.update(shipped, layer)
    return dask.config.get(key, config=shipped)


@contextlib.contextmanager
def quiet_local_cluster() -> Iterator[None]:
    """Dask settings for a local cluster started inside: rarer bookkeeping.

    A local cluster's scheduler, nannies and workers share this machine's cores with
    the computation. With distributed's defaults every server checks its event loop
    every 20 ms, every worker samples its threads' stacks every 10 ms for the
    dashboard's profile, and each nanny reads its worker's memory every 100 ms: an idle
    2-worker cluster took 0.15 cores (driver 0.061, workers 0.043 and 0.044), against
    0.040 with :data:`LOCAL_CLUSTER_INTERVALS` (0.021, 0.008, 0.011). Workers read the
    settings when they start, so those of the block's cluster keep them. A setting of
    the user's (one that differs from Dask's own default) is kept.
    """
    chosen = {
        key: value
        for key, value in LOCAL_CLUSTER_INTERVALS.items()
        if dask.config.get(key) == _dask_default(key)
    }
    with dask.config.set(chosen):
        yield


def _handle_for_started(started: Any) -> ClusterHandle:
    try:
        client = distributed.Client(started)
    except Exception:
        started.close()
        raise
    handle = ClusterHandle(client=client, cluster=started, owns=True, owns_client=True)
    logger.info(
        "started %s at %s (dashboard %s)",
        type(started).__name__,
        started.scheduler_address,
        handle.dashboard_link,
    )
    return handle


def _check_cluster_kind(cluster: str) -> str:
    kind = str(cluster).strip().lower()
    if kind not in CLUSTER_KINDS:
        raise ClusterError(
            f"unknown cluster kind {cluster!r}; expected one of {', '.join(CLUSTER_KINDS)}"
        )
    return kind


def parse_scheduler_address(address: str) -> str:
    """Check a scheduler address and return it in ``protocol://host:port`` form.

    Parameters
    ----------
    address : str
        ``tcp://host:port``, ``tls://host:port``, ``host:port`` (tcp assumed) or
        ``host`` (port 8786 assumed).

    Returns
    -------
    str
        The normalized address.

    Raises
    ------
    ClusterError
        When the protocol is unknown or the host or port is missing or malformed.
    """
    if not isinstance(address, str) or not address.strip():
        raise ClusterError(f"scheduler address must be a non-empty string, got {address!r}")
    text = address.strip()
    protocol, sep, location = text.rpartition("://")
    protocol = protocol.lower() if sep else "tcp"
    if protocol not in SCHEDULER_PROTOCOLS:
        raise ClusterError(
            f"scheduler address {address!r} has unknown protocol {protocol!r}; "
            f"expected one of {', '.join(SCHEDULER_PROTOCOLS)}"
        )
    if protocol == "inproc":
        return text
    try:
        host, port = parse_host_port(location, default_port=DEFAULT_SCHEDULER_PORT)
        port = int(port)
    except (ValueError, TypeError) as exc:
        raise ClusterError(
            f"scheduler address {address!r} is not of the form protocol://host:port ({exc})"
        ) from exc
    if not host or not 0 < port < 65536:
        raise ClusterError(f"scheduler address {address!r} needs a host and a port in 1..65535")
    return f"{protocol}://{unparse_host_port(host, port)}"


def _connect_to_scheduler(
    scheduler: str, security: Security | None, timeout: float | None
) -> ClusterHandle:
    address = parse_scheduler_address(scheduler)
    if address.startswith("tls://") and security is None:
        raise ClusterError(
            f"scheduler address {address!r} uses TLS but no security settings were given "
            "(tls_ca_file, tls_client_cert, tls_client_key)"
        )
    kwargs: dict[str, Any] = {"security": security}
    if timeout is not None:
        kwargs["timeout"] = timeout
    try:
        client = distributed.Client(address, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"could not connect to the Dask scheduler at {address!r}: {exc}"
        ) from exc
    return ClusterHandle(client=client, cluster=None, owns=False, owns_client=True)


def normalize_option_keys(options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Return ``options`` with ``-`` in keys replaced by ``_`` (YAML-style keys).

    Raises
    ------
    ClusterError
        When two keys collide after normalization or a key is not a string.
    """
    if not isinstance(options, Mapping):
        raise ClusterError(f"{where} options must be a mapping, got {type(options).__name__}")
    normalized: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise ClusterError(f"{where} option names must be strings, got {key!r}")
        name = key.replace("-", "_")
        if name in normalized:
            raise ClusterError(f"{where} option {name!r} is given twice (as {key!r})")
        normalized[name] = value
    return normalized


# --------------------------------------------------------------------------------------
# Local cluster


def start_local_cluster(
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    security: Security | None = None,
    dashboard_address: str = DEFAULT_DASHBOARD_ADDRESS,
) -> distributed.LocalCluster:
    """Start a LocalCluster of worker processes bound to 127.0.0.1.

    Parameters
    ----------
    workers, threads_per_worker : int, optional
        Number of worker processes and threads in each (Dask picks from the CPU count
        when None).
    memory_limit : str, optional
        Memory limit per worker; Dask's "auto" when None.
    security : distributed.Security, optional
        TLS settings; the cluster then speaks ``tls://``. They must hold scheduler
        and worker certificates.
    dashboard_address : str, default="127.0.0.1:8787"
        Dashboard address; must name a host so that it does not listen on all
        interfaces.

    Returns
    -------
    distributed.LocalCluster
    """
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        check_positive_int(name, value, error=ClusterError)
    _check_dashboard_host(dashboard_address)
    kwargs: dict[str, Any] = {
        "host": LOOPBACK,
        "processes": True,
        "dashboard_address": dashboard_address,
        "n_workers": workers,
        "threads_per_worker": threads_per_worker,
    }
    if memory_limit is not None:
        kwargs["memory_limit"] = memory_limit
    if security is not None:
        missing = [
            key
            for role in ("scheduler", "worker")
            for key in _TLS_ROLE_KEYS[role]
            if getattr(security, key) is None
        ]
        if missing:
            raise ClusterError(
                "a local TLS cluster needs scheduler and worker certificates; missing "
                f"security settings: {', '.join(missing)}"
            )
        kwargs.update(security=security, protocol="tls://")
    with quiet_local_cluster():
        return distributed.LocalCluster(**kwargs)


def _check_dashboard_host(dashboard_address: str) -> None:
    host = str(dashboard_address).rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        raise ClusterError(
            f"dashboard_address {dashboard_address!r} would listen on all interfaces; "
            f"name a host, e.g. {DEFAULT_DASHBOARD_ADDRESS!r}"
        )


# --------------------------------------------------------------------------------------
# SLURM / PBS through dask-jobqueue


def jobqueue_classes(kind: str) -> tuple[type, type]:
    """Return the dask-jobqueue (cluster class, job class) for ``kind``.

    Raises
    ------
    ClusterError
        When ``kind`` is not "slurm" or "pbs".
    ImportError
        When dask-jobqueue is not installed.
    """
    kind = _check_cluster_kind(kind)
    if kind not in JOBQUEUE_KINDS:
        raise ClusterError(
            f"cluster kind {kind!r} is not a job-queue kind; expected one of "
            f"{', '.join(JOBQUEUE_KINDS)}"
        )
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ImportError(
            f"--cluster {kind} needs dask-jobqueue; install it with {HPC_EXTRA_HINT}"
        ) from exc
    if kind == "slurm":
        from dask_jobqueue.slurm import SLURMJob

        return dask_jobqueue.SLURMCluster, SLURMJob
    from dask_jobqueue.pbs import PBSJob

    return dask_jobqueue.PBSCluster, PBSJob


def split_jobqueue_options(
    options: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split job-queue options into (cluster options, per-job options).

    ``jobs`` (how many jobs :func:`connect` submits) is left out of both. Unless the
    options say otherwise, workers run without a dashboard, and with ``interface`` set
    their HTTP endpoint (health, metrics) listens on that interface's address too:
    ``dask worker`` would otherwise open it on every interface of the compute node.
    Without ``interface`` the workers listen on all interfaces of their node (logged).
    """
    normalized = normalize_option_keys(options, where="jobqueue")
    if "host" in normalized:
        raise ClusterError(
            "jobqueue option 'host' is not supported: set scheduler_options: {host: ...} "
            "or interface: <network interface>"
        )
    normalized.pop("jobs", None)
    cluster_options = {k: v for k, v in normalized.items() if k in _JOBQUEUE_CLUSTER_OPTIONS}
    job_options = {k: v for k, v in normalized.items() if k not in _JOBQUEUE_CLUSTER_OPTIONS}
    extra_args = [str(arg) for arg in job_options.get("worker_extra_args") or []]
    if not any(arg.startswith(("--dashboard", "--no-dashboard")) for arg in extra_args):
        extra_args.append("--no-dashboard")
    interface = cluster_options.get("interface")
    if interface is None:
        logger.warning(
            "jobqueue option 'interface' is not set: Dask workers will listen on every "
            "network interface of their compute nodes"
        )
    elif not any(arg.startswith("--dashboard-address") for arg in extra_args):
        python = str(job_options.get("python") or sys.executable)
        lookup = (
            "from distributed.utils import get_ip_interface; "
            f"print(get_ip_interface({json.dumps(str(interface))}))"
        )
        prologue = list(job_options.get("job_script_prologue") or [])
        prologue.append(
            f'{WORKER_HOST_VARIABLE}="$({shlex.quote(python)} -c {shlex.quote(lookup)})"'
        )
        job_options["job_script_prologue"] = prologue
        extra_args += ["--dashboard-address", f'"${{{WORKER_HOST_VARIABLE}}}:0"']
    job_options["worker_extra_args"] = extra_args
    return cluster_options, job_options


def default_scheduler_host() -> str:
    """Address that compute nodes can use to reach this machine's scheduler.

    Uses distributed's routing heuristic (no packet is sent); one interface, never
    all of them. Set ``interface`` or ``scheduler_options.host`` to choose explicitly.
    """
    return distributed.utils.get_ip()


def _jobqueue_scheduler_options(cluster_options: dict[str, Any]) -> dict[str, Any]:
    scheduler_options = dict(
        normalize_option_keys(
            cluster_options.pop("scheduler_options", None) or {}, where="scheduler_options"
        )
    )
    dashboard = cluster_options.pop("dashboard_address", None)
    scheduler_options.setdefault("dashboard_address", dashboard or DEFAULT_DASHBOARD_ADDRESS)
    _check_dashboard_host(scheduler_options["dashboard_address"])
    host = scheduler_options.get("host")
    if host in ("0.0.0.0", "::", ""):
        raise ClusterError(
            f"scheduler_options.host {host!r} would listen on all interfaces; name the "
            "address the compute nodes reach this machine on, or set interface"
        )
    if host is None and "interface" not in scheduler_options:
        if cluster_options.get("interface") is None:
            # Without a host dask-jobqueue's scheduler listens on every interface.
            scheduler_options["host"] = default_scheduler_host()
            logger.info(
                "job-queue scheduler binds %s; set interface or scheduler_options.host "
                "to choose the network the compute nodes use",
                scheduler_options["host"],
            )
    return scheduler_options


def build_jobqueue_cluster(
    kind: str,
    options: Mapping[str, Any],
    *,
    security: Mapping[str, Any] | Security | None = None,
) -> Any:
    """Create a SLURM or PBS cluster object without submitting any job.

    The scheduler starts on this machine (see :func:`default_scheduler_host`); jobs
    are submitted only by ``cluster.scale(...)``. ``cluster.job_script()`` shows the
    batch script each job would run.

    Parameters
    ----------
    kind : {"slurm", "pbs"}
    options : mapping
        dask-jobqueue options: per-job ones (cores, memory, processes, queue, account,
        walltime, job_extra_directives, job_script_prologue, local_directory,
        log_directory, worker_extra_args, python, ...) and cluster ones (interface,
        scheduler_options, dashboard_address, shared_temp_directory, name).
    security : mapping or distributed.Security, optional
        TLS settings; the cluster then uses ``tls://``.

    Returns
    -------
    dask_jobqueue.JobQueueCluster
    """
    cluster_class, _ = jobqueue_classes(kind)
    cluster_options, job_options = split_jobqueue_options(options)
    scheduler_options = _jobqueue_scheduler_options(cluster_options)
    sec = make_security(security)
    try:
        return cluster_class(
            scheduler_options=scheduler_options,
            security=sec,
            **cluster_options,
            **job_options,
        )
    except TypeError as exc:
        raise ClusterError(f"invalid {kind} jobqueue options {sorted(options)}: {exc}") from exc


def jobqueue_job_script(
    kind: str,
    options: Mapping[str, Any],
    *,
    scheduler_address: str = "tcp://<scheduler-address>:8786",
    security: Mapping[str, Any] | Security | None = None,
) -> str:
    """Return the batch script a SLURM/PBS worker job would run, starting nothing.

    Parameters
    ----------
    kind : {"slurm", "pbs"}
    options : mapping
        The same options as :func:`build_jobqueue_cluster`; cluster-only options
        other than ``interface`` do not change the script.
    scheduler_address : str, default="tcp://<scheduler-address>:8786"
        Scheduler address written into the worker command.
    security : mapping or distributed.Security, optional
        TLS settings; certificate paths then appear in the worker command.

    Returns
    -------
    str
        The job script text.
    """
    _, job_class = jobqueue_classes(kind)
    cluster_options, job_options = split_jobqueue_options(options)
    sec = make_security(security)
    protocol = cluster_options.get("protocol") or ("tls://" if sec is not None else None)
    try:
        job = job_class(
            scheduler_address,
            name="specufex-worker",
            interface=cluster_options.get("interface"),
            protocol=protocol,
            security=sec,
            **job_options,
        )
    except TypeError as exc:
        raise ClusterError(f"invalid {kind} jobqueue options {sorted(options)}: {exc}") from exc
    return job.job_script()


def _scale_jobqueue_cluster(cluster: Any, *, jobs: Any, workers: int | None) -> None:
    if jobs is not None:
        check_positive_int("jobqueue option 'jobs'", jobs, error=ClusterError)
        cluster.scale(jobs=jobs)
    elif workers is not None:
        check_positive_int("workers", workers, error=ClusterError)
        cluster.scale(n=workers)
    else:
        logger.info("no jobs or workers requested; submitting one job")
        cluster.scale(jobs=1)


# --------------------------------------------------------------------------------------
# TLS


def make_security(security: Mapping[str, Any] | Security | None) -> Security | None:
    """Build a :class:`distributed.Security` from TLS settings.

    Parameters
    ----------
    security : mapping, distributed.Security or None
        Keys (``-`` or ``_``): tls_ca_file, tls_client_cert, tls_client_key,
        tls_scheduler_cert, tls_scheduler_key, tls_worker_cert, tls_worker_key,
        tls_ciphers, tls_min_version, tls_max_version, require_encryption. Values are
        file paths (or PEM text). A Security object is returned as it is.

    Returns
    -------
    distributed.Security or None

    Raises
    ------
    ClusterError
        Unknown setting, or a certificate/key file that does not exist.
    """
    if security is None or isinstance(security, Security):
        return security
    settings = normalize_option_keys(security, where="security")
    if not settings:
        return None
    unknown = sorted(set(settings) - set(Security.__slots__) - {"require_encryption"})
    if unknown:
        known = sorted(k for k in Security.__slots__ if k.startswith("tls_"))
        raise ClusterError(
            f"unknown security settings {unknown}; expected some of {known} and require_encryption"
        )
    for key, value in settings.items():
        if not key.startswith("tls_") or key in ("tls_ciphers",) or value is None:
            continue
        if key in ("tls_min_version", "tls_max_version"):
            continue
        text = str(value)
        if "-----BEGIN" not in text and not Path(text).expanduser().is_file():
            raise ClusterError(f"security setting {key}: file {text!r} does not exist")
    settings.setdefault("require_encryption", True)
    return Security(**settings)


def temporary_security() -> Security:
    """Return in-memory self-signed TLS settings for every role (for tests and demos).

    Raises
    ------
    ImportError
        When the ``cryptography`` package is not installed.
    """
    _require_cryptography()
    return Security.temporary()


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            'temporary TLS certificates need the "cryptography" package: pip install '
            "cryptography (or bring your own CA and certificates, see deploy/tls)"
        ) from exc


def write_self_signed_tls(
    directory: str | os.PathLike[str],
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = (LOOPBACK,),
    days: int = 7,
) -> dict[str, Any]:
    """Write a throw-away CA and one certificate/key it signs, for tests and trials.

    Files written into ``directory``: ``ca.pem`` (CA certificate), ``cert.pem`` and
    ``key.pem`` (certificate and private key used by the scheduler, the workers and
    the client). The key file is readable by its owner only.

    Parameters
    ----------
    directory : path
        Existing or new folder for the files.
    hostnames : tuple of str, default=("localhost",)
        Names put in the certificate's subject alternative names.
    ip_addresses : tuple of str, default=("127.0.0.1",)
        Addresses put there.
    days : int, default=7
        Validity of the certificates, in days.

    Returns
    -------
    dict
        Security settings for :func:`make_security` / :func:`connect`, with the paths.

    Raises
    ------
    ImportError
        When the ``cryptography`` package is not installed.
    """
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "specufex-dask test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "specufex-dask")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = folder / "ca.pem"
    cert_path = folder / "cert.pem"
    key_path = folder / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_bytes)

    settings: dict[str, Any] = {"tls_ca_file": str(ca_path), "require_encryption": True}
    for cert_key, key_key in _TLS_ROLE_KEYS.values():
        settings[cert_key] = str(cert_path)
        settings[key_key] = str(key_path)
    return settings


# --------------------------------------------------------------------------------------
# Configuration files


def connect_options_from_config(section: Any) -> dict[str, Any]:
    """Turn the ``cluster`` section of a specufex-dask configuration into connect() kwargs.

    Parameters
    ----------
    section : mapping, dataclass (``specufex_dask.cli.config.ClusterConfig``) or None
        Keys (``-`` or ``_``): ``scheduler``, ``kind`` (alias ``cluster``), ``workers``,
        ``threads_per_worker``, ``memory_limit``, ``dashboard_address``, ``timeout``,
        ``jobqueue`` (mapping), ``security`` (mapping). Unset (None) values and empty
        ``jobqueue``/``security`` mappings are left out so connect() keeps its defaults;
        ``no_worker_timeout`` (how long the jobs wait without workers) is not the
        cluster's and is left out too.

    Returns
    -------
    dict
        Keyword arguments for :func:`connect`.

    Raises
    ------
    ClusterError
        Unknown keys or a wrong type, naming the key.
    """
    if section is None:
        return {}
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        section = dataclasses.asdict(section)
    settings = normalize_option_keys(section, where="cluster config")
    # how long a job waits without workers: the jobs' setting, not the cluster's
    settings.pop("no_worker_timeout", None)
    if "kind" in settings and "cluster" in settings:
        raise ClusterError("cluster config: give either 'kind' or 'cluster', not both")
    if "kind" in settings:
        settings["cluster"] = settings.pop("kind")
    allowed = {
        "scheduler",
        "cluster",
        "workers",
        "threads_per_worker",
        "memory_limit",
        "dashboard_address",
        "timeout",
        "jobqueue",
        "security",
    }
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ClusterError(
            f"cluster config: unknown keys {unknown}; expected some of {sorted(allowed)}"
        )
    if settings.get("cluster") is not None:
        settings["cluster"] = _check_cluster_kind(settings["cluster"])
    for key in ("jobqueue", "security"):
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ClusterError(f"cluster config: {key!r} must be a mapping")
        settings[key] = normalize_option_keys(value, where=f"cluster.{key}") or None
    return {key: value for key, value in settings.items() if value is not None}
