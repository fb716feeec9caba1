"""Per-spectrogram cost of the NMF and HMM kernels, and how close the NMF gets to BLAS.

Run: ``python benchmarks/bench_kernels.py [--repeats 5] [--batch 32] [--profile]``

For each spectrogram size (241 x 26 and 513 x 51, K = 75 patterns, S = 15 states) and
dtype (float64, float32) it times four stages on a batch of spectrograms:

* NMF transform: ``nmf_transform`` (5 fixed-point iterations);
* NMF fit step: ``nmf_local_step`` at T = 1 (10 inner iterations, with ELBO) plus the
  global update from the batch's summed statistics;
* HMM transform: ``hmm_local_step`` (20 iterations) plus ``fingerprints``;
* HMM fit step: ``hmm_local_step`` plus the global update.

Each is run two ways, BLAS limited to one thread: one process on the whole batch
("1 core"), and two processes at once, each on half of the batch, started together at
every repeat ("2 cores"; this is how the pipeline's worker processes use the machine).
Reported: the median over ``--repeats`` runs of the milliseconds per spectrogram (for two
processes, the slower one's time over the whole batch), and for the NMF stages the
fraction of this machine's square-matmul GFLOP/s (same dtype, one BLAS thread for
"1 core" and two for "2 cores", measured in the same run) that their matrix products
reach, counting 2 D K M flops per product (two products per fixed-point iteration).
The reference package took 142, 291, 46 and 45 ms per 513 x 51 spectrogram for the
four stages; the targets are 1, 3, 0.5 and 1 ms.

When the reference package (``specufex``) is importable, the same four stages of it are
timed in the same run on the same spectrograms (its ``BayesianNonparametricNMF`` and
``BayesianHMM``: ``transform`` and one ``fit`` of a batch, one BLAS thread, batches of
``--reference-batch``), and a second table prints its ms per spectrogram and its time
over ours on one core.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import multiprocessing
import pstats
import statistics
import time
from collections.abc import Callable

import numpy as np

from specufex_dask.inference.updates import NMFPrior, hmm_global_update, nmf_global_update
from specufex_dask.kernels.hmm import fingerprints, hmm_local_step
from specufex_dask.kernels.nmf import expected_log, nmf_local_step, nmf_transform
from specufex_dask.parallel.allocator import keep_work_arrays

N_PATTERNS, N_STATES = 75, 15
SIZES = ((241, 26), (513, 51))
NMF_TRANSFORM_ITERATIONS, NMF_INNER_ITERATIONS = 5, 10


def _blas_single_thread():
    """A context limiting BLAS to one thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _problem(
    rng: np.random.Generator, n: int, D: int, M: int, dtype: type, n_patterns: int = N_PATTERNS
) -> dict:
    """Globals and a batch of spectrograms with the structure the kernels see in practice
    (``n_patterns`` patterns: 75 as a fit starts, fewer once it has pruned)."""
    K = n_patterns
    prior = NMFPrior.default(D, K)
    W1 = rng.gamma(10.0, 0.1, size=(D, K)) * 50.0
    W2 = np.full((D, K), 50.0)
    A1 = rng.gamma(5.0, 0.2, size=(1, K)) * 20.0
    A2 = np.full((1, K), 20.0)
    log_basis = expected_log(W1, W2) + expected_log(A1, A2)
    basis_weight = ((W1 / W2) * (A1 / A2)).sum(axis=0)
    activations = rng.gamma(0.3, 1.0, size=(n, K, M))
    X = rng.poisson((W1 / W2) @ activations * 3.0).astype(dtype)
    V = nmf_transform(X, log_basis, basis_weight, h01=prior.h01, h02=prior.h02)
    gain = (W1 / W2).sum(axis=0)
    B1 = rng.gamma(1.0, 1.0, size=(N_STATES, K)) * 1e3
    B2 = np.full((N_STATES, K), 30.0)
    return {
        "X": X, "U": (V * gain[:, None]).astype(dtype), "prior": prior,
        "W1": W1, "W2": W2, "A1": A1, "A2": A2, "log_basis": log_basis,
        "basis_weight": basis_weight, "B1": B1, "B2": B2,
        "ElnB": expected_log(B1, B2), "EB": B1 / B2,
    }  # fmt: skip


def _nmf_transform(p: dict, X: np.ndarray) -> None:
    nmf_transform(X, p["log_basis"], p["basis_weight"], h01=p["prior"].h01, h02=p["prior"].h02)


def _nmf_fit_step(p: dict, X: np.ndarray) -> tuple:
    local = nmf_local_step(
        X, p["log_basis"], p["basis_weight"], h01=p["prior"].h01, h02=p["prior"].h02,
        temperature=1.0, n_inner=NMF_INNER_ITERATIONS,
    )  # fmt: skip
    return local.basis_counts.sum(axis=0), local.activation_sum.sum(axis=0)


def _nmf_update(p: dict, counts: np.ndarray, activation_sum: np.ndarray, n: int) -> None:
    nmf_global_update(
        p["W1"], p["W2"], p["A1"], p["A2"], counts.astype(np.float64),
        activation_sum.astype(np.float64), scale=1000.0 / n, step_size=0.1, temperature=1.0,
        prior=p["prior"],
    )  # fmt: skip


def _hmm_local(p: dict, U: np.ndarray):
    return hmm_local_step(
        U, p["ElnB"], p["EB"], tau_initial=0.01 / N_STATES, tau_transition=0.1 / N_STATES
    )


def _hmm_transform(p: dict, U: np.ndarray) -> None:
    local = _hmm_local(p, U)
    fingerprints(
        local.transition.astype(np.float64), local.initial.astype(np.float64),
        tau_initial=0.01 / N_STATES, tau_transition=0.1 / N_STATES,
    )  # fmt: skip


def _hmm_fit_step(p: dict, U: np.ndarray) -> tuple:
    local = _hmm_local(p, U)
    return local.emission_counts.sum(axis=0), local.state_counts.sum(axis=0)


def _hmm_update(p: dict, counts: np.ndarray, state_counts: np.ndarray, n: int) -> None:
    hmm_global_update(
        p["B1"], p["B2"], counts.astype(np.float64), state_counts.astype(np.float64),
        scale=1000.0 / n, step_size=0.1, tau1=0.1, tau2=0.1,
    )  # fmt: skip


def _stage_runner(stage: str, p: dict) -> Callable[[], None]:
    """A function running ``stage`` once on the whole batch of ``p``."""
    data = p["U"] if stage.startswith("HMM") else p["X"]
    local = {
        "NMF transform": _nmf_transform,
        "NMF fit step": _nmf_fit_step,
        "HMM transform": _hmm_transform,
        "HMM fit step": _hmm_fit_step,
    }[stage]
    update = {"NMF fit step": _nmf_update, "HMM fit step": _hmm_update}.get(stage)

    def run() -> None:
        result = local(p, data)
        if update is not None:
            update(p, result[0], result[1], len(data))

    return run


MIN_REPEAT_SECONDS = 0.3  # a timed repeat runs the stage this long at least

# what a timing reads: wall time, or with ``--clock cpu`` the CPU time of the timing
# thread, which leaves out the time the machine's other processes take from it
_clock: Callable[[], float] = time.perf_counter


def _runs_per_repeat(run: Callable[[], None], clock: Callable[[], float] | None = None) -> int:
    """How many runs make a timed repeat last MIN_REPEAT_SECONDS (after a warm-up run)."""
    clock = clock or _clock
    run()  # warm up caches and compiled kernels
    start = clock()
    run()
    return max(1, math.ceil(MIN_REPEAT_SECONDS / (clock() - start)))


def _median_seconds(
    run: Callable[[], None],
    repeats: int,
    runs: int | None = None,
    clock: Callable[[], float] | None = None,
) -> float:
    """Median over ``repeats`` of the seconds of one run (each repeat averages ``runs``)."""
    clock = clock or _clock
    runs = _runs_per_repeat(run, clock) if runs is None else runs
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(runs):
            run()
        times.append((clock() - start) / runs)
    return statistics.median(times)


def _half(p: dict, part: int) -> dict:
    """The problem with every batch array cut to one half of its events."""
    halves = {}
    for key in ("X", "U"):
        n = len(p[key])
        halves[key] = p[key][: n // 2] if part == 0 else p[key][n // 2 :]
    return {**p, **halves}


def _timed_child(stage, p, part, repeats, runs, barrier, connection) -> None:
    with _blas_single_thread():
        run = _stage_runner(stage, _half(p, part))
        run()
        times = []
        for _ in range(repeats):
            barrier.wait()
            start = _clock()
            for _ in range(runs):
                run()
            times.append((_clock() - start) / runs)
    connection.send(times)


def _two_process_seconds(stage: str, p: dict, repeats: int, runs: int) -> float:
    """Median over repeats of the slower of two processes, each on half the batch."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    pipes = [context.Pipe(duplex=False) for _ in range(2)]
    children = [
        context.Process(
            target=_timed_child,
            args=(stage, p, part, repeats, runs, barrier, pipes[part][1]),
        )
        for part in range(2)
    ]
    for child in children:
        child.start()
    times = [pipes[part][0].recv() for part in range(2)]
    for child in children:
        child.join()
    return statistics.median(max(pair) for pair in zip(*times, strict=True))


def matmul_gflops(dtype: type, repeats: int, threads: int, size: int = 1024) -> float:
    """GFLOP/s of a square matrix product with ``threads`` BLAS threads.

    With ``--clock cpu`` the time is the process's CPU time over ``threads``: the rate
    of ``threads`` cores that nothing else interrupts.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    clock = _clock
    if clock is time.thread_time:  # the product's other BLAS threads count too

        def clock() -> float:
            return time.process_time() / threads

    with threadpool_limits(limits=threads, user_api="blas"):
        seconds = _median_seconds(lambda: a @ b, repeats, clock=clock)
    return 2.0 * size**3 / seconds / 1e9


def nmf_matmul_flops(stage: str, D: int, M: int) -> float:
    """Flops of the NMF stage's matrix products per spectrogram (2 D K M each).

    Two products per fixed-point iteration, but the first iteration's normaliser is a
    matrix-vector product; the fit step adds the final counts (2 products), and at
    T = 1 its ELBO reuses their normaliser.
    """
    per_product = 2.0 * D * N_PATTERNS * M
    if stage == "NMF transform":
        return (2 * NMF_TRANSFORM_ITERATIONS - 1) * per_product
    return (2 * NMF_INNER_ITERATIONS + 1) * per_product


def _reference_package():
    """The reference package's module, or None when it is not installed."""
    try:
        import specufex
    except ImportError:
        return None
    return specufex


def _reference_stage_seconds(reference, X: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds per spectrogram of the reference's four stages on the batch ``X``.

    Written against the reference's public API (its README): ``BayesianNonparametricNMF
    (X.shape)`` with ``fit(X)`` and ``transform(X) -> Vs``, and ``BayesianHMM(num_pat,
    gain)`` with ``fit(Vs)`` and ``transform(Vs) -> (fingerprints, As, gams)``; each
    ``fit`` call is one SVI step on the batch. The models are fitted once before timing
    so that every timed call starts from a fitted state, as ours do.
    """
    nmf = reference.BayesianNonparametricNMF(X.shape)
    nmf.fit(X)
    Vs = nmf.transform(X)
    hmm = reference.BayesianHMM(nmf.num_pat, nmf.gain)
    hmm.fit(Vs)
    runs = {
        "NMF transform": lambda: nmf.transform(X),
        "NMF fit step": lambda: nmf.fit(X),
        "HMM transform": lambda: hmm.transform(Vs),
        "HMM fit step": lambda: hmm.fit(Vs),
    }
    with _blas_single_thread():
        return {
            stage: _median_seconds(run, repeats, runs=1) / len(X) for stage, run in runs.items()
        }


def _reference_rows(
    reference, X: np.ndarray, repeats: int, ours: dict[tuple[str, int, int, str], float]
) -> list[str]:
    """Table rows of the reference's ms per spectrogram and its time over ours."""
    _, D, M = X.shape
    dtype = X.dtype.name
    try:
        seconds = _reference_stage_seconds(reference, X, repeats)
    except Exception as error:  # the reference's API is only known from its README
        return [f"| all | {D}x{M} | {dtype} | failed: {type(error).__name__}: {error} | |"]
    return [
        f"| {stage} | {D}x{M} | {dtype} | {value * 1e3:.1f} | "
        f"{value / ours[stage, D, M, dtype]:.1f}x |"
        for stage, value in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="spectrograms per NMF batch")
    parser.add_argument(
        "--hmm-batch", type=int, default=256,
        help="sequences per HMM batch (the kernel runs them in cache-sized blocks)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile each stage once")
    parser.add_argument(
        "--reference-batch", type=int, default=8,
        help="spectrograms per batch of the reference package's stages, when importable",
    )  # fmt: skip
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="time by the wall clock, or by the timing thread's CPU time (a busy machine)",
    )  # fmt: skip
    parser.add_argument(
        "--default-allocator", action="store_true",
        help="time with the C allocator's own thresholds instead of the workers' "
        "(specufex_dask.parallel.allocator)",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.default_allocator:
        # the pipeline's workers run with these thresholds (the worker setup)
        keep_work_arrays()
    global _clock
    _clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    reference = _reference_package()

    peaks = {
        (dtype, cores): matmul_gflops(dtype, args.repeats, cores)
        for dtype in (np.float64, np.float32)
        for cores in (1, 2)
    }
    print(
        "square 1024 matmul GFLOP/s (1 / 2 BLAS threads): "
        f"float64 {peaks[np.float64, 1]:.1f} / {peaks[np.float64, 2]:.1f}, "
        f"float32 {peaks[np.float32, 1]:.1f} / {peaks[np.float32, 2]:.1f}; "
        f"NMF batch {args.batch}, HMM batch {args.hmm_batch}, median of {args.repeats}, "
        f"{args.clock} clock\n"
    )
    stages = ("NMF transform", "NMF fit step", "HMM transform", "HMM fit step")
    print(
        "| stage | size | dtype | 1 core ms/spec | 2 cores ms/spec "
        "| NMF matmul % of peak (1 core / 2 cores) |"
    )
    print("|---|---|---|---:|---:|---:|")  # fmt: skip
    rng = np.random.default_rng(0)
    ours: dict[tuple[str, int, int, str], float] = {}
    reference_rows: list[str] = []
    for D, M in SIZES:
        for dtype in (np.float64, np.float32):
            problems = {
                "NMF": _problem(rng, args.batch, D, M, dtype),
                "HMM": _problem(rng, args.hmm_batch, D, M, dtype),
            }
            for stage in stages:
                problem = problems[stage[:3]]
                batch = len(problem["X"])
                with _blas_single_thread():
                    run = _stage_runner(stage, problem)
                    if args.profile:
                        profiler = cProfile.Profile()
                        profiler.runcall(run)
                        print(f"\n### {stage} {D}x{M} {np.dtype(dtype).name}")
                        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)
                    runs = _runs_per_repeat(run)
                    per_spectrogram = {1: _median_seconds(run, args.repeats, runs) / batch}
                ours[stage, D, M, np.dtype(dtype).name] = per_spectrogram[1]
                seconds = _two_process_seconds(stage, problem, args.repeats, runs)
                per_spectrogram[2] = seconds / batch
                efficiency = ""
                if stage.startswith("NMF"):
                    flops = nmf_matmul_flops(stage, D, M)
                    fractions = [
                        flops / per_spectrogram[c] / 1e9 / peaks[dtype, c] * 100 for c in (1, 2)
                    ]
                    efficiency = f"{fractions[0]:.0f}% / {fractions[1]:.0f}%"
                print(
                    f"| {stage} | {D}x{M} | {np.dtype(dtype).name} | "
                    f"{per_spectrogram[1] * 1e3:.3f} | {per_spectrogram[2] * 1e3:.3f} | "
                    f"{efficiency} |",
                    flush=True,
                )
            if reference is not None:
                X = problems["NMF"]["X"][: args.reference_batch]
                reference_rows += _reference_rows(reference, X, args.repeats, ours)
    if reference is None:
        print("\nreference package (specufex) not importable: its stages were not timed")
        return
    print(
        f"\nreference package (specufex {getattr(reference, '__version__', '?')}), "
        f"batches of {args.reference_batch}, 1 core:\n"
    )
    print("| stage | size | dtype | reference ms/spec | reference / ours (1 core) |")
    print("|---|---|---|---:|---:|")  # fmt: skip
    print("\n".join(reference_rows))


if __name__ == "__main__":
    main()
