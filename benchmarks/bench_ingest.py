"""Ingest throughput: waveforms per second from miniSEED files to a Zarr archive.

The 10 BAV events are copied N/10 times into a temporary folder (real miniSEED files), then
ingested with the golden parameters (100 Hz, 1 s windows, overlap 0.25, nfft 2000, 8-20 Hz,
2000 samples). Prints the median over repeats for dask's threaded scheduler and for a local
distributed cluster (2 worker processes on 127.0.0.1).

Usage: python benchmarks/bench_ingest.py [--n-files 2000] [--repeats 3] [--chunk-events 256]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from specufex_dask.ingest.driver import ingest_waveforms
from specufex_dask.ingest.preprocessing import SpectrogramParameters

BAV = Path(__file__).resolve().parents[2] / "shared" / "data" / "bav_ncsn_1984" / "waveforms"
PARAMS = SpectrogramParameters(fs=100.0, nfft=2000, fmin=8, fmax=20, n_samples=2000)


def make_folder(root: Path, n_files: int) -> Path:
    folder = root / "waveforms"
    folder.mkdir()
    sources = sorted(BAV.iterdir())
    for i in range(n_files):
        source = sources[i % len(sources)]
        shutil.copyfile(source, folder / f"{i:07d}.mseed")
    return folder


def run(folder: Path, root: Path, repeats: int, chunk_events: int, client) -> list[float]:
    rates = []
    for repeat in range(repeats):
        out = root / f"bench-{repeat}.zarr"
        start = time.perf_counter()
        report = ingest_waveforms(folder, out, PARAMS, client=client, chunk_events=chunk_events)
        seconds = time.perf_counter() - start
        rates.append(report.n_written / seconds)
        shutil.rmtree(out)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-files", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-events", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        folder = make_folder(root, args.n_files)
        rates = run(folder, root, args.repeats, args.chunk_events, client=None)
        print(
            f"threaded scheduler: {statistics.median(rates):.0f} waveforms/s "
            f"(median of {args.repeats}, {args.n_files} files, chunk_events={args.chunk_events}; "
            f"runs {', '.join(f'{r:.0f}' for r in rates)})"
        )
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster) as client,
        ):
            rates = run(folder, root, args.repeats, args.chunk_events, client=client)
        print(
            f"local cluster (2 processes): {statistics.median(rates):.0f} waveforms/s "
            f"(median of {args.repeats}; runs {', '.join(f'{r:.0f}' for r in rates)})"
        )


if __name__ == "__main__":
    main()
