"""One writer per archive: a lease file beside the archive, kept alive by a heartbeat.

A fit, transform, clustering or ingest holds the archive's lease while it writes
(:func:`archive_lease`). The lease is the file ``.<name>.specufex_dask_lease.json`` in the
archive's parent folder: beside the archive rather than inside it, so that an ingest can
lease an archive it has yet to create, and a copy of the archive carries no lease along.
It is created atomically (``O_CREAT | O_EXCL``) and names its holder: user, host, PID,
command and start time, with a heartbeat timestamp that a background thread refreshes.

A second writer is refused with a one-line :class:`ArchiveBusy` naming the holder. A lease
is stale once its heartbeat is older than the timeout and, when it was taken on this host,
its process is not running; a stale lease is broken with a one-line warning.

The file operations go through :class:`LeaseFile` (local files) or :class:`LeaseObject`
(an archive at an fsspec URL: the object ``.<name>.specufex_dask_lease.json`` beside the
archive's prefix). An object is created with a conditional PUT (``If-None-Match: *``) on
S3 and in ``memory://``, which is as atomic as ``O_EXCL``; on other file systems fsspec
checks for the object and then writes it, and the taker reads the object back after
:data:`SETTLE_S` to see whether it won, which is best effort only (two takers within
that time may both believe they hold it). Heartbeats replace the object whole (one PUT).
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from specufex_dask.io.archive import ArchiveError, require_reachable
from specufex_dask.io.location import ArchiveLocation, ArchivePath, as_location, mask_options

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LEASE_SUFFIX",
    "ArchiveBusy",
    "LeaseFile",
    "LeaseObject",
    "LeaseHolder",
    "archive_lease",
    "lease_path",
    "read_lease",
]

logger = logging.getLogger(__name__)

LEASE_SUFFIX = ".specufex_dask_lease.json"
DEFAULT_TIMEOUT_S = 60.0
# an unreadable lease is most likely being written this instant: look again a few times
_UNREADABLE_RETRIES = 5
_RETRY_S = 0.05
SETTLE_S = 0.5
"""Seconds a taker of a lease object without a conditional create waits before reading
it back to see whether it won."""
# fsspec file systems whose pipe_file(mode="create") is a conditional create
_CONDITIONAL = ("S3FileSystem", "MemoryFileSystem")


class ArchiveBusy(ArchiveError):
    """Another writer holds the archive's lease."""


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as its file records it.

    Attributes
    ----------
    owner, host : str
        User name and host name of the holding process.
    pid : int
        Its process id.
    pid_start : int or None
        Its start time in clock ticks since boot (Linux), to tell a reused PID apart.
    command : str
        What it runs (``fit``, ``transform``, ``run``, ``cluster``, ``ingest``).
    argv : str
        Its command line.
    started, heartbeat : float
        When it took the lease and last refreshed it (seconds since the epoch).
    token : str
        Tells this taking of the lease from any other.
    """

    owner: str
    host: str
    pid: int
    pid_start: int | None
    command: str
    argv: str
    started: float
    heartbeat: float
    token: str

    def to_bytes(self) -> bytes:
        """The file's content."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseHolder | None:
        """The holder recorded in ``data``; None when it is not a whole lease."""
        try:
            fields = json.loads(data.decode())
            return cls(**fields)
        except (ValueError, TypeError):
            return None

    def describe(self, now: float) -> str:
        """``fit (PID 12 on host h, user u, since 2026-12-01 12:00:00 UTC, ...)``."""
        return (
            f"`{self.command}` (PID {self.pid} on host {self.host}, user {self.owner}, since "
            f"{_utc(self.started)}, last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)"
        )


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class LeaseFile:
    """The lease file's operations on a local file system.

    Parameters
    ----------
    path : Path
        The lease file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, data: bytes) -> bool:
        """Create the file holding ``data``, atomically; False when it exists."""
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return True

    def read(self) -> bytes | None:
        """The content, or None without a file."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def modified(self) -> float | None:
        """Last change of the file (seconds since the epoch), or None without one."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def replace(self, data: bytes) -> None:
        """Swap in new content whole: a reader sees the old or the new, never a part."""
        partial = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        partial.write_bytes(data)
        os.replace(partial, self.path)

    def remove(self) -> None:
        """Delete the file (gone already is fine)."""
        self.path.unlink(missing_ok=True)

    def beside(self, suffix: str) -> LeaseFile:
        """The file of this one's name with ``suffix`` added."""
        return LeaseFile(self.path.with_name(self.path.name + suffix))


class LeaseObject:
    """The lease's operations on an object of an fsspec file system.

    Parameters
    ----------
    location : ArchiveLocation
        The object (its URL and storage options).
    """

    def __init__(self, location: ArchiveLocation) -> None:
        self.location = location
        self.path = location.url  # named in messages: never the storage options
        self._fs, self._key = location.filesystem()

    def create(self, data: bytes) -> bool:
        """Create the object holding ``data``; False when it exists (see the module's
        docstring for how atomic that is)."""
        try:
            self._fs.pipe_file(self._key, data, mode="create")
        except FileExistsError:
            return False
        except OSError as error:
            # S3 answers 412 to a conditional PUT on an existing key (PreconditionFailed)
            if error.errno == errno.EINVAL and self.read() is not None:
                return False
            raise
        if type(self._fs).__name__ in _CONDITIONAL:
            return True
        time.sleep(SETTLE_S)
        return self.read() == data

    def read(self) -> bytes | None:
        """The content, or None without an object."""
        try:
            return bytes(self._fs.cat_file(self._key))
        except FileNotFoundError:
            return None

    def modified(self) -> float | None:
        """Last change of the object (seconds since the epoch), or None without one."""
        try:
            info = self._fs.info(self._key)
        except FileNotFoundError:
            return None
        stamp = info.get("LastModified", info.get("mtime", info.get("created")))
        if isinstance(stamp, datetime):
            return stamp.timestamp()
        return None if stamp is None else float(stamp)

    def replace(self, data: bytes) -> None:
        """Write new content whole (one PUT: a reader sees the old or the new)."""
        self._fs.pipe_file(self._key, data)

    def remove(self) -> None:
        """Delete the object (gone already is fine)."""
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self._key)

    def beside(self, suffix: str) -> LeaseObject:
        """The object of this one's name with ``suffix`` added."""
        return LeaseObject(ArchiveLocation(self.location.url + suffix,
                                           self.location.storage_options))  # fmt: skip


def lease_path(archive: ArchivePath) -> Path:
    """The lease file of a local ``archive``: ``.<name>.specufex_dask_lease.json`` beside it."""
    location = as_location(archive)
    if not location.local:
        raise ArchiveError(f"{archive}: a URL has a lease object, not a file (lease_file)")
    return location.path.with_name(f".{location.path.name}{LEASE_SUFFIX}")


def lease_file(archive: ArchivePath) -> LeaseFile | LeaseObject:
    """The lease of ``archive``: a file beside a local one, an object beside a URL's."""
    location = as_location(archive)
    if location.local:
        return LeaseFile(lease_path(location))
    return LeaseObject(location.sibling(f".{location.name}{LEASE_SUFFIX}"))


def read_lease(archive: ArchivePath) -> LeaseHolder | None:
    """The holder of ``archive``'s lease, or None when nobody holds a readable one."""
    data = lease_file(archive).read()
    return None if data is None else LeaseHolder.from_bytes(data)


# ----------------------------------------------------------------------------- processes


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing ")"
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def _process_running(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and is the one started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    if state in ("Z", "X"):
        return False
    return start is None or _process_start(pid) in (None, start)


def _host() -> str:
    return socket.gethostname()


def _stale(holder: LeaseHolder, now: float, timeout: float) -> str | None:
    """Why ``holder`` may be broken, or None: no heartbeat for ``timeout`` seconds and, on
    this host, no such process (another host's processes cannot be looked at)."""
    if now - holder.heartbeat <= timeout:
        return None
    if holder.host != _host():
        return f"host {holder.host} has not refreshed it for over {timeout:g} s"
    if _process_running(holder.pid, holder.pid_start):
        return None
    return "its process is not running"


# ----------------------------------------------------------------------------- the lease


class _Lease:
    """A lease this process holds, its heartbeat thread, and how often it was entered."""

    def __init__(
        self, file: LeaseFile | LeaseObject, holder: LeaseHolder, interval: float
    ) -> None:
        self.file = file
        self.holder = holder
        self.depth = 1
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), name="specufex-lease", daemon=True
        )
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if not self._still_ours():
                self.lost = True
                logger.error(
                    "the lease %s was taken over by another process; this %s no longer "
                    "holds the archive",
                    self.file.path,
                    self.holder.command,
                )
                return
            holder = _with_heartbeat(self.holder, time.time())
            try:
                self.file.replace(holder.to_bytes())
            except OSError as error:  # a full disk, say: the next beat may get through
                logger.warning("cannot refresh the lease %s: %s", self.file.path, error)
                continue
            self.holder = holder

    def _still_ours(self) -> bool:
        data = self.file.read()
        current = None if data is None else LeaseHolder.from_bytes(data)
        return current is not None and current.token == self.holder.token

    def release(self) -> None:
        """Stop the heartbeat and delete the file, unless another process took it over."""
        self._stop.set()
        self._thread.join()
        if not self.lost and self._still_ours():
            self.file.remove()


def _with_heartbeat(holder: LeaseHolder, now: float) -> LeaseHolder:
    fields = asdict(holder)
    fields["heartbeat"] = now
    return LeaseHolder(**fields)


_held: dict[str, _Lease] = {}
_held_lock = threading.Lock()


def _new_holder(command: str) -> LeaseHolder:
    now = time.time()
    try:
        owner = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        owner = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return LeaseHolder(
        owner=owner,
        host=_host(),
        pid=os.getpid(),
        pid_start=_process_start(os.getpid()),
        command=command,
        argv=" ".join(_masked(argument) for argument in sys.argv),
        started=now,
        heartbeat=now,
        token=uuid.uuid4().hex,
    )


def _masked(argument: str) -> str:
    """A command-line argument as the lease records it: ``key=value`` with a secret key
    (``--storage-option secret=...``) masked."""
    name, equals, value = argument.partition("=")
    if not equals:
        return argument
    if "=" in value:  # --storage-option=key=value
        return f"{name}={_masked(value)}"
    return f"{name}={mask_options({name.lstrip('-'): value})[name.lstrip('-')]}"


def _break_stale(file: LeaseFile | LeaseObject, stale: LeaseHolder | None, timeout: float) -> None:
    """Delete a stale lease, if it is still the one judged stale.

    Breakers take a guard file first, so that two of them cannot both break a lease and
    then delete each other's new one.
    """
    guard = file.beside(".break")
    if not guard.create(b""):
        changed = guard.modified()
        if changed is not None and time.time() - changed > timeout:
            guard.remove()  # left by a breaker that died
        time.sleep(_RETRY_S)  # another breaker is at work
        return
    try:
        data = file.read()
        current = None if data is None else LeaseHolder.from_bytes(data)
        if current == stale:  # None == None: still unreadable
            file.remove()
    finally:
        guard.remove()


def _refusal(archive: ArchivePath, file: LeaseFile | LeaseObject, holder: LeaseHolder | None,
             timeout: float) -> ArchiveBusy:  # fmt: skip
    now = time.time()
    who = "a writer whose lease file is unreadable" if holder is None else holder.describe(now)
    return ArchiveBusy(
        f"archive {archive} is in use by {who}; wait for it to finish, or if that process "
        f"is gone remove {file.path} (it is broken automatically once its heartbeat is "
        f"older than {timeout:g} s and the process is not running)"
    )


def _take(archive: ArchivePath, file: LeaseFile | LeaseObject, command: str,
          timeout: float) -> LeaseHolder:  # fmt: skip
    """Create the lease file, breaking a stale one; raise :class:`ArchiveBusy` if held."""
    unreadable = 0
    while True:
        holder = _new_holder(command)
        try:
            if file.create(holder.to_bytes()):
                return holder
        except OSError as error:
            raise _cannot_create(archive, file, error) from error
        data = file.read()
        if data is None:
            continue  # released this instant
        current = LeaseHolder.from_bytes(data)
        now = time.time()
        if current is None:
            changed = file.modified()
            if changed is not None and now - changed > timeout:
                logger.warning("broke the unreadable stale lease %s", file.path)
                _break_stale(file, None, timeout)
                continue
            unreadable += 1
            if unreadable > _UNREADABLE_RETRIES:
                raise _refusal(archive, file, None, timeout)
            time.sleep(_RETRY_S)
            continue
        reason = _stale(current, now, timeout)
        if reason is None:
            raise _refusal(archive, file, current, timeout)
        logger.warning(
            "broke the stale lease of %s held by %s: %s", archive, current.describe(now), reason
        )
        _break_stale(file, current, timeout)


def _cannot_create(archive: ArchivePath, file: LeaseFile | LeaseObject,
                   error: OSError) -> ArchiveError:  # fmt: skip
    """The one-line error of a lease that could not be written."""
    if isinstance(file, LeaseFile):
        return ArchiveError(
            f"cannot create the lease file {file.path} of archive {archive}: {error}; "
            "the folder holding the archive must be writable"
        )
    refused = "access denied" if isinstance(error, PermissionError) else str(error)
    return ArchiveError(
        f"store {archive}: writing refused (creating the lease object {file.path}: "
        f"{refused}); the bucket must be writable with the given storage options"
    )


@contextlib.contextmanager
def archive_lease(
    archive: ArchivePath,
    command: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    heartbeat_s: float | None = None,
) -> Iterator[LeaseHolder]:
    """Hold the lease of ``archive`` inside the ``with`` block.

    Parameters
    ----------
    archive : str, PathLike or ArchiveLocation
        The archive (it need not exist yet: an ingest leases the archive it creates): a
        path or a URL.
    command : str
        What this process does to it, shown to a refused writer.
    timeout : float, default=60
        Seconds without a heartbeat after which the lease of a process that is not
        running (or runs on another host) is broken.
    heartbeat_s : float, optional
        Seconds between heartbeats; a quarter of ``timeout`` by default.

    Yields
    ------
    LeaseHolder
        The lease as first written.

    Raises
    ------
    ArchiveBusy
        When another process holds a lease that is not stale.

    Notes
    -----
    The lease is released when the block ends, by an exception or KeyboardInterrupt too.
    Within one process it is re-entrant: a ``run`` that leases the archive and then fits
    and transforms it (each taking the lease too) holds it throughout.

    Examples
    --------
    >>> with archive_lease("events.zarr", "fit") as holder:
    ...     read_lease("events.zarr") == holder
    True
    >>> read_lease("events.zarr") is None
    True
    """
    location = as_location(archive)
    file = lease_file(location)
    path = str(file.path)
    with _held_lock:
        lease = _held.get(path)
        if lease is not None:
            lease.depth += 1
    if lease is None:
        if isinstance(file, LeaseFile):
            file.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            require_reachable(location)
        holder = _take(archive, file, command, timeout)
        try:
            lease = _Lease(file, holder, timeout / 4 if heartbeat_s is None else heartbeat_s)
        except BaseException:
            file.remove()
            raise
        with _held_lock:
            _held[path] = lease
    try:
        yield lease.holder
    finally:
        with _held_lock:
            lease.depth -= 1
            last = lease.depth == 0
            if last:
                del _held[path]
        if last:
            lease.release()
