"""An NMF fit step's kernels alone and beside a second thread of the same process.

Why the step runners read the next step's rows after a step's tasks rather than beside
them (:mod:`specufex_dask.parallel.runners`): the kernels release and take back the GIL
at every NumPy call on their small arrays, and wait whenever another thread holds it.
Times (medians of ``--repeats``) the bench_kernels NMF fit step of ``--events``
spectrograms of 513 x 51 float32 at ``--patterns`` patterns on one BLAS thread: alone,
beside a thread reading ``--events`` random rows at a time from the archive at
``--archive`` (a ``bench_archive.py --keep`` archive, when given), beside a thread
decoding one Blosc frame over and over (the GIL released while it decodes), beside one
sleeping in 0.1 ms naps, and beside one running pure Python.

Usage: python benchmarks/bench_readahead.py
       [--archive /work/bench-scratch/synthetic-10000-shard256.zarr] [--events 32]
       [--patterns 12] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels  # noqa: E402

from specufex_dask.parallel.tasks import StoredRows  # noqa: E402


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` single calls of ``run`` (bench_kernels' timer)."""
    return bench_kernels._median_seconds(run, repeats, runs=1) * 1e3


def beside(work: Callable[[], object], run: Callable[[], object], repeats: int) -> float:
    """Median ms of ``run`` while another thread calls ``work`` over and over."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        return median_ms(run, repeats)
    finally:
        stop.set()
        thread.join()


def pure_python() -> int:
    total = 0
    for number in range(1000):
        total += number
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=None)
    parser.add_argument("--events", type=int, default=32)
    parser.add_argument("--patterns", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    from numcodecs import Blosc
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    problem = bench_kernels._problem(
        rng, args.events, 513, 51, np.float32, n_patterns=args.patterns
    )
    step = bench_kernels._stage_runner("NMF fit step", problem)
    frame = Blosc("lz4", 5, Blosc.BITSHUFFLE).encode(np.ascontiguousarray(problem["X"][0]))
    decoder = Blosc()
    others: dict[str, Callable[[], object]] = {}
    if args.archive is not None:
        import zarr

        n_events = zarr.open_array(str(args.archive), path="spectrogram", mode="r").shape[0]

        def read() -> object:
            rows = np.sort(rng.choice(n_events, args.events, replace=False))
            return StoredRows(str(args.archive), rows).read()

        others["reading rows of the archive"] = read
    others["decoding a Blosc frame"] = lambda: decoder.decode(frame)
    others["sleeping 0.1 ms at a time"] = lambda: time.sleep(1e-4)
    others["pure Python"] = pure_python
    print(f"NMF fit step, {args.events} x 513 x 51 float32, K = {args.patterns}, one BLAS "
          f"thread; medians of {args.repeats}")  # fmt: skip
    with threadpool_limits(1, "blas"):
        step()
        print(f"| beside | ms |\n|---|---:|\n| nothing | {median_ms(step, args.repeats):.1f} |")
        for label, work in others.items():
            print(f"| {label} | {beside(work, step, args.repeats):.1f} |")


if __name__ == "__main__":
    main()
