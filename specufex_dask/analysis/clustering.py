"""k-means clustering of SpecUFEx fingerprints, optionally after PCA.

The fingerprints of an archive (``fingerprint`` (event, state, next_state)) are flattened
to one row of ``n_states**2`` features per event, optionally projected on their first
principal components, and grouped by k-means. Everything is seeded, so the same archive
and settings always give the same labels. scikit-learn is an optional extra
(``pip install "specufex-dask[cluster]"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import xarray as xr
from numpy.typing import NDArray

from specufex_dask.io.archive import CLUSTER

__all__ = [
    "ClusteringResult",
    "cluster_fingerprints",
    "cluster_separation",
    "fingerprint_features",
    "representatives",
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
    """

    labels: xr.DataArray
    centers: NDArray[np.float64]
    inertia: float
    explained_variance_ratio: NDArray[np.float64] | None


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


def cluster_fingerprints(
    fingerprint: xr.DataArray,
    n_clusters: int,
    *,
    pca_components: int | None = None,
    transform: str = "none",
    random_state: int = 0,
    n_init: int = 10,
) -> ClusteringResult:
    """Group events by k-means on their fingerprints.

    Parameters
    ----------
    fingerprint : xarray.DataArray, dims (event, state, next_state)
        Fingerprints, e.g. ``xarray.open_zarr(archive)["fingerprint"]``.
    n_clusters : int
        Number of clusters, at most the number of events.
    pca_components : int, optional
        When given, k-means runs on this many principal components of the flattened
        fingerprints (at most ``min(n_events, n_states**2)``).
    transform : {"none", "sqrt", "hellinger", "idf"}, default="none"
        Applied to the fingerprints before PCA and k-means (:data:`FEATURE_TRANSFORMS`).
    random_state : int, default=0
        Seed of the PCA solver and of the k-means initialisation.
    n_init : int, default=10
        k-means restarts; the run with the lowest inertia is kept.

    Returns
    -------
    ClusteringResult
        Labels named ``cluster`` on the ``event`` coordinate, with the settings in their
        attributes, plus centres, inertia and PCA explained variance.

    Raises
    ------
    ValueError
        For impossible sizes or non-finite fingerprints.

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
    cluster_module, decomposition_module = _import_sklearn()
    features = fingerprint_features(fingerprint, transform)
    n_events, n_features = features.shape
    if not 1 <= n_clusters <= n_events:
        raise ValueError(
            f"n_clusters must be between 1 and the number of events ({n_events}), got {n_clusters}"
        )
    explained_variance_ratio = None
    if pca_components is not None:
        largest = min(n_events, n_features)
        if not 1 <= pca_components <= largest:
            raise ValueError(
                f"pca_components must be between 1 and min(n_events, n_states**2) = "
                f"{largest}, got {pca_components}"
            )
        pca = decomposition_module.PCA(n_components=pca_components, random_state=random_state)
        features = pca.fit_transform(features)
        explained_variance_ratio = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    kmeans = cluster_module.KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state)
    labels = kmeans.fit_predict(features).astype(np.int64)
    label_array = xr.DataArray(
        labels,
        dims=("event",),
        coords={"event": fingerprint["event"].values},
        name=CLUSTER,
        attrs={
            "long_name": "k-means cluster of the fingerprint",
            "n_clusters": int(n_clusters),
            "random_state": int(random_state),
            "n_init": int(n_init),
            "inertia": float(kmeans.inertia_),
        },
    )
    label_array.attrs["transform"] = transform
    if pca_components is not None:
        label_array.attrs["pca_components"] = int(pca_components)
    return ClusteringResult(
        labels=label_array,
        centers=np.asarray(kmeans.cluster_centers_, dtype=np.float64),
        inertia=float(kmeans.inertia_),
        explained_variance_ratio=explained_variance_ratio,
    )
