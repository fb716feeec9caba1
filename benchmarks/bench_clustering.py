"""Clustering at scale: the K sweep by sampled silhouette on 100k fingerprints.

Planted fingerprints (``--events`` of them, ``--states`` states, ``--groups`` groups of
different sizes, each a Dirichlet transition matrix and occupancy, with per-event noise)
are clustered as ``specufex-dask cluster`` does it with a K sweep, and the script prints,
for each method: seconds, the K chosen, the adjusted Rand index against the planted
groups, and the error of the sampled per-event silhouette against the exact one on a
subset (exact silhouettes need every pairwise distance, so they are computed on
``--exact-events`` events).

    python benchmarks/bench_clustering.py                     # 100k events, K 2-10
    python benchmarks/bench_clustering.py --events 20000 --samples 1000 2000 5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr
from sklearn.metrics import adjusted_rand_score, silhouette_samples

from specufex_dask.analysis.clustering import (
    cluster_fingerprints,
    fingerprint_features,
    sampled_silhouette,
)


def planted_fingerprints(
    n_events: int, n_states: int, n_groups: int, seed: int, concentration: float = 10.0
) -> tuple[xr.DataArray, np.ndarray]:
    """Fingerprints v[i] sqrt(Q[i, j]) of events drawn around one (v, Q) per group
    (``concentration``: how tightly; smaller is harder)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_groups, 3.0))
    truth = rng.choice(n_groups, size=n_events, p=weights)
    occupancy = rng.dirichlet(np.full(n_states, 0.5), size=n_groups)
    transition = rng.dirichlet(np.full(n_states, 0.3), size=(n_groups, n_states))
    # Each event: its group's distributions, perturbed (a Dirichlet around them).
    v = np.stack([rng.dirichlet(concentration * occupancy[g] + 1e-3) for g in truth])
    Q = transition[truth] * rng.gamma(
        concentration / 4, 4 / concentration, size=(n_events, n_states, n_states)
    )
    Q /= Q.sum(axis=2, keepdims=True)
    values = v[:, :, None] * np.sqrt(Q)
    fingerprint = xr.DataArray(
        values,
        dims=("event", "state", "next_state"),
        coords={"event": np.arange(n_events).astype(str)},
    )
    return fingerprint, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--states", type=int, default=15)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["spectral", "kmeans", "ward"])
    parser.add_argument("--n-init", type=int, default=30)
    parser.add_argument("--pca-variance", type=float, default=0.9)
    parser.add_argument("--samples", type=int, nargs="+", default=[5000])
    parser.add_argument("--exact-events", type=int, default=20_000)
    parser.add_argument("--concentration", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    fingerprint, truth = planted_fingerprints(
        args.events, args.states, args.groups, args.seed, args.concentration
    )
    print(
        f"{args.events} planted fingerprints, {args.states} states, {args.groups} groups; "
        f"idf, PCA to {args.pca_variance:.0%} of the variance, K {args.k_min}-{args.k_max}"
    )
    print("| method | silhouette sample | seconds | K chosen | ARI | mean silhouette |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        for sample in args.samples:
            start = time.perf_counter()
            result = cluster_fingerprints(
                fingerprint,
                range(args.k_min, args.k_max + 1),
                method=method,
                transform="idf",
                pca_variance=args.pca_variance,
                n_init=args.n_init,
                silhouette_sample=sample,
            )
            seconds = time.perf_counter() - start
            ari = adjusted_rand_score(truth, result.labels.values)
            print(
                f"| {method} | {sample} | {seconds:.1f} | {result.sweep.chosen} | "
                f"{ari:.3f} | {float(result.silhouette.mean()):.3f} |"
            )

    # The error of sampled per-event silhouettes, against the exact ones on a subset.
    subset = min(args.exact_events, args.events)
    features = fingerprint_features(fingerprint[:subset], "idf")
    labels = truth[:subset]
    start = time.perf_counter()
    exact = silhouette_samples(features, labels)
    exact_seconds = time.perf_counter() - start
    print(f"\nper-event silhouette on {subset} events: exact {exact_seconds:.1f} s")
    print("| references | seconds | mean abs error | 99th percentile | max | mean error |")
    print("|---:|---:|---:|---:|---:|---:|")
    for sample in args.samples:
        start = time.perf_counter()
        estimate = sampled_silhouette(features, labels, n_reference=sample)
        seconds = time.perf_counter() - start
        error = estimate - exact
        print(
            f"| {sample} | {seconds:.2f} | {np.abs(error).mean():.4f} | "
            f"{np.percentile(np.abs(error), 99):.4f} | {np.abs(error).max():.4f} | "
            f"{error.mean():+.4f} |"
        )


if __name__ == "__main__":
    main()
