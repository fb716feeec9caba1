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

Fit modes: fixed step budgets (``--nmf-steps``, ``--hmm-steps``; the default),
``--converged`` (the stopping rule and step budgets of ``specufex-dask run``: the
settings of the command line's default configuration, ``cli.config.Config``), or
``--passes P`` (P full passes over the events per stage, no early stop). Every run
reports per stage its seconds, steps, passes (steps * batch / N) and final ELBO.

``--profile`` adds where a step's time goes (the step runners' timings and timers
around the driver's fold, update and checkpoints) and the kernels' own rate for the
same stages, dtype and cores, measured by ``bench_kernels.py``'s functions in the same
run, just before and just after each run (the faster of the two is compared).

Usage: python benchmarks/bench_archive.py [--sizes 1000 10000] [--workers 1 2]
       [--chunk-events 16] [--nmf-steps 100] [--hmm-steps 100] [--batch-size 64]
       [--checkpoint-every auto|N]
       [--converged | --passes P] [--profile] [--repeats 1]
       [--scratch /work/bench-scratch] [--keep]
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

import bench_kernels
import numpy as np

from specufex_dask.ingest.preprocessing import to_decibels_above_median
from specufex_dask.io.archive import DEFAULT_CHUNK_EVENTS, DEFAULT_SHARD_EVENTS
from specufex_dask.parallel.allocator import keep_work_arrays

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


@dataclass(frozen=True)
class SyntheticContent:
    """What a synthetic archive holds: ``events(seed, start, stop)`` gives the float32
    spectrograms (n, n_frequencies, n_times) of events [start, stop), the same however
    the range is cut; ``version`` changes whenever they do, so that a kept archive of
    another version is built again."""

    events: Callable[[int, int, int], np.ndarray]
    n_frequencies: int
    n_times: int
    version: int


ARCHIVE_CONTENT = SyntheticContent(synthetic_events, N_FREQUENCIES, N_TIMES, SYNTHETIC_VERSION)


def _write_chunk(
    store: str, content: SyntheticContent, seed: int, start: int, stop: int
) -> tuple[int, int]:
    from specufex_dask.io import archive

    return archive.write_region(
        store, archive.SPECTROGRAM, start, content.events(seed, start, stop)
    )


def build_archive(
    path: Path,
    n_events: int,
    chunk_events: int,
    seed: int,
    client,
    shard_events: int = 0,
    content: SyntheticContent = ARCHIVE_CONTENT,
) -> float:
    """Write the synthetic archive of ``content`` at ``path`` from the workers (here
    without ``client``), sharded by ``shard_events`` (0: plain chunks); return seconds
    taken."""
    from specufex_dask.io import archive

    began = time.perf_counter()
    writer = archive.ArchiveWriter.create(
        path,
        event_coords={archive.EVENT: np.array([f"ev{i:07d}" for i in range(n_events)])},
        frequency=np.linspace(0.0, 50.0, content.n_frequencies),
        time=np.arange(content.n_times) * 0.04,
        attrs={"synthetic_seed": seed, "synthetic_version": content.version},
        chunk_events=chunk_events,
        dtype=np.float32,
        overwrite=True,
        shard_events=shard_events or None,
    )
    try:
        regions = writer.regions
        if client is None:
            for start, stop in regions:
                _write_chunk(str(writer.store_path), content, seed, start, stop)
            writer.commit()
            return time.perf_counter() - began
        futures = client.map(
            _write_chunk,
            [str(writer.store_path)] * len(regions),
            [content] * len(regions),
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
    mode: str = "fixed"
    # per stage ("nmf", "hmm"): seconds (the HMM's include its start from data), steps
    # run, passes over the events, final ELBO
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    # --profile: medians per step and stage (ms), see step_breakdown
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    # --profile: the kernels' spectrograms/s for this run's cores (kernel_rates), the
    # faster of the measures just before and just after the run (both in the list)
    kernel_rates: dict[str, float] = field(default_factory=dict)
    kernel_rates_measured: dict[str, list[float]] = field(default_factory=dict)
    # the kernels with the fit's final number of patterns (most steps run after pruning)
    kernel_rates_fitted: dict[str, float] = field(default_factory=dict)
    load: str = ""

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


def fit_settings(args: argparse.Namespace, n_events: int) -> dict:
    """The SpecUFEx settings of the fit of ``args.mode`` on ``n_events``.

    ``converged``: the stopping rule, step budgets, batch size and checkpoints of the
    command line's default configuration (what ``specufex-dask run`` fits with);
    ``passes``: ``args.passes`` full passes per stage, no early stop; ``fixed``:
    ``--nmf-steps`` and ``--hmm-steps``, no early stop.
    """
    if args.mode == "converged":
        from specufex_dask.cli.config import Config

        config = Config()
        return {
            "nmf_steps": config.nmf.steps, "hmm_steps": config.hmm.steps,
            "batch_size": config.nmf.batch_size, "tol": config.nmf.tol,
            "checkpoint_every": config.fit.checkpoint_every,
        }  # fmt: skip
    if args.mode == "passes":
        steps = -(-args.passes * n_events // args.batch_size)
        return {"nmf_steps": steps, "hmm_steps": steps, "batch_size": args.batch_size,
                "tol": None, "checkpoint_every": args.checkpoint_every}  # fmt: skip
    return {"nmf_steps": args.nmf_steps, "hmm_steps": args.hmm_steps,
            "batch_size": args.batch_size, "tol": None,
            "checkpoint_every": args.checkpoint_every}  # fmt: skip


def stage_summary(model, stamps: dict[str, list[float]], fit_began: float, n: int) -> dict:
    """Per stage: seconds, steps, passes over the ``n`` events, final ELBO."""
    batch = model._batch_size() or n
    nmf_end = stamps["nmf"][-1] if stamps["nmf"] else fit_began
    ends = {
        "nmf": (fit_began, nmf_end),
        "hmm": (nmf_end, stamps["hmm"][-1] if stamps["hmm"] else nmf_end),
    }
    models = {"nmf": model.nmf_, "hmm": model.hmm_}
    return {
        stage: {
            "seconds": ends[stage][1] - ends[stage][0],
            "steps": float(model.n_steps_[stage]),
            "passes": model.n_steps_[stage] * min(batch, n) / n,
            "elbo": float(models[stage].elbo_[-1]) if models[stage].elbo_ else float("nan"),
            "converged": float(model.converged_[stage]),
            "batch": float(min(batch, n)),
            "patterns": float(model.nmf_.num_pat),
        }
        for stage in ("nmf", "hmm")
    }


def run_once(args: argparse.Namespace, path: Path, n_workers: int) -> RunResult:
    """Start a cluster, fit and transform ``path``, measure; runs in its own process."""
    from specufex_dask import SpecUFEx
    from specufex_dask.parallel.clusters import connect

    stamps: dict[str, list[float]] = {"nmf": [], "hmm": [], "transform": []}
    code_version = git_version()  # other engineers commit while benchmarks run

    def progress(stage: str, info: dict) -> None:
        stamps[stage].append(time.perf_counter())
        if args.mode != "fixed" and stage != "transform" and info["step"] % 100 == 0:
            # long fits: a line now and then, on the terminal of the bench
            line = f"N={args.one_size} {stage} step {info['step']} of {info['total']}"
            print(f"{line}: ELBO {info['elbo']:.6g}, {load_line()}", file=sys.stderr, flush=True)

    handle = connect(workers=n_workers, threads_per_worker=1, memory_limit=MEMORY_LIMIT,
                     dashboard_address="127.0.0.1:0")  # fmt: skip
    try:
        client = handle.client
        client.wait_for_workers(n_workers)
        worker_pids = client.run(os.getpid)
        names = {f"worker{i}": pid for i, pid in enumerate(sorted(worker_pids.values()))}
        peaks: dict[str, dict[str, int]] = {}
        model = SpecUFEx(
            75, 15, **fit_settings(args, args.one_size), dtype="float32", client=client,
            progress=progress,
        )  # fmt: skip
        pids = {"driver": os.getpid(), **names}
        timers = DriverTimers.installed() if args.profile else None
        with MemorySampler(pids) as fit_memory:
            cpu_before_fit = cpu_seconds(pids)
            fit_began = time.perf_counter()
            model.fit(str(path))
            fit_ended = time.perf_counter()
            cpu_after_fit = cpu_seconds(pids)
        peaks["fit"] = fit_memory.peaks
        breakdown = {}
        if timers is not None:
            timers.remove()
            breakdown = step_breakdown(stamps, timers, client, fit_began)
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
        mode=args.mode,
        stages=stage_summary(model, stamps, fit_began, args.one_size),
        breakdown=breakdown,
        load=load_line(),
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


def load_line() -> str:
    """The machine's load averages and this moment, for the record."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} at {dt.datetime.now():%H:%M}"


# ----------------------------------------------------------------------------- profile


@dataclass
class DriverTimers:
    """Seconds of the driver's own work per call, timed by wrapping its functions.

    ``parameters``: building a step's parameters; ``fold``: adding the step's tree
    nodes; ``update``: the global update (with the step's ELBO); ``checkpoint``: what a
    checkpoint costs the fit's thread (the copy of the state, waiting for the previous
    write); ``checkpoint_write``: the write on its own thread. Keeps the originals to
    put back (:meth:`remove`).
    """

    seconds: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    originals: list[tuple[object, str, Callable]] = field(default_factory=list)

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        record = self.seconds.setdefault(label, [])

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record.append((began, time.perf_counter() - began))

        self.originals.append((owner, name, original))
        setattr(owner, name, timed)

    @classmethod
    def installed(cls) -> DriverTimers:
        from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
        from specufex_dask.parallel import engine, runners

        timers = cls()
        for model in (BayesianNonparametricNMF, BayesianHMM):
            timers.wrap(model, "step_parameters", "parameters")
            timers.wrap(model, "svi_update", "update")
        timers.wrap(runners.ActorExecutor, "fold", "fold")
        timers.wrap(engine.BackgroundCheckpoints, "write", "checkpoint")
        timers.wrap(engine.BackgroundCheckpoints, "_write", "checkpoint_write")
        return timers

    def remove(self) -> None:
        for owner, name, original in reversed(self.originals):
            setattr(owner, name, original)

    def per_stage(self, label: str, begin: float, end: float) -> list[float]:
        """Seconds of the calls of ``label`` that began in ``[begin, end)``."""
        return [s for at, s in self.seconds.get(label, []) if begin <= at < end]


def _worker_call_times() -> list[dict[str, float]]:
    from specufex_dask.parallel import runners

    return list(getattr(runners, "CALL_TIMES", ()))  # none in code before they were kept


def _ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def _stage_of_steps(steps: list[dict], begin: float, end: float) -> list[dict]:
    return [step for step in steps if begin <= step["start"] < end]


def _calls_of_step(calls: list[dict], step: dict, following: dict | None) -> list[dict]:
    """The workers' calls that began between this step's start and the next one's."""
    until = following["start"] if following is not None else float("inf")
    return [call for call in calls if step["start"] <= call["start"] < until]


def step_breakdown(stamps: dict, timers: DriverTimers, client, fit_began: float) -> dict:
    """Medians (ms) per step of each stage, from the step runners' timings
    (``runners.STEP_TIMES`` here, ``runners.CALL_TIMES`` on each worker) and ``timers``.

    ``step``: wall time between consecutive steps' progress; ``driver build``: the
    driver's time from entering the step to having sent every worker its call;
    ``to worker``: from then until the later worker starts; ``wait read ahead``,
    ``compute`` (reads not done ahead, kernels, the summation tree) and ``read ahead``
    (on the worker's reader thread, overlapping): a worker's, the slower one's;
    ``back``: from the later worker's end to the driver having every result (their
    serialisation and transfer); ``parameters``, ``fold``, ``update``: the driver's;
    ``checkpoint``: the fit's thread's time for checkpoints, per step;
    ``checkpoint write``: the writer thread's, per step.
    """
    from specufex_dask.parallel import runners

    # wall clocks of the two processes, against the perf_counter of the stamps
    offset = time.time() - time.perf_counter()
    steps = sorted(getattr(runners, "STEP_TIMES", ()), key=lambda step: step["start"])
    calls = sorted(
        (call for worker in client.run(_worker_call_times).values() for call in worker),
        key=lambda call: call["start"],
    )
    nmf_end = stamps["nmf"][-1] if stamps["nmf"] else fit_began
    hmm_end = stamps["hmm"][-1] if stamps["hmm"] else nmf_end
    result = {}
    for stage, begin, end in (("nmf", fit_began, nmf_end), ("hmm", nmf_end, hmm_end)):
        mine = _stage_of_steps(steps, begin + offset, end + offset)
        rows: dict[str, list[float]] = {name: [] for name in (
            "driver build", "to worker", "wait read ahead", "compute", "read ahead", "back",
        )}  # fmt: skip
        for number, step in enumerate(mine):
            following = mine[number + 1] if number + 1 < len(mine) else None
            its = _calls_of_step(calls, step, following)
            if not its:
                continue
            rows["driver build"].append(step["sent"] - step["start"])
            rows["to worker"].append(max(call["start"] for call in its) - step["sent"])
            for name, key in (("wait read ahead", "wait_read"), ("compute", "compute"),
                              ("read ahead", "read_ahead")):  # fmt: skip
                rows[name].append(max(call[key] for call in its))
            rows["back"].append(step["end"] - max(call["end"] for call in its))
        n_steps = max(1, len(stamps[stage]))
        walls = np.diff(stamps[stage]).tolist()
        summary = {"step": _ms(walls), "steps": float(len(stamps[stage]))}
        summary.update({name: _ms(values) for name, values in rows.items()})
        for label in ("parameters", "fold", "update"):
            summary[label] = _ms(timers.per_stage(label, begin, end))
        for label in ("checkpoint", "checkpoint_write"):
            total = sum(timers.per_stage(label, begin, end))
            summary[label.replace("_", " ")] = 1e3 * total / n_steps
        result[stage] = summary
    return result


def kernel_rates(cores: int, repeats: int, n_patterns: int = 75) -> dict[str, float]:
    """Spectrograms/s of the kernels of each pipeline stage on ``cores`` processes
    (513 x 51 float32, one BLAS thread each), by ``bench_kernels``'s own timing.

    ``nmf fit``: its NMF fit step; ``hmm fit``: an NMF transform (the step computes
    the activations where it reads the rows) plus its HMM fit step; ``transform``: its
    NMF transform plus HMM transform. Timed with the allocator thresholds the workers
    get (:func:`specufex_dask.parallel.allocator.keep_work_arrays`).
    """
    keep_work_arrays()  # the workers' allocator thresholds (the worker setup's)
    rng = np.random.default_rng(0)
    problems = {
        "NMF": bench_kernels._problem(rng, 32, N_FREQUENCIES, N_TIMES, np.float32, n_patterns),
        "HMM": bench_kernels._problem(rng, 256, N_FREQUENCIES, N_TIMES, np.float32, n_patterns),
    }
    seconds = {}
    for stage in ("NMF transform", "NMF fit step", "HMM transform", "HMM fit step"):
        problem = problems[stage[:3]]
        with bench_kernels._blas_single_thread():
            run = bench_kernels._stage_runner(stage, problem)
            runs = bench_kernels._runs_per_repeat(run)
            if cores == 1:
                seconds[stage] = bench_kernels._median_seconds(run, repeats, runs)
        if cores == 2:
            seconds[stage] = bench_kernels._two_process_seconds(stage, problem, repeats, runs)
        seconds[stage] /= len(problem["X"])
    return {
        "nmf fit": 1 / seconds["NMF fit step"],
        "hmm fit": 1 / (seconds["NMF transform"] + seconds["HMM fit step"]),
        "transform": 1 / (seconds["NMF transform"] + seconds["HMM transform"]),
    }


def run_in_subprocess(args: argparse.Namespace, path: Path, n: int, k: int) -> RunResult:
    """A fresh interpreter per run, so the driver's peak RSS belongs to this run only."""
    command = [
        sys.executable, __file__, "--one-path", str(path), "--one-size", str(n),
        "--one-workers", str(k), "--nmf-steps", str(args.nmf_steps),
        "--hmm-steps", str(args.hmm_steps), "--batch-size", str(args.batch_size),
        "--checkpoint-every", str(args.checkpoint_every),
        *(["--fit-only"] if args.fit_only else []),
        "--passes", str(args.passes), *(["--converged"] if args.converged else []),
        *(["--profile"] if args.profile else []),
    ]  # fmt: skip
    # the long fits' progress lines go straight to this terminal
    stderr = None if args.mode != "fixed" else subprocess.PIPE
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"run N={n} workers={k} failed:\n{(completed.stderr or '')[-4000:]}")
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


def stage_table(groups: dict[tuple[int, int, int], list[RunResult]]) -> str:
    """Markdown table of each run's stages (seconds, steps, passes, final ELBO),
    transform and peaks."""
    rows = [
        "| N | workers | mode | NMF s | NMF steps | NMF passes | NMF final ELBO | HMM s "
        "| HMM steps | HMM passes | HMM final ELBO | fit s | transform s | transform "
        "events/s | end-to-end s | driver / worker peak MiB | load |\n|" + "---|" * 17
    ]
    for (n, _shard, k), results in sorted(groups.items()):
        for r in results:
            if not r.stages:
                continue
            nmf, hmm = r.stages["nmf"], r.stages["hmm"]

            def cells(stage: dict) -> str:
                stop = " (converged)" if stage.get("converged") else ""
                return (
                    f"{stage['seconds']:.1f} | {stage['steps']:.0f}{stop} | "
                    f"{stage['passes']:.2f} | {stage['elbo']:.6g}"
                )

            rows.append(
                f"| {n} | {k} | {r.mode} | {cells(nmf)} | {cells(hmm)} | {r.fit_seconds:.1f} "
                f"| {r.transform_seconds:.1f} | {r.transform_events_per_s:.0f} "
                f"| {r.total_seconds:.1f} | {max(r.driver_peak_mib.values()):.0f} / "
                f"{max(r.worker_peak_mib.values()):.0f} | {r.load} |"
            )
    return "\n".join(rows)


BREAKDOWN_COLUMNS = (
    "step", "driver build", "to worker", "wait read ahead", "compute", "read ahead", "back",
    "parameters", "fold", "update", "checkpoint", "checkpoint write",
)  # fmt: skip


def breakdown_table(groups: dict[tuple[int, int, int], list[RunResult]]) -> str:
    """Markdown table of the step breakdown (ms), one row per run and stage."""
    rows = [
        "| N | workers | stage | "
        + " | ".join(BREAKDOWN_COLUMNS)
        + " |\n|"
        + "---|" * (3 + len(BREAKDOWN_COLUMNS))
    ]
    for (n, _shard, k), results in sorted(groups.items()):
        for r in results:
            for stage, values in r.breakdown.items():
                cells = " | ".join(f"{values.get(c, float('nan')):.1f}" for c in BREAKDOWN_COLUMNS)
                rows.append(f"| {n} | {k} | {stage} | {cells} |")
    return "\n".join(rows)


def rate_table(groups: dict[tuple[int, int, int], list[RunResult]]) -> str:
    """Markdown table of the pipeline's spectrograms/s against the kernels' (same run)."""
    rows = [
        "| N | workers | stage | pipeline spectrograms/s | kernels spectrograms/s (before / "
        "after the run) | fraction of the faster | kernels at the fit's final patterns "
        "| fraction of those |\n|---|---|---|---:|---:|---:|---:|---:|"
    ]
    for (n, _shard, k), results in sorted(groups.items()):
        for r in results:
            batch = r.stages["nmf"]["batch"] if r.stages else 64.0
            pipeline = {
                "nmf fit": r.nmf_steps_per_s * batch,
                "hmm fit": r.hmm_steps_per_s * batch,
                "transform": r.transform_events_per_s,
            }
            for stage, rate in pipeline.items():
                kernel = r.kernel_rates.get(stage, float("nan"))
                both = " / ".join(f"{v:.0f}" for v in r.kernel_rates_measured.get(stage, []))
                fitted = r.kernel_rates_fitted.get(stage, float("nan"))
                patterns = r.stages["nmf"].get("patterns", float("nan")) if r.stages else 75
                rows.append(
                    f"| {n} | {k} | {stage} | {rate:.0f} | {both or f'{kernel:.0f}'} "
                    f"| {rate / kernel:.0%} | {fitted:.0f} (K = {patterns:.0f}) "
                    f"| {rate / fitted:.0%} |"
                )
    return "\n".join(rows)


def kept_archive_fits(
    path: Path,
    n_events: int,
    chunk_events: int,
    seed: int,
    shard_events: int = 0,
    content: SyntheticContent = ARCHIVE_CONTENT,
) -> bool:
    """Whether ``path`` is a complete synthetic archive of this size, chunking (inner
    chunks of one event when sharded), seed and version of ``content``."""
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
        and ds.attrs.get("synthetic_version") == content.version
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
    parser.add_argument(
        "--checkpoint-every",
        type=lambda text: text if text == "auto" else int(text),
        default="auto",
        help="SpecUFEx's checkpoint_every in the fixed and --passes modes (default: auto)",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--converged", action="store_true",
        help="fit with the stopping rule and step budgets of `specufex-dask run`",
    )  # fmt: skip
    modes.add_argument(
        "--passes", type=int, default=0,
        help="fit this many full passes over the events per stage (no early stop)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="time the parts of a step and the kernels' own rate in the same run",
    )  # fmt: skip
    parser.add_argument("--kernel-repeats", type=int, default=3)
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
    args = parser.parse_args(argv)
    args.mode = "converged" if args.converged else "passes" if args.passes else "fixed"
    return args


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
                        before = kernel_rates(k, args.kernel_repeats) if args.profile else {}
                        result = run_in_subprocess(args, path, n, k)
                        if args.profile:
                            # the machine's load moves: the kernels are timed on both sides
                            after = kernel_rates(k, args.kernel_repeats)
                            result.kernel_rates_measured = {
                                stage: [before[stage], after[stage]] for stage in before
                            }
                            result.kernel_rates = {
                                stage: max(pair)
                                for stage, pair in result.kernel_rates_measured.items()
                            }
                            fitted = int(result.stages["nmf"].get("patterns", 75))
                            result.kernel_rates_fitted = kernel_rates(
                                k, args.kernel_repeats, fitted
                            )
                            logger.info(
                                "kernel spectrograms/s on %d cores: %s", k, result.kernel_rates
                            )
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
        print(f"\nFit per stage ({args.mode} mode): seconds, steps, passes, final ELBO\n")
        print(stage_table(groups))
        profiled = {key: runs for key, runs in groups.items() if runs[0].breakdown}
        if profiled:
            print("\nWhere a step's time goes (ms, medians over the steps of a stage)\n")
            print(breakdown_table(profiled))
            print("\nThe pipeline against its kernels (spectrograms/s, same run)\n")
            print(rate_table(profiled))
    print(f"\nTargets: {TARGETS}")


if __name__ == "__main__":
    main()
