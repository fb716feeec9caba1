"""Where the time of one SVI step goes: driver graph work, chunk reads, kernel, scheduling.

Runs the engine's minibatch path piece by piece on an archive (e.g. one left by
``bench_archive.py --keep``) on a local cluster, and prints medians over steps of:

- build: creating the delayed tasks on the driver;
- submit: ``client.compute`` (graph merge, optimisation and culling, sending);
- no-op round trip: as many trivial tasks as the step has chunks;
- read only: the step's tasks reading their minibatch rows by path;
- NMF step / HMM step: the engine's real tasks (``nmf_statistics`` / ``hmm_statistics``);
- kernel only: the same statistics computed locally from rows already in memory.

Usage: python benchmarks/profile_step.py ARCHIVE [--workers 1] [--steps 8] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import dask


def _read_rows(rows) -> float:
    return float(rows.read().sum())


def _noop(value: int) -> int:
    return value


def main() -> None:
    from specufex_dask.inference.seeding import minibatch
    from specufex_dask.inference.steps import hmm_leaves, nmf_activations, nmf_leaves
    from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
    from specufex_dask.parallel import engine
    from specufex_dask.parallel.clusters import connect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    timings: dict[str, list[float]] = defaultdict(list)
    with connect(workers=args.workers, threads_per_worker=1, memory_limit="4GiB",
                 dashboard_address="127.0.0.1:0") as handle:  # fmt: skip
        client = handle.client
        began = time.perf_counter()
        chunks = engine.EventChunks.from_data(args.archive)
        timings["open archive (EventChunks.from_data)"].append(time.perf_counter() - began)
        n_events = chunks.shape[0]
        nmf = BayesianNonparametricNMF(chunks.shape, 75, random_state=0, dtype="float32")
        nmf_params = nmf.step_parameters()
        hmm = BayesianHMM(75, nmf.gain, 15, n_eff=n_events, random_state=0, dtype="float32")
        hmm_params = hmm.step_parameters()
        transform_params = nmf.transform_parameters()
        import zarr

        spectrogram = zarr.open_array(args.archive, path="spectrogram", mode="r")
        for step in range(args.steps):
            index = minibatch(0, "nmf_batch", step, n_events, args.batch_size)
            parts = chunks.split(index)
            timings["chunks per step"].append(len(parts))

            began = time.perf_counter()
            tasks = [
                dask.delayed(_read_rows)(engine.StoredRows(chunks.path, index[first:stop]))
                for first, stop in chunks.step_groups(index)
            ]
            built = time.perf_counter()
            futures = client.compute(tasks)
            submitted = time.perf_counter()
            client.gather(futures)
            done = time.perf_counter()
            timings["build tasks (driver)"].append(built - began)
            timings["client.compute submit (driver)"].append(submitted - built)
            timings["read only: total"].append(done - began)

            began = time.perf_counter()
            client.gather(client.compute([dask.delayed(_noop)(i) for i in range(len(parts))]))
            timings["no-op round trip"].append(time.perf_counter() - began)

            began = time.perf_counter()
            engine.nmf_statistics(chunks, index, nmf_params, client)
            timings["NMF step (engine)"].append(time.perf_counter() - began)

            began = time.perf_counter()
            engine.hmm_statistics(chunks, index, transform_params, hmm_params, client)
            timings["HMM step (engine)"].append(time.perf_counter() - began)

            rows = spectrogram.get_orthogonal_selection((index, slice(None), slice(None)))
            began = time.perf_counter()
            nmf_leaves(rows, nmf_params)
            timings["NMF kernel only (driver, in memory)"].append(time.perf_counter() - began)
            began = time.perf_counter()
            hmm_leaves(nmf_activations(rows, transform_params), hmm_params)
            timings["HMM kernel only (driver, in memory)"].append(time.perf_counter() - began)

            began = time.perf_counter()
            spectrogram.get_orthogonal_selection((index, slice(None), slice(None)))
            timings["read minibatch rows directly (zarr, driver)"].append(
                time.perf_counter() - began
            )

    print(f"{args.archive}: N={n_events}, {len(chunks.bounds)} chunks, workers={args.workers}")
    for name, values in timings.items():
        tail = values[1:] if len(values) > 1 else values  # first step warms caches
        print(f"{name:45s} median {statistics.median(tail):8.3f}")


if __name__ == "__main__":
    main()
