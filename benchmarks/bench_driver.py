"""Does the driver's cost grow with the number of events? Driver memory and time per step
of a fixed number of fit steps on archives of 100k and 1M small spectrograms.

For every size N a synthetic archive of N x 64 x 32 float32 spectrograms (8 KiB an
event: 8 GB at 1M, about half of it zeros, as archives of dB above the median are) is
written straight into the Zarr store by the package's archive writer (``ArchiveWriter``
and ``write_region``, from the workers, blocks of events each from its own seeded
Generator). Then a fresh process starts a local cluster (``--workers`` worker processes,
one thread each) and fits ``--nmf-steps`` NMF and ``--hmm-steps`` HMM steps of 64 events,
no early stop, while it records:

- the driver's RSS: before opening the archive, its peak over the fit (sampled every
  0.1 s), and at every step (after warm-up: from step ``--warm-up`` on);
- per step: the wall time between consecutive steps, the CPU time of the driver's main
  thread (what it does itself: drawing the minibatch, building the calls, folding,
  the global update, the checkpoint's copy), and the wall time the driver spends outside
  the workers' calls (the step's wall time less the span from the calls being sent to
  the last result), as medians and 90th percentiles;
- the seconds to open the archive (``EventChunks.from_data``).

The driver process also hosts the local cluster's scheduler and nannies. Flat in N is
the target: a driver cost that grows with N shows up as the 1M row over the 100k one.

Usage: python benchmarks/bench_driver.py [--sizes 100000 1000000] [--workers 2]
       [--nmf-steps 150] [--hmm-steps 50] [--scratch /work/bench-scratch] [--keep]
       [--reuse] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_archive
import numpy as np
from bench_archive import (
    MEMORY_LIMIT,
    MemorySampler,
    SyntheticContent,
    git_version,
    load_line,
    machine_line,
)

from specufex_dask.io.archive import DEFAULT_CHUNK_EVENTS, DEFAULT_SHARD_EVENTS

logger = logging.getLogger("bench_driver")

N_FREQUENCIES = 64
N_TIMES = 32
# Events per seeded Generator: the writer's regions are cut into these blocks, so the
# content does not depend on how it cuts the archive.
GENERATOR_EVENTS = 256
SYNTHETIC_VERSION = 2
BATCH = 64


# ----------------------------------------------------------------------------- archive


def synthetic_block(seed: int, start: int, stop: int) -> np.ndarray:
    """Spectrograms of events [start, stop): float32, nonnegative, about half zeros.

    Seeded by the block's first event, so the content does not depend on the worker.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(start,)))
    values = rng.standard_normal((stop - start, N_FREQUENCIES, N_TIMES), dtype=np.float32)
    np.maximum(values, 0.0, out=values)
    values *= 10.0
    return values


def synthetic_events(seed: int, start: int, stop: int) -> np.ndarray:
    """:func:`synthetic_block` of every ``GENERATOR_EVENTS`` block of [start, stop), so
    the spectrograms do not depend on how the writer cuts the range."""
    from specufex_dask.io.archive import region_bounds

    blocks = region_bounds(start, stop, GENERATOR_EVENTS)
    return np.concatenate([synthetic_block(seed, first, end) for first, end in blocks])


CONTENT = SyntheticContent(synthetic_events, N_FREQUENCIES, N_TIMES, SYNTHETIC_VERSION)


def build_archive(path: Path, n_events: int, seed: int, client) -> float:
    """Write the synthetic archive at ``path`` from the workers, in the archive writer's
    default layout; return seconds taken."""
    return bench_archive.build_archive(
        path, n_events, DEFAULT_CHUNK_EVENTS, seed, client, DEFAULT_SHARD_EVENTS, CONTENT
    )


def kept_archive_fits(path: Path, n_events: int, seed: int) -> bool:
    """Whether ``path`` is a complete synthetic archive of this size, seed and version."""
    return bench_archive.kept_archive_fits(
        path, n_events, DEFAULT_CHUNK_EVENTS, seed, DEFAULT_SHARD_EVENTS, CONTENT
    )


# ----------------------------------------------------------------------------- one run


@dataclass
class DriverRun:
    """The driver's memory (MiB) and per-step times (ms) of one fit of N events."""

    n_events: int
    workers: int
    steps: int
    open_seconds: float
    rss_before_mib: float
    rss_peak_mib: float
    rss_warm_mib: float
    rss_last_mib: float
    wall_ms: dict[str, float]
    thread_cpu_ms: dict[str, float]
    outside_calls_ms: dict[str, float]
    code_version: str = ""
    load: str = ""
    # RSS (MiB) at every 10th step, to see a trend
    rss_trace_mib: list[float] = field(default_factory=list)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _spread(values: list[float]) -> dict[str, float]:
    """Median and 90th percentile in ms of seconds ``values``."""
    if not values:
        return {"median": float("nan"), "p90": float("nan")}
    return {
        "median": 1e3 * statistics.median(values),
        "p90": 1e3 * float(np.percentile(values, 90)),
    }


def _outside_calls(walls: list[tuple[float, float]], steps: list[dict]) -> list[float]:
    """Per step, its wall time less the span its calls took (sent to last result).

    ``walls``: (wall clock at the step's progress, seconds since the previous one).
    """
    spans = sorted(steps, key=lambda step: step["end"])
    ends = np.array([step["end"] for step in spans])
    outside = []
    for at, seconds in walls:
        number = int(np.searchsorted(ends, at, side="right")) - 1
        if number >= 0 and at - seconds <= spans[number]["sent"]:
            outside.append(seconds - (spans[number]["end"] - spans[number]["sent"]))
    return outside


def run_once(args: argparse.Namespace) -> DriverRun:
    """Start a cluster, fit the archive ``args.one_path``, measure the driver."""
    from specufex_dask import SpecUFEx
    from specufex_dask.parallel import runners
    from specufex_dask.parallel.clusters import connect
    from specufex_dask.parallel.engine import EventChunks

    path = str(args.one_path)
    rss_before = _rss()
    began = time.perf_counter()
    EventChunks.from_data(path)
    open_seconds = time.perf_counter() - began
    marks: list[tuple[float, float, float, int]] = []  # wall, perf, thread CPU, RSS

    def progress(stage: str, info: dict) -> None:
        if stage in ("nmf", "hmm"):
            marks.append((time.time(), time.perf_counter(), time.thread_time(), _rss()))

    handle = connect(workers=args.workers, threads_per_worker=1, memory_limit=MEMORY_LIMIT,
                     dashboard_address="127.0.0.1:0")  # fmt: skip
    try:
        client = handle.client
        client.wait_for_workers(args.workers)
        model = SpecUFEx(
            75, 15, nmf_steps=args.nmf_steps, hmm_steps=args.hmm_steps, batch_size=BATCH,
            tol=None, dtype="float32", client=client, progress=progress,
        )  # fmt: skip
        with MemorySampler({"driver": os.getpid()}) as memory:
            model.fit(path)
    finally:
        handle.close()
    warm = marks[args.warm_up :]
    walls = [(b[0], b[1] - a[1]) for a, b in zip(warm[:-1], warm[1:], strict=True)]
    cpu = [b[2] - a[2] for a, b in zip(warm[:-1], warm[1:], strict=True)]
    mib = 2.0**-20
    return DriverRun(
        n_events=int(args.one_size),
        workers=args.workers,
        steps=len(marks),
        open_seconds=open_seconds,
        rss_before_mib=rss_before * mib,
        rss_peak_mib=memory.peaks.get("driver", 0) * mib,
        rss_warm_mib=warm[0][3] * mib if warm else float("nan"),
        rss_last_mib=marks[-1][3] * mib if marks else float("nan"),
        wall_ms=_spread([seconds for _, seconds in walls]),
        thread_cpu_ms=_spread(cpu),
        outside_calls_ms=_spread(_outside_calls(walls, list(runners.STEP_TIMES))),
        code_version=git_version(),
        load=load_line(),
        rss_trace_mib=[mark[3] * mib for mark in marks[::10]],
    )


def run_in_subprocess(args: argparse.Namespace, path: Path, n: int) -> DriverRun:
    """A fresh interpreter per run, so the driver's RSS belongs to this run only."""
    command = [
        sys.executable, __file__, "--one-path", str(path), "--one-size", str(n),
        "--workers", str(args.workers), "--nmf-steps", str(args.nmf_steps),
        "--hmm-steps", str(args.hmm_steps), "--warm-up", str(args.warm_up),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"run N={n} failed:\n{completed.stderr[-4000:]}")
    return DriverRun(**json.loads(completed.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- report


def table(runs: list[DriverRun], builds: dict[int, float]) -> str:
    """Markdown table, one row per run."""
    rows = [
        "| N | workers | steps | build s | open s | RSS before / after warm-up / last / peak "
        "MiB | step wall ms (median / p90) | driver thread CPU ms (median / p90) | driver "
        "outside the calls ms (median / p90) | load |\n|" + "---|" * 10
    ]
    for r in sorted(runs, key=lambda run: run.n_events):

        def pair(values: dict[str, float]) -> str:
            return f"{values['median']:.1f} / {values['p90']:.1f}"

        build = builds.get(r.n_events, float("nan"))
        rows.append(
            f"| {r.n_events} | {r.workers} | {r.steps} | {build:.0f} "
            f"| {r.open_seconds:.2f} | {r.rss_before_mib:.0f} / {r.rss_warm_mib:.0f} / "
            f"{r.rss_last_mib:.0f} / {r.rss_peak_mib:.0f} | {pair(r.wall_ms)} "
            f"| {pair(r.thread_cpu_ms)} | {pair(r.outside_calls_ms)} | {r.load} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nmf-steps", type=int, default=150)
    parser.add_argument("--hmm-steps", type=int, default=50)
    parser.add_argument("--warm-up", type=int, default=20, help="steps before measuring")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--scratch", type=Path, default=Path("/work/bench-scratch"))
    parser.add_argument("--keep", action="store_true", help="keep the archives afterwards")
    parser.add_argument("--reuse", action="store_true", help="use archives kept by --keep")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--one-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.one_path is not None:
        logging.getLogger().setLevel(logging.WARNING)
        print(json.dumps(asdict(run_once(args))))
        return
    from specufex_dask.parallel.clusters import connect

    created_scratch = not args.scratch.exists()
    args.scratch.mkdir(parents=True, exist_ok=True)
    runs: list[DriverRun] = []
    builds: dict[int, float] = {}
    try:
        for n in args.sizes:
            path = args.scratch / f"driver-{n}.zarr"
            if args.reuse and kept_archive_fits(path, n, args.seed):
                builds[n] = float("nan")
            else:
                with connect(workers=2, threads_per_worker=1, memory_limit=MEMORY_LIMIT,
                             dashboard_address="127.0.0.1:0") as handle:  # fmt: skip
                    builds[n] = build_archive(path, n, args.seed, handle.client)
                logger.info("built %s in %.1f s", path, builds[n])
            runs.append(run_in_subprocess(args, path, n))
            logger.info("N=%d: %s", n, runs[-1])
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)
    finally:
        if args.json is not None and runs:
            args.json.write_text(
                json.dumps({"builds": builds, "runs": [asdict(r) for r in runs]}, indent=1)
            )
        if not args.keep:
            for n in args.sizes:
                shutil.rmtree(args.scratch / f"driver-{n}.zarr", ignore_errors=True)
            if created_scratch and not any(args.scratch.iterdir()):
                args.scratch.rmdir()
    print(f"\n# bench_driver {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    print(machine_line())
    print(
        f"SpecUFEx(75, 15, nmf_steps={args.nmf_steps}, hmm_steps={args.hmm_steps}, "
        f"batch_size={BATCH}, tol=None, dtype='float32') on N x {N_FREQUENCIES} x {N_TIMES} "
        f"float32; {args.workers} workers of one thread; measured from step {args.warm_up}\n"
    )
    print(table(runs, builds))


if __name__ == "__main__":
    main()
