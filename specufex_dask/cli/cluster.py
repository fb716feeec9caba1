"""``specufex-dask cluster``: clusters of the fingerprints (not the Dask cluster: that is
the ``dask`` section of the configuration)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.cli.archive import open_archive, record_configuration, write_event_variable
from specufex_dask.cli.base import CommandError, Commands, plural
from specufex_dask.cli.config import Config
from specufex_dask.cli.options import CLUSTERING_FLAGS, add_flags
from specufex_dask.cli.progress import Reporter

__all__ = ["clustering_arguments", "cmd_cluster", "register", "run_clustering"]


def register(commands: Commands) -> None:
    """Add the ``cluster`` command."""
    cluster = commands.add(
        "cluster",
        "spectral clustering, k-means or Ward on the fingerprints",
        "Group the events by spectral clustering (or k-means, or Ward) of their "
        "fingerprints (transformed, optionally scaled and projected on principal "
        "components) and store the labels in the archive as the variable `cluster` "
        "(event; labels 0 to K-1), with the settings in its attributes, and every event's "
        "`silhouette` and `centroid_distance`. With a range of K (--n-clusters 2-10) every "
        "K is fitted and the one with the largest mean silhouette is kept. The defaults, "
        "spectral clustering of the events' 20-nearest-neighbour graph (--method "
        "spectral) on the idf transform (the Hellinger rows sqrt(v[i] Q[i,j]) weighted by "
        "each transition's inverse event frequency, at unit length: a transition that "
        "every event makes, such as background noise staying in its state, gets weight "
        "0), separated planted waveform classes best in the fidelity benchmark: adjusted "
        "Rand index 0.97 / 0.86 / 0.65 at the easy / medium / hard levels, against 0.96 / "
        "0.81 / 0.53 for k-means on the same transform, 0.96 / 0.84 / 0.47 for spectral "
        "clustering of the hellinger transform, 0.82 / 0.55 / 0.29 for k-means of it and "
        "0.47 / 0.39 / 0.24 for k-means of the raw fingerprints (--transform none). "
        'Needs scikit-learn: pip install "specufex-dask[cluster]".',
        cmd_cluster,
        archive="archive with fingerprints",
    )
    add_flags(cluster, "clustering", CLUSTERING_FLAGS, commands.defaults)


def cmd_cluster(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Cluster the fingerprints; store the labels as ``cluster``."""
    result = run_clustering(args.archive, config, reporter)
    labels = np.asarray(result.labels.values)
    clusters, counts = np.unique(labels, return_counts=True)
    attrs = result.labels.attrs
    if result.sweep is not None:
        scores = ", ".join(
            f"{k}: {score:.3f}"
            for k, score in zip(result.sweep.n_clusters, result.sweep.mean_silhouette, strict=True)
        )
        print(
            f"mean silhouette by number of clusters ({result.sweep.sample_size} events): "
            f"{scores}; chose {result.sweep.chosen}"
        )
    print(
        f"{labels.size} events in {clusters.size} clusters ({attrs['method']} on the "
        f"{attrs['transform']} fingerprints, labels {attrs['labels']}, inertia "
        f"{result.inertia:.6g}, mean silhouette {attrs['mean_silhouette']:.3f})"
    )
    silhouette = np.asarray(result.silhouette.values)
    for cluster, count in zip(clusters, counts, strict=True):
        mean = silhouette[labels == cluster].mean()
        print(f"  cluster {cluster}: {plural(count, 'event')}, mean silhouette {mean:.3f}")
    return 0


def clustering_arguments(config: Config) -> dict[str, Any]:
    """The keyword arguments of ``cluster_fingerprints`` (but the fingerprints) that
    ``config.clustering`` sets."""
    settings = config.clustering
    return {
        "n_clusters": settings.n_clusters,
        "pca_components": settings.pca_components,
        "transform": settings.transform,
        "random_state": settings.random_state,
        "n_init": settings.n_init,
        "method": settings.method,
        "n_neighbors": settings.n_neighbors,
        "pca_variance": settings.pca_variance,
        "scale": settings.scale,
        "silhouette_sample": settings.silhouette_sample,
    }


def run_clustering(archive: str | Path, config: Config, reporter: Reporter):
    """Cluster with ``config.clustering`` the fingerprints of ``archive``; store the
    labels as ``cluster`` and return the ClusteringResult.

    Holds the archive's lease throughout; refuses a read-only archive before any work,
    as ``fit`` does, and fingerprints that an unfinished transform or another model than
    the stored one wrote."""
    from specufex_dask.io.lease import archive_lease

    with archive_lease(archive, "cluster"):
        return _cluster_and_store(archive, config, reporter)


def _cluster_and_store(archive: str | Path, config: Config, reporter: Reporter):
    from specufex_dask.analysis.clustering import cluster_fingerprints
    from specufex_dask.io.archive import TRANSFORM_TOKEN_ATTR
    from specufex_dask.io.status import CLUSTER_MODEL_ATTR, output_problem
    from specufex_dask.parallel.engine import require_writable

    dataset = open_archive(archive)
    if "fingerprint" not in dataset.variables:
        raise CommandError(
            f"{archive} has no fingerprints yet; run `specufex-dask transform {archive}` first"
        )
    problem = output_problem(dataset, "fingerprint", str(archive))
    if problem is not None:
        raise CommandError(problem)
    require_writable(archive, "cluster labels")
    settings = config.clustering
    counts = settings.n_clusters
    reporter.say(
        f"{settings.method}: "
        + (f"{min(counts)}-{max(counts)}" if isinstance(counts, list) else f"{counts}")
        + f" clusters on the {settings.transform} fingerprints"
        + (f" ({settings.pca_components} principal components)" if settings.pca_components else "")
        + (
            f" (PCA to {settings.pca_variance:.0%} of the variance)"
            if settings.pca_variance
            else ""
        )
        + f", seed {settings.random_state}"
    )
    result = cluster_fingerprints(dataset["fingerprint"], **clustering_arguments(config))
    made_from = dataset["fingerprint"].attrs.get(TRANSFORM_TOKEN_ATTR)
    if made_from is not None:  # so that labels of older fingerprints are known as such
        result.labels.attrs[CLUSTER_MODEL_ATTR] = made_from
    dataset.close()
    for variable in (result.labels, result.silhouette, result.distance):
        write_event_variable(archive, variable)
    record_configuration(archive, config, ["clustering"], "cluster")
    return result
