"""The direct chunk reader with and without the crc32c of every chunk.

Writes two archives of the same synthetic spectrograms (``bench_archive.synthetic_chunk``,
513 x 51 float32, 8 events per chunk): one as archives are written now (zstd, then a
crc32c), one as they were before checksums (zstd only). Then times, alternating between
the two, reads on this thread through :class:`specufex_dask.parallel.tasks.StoredRows`
(the tasks' read): a range of events and sorted random events. Prints the medians and
the checksummed read's time relative to the plain one.

Usage: python benchmarks/bench_chunkread.py [--events 400] [--rows 256] [--repeats 15]
       [--scratch /work/bench-scratch]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_archive import N_FREQUENCIES, N_TIMES, synthetic_chunk  # noqa: E402

from specufex_dask.io import archive  # noqa: E402
from specufex_dask.parallel.tasks import StoredRows  # noqa: E402

SEED = 7
CHUNK_EVENTS = 8


def write(path: Path, n_events: int, codecs: Callable[[], tuple]) -> Path:
    """An archive of ``n_events`` synthetic events whose arrays use ``codecs``."""
    original = archive.checksummed
    archive.checksummed = codecs
    try:
        values = synthetic_chunk(SEED, 0, n_events)
        ids = [f"ev{i:05d}" for i in range(n_events)]
        frequency = np.linspace(0.0, 50.0, N_FREQUENCIES)
        return archive.write_spectrograms(
            path, values, ids, frequency, np.arange(N_TIMES) * 0.04, chunk_events=CHUNK_EVENTS
        )
    finally:
        archive.checksummed = original


def seconds(path: Path, rows: slice | np.ndarray) -> float:
    began = time.perf_counter()
    StoredRows(str(path), rows).read()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    from zarr.codecs import ZstdCodec

    folder = Path(tempfile.mkdtemp(prefix="bench-chunkread-", dir=args.scratch))
    try:
        archives = {
            "crc32c": write(folder / "checksummed.zarr", args.events, archive.checksummed),
            "plain": write(folder / "plain.zarr", args.events, lambda: (ZstdCodec(),)),
        }
        rng = np.random.default_rng(SEED)
        selections = {
            f"range of {args.rows}": slice(0, args.rows),
            f"{args.rows} random": np.sort(rng.choice(args.events, args.rows, replace=False)),
        }
        shape = f"{N_FREQUENCIES} x {N_TIMES}"
        print(f"{args.events} events of {shape} float32, {CHUNK_EVENTS} per chunk; "
              f"medians of {args.repeats} alternating reads")  # fmt: skip
        for label, rows in selections.items():
            times: dict[str, list[float]] = {name: [] for name in archives}
            for _ in range(args.repeats):
                for name, path in archives.items():
                    times[name].append(seconds(path, rows))
            median = {name: statistics.median(values) for name, values in times.items()}
            print(
                f"{label:>16}: plain {median['plain'] * 1e3:7.2f} ms, crc32c "
                f"{median['crc32c'] * 1e3:7.2f} ms ({median['crc32c'] / median['plain']:.3f}x)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
