"""The direct chunk reader with and without the crc32c of every chunk.

Writes two archives of the same synthetic spectrograms (``bench_archive.synthetic_chunk``,
513 x 51 float32, 8 events per chunk): one as archives are written now (zstd, then a
crc32c), one as they were before checksums (zstd only). Then times, alternating between
the two, reads on this thread through :class:`specufex_dask.parallel.tasks.StoredRows`
(the tasks' read): a range of events and sorted random events. Prints the medians and
the checksummed read's time relative to the plain one.

With ``--layouts`` it compares instead the layouts of ``spectrogram``: plain 8-event
chunks against shards of ``--shards`` events made of one-event inner chunks (archives of
``--events`` synthetic events, the same values in each, kept in ``--scratch`` with
``--keep`` and taken again with ``--reuse``). For each it times a step's read (``--rows``
sorted random events, a new draw per repeat, the same draws for every layout) through
the package's direct reader and through Zarr's own read (``get_orthogonal_selection``,
partial shard reads), and a 256-event range (a transform task's read), and prints the
medians and the disk size of each archive.

With ``--codecs`` it compares the compressors of ``spectrogram`` in the layout of new
archives (shards of 256 one-event chunks, crc32c last): zstd (the former default),
Blosc's LZ4 with bit shuffle (the default) and none, on ``--events`` synthetic events
and on the 935 windows of the KW1 record (real data, 113 x 39). For each it prints the
disk size, the seconds to write the archive, and the medians of a step's read
(``--rows`` sorted random events, the same draws for every codec) and of a 256-event
range through the package's direct reader.

Usage: python benchmarks/bench_chunkread.py [--events 400] [--rows 256] [--repeats 15]
       [--scratch /work/bench-scratch]
       python benchmarks/bench_chunkread.py --layouts [--events 10000] [--rows 64]
       [--shards 256 512] [--repeats 15] [--scratch /work/bench-scratch] [--keep] [--reuse]
       python benchmarks/bench_chunkread.py --codecs [--events 4096] [--rows 64]
       [--repeats 30] [--scratch /work/bench-scratch]
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
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_archive import (  # noqa: E402
    N_FREQUENCIES,
    N_TIMES,
    SYNTHETIC_VERSION,
    build_archive,
    synthetic_chunk,
)

from specufex_dask.io import archive, chunkread  # noqa: E402
from specufex_dask.parallel.tasks import StoredRows  # noqa: E402

SEED = 7
CHUNK_EVENTS = 8


def write(path: Path, n_events: int, codecs: Callable[[], tuple]) -> Path:
    """An archive of ``n_events`` synthetic events whose arrays use ``codecs``."""
    with (
        mock.patch.object(archive, "checksummed", codecs),
        mock.patch.object(archive, "spectrogram_checksummed", codecs),
    ):
        values = synthetic_chunk(SEED, 0, n_events)
        ids = [f"ev{i:05d}" for i in range(n_events)]
        frequency = np.linspace(0.0, 50.0, N_FREQUENCIES)
        return archive.write_spectrograms(
            path, values, ids, frequency, np.arange(N_TIMES) * 0.04, chunk_events=CHUNK_EVENTS,
            shard_events=None,
        )  # fmt: skip


def seconds(path: Path, rows: slice | np.ndarray) -> float:
    began = time.perf_counter()
    StoredRows(str(path), rows).read()
    return time.perf_counter() - began


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def layout_archive(folder: Path, n_events: int, shard_events: int, reuse: bool) -> Path:
    """The synthetic archive of ``n_events`` in plain 8-event chunks (``shard_events`` 0)
    or in shards; an earlier one of the same layout and data is taken with ``reuse``."""
    name = f"layout-{n_events}-{'plain' if not shard_events else f'shard{shard_events}'}"
    path = folder / f"{name}.zarr"
    if reuse and path.exists():
        ds = archive.open_archive(path, with_dask=False)
        fits = (
            ds.sizes[archive.EVENT] == n_events
            and (archive.stored_shard_events(ds[archive.SPECTROGRAM].encoding) or 0)
            == shard_events
            and ds.attrs.get("synthetic_version") == SYNTHETIC_VERSION
        )
        if fits:
            return path
    seconds = build_archive(path, n_events, CHUNK_EVENTS, SEED, None, shard_events)
    print(f"built {path.name} in {seconds:.0f} s")
    return path


def zarr_seconds(path: Path, rows: slice | np.ndarray) -> float:
    """Zarr's own read of ``rows`` (partial shard reads when sharded)."""
    import zarr

    began = time.perf_counter()
    array = zarr.open_array(str(path), path=archive.SPECTROGRAM, mode="r")
    chunkread._zarr_rows(array, rows)
    return time.perf_counter() - began


def compare_layouts(args: argparse.Namespace) -> None:
    """Step reads and range reads of each layout, direct and through Zarr."""
    folder = args.scratch or Path(tempfile.mkdtemp(prefix="bench-chunkread-"))
    folder.mkdir(parents=True, exist_ok=True)
    layouts = {0: "plain 8-event chunks", **{s: f"shards of {s} x 1-event" for s in args.shards}}
    paths = {s: layout_archive(folder, args.events, s, args.reuse) for s in layouts}
    rng = np.random.default_rng(SEED)
    draws = [np.sort(rng.choice(args.events, args.rows, replace=False))
             for _ in range(args.repeats)]  # fmt: skip
    ranges = [slice(start, start + 256) for start in
              256 * rng.integers(0, args.events // 256, args.repeats)]  # fmt: skip
    times: dict[tuple[int, str, str], list[float]] = {}
    readers = {"direct": seconds, "zarr": zarr_seconds}
    for number in range(args.repeats):
        for shard, path in paths.items():  # alternating, so load drifts hit all alike
            for reader, timed in readers.items():
                for what, rows in (("step", draws[number]), ("range", ranges[number])):
                    times.setdefault((shard, reader, what), []).append(timed(path, rows))
    print(f"{args.events} events of {N_FREQUENCIES} x {N_TIMES} float32, zstd + crc32c; "
          f"medians of {args.repeats} alternating reads on one thread")  # fmt: skip
    step_header = f"step: {args.rows} random rows ms"
    print(f"| layout | disk MB | reader | {step_header} | 256-event range ms |")
    print("|---|---|---|---|---|")
    for shard, label in layouts.items():
        size = disk_bytes(paths[shard] / archive.SPECTROGRAM) / 1e6
        for reader in readers:
            step = statistics.median(times[(shard, reader, "step")]) * 1e3
            span = statistics.median(times[(shard, reader, "range")]) * 1e3
            print(f"| {label} | {size:.0f} | {reader} | {step:.1f} | {span:.1f} |")
    if not args.keep:
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)


def codec_choices() -> dict[str, Callable[[], tuple]]:
    """The spectrogram codecs compared by ``--codecs``, each followed by a crc32c."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {
        "zstd": lambda: (ZstdCodec(), Crc32cCodec()),
        "blosc lz4 bitshuffle": archive.spectrogram_checksummed,
        "none": lambda: (Crc32cCodec(),),
    }


def codec_archive(path: Path, values: np.ndarray, codecs: Callable[[], tuple]) -> float:
    """Write ``values`` as a new archive's spectrograms with ``codecs``; seconds taken."""
    ids = [f"ev{i:05d}" for i in range(len(values))]
    frequency, times = np.arange(values.shape[1]), np.arange(values.shape[2])
    began = time.perf_counter()
    with mock.patch.object(archive, "spectrogram_checksummed", codecs):
        archive.write_spectrograms(path, values, ids, frequency, times, shard_events=256)
    return time.perf_counter() - began


def compare_codecs(args: argparse.Namespace) -> None:
    """Size, write time and reads of the spectrogram codecs on synthetic and real rows."""
    from specufex_dask.analysis import datasets

    data = {
        f"synthetic {N_FREQUENCIES} x {N_TIMES}": synthetic_chunk(SEED, 0, args.events),
        "KW1 113 x 39": datasets.kw1_spectrograms()[0].astype(np.float32),
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-chunkread-", dir=args.scratch))
    print(f"shards of 256 one-event chunks, crc32c last; medians of {args.repeats} "
          "alternating reads on one thread")  # fmt: skip
    print(f"| data | codec | disk MB | write s | step: {args.rows} random rows ms "
          "| 256-event range ms |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    try:
        for label, values in data.items():
            paths, written = {}, {}
            for name, codecs in codec_choices().items():
                paths[name] = folder / f"{len(paths)}-{label.split()[0]}.zarr"
                written[name] = codec_archive(paths[name], values, codecs)
            rng = np.random.default_rng(SEED)
            n = len(values)
            draws = [np.sort(rng.choice(n, args.rows, replace=False))
                     for _ in range(args.repeats)]  # fmt: skip
            starts = rng.integers(0, max(n - 256, 0) + 1, args.repeats)
            times: dict[tuple[str, str], list[float]] = {}
            for number in range(args.repeats):
                for name, path in paths.items():
                    span = slice(int(starts[number]), int(starts[number]) + 256)
                    for what, rows in (("step", draws[number]), ("range", span)):
                        times.setdefault((name, what), []).append(seconds(path, rows))
            for name, path in paths.items():
                size = disk_bytes(path / archive.SPECTROGRAM) / 1e6
                step = statistics.median(times[(name, "step")]) * 1e3
                span_ms = statistics.median(times[(name, "range")]) * 1e3
                print(f"| {label} | {name} | {size:.1f} | {written[name]:.2f} | {step:.2f} "
                      f"| {span_ms:.2f} |")  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--layouts", action="store_true", help="compare the layouts")
    parser.add_argument("--codecs", action="store_true", help="compare the compressors")
    parser.add_argument("--shards", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--keep", action="store_true", help="keep the layouts' archives")
    parser.add_argument("--reuse", action="store_true", help="take kept archives again")
    args = parser.parse_args()
    if args.layouts:
        args.events = args.events or 10000
        args.rows = args.rows or 64
        compare_layouts(args)
        return
    if args.codecs:
        args.events = args.events or 4096
        args.rows = args.rows or 64
        compare_codecs(args)
        return
    args.events = args.events or 400
    args.rows = args.rows or 256
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
