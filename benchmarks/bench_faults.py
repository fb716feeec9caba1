"""Fault cases with real processes: what each one should do, and what it did.

Every case starts what it needs on 127.0.0.1 (a ``dask scheduler``, ``dask worker``
processes with or without a nanny, the ``specufex-dask`` command line in its own
process), breaks something for real (SIGKILL of a worker or of the driver, a second
writer, a full disk on a small tmpfs, bytes overwritten in a chunk file, a deleted chunk
file, a malformed attribute, a read-only archive) and compares what happened with what
should. The table printed at the end has one row per case: case, expected, observed,
pass. The script exits 1 when a case fails.

    python benchmarks/bench_faults.py                 # every case
    python benchmarks/bench_faults.py --cases lease resume
    python benchmarks/bench_faults.py --list

Cases that need root (a tmpfs for the full disk) say so in their row when they cannot
run. Data: 48 synthetic spectrograms of 24 x 16 (seeded Gamma values), so a fit takes
seconds and a kill lands in the middle of it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_EVENTS, N_FREQUENCIES, N_TIMES = 48, 24, 16
FIT = ["--num-pat", "8", "--num-state", "4", "--batch-size", "8", "--seed", "3"]
BUDGET = ["--nmf-steps", "60", "--hmm-steps", "30", "--tol", "none", "--checkpoint-every", "5"]
WAIT_S = 180.0
CLI = [sys.executable, "-m", "specufex_dask.cli"]


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    case: str
    expected: str
    observed: str
    passed: bool | None  # None: could not run here (the reason is in ``observed``)


# ----------------------------------------------------------------------------- helpers


def make_archive(path: Path, seed: int = 0, n_events: int = N_EVENTS) -> Path:
    """A small archive of planted Gamma spectrograms."""
    from specufex_dask.io.archive import write_spectrograms

    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 1.0, size=(n_events, N_FREQUENCIES, N_TIMES))
    return write_spectrograms(
        path,
        values,
        [f"ev{i:05d}" for i in range(n_events)],
        np.linspace(1.0, 20.0, N_FREQUENCIES),
        np.arange(N_TIMES) * 0.5,
        chunk_events=4,
    )


def cli(*args: object, timeout: float = WAIT_S) -> subprocess.CompletedProcess[str]:
    """Run the command line to its end."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def start_cli(*args: object, log: Path) -> subprocess.Popen[bytes]:
    """Start the command line in the background, its output in ``log``."""
    with open(log, "wb") as handle:
        return subprocess.Popen([*CLI, *map(str, args)], stdout=handle, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def model_arrays(archive: Path) -> dict[str, np.ndarray]:
    """Every array of the fitted model, and the outputs when there are some."""
    import zarr

    group = zarr.open_group(str(archive), mode="r", use_consolidated=False)
    arrays = {f"model/{k}": v[:] for k, v in group["model"].arrays()}
    for name in ("activation", "state_probability", "transition", "fingerprint"):
        if name in group:
            arrays[name] = group[name][:]
    return arrays


def same_bits(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> str:
    """ "" when the two sets of arrays are bit for bit equal, else what differs."""
    if left.keys() != right.keys():
        return f"different arrays: {sorted(left.keys() ^ right.keys())}"
    differing = [k for k in left if not np.array_equal(left[k], right[k], equal_nan=True)]
    return f"differ: {', '.join(differing)}" if differing else ""


def checkpointed_steps(archive: Path) -> int:
    """NMF steps of the newest checkpoint (0 without one)."""
    import zarr

    try:
        group = zarr.open_group(str(archive / "model"), mode="r")
        progress = group.attrs.get("progress")
    except Exception:  # noqa: BLE001 - not written yet
        return 0
    if isinstance(progress, str):
        progress = json.loads(progress)
    return int((progress or {}).get("nmf_steps", 0))


@dataclass
class Processes:
    """A scheduler and workers on 127.0.0.1, stopped on exit."""

    folder: Path
    scheduler: subprocess.Popen[bytes]
    address: str
    workers: list[subprocess.Popen[bytes]]

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes the scheduler knows (under a nanny: the child)."""
        import distributed

        with distributed.Client(self.address, timeout=30) as client:
            return sorted(client.run(os.getpid).values())

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def dask_processes(
    folder: Path, n_workers: int = 2, nanny: bool = True, threads: int = 1
) -> Iterator[Processes]:
    """``dask scheduler`` and ``dask worker`` processes, all on 127.0.0.1."""
    scheduler_file = folder / "scheduler.json"
    scheduler = subprocess.Popen(
        [
            sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
            "--port", "0", "--dashboard-address", "127.0.0.1:0", "--no-dashboard",
            "--scheduler-file", str(scheduler_file),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes = Processes(folder, scheduler, "", [])
    try:
        processes.address = str(
            wait_for(
                lambda: (
                    scheduler_file.exists() and json.loads(scheduler_file.read_text())["address"]
                ),
                "the scheduler",
            )
        )
        for _ in range(n_workers):
            processes.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        processes.address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        str(threads),
                        "--no-dashboard",
                        "--dashboard-address",
                        "127.0.0.1:0",
                        "--nanny" if nanny else "--no-nanny",
                        "--local-directory",
                        str(folder),
                        "--death-timeout",
                        "60",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
        wait_for(lambda: len(processes.worker_pids()) == n_workers, "the workers")
        yield processes
    finally:
        processes.stop()


# ----------------------------------------------------------------------------- cases


def case_worker_killed_mid_fit(folder: Path, nanny: bool = True, threads: int = 1) -> Row:
    """A worker SIGKILLed mid-fit: the fit ends with the same bits as without the kill."""
    name = f"worker SIGKILL mid-fit ({'nanny' if nanny else 'no nanny'}, {threads} thread(s))"
    expected = "exit 0, model and outputs bit-identical to an undisturbed run"
    with dask_processes(folder, nanny=nanny, threads=threads) as processes:
        reference = make_archive(folder / "reference.zarr")
        done = cli("run", reference, *FIT, *BUDGET, "--scheduler", processes.address, "--quiet")
        if done.returncode != 0:
            return Row(name, expected, f"undisturbed run failed: {done.stderr[-200:]}", False)
        archive = make_archive(folder / "killed.zarr")
        run = start_cli(
            "run", archive, *FIT, *BUDGET, "--scheduler", processes.address, log=folder / "run.log"
        )
        wait_for(lambda: checkpointed_steps(archive) >= 5, "the first checkpoint")
        victim = processes.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        code = run.wait(WAIT_S)
    difference = same_bits(model_arrays(reference), model_arrays(archive))
    observed = f"exit {code}; " + (difference or "bit-identical")
    return Row(name, expected, observed, code == 0 and not difference)


def case_worker_killed_no_nanny(folder: Path) -> Row:
    return case_worker_killed_mid_fit(folder, nanny=False, threads=2)


def case_driver_killed_and_resumed(folder: Path) -> Row:
    """The driver SIGKILLed mid-fit, then ``run --resume``: the bits of an undisturbed run."""
    name = "driver SIGKILL mid-fit, then run --resume"
    expected = "resume exits 0, model and outputs bit-identical to an undisturbed run"
    reference = make_archive(folder / "reference.zarr")
    done = cli("run", reference, *FIT, *BUDGET, "--workers", "1", "--quiet")
    if done.returncode != 0:
        return Row(name, expected, f"undisturbed run failed: {done.stderr[-200:]}", False)
    archive = make_archive(folder / "killed.zarr")
    run = start_cli("run", archive, *FIT, *BUDGET, "--workers", "1", log=folder / "run.log")
    wait_for(lambda: checkpointed_steps(archive) >= 10, "a checkpoint")
    run.send_signal(signal.SIGKILL)
    run.wait(WAIT_S)
    stopped_at = checkpointed_steps(archive)
    # The killed driver's lease is stale only after its timeout; removing the file is
    # what its refusal message says to do when the holder is gone.
    for lease in folder.glob(".killed.zarr*lease*"):
        lease.unlink()
    resumed = cli("run", archive, *FIT, *BUDGET, "--workers", "1", "--resume", "--quiet")
    difference = same_bits(model_arrays(reference), model_arrays(archive))
    observed = f"killed after checkpoint {stopped_at}; resume exit {resumed.returncode}; " + (
        difference or "bit-identical"
    )
    return Row(name, expected, observed, resumed.returncode == 0 and not difference)


def case_second_writer(folder: Path) -> Row:
    """A fit while another run writes the archive: refused with the holder named."""
    name = "second writer while a run holds the archive"
    expected = "second command exits 1 naming the holder's PID; the first ends normally"
    archive = make_archive(folder / "shared.zarr")
    long_budget = ["--nmf-steps", "400", "--hmm-steps", "50", "--tol", "none"]
    first = start_cli("run", archive, *FIT, *long_budget, "--workers", "1", log=folder / "a.log")
    wait_for(lambda: list(folder.glob(".shared.zarr*lease*")), "the first run's lease")
    second = cli("fit", archive, *FIT, "--seed", "8", "--workers", "1")
    first_code = first.wait(WAIT_S)
    message = second.stderr.strip().splitlines()[-1] if second.stderr.strip() else ""
    named = str(first.pid) in message
    observed = f"second exit {second.returncode}: {message[:160]!r}; first exit {first_code}"
    return Row(name, expected, observed, second.returncode == 1 and named and first_code == 0)


def case_killed_transform(folder: Path) -> Row:
    """A transform killed half-way: info says incomplete, cluster refuses, resume ends it."""
    name = "transform SIGKILLed half-way"
    expected = "info --json: events_done < n, complete false; cluster exits 1; resume completes"
    # Enough events that the transform is still running when the kill comes.
    n_events = 4000
    archive = make_archive(folder / "events.zarr", n_events=n_events)
    fitted = cli("fit", archive, *FIT, "--nmf-steps", "20", "--hmm-steps", "10", "--workers", "1")
    if fitted.returncode != 0:
        return Row(name, expected, f"fit failed: {fitted.stderr[-200:]}", False)
    transform = start_cli("transform", archive, "--workers", "1", log=folder / "t.log")

    def some_done() -> bool:
        import zarr

        try:
            done = zarr.open_group(str(archive), mode="r")["transformed"][:]
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return 0 < int(done.sum()) < n_events

    try:
        wait_for(some_done, "part of the transform", timeout=60)
    except TimeoutError:
        transform.kill()
        return Row(name, expected, "the transform finished before it could be killed", None)
    transform.send_signal(signal.SIGKILL)
    transform.wait(WAIT_S)
    for lease in folder.glob(".events.zarr*lease*"):
        lease.unlink()
    info = json.loads(cli("info", archive, "--json").stdout)
    status = info["outputs"]["fingerprint"]
    clustered = cli("cluster", archive, "--n-clusters", "2")
    cli("transform", archive, "--resume", "--workers", "1", "--quiet")
    after = json.loads(cli("info", archive, "--json").stdout)["outputs"]["fingerprint"]
    observed = (
        f"events_done {status['events_done']}/{n_events}, complete {status['complete']}; "
        f"cluster exit {clustered.returncode}; after resume complete {after['complete']}"
    )
    passed = (
        status["events_done"] < n_events
        and status["complete"] is False
        and clustered.returncode == 1
        and after["complete"] is True
    )
    return Row(name, expected, observed, passed)


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def _one_clean_line(result: subprocess.CompletedProcess[str]) -> bool:
    """Exit 1 with an error line and no traceback."""
    return result.returncode == 1 and "Traceback" not in result.stderr and bool(_last_line(result))


def case_resume_with_other_settings(folder: Path) -> Row:
    """``run --resume`` with other patterns, states, batch size and seed: refused."""
    name = "resume with changed settings"
    expected = "exit 1 listing num_pat, num_state, batch_size, random_state; model unchanged"
    archive = make_archive(folder / "events.zarr")
    killed = start_cli("run", archive, *FIT, *BUDGET, "--workers", "1", log=folder / "run.log")
    wait_for(lambda: checkpointed_steps(archive) >= 5, "a checkpoint")
    killed.send_signal(signal.SIGKILL)
    killed.wait(WAIT_S)
    for lease in folder.glob(".events.zarr*lease*"):
        lease.unlink()
    before = model_arrays(archive)
    other = ["--num-pat", "5", "--num-state", "3", "--batch-size", "16", "--seed", "8"]
    resumed = cli("run", archive, *other, *BUDGET, "--workers", "1", "--resume")
    listed = [
        k for k in ("num_pat", "num_state", "batch_size", "random_state") if k in resumed.stderr
    ]
    unchanged = not same_bits(before, model_arrays(archive))
    observed = f"exit {resumed.returncode}; listed {', '.join(listed) or 'nothing'}; " + (
        "model unchanged" if unchanged else "model CHANGED"
    )
    passed = resumed.returncode == 1 and len(listed) == 4 and unchanged
    return Row(name, expected, observed, passed)


def case_tol_none(folder: Path) -> Row:
    """``--tol none`` runs every step of the budget."""
    name = "--tol none"
    expected = "every step of --nmf-steps 40 --hmm-steps 30 is run"
    archive = make_archive(folder / "events.zarr")
    done = cli("fit", archive, *FIT, "--nmf-steps", "40", "--hmm-steps", "30", "--tol", "none",
               "--workers", "1")  # fmt: skip
    import zarr

    progress = zarr.open_group(str(archive / "model"), mode="r").attrs["progress"]
    progress = json.loads(progress) if isinstance(progress, str) else progress
    steps = (int(progress["nmf_steps"]), int(progress["hmm_steps"]))
    observed = f"exit {done.returncode}; steps run {steps[0]} / {steps[1]}"
    return Row(name, expected, observed, done.returncode == 0 and steps == (40, 30))


def case_read_only_cluster(folder: Path) -> Row:
    """``cluster`` on an archive whose files are read-only: refused, nothing written."""
    name = "cluster on a read-only archive"
    expected = "exit 1 'read-only', no labels written"
    archive = make_archive(folder / "events.zarr")
    cli("run", archive, *FIT, "--nmf-steps", "20", "--hmm-steps", "10", "--workers", "1")
    subprocess.run(["chmod", "-R", "a-w", str(archive)], check=True)
    try:
        clustered = cli("cluster", archive, "--n-clusters", "2")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(archive)], check=True)
    written = (archive / "cluster").exists()
    observed = (
        f"exit {clustered.returncode}: {_last_line(clustered)[:120]!r}; labels written: {written}"
    )
    passed = _one_clean_line(clustered) and "read-only" in clustered.stderr and not written
    return Row(name, expected, observed, passed)


def case_model_too_large(folder: Path) -> Row:
    """``--num-pat 100000`` on a small archive: refused up front with the numbers."""
    name = "--num-pat 100000"
    expected = "exit 1 within seconds naming the bytes needed; no checkpoint"
    archive = make_archive(folder / "events.zarr")
    start = time.perf_counter()
    done = cli("fit", archive, "--num-pat", "100000", "--workers", "1", "--memory-limit", "200MB")
    seconds = time.perf_counter() - start
    checkpoint = (archive / "model").exists()
    observed = (
        f"exit {done.returncode} after {seconds:.0f} s: {_last_line(done)[:140]!r}; "
        f"checkpoint: {checkpoint}"
    )
    passed = _one_clean_line(done) and "byte" in done.stderr.lower() and not checkpoint
    return Row(name, expected, observed, passed)


def _chunk_files(archive: Path) -> list[Path]:
    return sorted(p for p in (archive / "spectrogram" / "c").rglob("*") if p.is_file())


def case_damaged_chunk(folder: Path) -> Row:
    """64 random bytes written into a spectrogram chunk: named as damage with its file."""
    name = "64 random bytes in a chunk"
    expected = "fit exits 1 naming the chunk file and 'damaged'"
    archive = make_archive(folder / "events.zarr")
    victim = _chunk_files(archive)[3]
    data = bytearray(victim.read_bytes())
    offset = len(data) // 2
    data[offset : offset + 64] = np.random.default_rng(1).bytes(64)
    victim.write_bytes(bytes(data))
    return _fit_names_chunk(archive, victim, "damaged", name, expected)


def case_missing_chunk(folder: Path) -> Row:
    """A deleted spectrogram chunk file: named as missing with its file and events."""
    name = "deleted chunk file"
    expected = "fit exits 1 naming the chunk file as missing"
    archive = make_archive(folder / "events.zarr")
    victim = _chunk_files(archive)[5]
    victim.unlink()
    return _fit_names_chunk(archive, victim, "missing", name, expected)


def _fit_names_chunk(archive: Path, victim: Path, word: str, name: str, expected: str) -> Row:
    """A fit of ``archive`` must fail with one line naming ``victim`` and ``word``."""
    done = cli("fit", archive, *FIT, "--nmf-steps", "20", "--hmm-steps", "10", "--workers", "1")
    line = _last_line(done)
    observed = f"exit {done.returncode}: {line[:200]!r}"
    passed = _one_clean_line(done) and word in line and str(victim) in line
    return Row(name, expected, observed, passed)


def case_zarr_v2(folder: Path) -> Row:
    """A writable Zarr v2 archive written by xarray: named as format 2, not read-only."""
    import xarray as xr

    name = "Zarr format 2 archive"
    expected = "fit exits 1 naming 'Zarr format 2' and how to convert"
    source = make_archive(folder / "v3.zarr")
    archive = folder / "v2.zarr"
    xr.open_zarr(source).drop_encoding().to_zarr(archive, zarr_format=2, consolidated=True)
    done = cli("fit", archive, *FIT, "--workers", "1")
    line = _last_line(done)
    observed = f"exit {done.returncode}: {line[:160]!r}"
    passed = _one_clean_line(done) and "format 2" in line and "read-only" not in line
    return Row(name, expected, observed, passed)


def case_malformed_attribute(folder: Path) -> Row:
    """Non-JSON ``spectrogram_parameters``: the attribute and the store are named."""
    import zarr

    name = "non-JSON spectrogram_parameters"
    expected = "info exits 1 naming the attribute and the store"
    archive = make_archive(folder / "events.zarr")
    group = zarr.open_group(str(archive), mode="r+")
    group.attrs["spectrogram_parameters"] = "not json {"
    zarr.consolidate_metadata(str(archive))
    done = cli("info", archive)
    line = _last_line(done)
    observed = f"exit {done.returncode}: {line[:160]!r}"
    passed = _one_clean_line(done) and "spectrogram_parameters" in line and str(archive) in line
    return Row(name, expected, observed, passed)


def case_disk_full(folder: Path) -> Row:
    """A fit's checkpoints on a full disk (a 3 MB tmpfs): one line, the old checkpoint
    intact, no partial folder left."""
    name = "disk full during a fit (tmpfs)"
    expected = "exit 1, one line naming the free space; no .model.partial-* left"
    mount = folder / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        return Row(name, expected, "cannot mount a tmpfs here (needs root)", None)
    try:
        archive = make_archive(mount / "events.zarr")
        # Fill the disk but for a little room: the first checkpoints may fit, the
        # outputs of the transform cannot.
        filler = mount / "filler"
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        filler.write_bytes(b"\0" * max(free - 60_000, 0))
        done = cli("run", archive, *FIT, *BUDGET, "--workers", "1")
        partial = list(archive.glob(".model.partial-*"))
        line = _last_line(done)
        observed = f"exit {done.returncode}: {line[:200]!r}; partial folders left: {len(partial)}"
        passed = _one_clean_line(done) and "free" in line and not partial
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    return Row(name, expected, observed, passed)


def case_no_workers(folder: Path) -> Row:
    """Every worker gone mid-fit: a warning, then a one-line failure; resume ends it."""
    name = "every worker gone mid-fit"
    expected = "warns, exits 1 within the timeout naming the scheduler; --resume then finishes"
    with dask_processes(folder, n_workers=1, nanny=False) as processes:
        archive = make_archive(folder / "events.zarr")
        scheduler = ["--scheduler", processes.address]
        run = start_cli("fit", archive, *FIT, *BUDGET, *scheduler, "--no-worker-timeout", "5",
                        log=folder / "fit.log")  # fmt: skip
        wait_for(lambda: checkpointed_steps(archive) >= 5, "the first checkpoint")
        start = time.perf_counter()
        for pid in processes.worker_pids():
            os.kill(pid, signal.SIGKILL)
        code = run.wait(WAIT_S)
        seconds = time.perf_counter() - start
        log = (folder / "fit.log").read_text()
        lines = [line for line in log.strip().splitlines() if line.startswith("specufex-dask")]
        warned = any("no Dask worker" in line and "warning" in line.lower() for line in lines)
        failed = bool(lines) and "no Dask worker" in lines[-1] and "--resume" in lines[-1]
        for lease in folder.glob(".events.zarr*lease*"):
            lease.unlink()
        processes.workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", processes.address,
                 "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard", "--no-nanny",
                 "--local-directory", str(folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        wait_for(lambda: len(processes.worker_pids()) == 1, "a new worker")
        resumed = cli("fit", archive, *FIT, *BUDGET, *scheduler, "--resume", "--quiet")
    observed = (
        f"exit {code} {seconds:.0f} s after the kill; warned: {warned}; "
        f"last line {lines[-1][:110] if lines else ''!r}; resume exit {resumed.returncode}"
    )
    passed = code == 1 and warned and failed and "Traceback" not in log and not resumed.returncode
    return Row(name, expected, observed, passed)


def case_shadowing_setting(folder: Path) -> Row:
    """A stored model setting named like a method: refused naming the setting and file."""
    import zarr

    name = "model setting that shadows a method"
    expected = "transform exits 1 naming the setting and the model group"
    archive = make_archive(folder / "events.zarr")
    cli("fit", archive, *FIT, "--nmf-steps", "10", "--hmm-steps", "5", "--workers", "1")
    group = zarr.open_group(str(archive / "model"), mode="r+")
    state = json.loads(group.attrs["hmm_state"])
    state["settings"]["transform"] = "x"
    group.attrs["hmm_state"] = json.dumps(state)
    done = cli("transform", archive, "--workers", "1")
    line = _last_line(done)
    observed = f"exit {done.returncode}: {line[:160]!r}"
    passed = _one_clean_line(done) and "'transform'" in line and "model" in line
    return Row(name, expected, observed, passed)


def case_api_validation(folder: Path) -> Row:
    """``SpecUFEx(tol=-1)``: the Python API refuses what ``--tol -1`` refuses, in the
    same words."""
    name = "SpecUFEx(tol=-1) against --tol -1"
    expected = "both refused with the same message"
    archive = make_archive(folder / "events.zarr")
    script = (
        "from specufex_dask import SpecUFEx\n"
        f"SpecUFEx(tol=-1, client=False).fit({str(archive)!r})\n"
    )
    api = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    api_line = api.stderr.strip().splitlines()[-1] if api.stderr.strip() else ""
    command = cli("fit", archive, "--tol", "-1")
    cli_line = _last_line(command)
    core = api_line.split(": ", 1)[-1]
    observed = f"API: {api_line[:100]!r}; CLI: {cli_line[:100]!r}"
    passed = api.returncode != 0 and command.returncode != 0 and bool(core) and core in cli_line
    return Row(name, expected, observed, passed)


CASES: dict[str, Callable[[Path], Row]] = {
    "worker-kill": case_worker_killed_mid_fit,
    "worker-kill-no-nanny": case_worker_killed_no_nanny,
    "driver-kill": case_driver_killed_and_resumed,
    "lease": case_second_writer,
    "killed-transform": case_killed_transform,
    "resume-settings": case_resume_with_other_settings,
    "tol-none": case_tol_none,
    "read-only": case_read_only_cluster,
    "too-large": case_model_too_large,
    "damaged-chunk": case_damaged_chunk,
    "missing-chunk": case_missing_chunk,
    "zarr-v2": case_zarr_v2,
    "malformed-attribute": case_malformed_attribute,
    "disk-full": case_disk_full,
    "no-workers": case_no_workers,
    "shadowing-setting": case_shadowing_setting,
    "api-validation": case_api_validation,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    if args.list:
        for key, case in CASES.items():
            print(f"{key}: {(case.__doc__ or '').strip().splitlines()[0]}")
        return 0
    rows = []
    for key in args.cases:
        with tempfile.TemporaryDirectory(prefix=f"fault-{key}-") as folder:
            start = time.perf_counter()
            try:
                row = CASES[key](Path(folder))
            except Exception as error:  # noqa: BLE001 - a crashed case is a failed row
                row = Row(
                    key, "-", f"the case itself failed: {type(error).__name__}: {error}", False
                )
            print(
                f"{key}: {'pass' if row.passed else 'FAIL' if row.passed is False else 'n/a'} "
                f"({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    print("| case | expected | observed | pass |")
    print("|---|---|---|---|")
    for row in rows:
        verdict = {True: "yes", False: "**no**", None: "not run"}[row.passed]
        print(f"| {row.case} | {row.expected} | {row.observed} | {verdict} |")
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
