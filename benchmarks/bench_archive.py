"""End-to-end scaling: fit and transform of synthetic Zarr archives on a local Dask cluster.

For every archive size N a synthetic archive of 513 x 51 float32 spectrograms is written by
the workers chunk by chunk (each chunk from its own seeded Generator; the driver never holds
the spectrograms). Then, for every worker count, a fresh subprocess starts a local cluster
(worker processes, one thread each) and times

    SpecUFEx(num_pat=75, num_state=15, nmf_steps=S1, hmm_steps=S2, batch_size=B,
             dtype="float32").fit(path)  then  .transform_to_zarr(path)

while a background thread samples the resident memory (RSS) of the driver process and of
every worker process. The driver process also hosts the scheduler and the nannies of the
local cluster, so its RSS includes them.

Usage: python benchmarks/bench_archive.py [--sizes 1000 10000] [--workers 1 2]
       [--chunk-events 16] [--nmf-steps 100] [--hmm-steps 100] [--batch-size 64]
       [--repeats 1] [--scratch /work/bench-scratch] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from specufex_dask.ingest.preprocessing import to_decibels_above_median
from specufex_dask.io.archive import DEFAULT_CHUNK_EVENTS, DEFAULT_SHARD_EVENTS

logger = logging.getLogger("bench_archive")

N_FREQUENCIES = 513
N_TIMES = 51
N_SOURCES = 8  # spectral bumps shared by all events: the structure the NMF should find
# Bumped whenever synthetic_chunk changes, so that --reuse never takes an older archive.
SYNTHETIC_VERSION = 3
# Events per seeded Generator of the synthetic data, whatever the archive's layout, so that
# sharded and unsharded archives of one seed hold the same values.
GENERATOR_EVENTS = 8
MEMORY_LIMIT = "4GiB"
SAMPLE_SECONDS = 0.1

TARGETS = (
    "N = 100k end to end (fit + transform) within 15 min on this 2-core machine; "
    "driver and worker peak RSS flat in N (within 10% from 10k to 100k); "
    "2 workers >= 1.7x the throughput of 1 worker"
)
CHUNK_NOTE = (
    "Layouts of spectrogram: 'shards of S' holds S events per file in one-event inner chunks, "
    "so a step decompresses only the B rows it draws; 'plain C' holds C events per chunk file "
    "and a step decompresses up to min(B, N/C) chunks of C x 513 x 51 float32 ({mb:.1f} MB "
    "each). An SVI step's tasks (>= 16 events each, whole shards or chunks) read their "
    "minibatch rows by path. The transform reads ranges of >= 256 events per task, 2 tasks "
    "in flight per worker thread. No separate pass checks the values."
)


# ----------------------------------------------------------------------------- synthetic data


def source_shapes(seed: int) -> np.ndarray:
    """Gaussian bumps (N_SOURCES, N_FREQUENCIES), unit peak, shared by every event."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    centres = rng.uniform(20, N_FREQUENCIES - 20, N_SOURCES)
    widths = rng.uniform(4, 40, N_SOURCES)
    bins = np.arange(N_FREQUENCIES)
    return np.exp(-0.5 * ((bins[None, :] - centres[:, None]) / widths[:, None]) ** 2)


def synthetic_chunk(seed: int, start: int, stop: int) -> np.ndarray:
    """Spectrograms of events [start, stop) as float32 (n, 513, 51), all nonnegative.

    Every event switches between 2-4 regimes over time; each regime lights 1-3 of the
    shared spectral bumps with its own amplitudes. Gamma noise is added on top, and each
    event becomes dB above its median, clipped at 0, as ingested archives hold them. The
    Generator is seeded by the chunk's first event, so a chunk's content does not depend
    on which worker writes it or in what order.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, start)))
    shapes = source_shapes(seed)
    n = stop - start
    activation = np.zeros((n, N_SOURCES, N_TIMES))
    for event in range(n):
        n_regimes = int(rng.integers(2, 5))
        cuts = np.sort(rng.choice(np.arange(1, N_TIMES), size=n_regimes - 1, replace=False))
        for first, last in zip(np.r_[0, cuts], np.r_[cuts, N_TIMES], strict=True):
            lit = rng.choice(N_SOURCES, size=int(rng.integers(1, 4)), replace=False)
            activation[event, lit, first:last] = rng.gamma(4.0, 1.0, size=(len(lit), 1))
    signal = np.einsum("sd,nst->ndt", shapes, activation)
    magnitude = signal + rng.gamma(2.0, 0.05, size=signal.shape)
    # what an archive holds: each event in dB above its median, clipped at 0, as ingest
    # writes it (about half the values are 0, as in the real spectrograms)
    spectrograms = [to_decibels_above_median(m, float(np.median(m))) for m in magnitude]
    return np.stack(spectrograms).astype(np.float32)


def synthetic_events(seed: int, start: int, stop: int) -> np.ndarray:
    """The synthetic spectrograms of events [start, stop): :func:`synthetic_chunk` of every
    ``GENERATOR_EVENTS`` block, so they do not depend on how the range is cut."""
    from specufex_dask.io.archive import region_bounds

    blocks = region_bounds(start, stop, GENERATOR_EVENTS)
    return np.concatenate([synthetic_chunk(seed, first, end) for first, end in blocks])


def _write_chunk(store: str, seed: int, start: int, stop: int) -> tuple[int, int]:
    from specufex_dask.io import archive

    return archive.write_region(
        store, archive.SPECTROGRAM, start, synthetic_events(seed, start, stop)
    )


def build_archive(
    path: Path, n_events: int, chunk_events: int, seed: int, client, shard_events: int = 0
) -> float:
    """Write the synthetic archive at ``path`` from the workers (here without ``client``),
    sharded by ``shard_events`` (0: plain chunks); return seconds taken."""
    from specufex_dask.io import archive

    began = time.perf_counter()
    writer = archive.ArchiveWriter.create(
        path,
        event_coords={archive.EVENT: np.array([f"ev{i:07d}" for i in range(n_events)])},
        frequency=np.linspace(0.0, 50.0, N_FREQUENCIES),
        time=np.arange(N_TIMES) * 0.04,
        attrs={"synthetic_seed": seed, "synthetic_version": SYNTHETIC_VERSION},
        chunk_events=chunk_events,
        dtype=np.float32,
        overwrite=True,
        shard_events=shard_events or None,
    )
    try:
        regions = writer.regions
        if client is None:
            for start, stop in regions:
                _write_chunk(str(writer.store_path), seed, start, stop)
            writer.commit()
            return time.perf_counter() - began
        futures = client.map(
            _write_chunk,
            [str(writer.store_path)] * len(regions),
            [seed] * len(regions),
            [a for a, _ in regions],
            [b for _, b in regions],
            pure=False,
        )
        client.gather(futures)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return time.perf_counter() - began


# ----------------------------------------------------------------------------- memory


@dataclass
class MemorySampler:
    """Peak RSS (bytes) of a set of processes, sampled in a background thread."""

    pids: dict[str, int]
    interval: float = SAMPLE_SECONDS
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        processes = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        while True:
            for name, process in processes.items():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far, all its threads."""
    import psutil

    used = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        used[name] = times.user + times.system
    return used


def cores_busy(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """Mean cores the driver and the workers (together) kept busy over ``seconds``."""
    spent = {name: after[name] - before[name] for name in after}
    workers = sum(value for name, value in spent.items() if name != "driver")
    return {"driver": spent["driver"] / seconds, "workers": workers / seconds}


# ----------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """Timings (s), rates and peak RSS (MiB) of one fit + transform."""

    n_events: int
    workers: int
    fit_seconds: float
    transform_seconds: float
    before_first_step: float
    nmf_steps_per_s: float
    hmm_steps_per_s: float
    transform_events_per_s: float
    driver_peak_mib: dict[str, float]
    worker_peak_mib: dict[str, float]
    # per stage: mean cores busy in the driver process and in all workers together
    cores: dict[str, dict[str, float]] = field(default_factory=dict)
    code_version: str = ""
    # events per shard of the spectrogram; 0 for plain chunks (as every run before shards)
    shard_events: int = 0

    @property
    def total_seconds(self) -> float:
        return self.fit_seconds + self.transform_seconds


def git_version() -> str:
    """``git describe`` of the checkout the package is imported from ("" outside git)."""
    import specufex_dask

    completed = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=Path(specufex_dask.__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.stdout.strip()


def _step_rate(stamps: list[float]) -> float:
    """Steps per second from the completion times of consecutive steps."""
    if len(stamps) < 2:
        return float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def run_once(args: argparse.Namespace, path: Path, n_workers: int) -> RunResult:
    """Start a cluster, fit and transform ``path``, measure; runs in its own process."""
    from specufex_dask import SpecUFEx
    from specufex_dask.parallel.clusters import connect

    stamps: dict[str, list[float]] = {"nmf": [], "hmm": [], "transform": []}
    code_version = git_version()  # other engineers commit while benchmarks run

    def progress(stage: str, info: dict) -> None:
        stamps[stage].append(time.perf_counter())

    handle = connect(workers=n_workers, threads_per_worker=1, memory_limit=MEMORY_LIMIT,
                     dashboard_address="127.0.0.1:0")  # fmt: skip
    try:
        client = handle.client
        client.wait_for_workers(n_workers)
        worker_pids = client.run(os.getpid)
        names = {f"worker{i}": pid for i, pid in enumerate(sorted(worker_pids.values()))}
        peaks: dict[str, dict[str, int]] = {}
        model = SpecUFEx(
            75, 15, nmf_steps=args.nmf_steps, hmm_steps=args.hmm_steps,
            batch_size=args.batch_size, dtype="float32", client=client, progress=progress,
        )  # fmt: skip
        pids = {"driver": os.getpid(), **names}
        with MemorySampler(pids) as fit_memory:
            cpu_before_fit = cpu_seconds(pids)
            fit_began = time.perf_counter()
            model.fit(str(path))
            fit_ended = time.perf_counter()
            cpu_after_fit = cpu_seconds(pids)
        peaks["fit"] = fit_memory.peaks
        transform_ended, cpu_after_transform, peaks["transform"] = fit_ended, cpu_after_fit, {}
        if not args.fit_only:
            with MemorySampler(pids) as transform_memory:
                model.transform_to_zarr(str(path))
                transform_ended = time.perf_counter()
                cpu_after_transform = cpu_seconds(pids)
            peaks["transform"] = transform_memory.peaks
    finally:
        handle.close()

    def mib(stage: str, name: str) -> float:
        return peaks[stage].get(name, 0) / 2**20

    nmf_rate = _step_rate(stamps["nmf"])
    cores = {"fit": cores_busy(cpu_before_fit, cpu_after_fit, fit_ended - fit_began)}
    if not args.fit_only:
        transform_seconds = transform_ended - fit_ended
        cores["transform"] = cores_busy(cpu_after_fit, cpu_after_transform, transform_seconds)
    return RunResult(
        n_events=int(args.one_size),
        workers=n_workers,
        fit_seconds=fit_ended - fit_began,
        transform_seconds=transform_ended - fit_ended,
        # opening the archive and the first NMF step
        before_first_step=stamps["nmf"][0] - fit_began if stamps["nmf"] else float("nan"),
        nmf_steps_per_s=nmf_rate,
        hmm_steps_per_s=_step_rate(stamps["hmm"]),
        transform_events_per_s=(
            float("nan") if args.fit_only else args.one_size / (transform_ended - fit_ended)
        ),
        driver_peak_mib={stage: mib(stage, "driver") for stage in peaks},
        worker_peak_mib={stage: max(mib(stage, name) for name in names) for stage in peaks},
        cores=cores,
        code_version=code_version,
        shard_events=stored_shard_events(path),
    )


def stored_shard_events(path: Path) -> int:
    """Events per shard of the archive's spectrogram; 0 when it is in plain chunks."""
    import zarr

    from specufex_dask.io import archive

    shards = zarr.open_array(str(path), path=archive.SPECTROGRAM, mode="r").shards
    return 0 if shards is None else int(shards[0])


def layout_name(shard_events: int, chunk_events: int) -> str:
    """How the table and the archive's file name show a layout."""
    return f"shards of {shard_events}" if shard_events else f"plain {chunk_events}"


def run_in_subprocess(args: argparse.Namespace, path: Path, n: int, k: int) -> RunResult:
    """A fresh interpreter per run, so the driver's peak RSS belongs to this run only."""
    command = [
        sys.executable, __file__, "--one-path", str(path), "--one-size", str(n),
        "--one-workers", str(k), "--nmf-steps", str(args.nmf_steps),
        "--hmm-steps", str(args.hmm_steps), "--batch-size", str(args.batch_size),
        *(["--fit-only"] if args.fit_only else []),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"run N={n} workers={k} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return RunResult(**result)


# ----------------------------------------------------------------------------- report


def machine_line() -> str:
    """CPU count, BLAS and versions, for the report header."""
    import dask
    import zarr

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy has no dict mode
        blas_text = "unknown"
    return (
        f"{platform.node()}: nproc={os.cpu_count()}, {platform.processor() or platform.machine()}"
        f"; numpy {np.__version__} (BLAS {blas_text}), dask {dask.__version__}, "
        f"zarr {zarr.__version__}, Python {platform.python_version()}"
    )


def _median(results: list[RunResult], value: Callable[[RunResult], float]) -> float:
    return statistics.median(value(r) for r in results)


def _cores(results: list[RunResult], stage: str) -> str:
    """Median cores busy in ``stage`` as "driver + workers" ("" for runs without them)."""
    measured = [r for r in results if stage in r.cores]
    if not measured:
        return ""
    driver = _median(measured, lambda r: r.cores[stage]["driver"])
    workers = _median(measured, lambda r: r.cores[stage]["workers"])
    return f"{driver:.2f} + {workers:.2f}"


def table(
    groups: dict[tuple[int, int, int], list[RunResult]], builds: dict[tuple[int, int], float]
) -> str:
    """Markdown table of medians over repeats, one row per (N, layout, workers)."""
    header = (
        "| N | layout | workers | runs | build s | fit s | open+1st step s | NMF steps/s | "
        "HMM steps/s | transform s | transform spectrograms/s | end-to-end s | "
        "driver peak MiB (fit/transform) | worker peak MiB (fit/transform) | "
        "cores busy in fit (driver + workers) | cores busy in transform | "
        "speed-up vs 1 worker | code |\n|" + "---|" * 18
    )
    rows = [header]
    for (n, shard, k), results in sorted(groups.items()):
        total = _median(results, lambda r: r.total_seconds)
        single = groups.get((n, shard, 1))
        speedup = (
            f"{_median(single, lambda r: r.total_seconds) / total:.2f}x"
            if single and k != 1
            else ""
        )
        rows.append(
            f"| {n} | {layout_name(shard, DEFAULT_CHUNK_EVENTS)} | {k} | {len(results)} "
            f"| {builds.get((n, shard), float('nan')):.0f} "
            f"| {_median(results, lambda r: r.fit_seconds):.1f} "
            f"| {_median(results, lambda r: r.before_first_step):.1f} "
            f"| {_median(results, lambda r: r.nmf_steps_per_s):.2f} "
            f"| {_median(results, lambda r: r.hmm_steps_per_s):.2f} "
            f"| {_median(results, lambda r: r.transform_seconds):.1f} "
            f"| {_median(results, lambda r: r.transform_events_per_s):.0f} "
            f"| {total:.1f} "
            f"| {_median(results, lambda r: r.driver_peak_mib['fit']):.0f}"
            f" / {_median(results, lambda r: r.driver_peak_mib.get('transform', 0)):.0f} "
            f"| {_median(results, lambda r: r.worker_peak_mib['fit']):.0f}"
            f" / {_median(results, lambda r: r.worker_peak_mib.get('transform', 0)):.0f} "
            f"| {_cores(results, 'fit')} | {_cores(results, 'transform')} "
            f"| {speedup} | {', '.join(sorted({r.code_version for r in results}))} |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- main


def kept_archive_fits(
    path: Path, n_events: int, chunk_events: int, seed: int, shard_events: int = 0
) -> bool:
    """Whether ``path`` is a complete synthetic archive of this size, chunking (inner
    chunks of one event when sharded), seed and generator version."""
    from specufex_dask.io import archive

    if not path.exists():
        return False
    try:
        ds = archive.open_archive(path)
    except archive.ArchiveError:
        return False
    chunks = ds[archive.SPECTROGRAM].encoding.get("chunks", (None,))
    return (
        ds.sizes[archive.EVENT] == n_events
        and chunks[0] == (archive.SHARD_CHUNK_EVENTS if shard_events else chunk_events)
        and stored_shard_events(path) == shard_events
        and ds.attrs.get("synthetic_seed") == seed
        and ds.attrs.get("synthetic_version") == SYNTHETIC_VERSION
    )


def fresh_archive(
    path: Path, n_events: int, args: argparse.Namespace, connect, shard_events: int
) -> float:
    """Build the archive on a 2-worker cluster of its own; return seconds taken."""
    with connect(workers=2, threads_per_worker=1, memory_limit=MEMORY_LIMIT,
                 dashboard_address="127.0.0.1:0") as handle:  # fmt: skip
        seconds = build_archive(
            path, n_events, args.chunk_events, args.seed, handle.client, shard_events
        )
    logger.info("built %s in %.1f s", path, seconds)
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--chunk-events", type=int, default=DEFAULT_CHUNK_EVENTS,
        help="events per Zarr chunk of unsharded archives (--shard-events 0)",
    )  # fmt: skip
    parser.add_argument(
        "--shard-events", type=int, nargs="+", default=[DEFAULT_SHARD_EVENTS],
        help="events per shard of one-event chunks (0: plain chunks of --chunk-events); "
        "several layouts are run in turn, each on its own archive",
    )  # fmt: skip
    parser.add_argument(
        "--fit-only", action="store_true", help="no transform: the fit's numbers only"
    )
    parser.add_argument("--nmf-steps", type=int, default=100)
    parser.add_argument("--hmm-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--scratch", type=Path, default=Path("/work/bench-scratch"))
    parser.add_argument("--keep", action="store_true", help="keep the archives afterwards")
    parser.add_argument(
        "--reuse", action="store_true",
        help="use an archive kept by an earlier --keep run instead of building it again",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument(
        "--report", type=Path, nargs="+",
        help="print the table of earlier --json files instead of running",
    )  # fmt: skip
    # internal: one measured run in a fresh process
    parser.add_argument("--one-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-workers", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.one_path is not None:
        logging.getLogger().setLevel(logging.WARNING)
        result = run_once(args, args.one_path, args.one_workers)
        print(json.dumps(asdict(result)))
        return

    if args.report:
        print_report(args, *load_results(args.report))
        return

    from specufex_dask.parallel.clusters import connect

    # only what this run creates is removed afterwards: a scratch folder given by the
    # user may hold other things (results written next to the archives, say)
    created_scratch = not args.scratch.exists()
    args.scratch.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[int, int, int], list[RunResult]] = {}
    builds: dict[tuple[int, int], float] = {}
    try:
        for n in args.sizes:
            paths = {shard: archive_path(args, n, shard) for shard in args.shard_events}
            for shard, path in paths.items():
                if args.reuse and kept_archive_fits(path, n, args.chunk_events, args.seed, shard):
                    logger.info("reusing %s", path)
                    builds[(n, shard)] = float("nan")
                else:
                    builds[(n, shard)] = fresh_archive(path, n, args, connect, shard)
            # layouts and worker counts alternate, so that load drifts hit all alike
            for repeat in range(args.repeats):
                for shard, path in paths.items():
                    for k in args.workers:
                        result = run_in_subprocess(args, path, n, k)
                        groups.setdefault((n, shard, k), []).append(result)
                        layout = layout_name(shard, args.chunk_events)
                        logger.info("N=%d %s workers=%d repeat %d: %s", n, layout, k, repeat,
                                    result)  # fmt: skip
            if not args.keep:
                for path in paths.values():
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        if args.json is not None and groups:
            records = [asdict(r) for results in groups.values() for r in results]
            saved = {"builds": {f"{n}:{s}": t for (n, s), t in builds.items()}, "runs": records}
            args.json.write_text(json.dumps(saved, indent=1))
        if not args.keep:
            for n in args.sizes:
                for shard in args.shard_events:
                    shutil.rmtree(archive_path(args, n, shard), ignore_errors=True)
            if created_scratch and not any(args.scratch.iterdir()):
                args.scratch.rmdir()
        print_report(args, groups, builds)


def archive_path(args: argparse.Namespace, n_events: int, shard_events: int) -> Path:
    """The synthetic archive of ``n_events`` in a layout (names differ by layout)."""
    layout = f"-shard{shard_events}" if shard_events else ""
    return args.scratch / f"synthetic-{n_events}{layout}.zarr"


def load_results(files: list[Path]) -> tuple[dict, dict[tuple[int, int], float]]:
    """Runs and build times saved by earlier ``--json`` runs, merged (runs saved before
    shards were plain-chunk runs)."""
    groups: dict[tuple[int, int, int], list[RunResult]] = {}
    builds: dict[tuple[int, int], float] = {}
    for file in files:
        saved = json.loads(file.read_text())
        for key, seconds in saved["builds"].items():
            n, _, shard = key.partition(":")
            builds[(int(n), int(shard or 0))] = float(seconds)
        for record in saved["runs"]:
            result = RunResult(**record)
            key = (result.n_events, result.shard_events, result.workers)
            groups.setdefault(key, []).append(result)
    return groups, builds


def print_report(args: argparse.Namespace, groups: dict, builds: dict) -> None:
    """The header (date, machine, settings, notes), the table and the targets."""
    chunk_mb = args.chunk_events * N_FREQUENCIES * N_TIMES * 4 / 1e6
    print(f"\n# bench_archive {dt.datetime.now().isoformat(timespec='seconds')}")
    print(machine_line())
    print(
        f"SpecUFEx(num_pat=75, num_state=15, nmf_steps={args.nmf_steps}, "
        f"hmm_steps={args.hmm_steps}, batch_size={args.batch_size}, dtype='float32'); "
        f"local cluster, threads_per_worker=1, memory_limit={MEMORY_LIMIT}; "
        f"chunk_events={args.chunk_events} (plain layouts); medians where repeated (runs "
        f"column){'; fit only' if args.fit_only else ''}"
    )
    print(CHUNK_NOTE.format(mb=chunk_mb))
    print("Build = writing the synthetic archive with 2 workers (not part of end-to-end).")
    print(
        "Driver RSS includes the scheduler and nannies of the local cluster. "
        "The machine is shared: timings are noisy.\n"
    )
    if groups:
        print(table(groups, builds))
    print(f"\nTargets: {TARGETS}")


if __name__ == "__main__":
    main()
