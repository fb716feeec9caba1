"""Clustering of SpecUFEx fingerprints (spectral, k-means or Ward), optionally after PCA.

The fingerprints of an archive (``fingerprint`` (event, state, next_state)) are flattened
to one row of ``n_states**2`` features per event, optionally projected on their first
principal components, and grouped by spectral clustering of their nearest-neighbour
graph, by k-means or by Ward's method. Everything is seeded, so the same archive and
settings always give the same labels. scikit-learn is an optional extra
(``pip install "specufex-dask[cluster]"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import xarray as xr
from numpy.typing import NDArray

from specufex_dask.io.archive import CLUSTER

__all__ = [
    "CLUSTER_METHODS",
    "CENTROID_DISTANCE",
    "SILHOUETTE",
    "ClusterSweep",
    "ClusteringResult",
    "cluster_fingerprints",
    "cluster_separation",
    "fingerprint_features",
    "representatives",
    "sampled_silhouette",
    "shuffled_separation",
    "transition_distribution",
]

FEATURE_TRANSFORMS = ("none", "sqrt", "hellinger", "idf")
"""Transforms of the fingerprints before PCA and k-means.

A fingerprint entry is ``v[i] sqrt(Q[i, j])``: a state's occupancy times the square root
of a transition probability (ALGORITHM.md 3). Its row norms give back the occupancy
exactly (``sum_j F[i, j]**2 = v[i]**2``), so ``v[i] Q[i, j] = F[i, j]**2 / v[i]`` is the
joint distribution of consecutive states, and ``"hellinger"`` returns its square root,
``F[i, j] / sqrt(v[i])``: Euclidean distances between these rows are Hellinger distances
between the events' transition distributions. Raw entries (``"none"``) weigh the few
states an event spends most time in and hide the rarer ones that tell events apart;
``"sqrt"`` (``v**0.5 Q**0.25``) lifts the rare transitions but also the noise in them.
``"idf"`` weighs each transition's Hellinger entry by its inverse event frequency
``log((1 + n) / (1 + n_ij))``, where ``n_ij`` of the ``n`` events make the transition
``i -> j`` with a joint probability of at least :data:`IDF_MIN_PROBABILITY` (smaller
entries count as 0), and scales every row to unit length. Transitions that every event
makes (background noise staying in its state) get weight 0, so k-means groups events by
the transitions that set them apart; the weights depend on the collection clustered, and
an event whose transitions every event makes has a row of zeros."""

SILHOUETTE = "silhouette"
"""Name of the per-event silhouette variable the ``cluster`` command stores."""

CENTROID_DISTANCE = "centroid_distance"
"""Name of the per-event distance to the cluster's centroid that ``cluster`` stores."""

IDF_MIN_PROBABILITY = 1e-3
"""A transition counts as made by an event from this joint probability on ("idf")."""


@dataclass(frozen=True)
class ClusteringResult:
    """Labels and diagnostics of one clustering.

    Attributes
    ----------
    labels : xarray.DataArray of int64, dims (event,)
        Cluster of every event, 0 to ``n_clusters - 1``, named ``cluster``.
    centers : ndarray of shape (n_clusters, n_features)
        Cluster centres in the clustered space (PCA scores when PCA was used).
    inertia : float
        Sum of squared distances of the events to their centre.
    explained_variance_ratio : ndarray of shape (pca_components,) or None
        Variance fraction of each principal component kept; None without PCA.
    silhouette : xarray.DataArray of float64, dims (event,), or None
        Every event's silhouette (:func:`sampled_silhouette`), named ``silhouette``.
    distance : xarray.DataArray of float64, dims (event,), or None
        Every event's distance to its cluster's centroid in the clustered space, named
        ``centroid_distance``.
    sweep : ClusterSweep or None
        The numbers of clusters tried and their mean silhouettes; None for a fixed number.
    """

    labels: xr.DataArray
    centers: NDArray[np.float64]
    inertia: float
    explained_variance_ratio: NDArray[np.float64] | None
    silhouette: xr.DataArray | None = None
    distance: xr.DataArray | None = None
    sweep: ClusterSweep | None = None


def _import_sklearn():
    try:
        import sklearn.cluster
        import sklearn.decomposition
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            'clustering needs scikit-learn: pip install "specufex-dask[cluster]"'
        ) from error
    return sklearn.cluster, sklearn.decomposition


def fingerprint_features(
    fingerprint: xr.DataArray, transform: str = "none"
) -> NDArray[np.float64]:
    """Flatten fingerprints to one feature row per event.

    Parameters
    ----------
    fingerprint : xarray.DataArray, dims (event, state, next_state)
        The archive's ``fingerprint`` variable (may be lazy).
    transform : {"none", "sqrt", "hellinger", "idf"}, default="none"
        See :data:`FEATURE_TRANSFORMS`.

    Returns
    -------
    ndarray of shape (n_events, n_states * n_states), float64
        Row ``i`` is ``fingerprint[i]``, transformed, in row-major order.

    Raises
    ------
    ValueError
        If the dimensions differ from (event, state, next_state) or a value is not finite
        (the message lists the events concerned).
    """
    expected_dims = ("event", "state", "next_state")
    if tuple(fingerprint.dims) != expected_dims:
        raise ValueError(
            f"fingerprint must have dims {expected_dims}, got {tuple(fingerprint.dims)}"
        )
    if transform not in FEATURE_TRANSFORMS:
        raise ValueError(f"transform must be one of {FEATURE_TRANSFORMS}, got {transform!r}")
    values = np.asarray(fingerprint.values, dtype=np.float64)
    features = values.reshape(values.shape[0], -1)
    bad_rows = ~np.isfinite(features).all(axis=1)
    if bad_rows.any():
        bad_events = [str(e) for e in fingerprint["event"].values[bad_rows][:10]]
        raise ValueError(
            f"fingerprint holds NaN or infinite values for {int(bad_rows.sum())} event(s): "
            f"{', '.join(bad_events)}"
        )
    if transform == "none":
        return features
    # Fingerprints are >= 0; round-off leaves entries like -1e-18 (the reference's own
    # outputs hold them), whose square root would be NaN.
    values = np.maximum(values, 0.0)
    if transform == "sqrt":
        return np.sqrt(values).reshape(values.shape[0], -1)
    hellinger = _hellinger(values).reshape(values.shape[0], -1)
    if transform == "hellinger":
        return hellinger
    return _inverse_frequency_weighted(hellinger)


def _hellinger(fingerprint: NDArray[np.float64]) -> NDArray[np.float64]:
    """``sqrt(v[i] Q[i, j]) = F[i, j] / sqrt(v[i])`` with ``v[i] = |F[i, :]|`` (0 rows stay 0)."""
    occupancy = np.sqrt((fingerprint**2).sum(axis=2, keepdims=True))
    scale = np.sqrt(occupancy)
    return np.divide(fingerprint, scale, out=np.zeros_like(fingerprint), where=scale > 0)


def _inverse_frequency_weighted(hellinger: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows of Hellinger features times ``sqrt(idf)`` of each column, at unit length.

    Entries of transitions an event does not make (below :data:`IDF_MIN_PROBABILITY`) are
    0: at unit length their round-off would otherwise be all that is left of an event
    whose transitions every event makes. Such an event's row stays 0.
    """
    n_events = hellinger.shape[0]
    made = hellinger**2 >= IDF_MIN_PROBABILITY
    weight = np.log((1.0 + n_events) / (1.0 + made.sum(axis=0)))
    weighted = np.where(made, hellinger, 0.0) * np.sqrt(weight)
    norm = np.linalg.norm(weighted, axis=1, keepdims=True)
    return np.divide(weighted, norm, out=np.zeros_like(weighted), where=norm > 0)


def transition_distribution(fingerprint: npt.ArrayLike) -> NDArray[np.float64]:
    """The joint distribution of consecutive states, ``v[i] Q[i, j]``, of fingerprints.

    Parameters
    ----------
    fingerprint : array_like of shape (..., n_states, n_states)
        Fingerprints ``F[i, j] = v[i] sqrt(Q[i, j])``.

    Returns
    -------
    ndarray of the same shape
        ``F[i, j]**2 / |F[i, :]|`` (rows of unused states are 0); each matrix sums to 1.
        Its square root is the ``"hellinger"`` transform.
    """
    values = np.asarray(fingerprint, dtype=np.float64)
    return _hellinger(values.reshape(-1, *values.shape[-2:])).reshape(values.shape) ** 2


def cluster_separation(fingerprint: npt.ArrayLike, labels: npt.ArrayLike) -> NDArray[np.float64]:
    """How different the clusters' fingerprints are: Hellinger distances between the
    mean transition distributions (:func:`transition_distribution`) of every two clusters.

    Parameters
    ----------
    fingerprint : array_like of shape (n_events, n_states, n_states)
    labels : array_like of shape (n_events,)
        Cluster of every event.

    Returns
    -------
    ndarray of shape (n_clusters, n_clusters)
        Entry ``[a, b]`` for the a-th and b-th smallest labels: ``sqrt(1 - sum
        sqrt(P_a P_b))`` with ``P_c`` the mean transition distribution of cluster ``c``'s
        events; 0 for equal distributions, 1 for ones with no state transition in common.

    Examples
    --------
    >>> F = np.zeros((2, 2, 2)); F[0, 0, 0] = F[1, 1, 1] = 1.0
    >>> cluster_separation(F, [0, 1]).round(3).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    joint = transition_distribution(fingerprint)
    labels = np.asarray(labels)
    means = np.stack([joint[labels == c].mean(axis=0) for c in np.unique(labels)])
    flat = np.sqrt(means.reshape(len(means), -1))
    overlap = np.clip(flat @ flat.T, 0.0, 1.0)
    distance = np.sqrt(1.0 - overlap)
    np.fill_diagonal(distance, 0.0)
    return distance


def shuffled_separation(
    fingerprint: npt.ArrayLike, labels: npt.ArrayLike, n_shuffles: int = 20, seed: int = 0
) -> float:
    """What :func:`cluster_separation` gives without structure: the largest separation of
    the closest two clusters over ``n_shuffles`` random relabelings of the events that
    keep the cluster sizes.

    Small clusters differ by chance (a mean over few events is noisy), so a separation
    means something only against this baseline.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    pairs = np.triu_indices(len(np.unique(labels)), 1)
    return float(
        max(
            cluster_separation(fingerprint, rng.permutation(labels))[pairs].min()
            for _ in range(n_shuffles)
        )
    )


def representatives(
    fingerprint: xr.DataArray,
    labels: npt.ArrayLike,
    transform: str = "none",
    count: int = 1,
    groups: npt.ArrayLike | None = None,
) -> list[list[str]]:
    """The most typical events of each cluster: those nearest its mean feature row.

    Parameters
    ----------
    fingerprint : xarray.DataArray, dims (event, state, next_state)
    labels : array_like of shape (n_events,)
    transform : {"none", "sqrt", "hellinger"}, default="none"
        The features the distances are measured in (those the clustering used).
    count : int, default=1
        Events per cluster (fewer when a cluster is smaller).
    groups : array_like of shape (n_events,), optional
        A group of every event (its station, say). A cluster that mixes groups then
        shows each of them: its examples go round its groups, the most frequent first,
        each group's member nearest the cluster's mean first. Without groups, the
        ``count`` members nearest the mean.

    Returns
    -------
    list of list of str
        For each cluster in label order, its event ids (ties in archive order).
    """
    features = fingerprint_features(fingerprint, transform)
    labels = np.asarray(labels)
    groups = np.zeros(labels.size, dtype=int) if groups is None else np.asarray(groups)
    events = [str(event) for event in fingerprint["event"].values]
    chosen = []
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        centre = features[members].mean(axis=0)
        distance = np.linalg.norm(features[members] - centre, axis=1)
        # Stable sorts: equal distances and counts keep archive order, so the choice is
        # reproducible.
        nearest = members[np.argsort(distance, kind="stable")]
        names, first, sizes = np.unique(groups[nearest], return_index=True, return_counts=True)
        order = sorted(range(len(names)), key=lambda g: (-sizes[g], first[g]))
        queues = [list(nearest[groups[nearest] == names[g]]) for g in order]
        picked: list[int] = []
        while len(picked) < min(count, len(members)):
            for queue in queues:
                if queue and len(picked) < count:
                    picked.append(int(queue.pop(0)))
        chosen.append([events[i] for i in picked])
    return chosen


CLUSTER_METHODS = ("spectral", "kmeans", "ward")
"""Clustering algorithms of :func:`cluster_fingerprints`."""

METHOD_NAMES = {"spectral": "spectral", "kmeans": "k-means", "ward": "Ward"}
"""How labels, titles and messages name each method."""

SPECTRAL_SAMPLE = 5000
"""Events the nearest-neighbour graph of spectral clustering is built on at most; the
others take the majority label of their nearest graph events. Its embedding solves for
the few smallest eigenvectors of a sparse ``n x n`` Laplacian."""

SPECTRAL_NEIGHBOURS = 20
"""Nearest neighbours each event is joined to in the graph of spectral clustering (and
that vote for the label of an event off the graph)."""

SILHOUETTE_SAMPLE = 5000
"""Events whose silhouette is averaged to score a number of clusters, and reference
events per-event silhouettes are measured against, by default (exact at or below it)."""

WARD_SAMPLE = 5000
"""Events Ward's tree is built on at most; the others join the nearest Ward centroid.
The tree needs ``n**2 / 2`` distances: 100 MB at 5000 events."""


@dataclass(frozen=True)
class ClusterSweep:
    """The mean silhouette of each number of clusters tried, and the one chosen.

    Attributes
    ----------
    n_clusters : tuple of int
        The numbers of clusters tried, in increasing order.
    mean_silhouette : tuple of float
        Mean silhouette of each, over the same seeded sample of ``sample_size`` events.
    chosen : int
        The number with the largest mean silhouette (the smallest such number on ties).
    sample_size : int
        Events the silhouettes were averaged over (all when there are fewer).
    """

    n_clusters: tuple[int, ...]
    mean_silhouette: tuple[float, ...]
    chosen: int
    sample_size: int


def _scale_and_project(
    features: NDArray[np.float64],
    *,
    scale: bool,
    pca_components: int | None,
    pca_variance: float | None,
    random_state: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """Standardise the columns (optional), then keep principal components (optional)."""
    import sklearn.decomposition
    import sklearn.preprocessing

    n_events, n_features = features.shape
    if pca_components is not None and pca_variance is not None:
        raise ValueError("give pca_components or pca_variance, not both")
    if scale:
        features = sklearn.preprocessing.StandardScaler().fit_transform(features)
    if pca_components is None and pca_variance is None:
        return features, None
    if pca_components is not None:
        largest = min(n_events, n_features)
        if not 1 <= pca_components <= largest:
            raise ValueError(
                f"pca_components must be between 1 and min(n_events, n_states**2) = "
                f"{largest}, got {pca_components}"
            )
        pca = sklearn.decomposition.PCA(n_components=pca_components, random_state=random_state)
    else:
        if not 0.0 < float(pca_variance) < 1.0:  # type: ignore[arg-type]
            raise ValueError(
                f"pca_variance must be a fraction of variance between 0 and 1 (exclusive), "
                f"got {pca_variance}"
            )
        # "full" is the solver that accepts a fraction; it is deterministic.
        pca = sklearn.decomposition.PCA(n_components=float(pca_variance), svd_solver="full")  # type: ignore[arg-type]
    projected = pca.fit_transform(features)
    return projected, np.asarray(pca.explained_variance_ratio_, dtype=np.float64)


def _kmeans(
    features: NDArray[np.float64], n_clusters: int, random_state: int, n_init: int
) -> NDArray[np.int64]:
    import sklearn.cluster

    kmeans = sklearn.cluster.KMeans(
        n_clusters=n_clusters, n_init=n_init, random_state=random_state
    )
    return kmeans.fit_predict(features).astype(np.int64)


def _ward_tree(features: NDArray[np.float64], random_state: int, sample: int):
    """Ward's linkage of at most ``sample`` seeded events, and which events they are."""
    from scipy.cluster.hierarchy import linkage

    members = _seeded_members(features.shape[0], sample, random_state)
    return linkage(features[members], method="ward"), members


def _ward(
    features: NDArray[np.float64], n_clusters: int, tree, members: NDArray[np.intp]
) -> NDArray[np.int64]:
    """Cut Ward's tree into ``n_clusters``; every event joins the nearest cut's centroid."""
    from scipy.cluster.hierarchy import fcluster

    sample_labels = fcluster(tree, n_clusters, criterion="maxclust") - 1
    centroids = np.stack(
        [features[members][sample_labels == c].mean(axis=0) for c in np.unique(sample_labels)]
    )
    labels = _nearest(features, centroids)
    labels[members] = sample_labels  # the tree's own events keep the tree's cut
    return labels


def _seeded_members(n_events: int, sample: int, random_state: int) -> NDArray[np.intp]:
    """All events, or a sorted seeded sample of ``sample`` of them."""
    if n_events <= sample:
        return np.arange(n_events)
    return np.sort(np.random.default_rng(random_state).choice(n_events, sample, replace=False))


def _neighbour_graph(
    features: NDArray[np.float64],
    n_neighbors: int,
    largest_n_clusters: int,
    random_state: int,
    sample: int,
):
    """The symmetric nearest-neighbour affinity of at most ``sample`` seeded events.

    Each event is joined to its ``n_neighbors`` nearest (itself included), with weight 1
    both ways and 1/2 where only one of the two counts the other among its nearest. In
    small collections the neighbours are at most half the mean cluster size: events of a
    cluster smaller than their number of neighbours would be joined to other clusters.
    """
    from sklearn.neighbors import kneighbors_graph

    members = _seeded_members(features.shape[0], sample, random_state)
    half_cluster = members.size // (2 * largest_n_clusters)
    # An event counts as its own first neighbour: 2 is the fewest that join events.
    neighbours = min(n_neighbors, max(half_cluster, 2), members.size)
    if members.size < 2:
        raise ValueError(f"spectral clustering needs at least 2 events, got {members.size}")
    connectivity = kneighbors_graph(features[members], neighbours, include_self=True)
    return 0.5 * (connectivity + connectivity.T), members, neighbours


def _spectral(
    features: NDArray[np.float64],
    n_clusters: int,
    graph,
    random_state: int,
) -> NDArray[np.int64]:
    """Spectral clustering of the neighbour ``graph`` (see :func:`_neighbour_graph`)
    into ``n_clusters``; events off the graph take their neighbours' majority label."""
    import sklearn.cluster
    from sklearn.neighbors import KNeighborsClassifier

    affinity, members, neighbours = graph
    if n_clusters == 1:
        return np.zeros(features.shape[0], dtype=np.int64)
    # "discretize" rotates the embedding onto cluster indicators; it separated the
    # planted classes of the fidelity benchmark at least as well as k-means on the
    # embedding or the QR assignment.
    spectral = sklearn.cluster.SpectralClustering(
        n_clusters, affinity="precomputed", assign_labels="discretize", random_state=random_state
    )
    with warnings.catch_warnings():
        # Groups of events that share no neighbours are the clearest clusters there are.
        warnings.filterwarnings("ignore", "Graph is not fully connected", UserWarning)
        member_labels = spectral.fit_predict(affinity).astype(np.int64)
    if members.size == features.shape[0]:
        return member_labels
    vote = KNeighborsClassifier(neighbours).fit(features[members], member_labels)
    labels = vote.predict(features).astype(np.int64)
    labels[members] = member_labels  # the graph's own events keep their label
    return labels


def _nearest(features: NDArray[np.float64], centroids: NDArray[np.float64]) -> NDArray[np.int64]:
    squared = (
        (features**2).sum(axis=1)[:, None]
        - 2.0 * features @ centroids.T
        + (centroids**2).sum(axis=1)
    )
    return np.argmin(squared, axis=1).astype(np.int64)


def _centroids(
    features: NDArray[np.float64], labels: NDArray[np.int64], n_clusters: int
) -> NDArray[np.float64]:
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    sums = np.zeros((n_clusters, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / np.maximum(counts, 1.0)[:, None]


def sampled_silhouette(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_reference: int = SILHOUETTE_SAMPLE,
    random_state: int = 0,
    block: int = 4096,
) -> NDArray[np.float64]:
    """The silhouette of every event, measured against a seeded sample of events.

    The exact silhouette needs every pairwise distance, ``n**2`` of them. Here the mean
    distance of an event to a cluster is the mean over that cluster's members in a sample
    of ``n_reference`` events, stratified by cluster (each cluster gets its share, and at
    least ``min(size, 50)``); the event itself is left out of its own cluster's mean. With
    ``n_events <= n_reference`` every event is a reference and the result is the exact
    silhouette (scikit-learn's ``silhouette_samples``). Otherwise the error of each mean
    distance is about ``sd / sqrt(m)`` for ``m`` references, which the clustering
    benchmark measures.

    Parameters
    ----------
    features : array_like of shape (n_events, n_features)
    labels : array_like of shape (n_events,)
        Cluster labels, 0 to ``n_clusters - 1``.
    n_reference : int, default=SILHOUETTE_SAMPLE
    random_state : int, default=0
    block : int, default=4096
        Events per block of distances (memory ``block * n_reference`` floats).

    Returns
    -------
    ndarray of shape (n_events,)
        Silhouettes in [-1, 1]; 0 for an event alone in its cluster, and for every event
        when there is one cluster (scikit-learn's convention).

    Examples
    --------
    >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> sampled_silhouette(x, [0, 0, 1, 1]).round(3).tolist()
    [0.98, 0.98, 0.98, 0.98]
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n_events = labels.size
    clusters, sizes = np.unique(labels, return_counts=True)
    if clusters.size < 2:
        return np.zeros(n_events)
    rng = np.random.default_rng(random_state)
    if n_events <= n_reference:
        references = np.arange(n_events)
    else:
        chosen = []
        for cluster, size in zip(clusters, sizes, strict=True):
            share = max(int(round(n_reference * size / n_events)), min(int(size), 50))
            members = np.flatnonzero(labels == cluster)
            chosen.append(rng.choice(members, min(share, int(size)), replace=False))
        references = np.sort(np.concatenate(chosen))
    position = np.full(n_events, -1)
    position[references] = np.arange(references.size)
    reference_features = features[references]
    reference_labels = labels[references]
    # Dense cluster index 0..C-1 so that sums per cluster are one matmul.
    index = np.searchsorted(clusters, reference_labels)
    membership = np.zeros((references.size, clusters.size))
    membership[np.arange(references.size), index] = 1.0
    reference_counts = membership.sum(axis=0)
    reference_norms = (reference_features**2).sum(axis=1)
    own = np.searchsorted(clusters, labels)
    silhouette = np.zeros(n_events)
    for start in range(0, n_events, block):
        stop = min(start + block, n_events)
        rows = features[start:stop]
        squared = (rows**2).sum(axis=1)[:, None] - 2.0 * rows @ reference_features.T
        distance = np.sqrt(np.maximum(squared + reference_norms, 0.0))
        is_reference = position[start:stop] >= 0
        distance[np.flatnonzero(is_reference), position[start:stop][is_reference]] = 0.0
        sums = distance @ membership
        counts = np.broadcast_to(reference_counts, sums.shape).copy()
        block_own = own[start:stop]
        counts[np.flatnonzero(is_reference), block_own[is_reference]] -= 1.0
        means = np.divide(sums, counts, out=np.full_like(sums, np.inf), where=counts > 0)
        inside = means[np.arange(stop - start), block_own]
        means[np.arange(stop - start), block_own] = np.inf
        nearest_other = means.min(axis=1)
        alone = counts[np.arange(stop - start), block_own] <= 0
        denominator = np.maximum(inside, nearest_other)
        value = np.divide(
            nearest_other - inside,
            denominator,
            out=np.zeros(stop - start),
            where=(denominator > 0) & ~alone,
        )
        silhouette[start:stop] = value
    return silhouette


def _mean_silhouette(
    features: NDArray[np.float64], labels: NDArray[np.int64], sample: NDArray[np.intp]
) -> float:
    """Exact mean silhouette of the events in ``sample`` among themselves."""
    import sklearn.metrics

    if np.unique(labels[sample]).size < 2:
        return -1.0
    return float(sklearn.metrics.silhouette_score(features[sample], labels[sample]))


def cluster_fingerprints(
    fingerprint: xr.DataArray,
    n_clusters: int | Sequence[int],
    *,
    pca_components: int | None = None,
    pca_variance: float | None = None,
    scale: bool = False,
    method: str = "kmeans",
    transform: str = "none",
    random_state: int = 0,
    n_init: int = 10,
    silhouette_sample: int = SILHOUETTE_SAMPLE,
    n_neighbors: int = SPECTRAL_NEIGHBOURS,
) -> ClusteringResult:
    """Group events by spectral clustering, k-means or Ward on their fingerprints.

    Parameters
    ----------
    fingerprint : xarray.DataArray, dims (event, state, next_state)
        Fingerprints, e.g. ``xarray.open_zarr(archive)["fingerprint"]``.
    n_clusters : int or sequence of int
        Number of clusters, at most the number of events; or the numbers to try, each
        between 2 and ``n_events - 1``: the one with the largest mean silhouette over a
        seeded sample of ``silhouette_sample`` events is kept (:class:`ClusterSweep`).
    pca_components : int, optional
        Cluster on this many principal components of the features (at most
        ``min(n_events, n_states**2)``).
    pca_variance : float, optional
        Cluster on the fewest principal components that explain this fraction of the
        features' variance (0 to 1). Not with ``pca_components``.
    scale : bool, default=False
        Standardise every feature to mean 0 and variance 1 before PCA and clustering. A
        feature that hardly varies (a transition almost no event makes) then weighs as
        much as any other, its round-off included.
    method : {"spectral", "kmeans", "ward"}, default="kmeans"
        Spectral clustering of the events' ``n_neighbors``-nearest-neighbour graph, built
        on at most :data:`SPECTRAL_SAMPLE` seeded events, the others taking the majority
        label of their nearest graph events; k-means with ``n_init`` restarts; or Ward's
        hierarchical clustering, built on at most :data:`WARD_SAMPLE` seeded events, the
        others joining the nearest centroid. Whatever the method, ``centers``,
        distances, inertia and silhouettes are those of the labels in the clustered space.
    transform : {"none", "sqrt", "hellinger", "idf"}, default="none"
        Applied to the fingerprints first (:data:`FEATURE_TRANSFORMS`).
    random_state : int, default=0
        Seed of the PCA solver, the k-means initialisation and every sample.
    n_init : int, default=10
        k-means restarts; the run with the lowest inertia is kept.
    silhouette_sample : int, default=SILHOUETTE_SAMPLE
        Events the mean silhouette of a sweep is computed over, and references of the
        per-event silhouettes (:func:`sampled_silhouette`); exact up to this many events.
    n_neighbors : int, default=SPECTRAL_NEIGHBOURS
        Neighbours of each event in the graph of spectral clustering, itself included (at
        least 2; cut to half the mean cluster size of the largest number of clusters
        asked for when that is smaller, but not below 2).

    Returns
    -------
    ClusteringResult
        Labels named ``cluster`` on the ``event`` coordinate (0 to ``n_clusters - 1``),
        with the settings in their attributes, per-event silhouettes and distances to the
        centroid, the centres, inertia, PCA explained variance and the sweep.

    Raises
    ------
    ValueError
        For impossible sizes or settings, or non-finite fingerprints.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> values = np.zeros((4, 2, 2))
    >>> values[2:] = 1.0
    >>> fingerprint = xr.DataArray(values, dims=("event", "state", "next_state"),
    ...                            coords={"event": ["a", "b", "c", "d"]})
    >>> labels = cluster_fingerprints(fingerprint, 2).labels
    >>> bool(labels[0] == labels[1]) and bool(labels[0] != labels[2])
    True
    """
    _import_sklearn()
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {CLUSTER_METHODS}, got {method!r}")
    if silhouette_sample < 2:
        raise ValueError(f"silhouette_sample must be at least 2, got {silhouette_sample}")
    if n_neighbors < 2:
        raise ValueError(
            f"n_neighbors must be at least 2 (an event counts as its own first), got {n_neighbors}"
        )
    features = fingerprint_features(fingerprint, transform)
    n_events = features.shape[0]
    candidates = _candidates(n_clusters, n_events)
    features, explained_variance_ratio = _scale_and_project(
        features,
        scale=scale,
        pca_components=pca_components,
        pca_variance=pca_variance,
        random_state=random_state,
    )
    tree = _ward_tree(features, random_state, WARD_SAMPLE) if method == "ward" else None
    graph = (
        _neighbour_graph(features, n_neighbors, max(candidates), random_state, SPECTRAL_SAMPLE)
        if method == "spectral"
        else None
    )

    def fit(k: int) -> NDArray[np.int64]:
        if tree is not None:
            return _ward(features, k, *tree)
        if graph is not None:
            return _spectral(features, k, graph, random_state)
        return _kmeans(features, k, random_state, n_init)

    sweep = None
    if len(candidates) == 1:
        chosen = candidates[0]
        labels = fit(chosen)
    else:
        rng = np.random.default_rng(random_state)
        size = min(silhouette_sample, n_events)
        sample = np.sort(rng.choice(n_events, size, replace=False))
        fits = {k: fit(k) for k in candidates}
        scores = tuple(_mean_silhouette(features, fits[k], sample) for k in candidates)
        chosen = candidates[int(np.argmax(scores))]
        labels = fits[chosen]
        sweep = ClusterSweep(candidates, scores, chosen, size)
    centers = _centroids(features, labels, chosen)
    distance = np.linalg.norm(features - centers[labels], axis=1)
    silhouette = sampled_silhouette(
        features, labels, n_reference=silhouette_sample, random_state=random_state
    )
    inertia = float((distance**2).sum())
    events = fingerprint["event"].values
    attrs: dict[str, object] = {
        "long_name": f"{METHOD_NAMES[method]} cluster of the fingerprint",
        "labels": f"0 to {chosen - 1}",
        "method": method,
        "n_clusters": int(chosen),
        "random_state": int(random_state),
        "inertia": inertia,
        "transform": transform,
        "scale": int(scale),
        "mean_silhouette": float(silhouette.mean()),
    }
    if method == "kmeans":
        attrs["n_init"] = int(n_init)
    if graph is not None:
        attrs["n_neighbors"] = int(graph[2])
        attrs["graph_events"] = int(graph[1].size)
    if pca_components is not None:
        attrs["pca_components"] = int(pca_components)
    if pca_variance is not None:
        attrs["pca_variance"] = float(pca_variance)
        attrs["pca_components"] = int(explained_variance_ratio.size)  # type: ignore[union-attr]
    if sweep is not None:
        attrs["swept_n_clusters"] = list(sweep.n_clusters)
        attrs["swept_mean_silhouette"] = list(sweep.mean_silhouette)
        attrs["silhouette_sample"] = int(sweep.sample_size)
    label_array = xr.DataArray(
        labels, dims=("event",), coords={"event": events}, name=CLUSTER, attrs=attrs
    )
    return ClusteringResult(
        labels=label_array,
        centers=centers,
        inertia=inertia,
        explained_variance_ratio=explained_variance_ratio,
        silhouette=xr.DataArray(
            silhouette,
            dims=("event",),
            coords={"event": events},
            name=SILHOUETTE,
            attrs={"long_name": "silhouette of the event in its cluster", "units": "1"},
        ),
        distance=xr.DataArray(
            distance,
            dims=("event",),
            coords={"event": events},
            name=CENTROID_DISTANCE,
            attrs={"long_name": "distance of the event to its cluster's centroid"},
        ),
        sweep=sweep,
    )


def _candidates(n_clusters: int | Sequence[int], n_events: int) -> tuple[int, ...]:
    """The numbers of clusters to try, checked against the number of events."""
    if isinstance(n_clusters, (int, np.integer)):
        if not 1 <= n_clusters <= n_events:
            raise ValueError(
                f"n_clusters must be between 1 and the number of events ({n_events}), "
                f"got {n_clusters}"
            )
        return (int(n_clusters),)
    candidates = tuple(sorted({int(k) for k in n_clusters}))
    if not candidates:
        raise ValueError("n_clusters: give a number of clusters or a non-empty range")
    if len(candidates) == 1:
        return _candidates(candidates[0], n_events)
    if candidates[0] < 2 or candidates[-1] > n_events - 1:
        raise ValueError(
            f"a sweep of n_clusters must stay between 2 and the number of events - 1 "
            f"({n_events - 1}), got {candidates[0]}-{candidates[-1]}"
        )
    return candidates
