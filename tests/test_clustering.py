"""Tests of specufex_dask.analysis.clustering: k-means (optionally after PCA) on fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from specufex_dask.analysis.clustering import cluster_fingerprints, fingerprint_features


def fingerprints_of_groups(rng, sizes, n_states=4, noise=0.02):
    """Fingerprints scattered around one random centre per group; returns (array, truth)."""
    centres = rng.dirichlet(np.ones(n_states * n_states), size=len(sizes))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    rows = centres[truth] + noise * rng.standard_normal((truth.size, n_states * n_states))
    order = rng.permutation(truth.size)
    values = rows[order].reshape(-1, n_states, n_states)
    events = [f"e{i}" for i in range(truth.size)]
    fingerprint = xr.DataArray(
        values, dims=("event", "state", "next_state"), coords={"event": events}
    )
    return fingerprint, truth[order]


def same_partition(labels, truth):
    """True when the two labelings group the events identically (up to renaming)."""
    pairs = set(zip(labels.tolist(), truth.tolist(), strict=True))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def test_features_are_row_major_flattening(rng):
    values = rng.random((3, 2, 2))
    fingerprint = xr.DataArray(values, dims=("event", "state", "next_state"))
    features = fingerprint_features(fingerprint)
    assert features[1, 2] == values[1, 1, 0]
    assert features.shape == (3, 4)


def test_recovers_planted_groups(rng):
    fingerprint, truth = fingerprints_of_groups(rng, [8, 5, 7])
    result = cluster_fingerprints(fingerprint, 3, random_state=3)
    assert same_partition(result.labels.values, truth)
    assert result.labels.name == "cluster"
    assert result.labels.dims == ("event",)
    assert list(result.labels["event"].values) == list(fingerprint["event"].values)
    assert result.explained_variance_ratio is None


def test_equals_sklearn_kmeans_with_the_same_seed(rng):
    fingerprint, _ = fingerprints_of_groups(rng, [6, 6, 6, 6], noise=0.2)
    result = cluster_fingerprints(fingerprint, 4, random_state=11, n_init=4)
    reference = KMeans(n_clusters=4, n_init=4, random_state=11)
    expected = reference.fit_predict(fingerprint.values.reshape(24, -1))
    np.testing.assert_array_equal(result.labels.values, expected)
    assert result.inertia == pytest.approx(reference.inertia_, rel=1e-12)
    assert result.labels.attrs["random_state"] == 11


def test_pca_then_kmeans_equals_sklearn(rng):
    fingerprint, truth = fingerprints_of_groups(rng, [5, 9, 6], n_states=5)
    result = cluster_fingerprints(fingerprint, 3, pca_components=2, random_state=5)
    flat = fingerprint.values.reshape(20, -1)
    scores = PCA(n_components=2, random_state=5).fit_transform(flat)
    expected = KMeans(n_clusters=3, n_init=10, random_state=5).fit_predict(scores)
    np.testing.assert_array_equal(result.labels.values, expected)
    assert same_partition(result.labels.values, truth)
    assert result.centers.shape == (3, 2)
    total_variance = flat.var(axis=0, ddof=1).sum()
    np.testing.assert_allclose(
        result.explained_variance_ratio.sum(), scores.var(axis=0, ddof=1).sum() / total_variance
    )
    assert result.labels.attrs["pca_components"] == 2


def test_bad_inputs_are_named(rng):
    fingerprint, _ = fingerprints_of_groups(rng, [2, 2])
    with pytest.raises(ValueError, match=r"n_clusters must be between 1 and .* \(4\), got 5"):
        cluster_fingerprints(fingerprint, 5)
    with pytest.raises(ValueError, match=r"pca_components .* = 4, got 9"):
        cluster_fingerprints(fingerprint, 2, pca_components=9)
    broken = fingerprint.copy()
    broken[2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 event\(s\): e2"):
        cluster_fingerprints(broken, 2)
    with pytest.raises(ValueError, match=r"dims \('event', 'state', 'next_state'\)"):
        cluster_fingerprints(fingerprint.transpose("state", "event", "next_state"), 2)


def fingerprints_from_occupancy_and_transitions(rng, n_events=12, n_states=5):
    """Fingerprints ``v[i] sqrt(Q[i, j])`` from known occupancies v and transitions Q.

    Some states are left unused (v = 0) to check that their rows stay 0.
    """
    v = rng.dirichlet(np.ones(n_states), size=n_events)
    v[::3, 1] = 0.0
    v /= v.sum(axis=1, keepdims=True)
    Q = rng.dirichlet(np.full(n_states, 0.5), size=(n_events, n_states))
    values = v[:, :, None] * np.sqrt(Q)
    fingerprint = xr.DataArray(
        values,
        dims=("event", "state", "next_state"),
        coords={"event": [f"e{i}" for i in range(n_events)]},
    )
    return fingerprint, v, Q


def test_hellinger_features_are_the_square_root_of_the_joint_distribution(rng):
    from specufex_dask.analysis.clustering import transition_distribution

    fingerprint, v, Q = fingerprints_from_occupancy_and_transitions(rng)
    joint = v[:, :, None] * Q  # P(state i, then state j), computed from v and Q themselves
    features = fingerprint_features(fingerprint, "hellinger")
    np.testing.assert_allclose(features, np.sqrt(joint).reshape(len(v), -1), rtol=1e-12)
    assert (features.reshape(joint.shape)[::3, 1] == 0).all()  # unused state: a zero row
    np.testing.assert_allclose(transition_distribution(fingerprint.values), joint, atol=1e-15)
    np.testing.assert_allclose(transition_distribution(fingerprint.values).sum(axis=(1, 2)), 1)
    # Euclidean distances between the features are Hellinger distances (times sqrt 2).
    bhattacharyya = np.sqrt(joint[0] * joint[1]).sum()
    np.testing.assert_allclose(
        np.linalg.norm(features[0] - features[1]), np.sqrt(2 * (1 - bhattacharyya))
    )
    np.testing.assert_allclose(
        fingerprint_features(fingerprint, "sqrt"), np.sqrt(fingerprint.values).reshape(12, -1)
    )
    with pytest.raises(ValueError, match=r"transform must be one of .*, got 'cosine'"):
        fingerprint_features(fingerprint, "cosine")


def test_the_library_default_stays_the_raw_fingerprints(rng):
    """Only the command line and its configuration default to idf."""
    import inspect

    from specufex_dask.cli.config import ClusteringConfig

    for function in (cluster_fingerprints, fingerprint_features):
        assert inspect.signature(function).parameters["transform"].default == "none"
    assert ClusteringConfig().transform == "idf"
    fingerprint, _ = fingerprints_of_groups(rng, [6, 6, 6])
    fingerprint = abs(fingerprint)
    result = cluster_fingerprints(fingerprint, 3, random_state=2, n_init=3)
    assert result.labels.attrs["transform"] == "none"
    expected = KMeans(n_clusters=3, n_init=3, random_state=2).fit_predict(
        fingerprint.values.reshape(18, -1)
    )
    np.testing.assert_array_equal(result.labels.values, expected)
    hellinger = cluster_fingerprints(fingerprint, 3, transform="hellinger", random_state=2)
    assert hellinger.labels.attrs["transform"] == "hellinger"
    expected = KMeans(n_clusters=3, n_init=10, random_state=2).fit_predict(
        fingerprint_features(fingerprint, "hellinger")
    )
    np.testing.assert_array_equal(hellinger.labels.values, expected)


def test_cluster_separation_against_shuffled_clusters(rng):
    from specufex_dask.analysis.clustering import cluster_separation, shuffled_separation

    fingerprint, v, Q = fingerprints_from_occupancy_and_transitions(rng, n_events=40)
    values = fingerprint.values.copy()
    # two groups that use disjoint halves of the states
    values[:20, 3:] = 0.0
    values[20:, :3] = 0.0
    values /= np.sqrt((values**2).sum(axis=2, keepdims=True)).sum(axis=1)[:, :, None]
    labels = np.repeat([0, 1], 20)
    separation = cluster_separation(values, labels)
    assert separation.shape == (2, 2) and separation[0, 0] == 0.0
    assert separation[0, 1] == pytest.approx(1.0)  # no transition in common
    assert cluster_separation(values, np.zeros(40, int)).tolist() == [[0.0]]
    baseline = shuffled_separation(values, labels, n_shuffles=10)
    assert 0.0 < baseline < 0.5
    # the same events in two groups: their mean transition distributions are equal
    twice = np.concatenate([values, values])
    assert cluster_separation(twice, np.repeat([0, 1], 40))[0, 1] == pytest.approx(0, abs=1e-7)


def test_representatives_are_nearest_to_their_cluster_mean(rng):
    from specufex_dask.analysis.clustering import representatives

    fingerprint, truth = fingerprints_of_groups(rng, [5, 4, 6])
    fingerprint = abs(fingerprint)
    for transform in ("none", "hellinger"):
        features = fingerprint_features(fingerprint, transform)
        chosen = representatives(fingerprint, truth, transform, count=2)
        for cluster, events in enumerate(chosen):
            members = np.flatnonzero(truth == cluster)
            distance = np.linalg.norm(features[members] - features[members].mean(axis=0), axis=1)
            nearest = members[np.argsort(distance)[:2]]
            assert events == [f"e{i}" for i in nearest]


def test_round_off_below_zero_is_no_nan(rng):
    """The reference's fingerprints hold entries like -1.4e-18."""
    fingerprint, v, Q = fingerprints_from_occupancy_and_transitions(rng)
    fingerprint[1, 1, 2] = -1.4e-18
    for transform in ("sqrt", "hellinger"):
        features = fingerprint_features(fingerprint, transform)
        assert np.isfinite(features).all() and features[1, 7] == 0.0
    assert fingerprint_features(fingerprint)[1, 7] == -1.4e-18  # raw values stay raw


def test_representatives_of_a_mixed_cluster_show_each_group(rng):
    from specufex_dask.analysis.clustering import representatives

    fingerprint, truth = fingerprints_of_groups(rng, [9, 6])
    fingerprint = abs(fingerprint)
    features = fingerprint_features(fingerprint)
    groups = np.array(["A" if i % 3 else "B" for i in range(truth.size)])
    chosen = representatives(fingerprint, truth, count=3, groups=groups)
    for cluster, events in enumerate(chosen):
        members = np.flatnonzero(truth == cluster)
        distance = np.linalg.norm(features[members] - features[members].mean(axis=0), axis=1)
        order = members[np.argsort(distance, kind="stable")]
        present = sorted(
            set(groups[members].tolist()),
            # the larger group first; equal sizes: the one with the nearer member
            key=lambda g: (-(groups[members] == g).sum(), list(groups[order]).index(g)),
        )
        if len(present) == 1:  # a cluster of one group: its three nearest members
            assert events == [f"e{i}" for i in order[:3]]
            continue
        major = [i for i in order if groups[i] == present[0]]
        minor = [i for i in order if groups[i] == present[1]]
        # round the groups, each group's nearest first
        assert events == [f"e{major[0]}", f"e{minor[0]}", f"e{major[1]}"]


def fingerprints_from_joint(joint: np.ndarray) -> xr.DataArray:
    """Fingerprints ``v[i] sqrt(Q[i, j])`` of joint distributions of consecutive states."""
    v = joint.sum(axis=2, keepdims=True)
    Q = np.divide(joint, v, out=np.zeros_like(joint), where=v > 0)
    return xr.DataArray(v * np.sqrt(Q), dims=("event", "state", "next_state"))


def test_idf_features_weigh_each_transition_by_its_inverse_event_frequency(rng):
    from specufex_dask.analysis.clustering import IDF_MIN_PROBABILITY

    n_events, n_states = 9, 3
    joint = rng.dirichlet(np.ones(n_states * n_states), size=n_events)
    joint[rng.random(joint.shape) < 0.4] = 0.0  # each event makes some of the transitions
    joint[:4, 5] = 0.0
    joint[4:, 5] = 0.02  # one that 5 of the 9 events make
    joint[:, 7] = np.maximum(joint[:, 7], 0.05)  # one that every event makes
    joint[0, 2] = 1e-5  # not made: counts as 0
    joint /= joint.sum(axis=1, keepdims=True)
    features = fingerprint_features(fingerprints_from_joint(joint.reshape(-1, 3, 3)), "idf")
    expected = np.empty_like(joint)
    for column in range(joint.shape[1]):
        made = joint[:, column] >= IDF_MIN_PROBABILITY
        weight = np.log((1 + n_events) / (1 + made.sum()))
        expected[:, column] = np.where(made, np.sqrt(joint[:, column] * weight), 0.0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(features, expected, rtol=1e-12, atol=1e-15)
    assert (features[:, 7] == 0).all()
    assert (features[4:, 5] > 0).all() and features[0, 2] == 0
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0)


def test_idf_sees_groups_that_background_states_hide_from_the_other_transforms():
    """Two groups that differ only in rare transitions of their own, while every event
    spends 60-90 % of its time in one of two background states, at random: the
    background's share sets the Hellinger distances, and only "idf" (which gives the
    transitions that every event makes weight 0) finds the groups."""
    from sklearn.metrics import adjusted_rand_score

    scores = {transform: [] for transform in ("none", "sqrt", "hellinger", "idf")}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        truth = np.repeat([0, 1], 40)
        joint = np.zeros((truth.size, 6, 6))
        background = rng.uniform(0.6, 0.9, truth.size)
        first = np.clip(rng.beta(0.3, 0.3, truth.size), 0.01, 0.99)
        joint[:, 0, 0] = background * first
        joint[:, 1, 1] = background * (1 - first)
        own = {0: ([2, 3, 3], [3, 2, 3]), 1: ([4, 5, 5], [5, 4, 5])}
        for event, group in enumerate(truth):
            weights = rng.dirichlet(np.ones(3)) * (1 - background[event])
            joint[event, own[group][0], own[group][1]] = weights
        fingerprint = fingerprints_from_joint(joint)
        for transform, values in scores.items():
            features = fingerprint_features(fingerprint, transform)
            labels = KMeans(2, n_init=10, random_state=0).fit_predict(features)
            values.append(adjusted_rand_score(truth, labels))
    assert min(scores["idf"]) == 1.0
    for transform in ("none", "sqrt", "hellinger"):
        assert np.mean(scores[transform]) < 0.3, (transform, scores[transform])


# ----------------------------------------------------------------------------- choosing K


def test_sampled_silhouette_is_exact_when_every_event_is_a_reference(rng):
    from sklearn.metrics import silhouette_samples

    from specufex_dask.analysis.clustering import sampled_silhouette

    features = rng.standard_normal((60, 3))
    labels = np.repeat([0, 1, 2], 20)
    features[labels == 1] += 3.0
    labels[0] = 3  # a cluster of one event: silhouette 0 by convention
    exact = silhouette_samples(features, labels)
    np.testing.assert_allclose(sampled_silhouette(features, labels), exact, atol=1e-12)
    np.testing.assert_array_equal(sampled_silhouette(features, np.zeros(60, int)), 0.0)


def test_sampled_silhouette_is_close_to_the_exact_one(rng):
    from sklearn.metrics import silhouette_samples

    from specufex_dask.analysis.clustering import sampled_silhouette

    sizes = [1500, 900, 100]
    labels = np.repeat(np.arange(3), sizes)
    features = rng.standard_normal((labels.size, 4)) + 2.5 * labels[:, None]
    exact = silhouette_samples(features, labels)
    estimate = sampled_silhouette(features, labels, n_reference=400, random_state=1)
    error = np.abs(estimate - exact)
    assert error.mean() < 0.02 and error.max() < 0.1
    assert np.array_equal(
        estimate, sampled_silhouette(features, labels, n_reference=400, random_state=1)
    )
    assert not np.array_equal(estimate, exact)  # it did sample


@pytest.mark.parametrize("method", ["kmeans", "ward", "spectral"])
def test_a_sweep_finds_the_planted_number_of_clusters(rng, method):
    fingerprint, truth = fingerprints_of_groups(rng, [40, 25, 60, 15, 30], noise=0.015)
    result = cluster_fingerprints(
        fingerprint, range(2, 9), method=method, random_state=4, silhouette_sample=120
    )
    assert result.sweep.chosen == 5 == result.labels.attrs["n_clusters"]
    assert result.sweep.n_clusters == tuple(range(2, 9))
    assert result.sweep.sample_size == 120
    assert same_partition(result.labels.values, truth)
    again = cluster_fingerprints(
        fingerprint, range(2, 9), method=method, random_state=4, silhouette_sample=120
    )
    np.testing.assert_array_equal(again.labels.values, result.labels.values)


def test_ward_beyond_its_sample_assigns_the_rest_to_the_nearest_centroid(rng, monkeypatch):
    from scipy.cluster.hierarchy import fcluster, linkage

    import specufex_dask.analysis.clustering as clustering

    monkeypatch.setattr(clustering, "WARD_SAMPLE", 30)
    fingerprint, truth = fingerprints_of_groups(rng, [50, 40, 30], noise=0.02)
    result = cluster_fingerprints(fingerprint, 3, method="ward", random_state=2)
    features = fingerprint.values.reshape(120, -1)
    members = np.sort(np.random.default_rng(2).choice(120, 30, replace=False))
    cut = fcluster(linkage(features[members], method="ward"), 3, "maxclust") - 1
    np.testing.assert_array_equal(result.labels.values[members], cut)
    centroids = np.stack([features[members][cut == c].mean(axis=0) for c in range(3)])
    others = np.setdiff1d(np.arange(120), members)
    nearest = np.linalg.norm(features[others, None] - centroids, axis=2).argmin(axis=1)
    np.testing.assert_array_equal(result.labels.values[others], nearest)
    assert same_partition(result.labels.values, truth)


def test_pca_by_explained_variance_and_scaling(rng):
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    fingerprint, truth = fingerprints_of_groups(rng, [20, 30, 25], n_states=5, noise=0.03)
    flat = fingerprint.values.reshape(75, -1)
    centred = flat - flat.mean(axis=0)
    variance = np.linalg.svd(centred, compute_uv=False) ** 2
    cumulative = np.cumsum(variance) / variance.sum()
    expected = int(np.searchsorted(cumulative, 0.8) + 1)  # fewest components reaching 80 %
    result = cluster_fingerprints(fingerprint, 3, pca_variance=0.8, random_state=1)
    assert result.labels.attrs["pca_components"] == expected == result.centers.shape[1]
    assert result.explained_variance_ratio.sum() >= 0.8
    assert result.explained_variance_ratio[:-1].sum() < 0.8
    assert same_partition(result.labels.values, truth)
    scaled = cluster_fingerprints(fingerprint, 3, scale=True, random_state=1, n_init=5)
    reference = KMeans(3, n_init=5, random_state=1).fit_predict(
        StandardScaler().fit_transform(flat)
    )
    np.testing.assert_array_equal(scaled.labels.values, reference)


def test_distances_and_silhouettes_per_event(rng):
    from sklearn.metrics import silhouette_samples

    fingerprint, _ = fingerprints_of_groups(rng, [10, 12, 8], noise=0.05)
    result = cluster_fingerprints(fingerprint, 3, transform="hellinger", random_state=0)
    features = fingerprint_features(fingerprint, "hellinger")
    labels = result.labels.values
    centroid = np.stack([features[labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(
        result.distance.values, np.linalg.norm(features - centroid[labels], axis=1)
    )
    np.testing.assert_allclose(result.inertia, (result.distance.values**2).sum())
    np.testing.assert_allclose(result.silhouette.values, silhouette_samples(features, labels))
    assert result.labels.attrs["labels"] == "0 to 2"


def test_bad_sweeps_and_settings_are_named(rng):
    fingerprint, _ = fingerprints_of_groups(rng, [5, 5])
    sweep_range = r"between 2 and the number of events - 1 \(9\), got 2-10"
    with pytest.raises(ValueError, match=sweep_range):
        cluster_fingerprints(fingerprint, range(2, 11))
    with pytest.raises(ValueError, match="pca_components or pca_variance, not both"):
        cluster_fingerprints(fingerprint, 2, pca_components=2, pca_variance=0.5)
    with pytest.raises(ValueError, match=r"pca_variance .* got 1.5"):
        cluster_fingerprints(fingerprint, 2, pca_variance=1.5)
    with pytest.raises(ValueError, match=r"method must be one of .*got 'dbscan'"):
        cluster_fingerprints(fingerprint, 2, method="dbscan")
    with pytest.raises(ValueError, match=r"n_neighbors must be at least 2 .*, got 1"):
        cluster_fingerprints(fingerprint, 2, method="spectral", n_neighbors=1)


def two_rings(rng, sizes=(150, 150), radii=(1.0, 3.0), noise=0.1):
    """Fingerprints (2 x 2) whose first two entries lie on concentric rings: groups that
    no partition by nearest centroid separates, but that are connected along themselves."""
    truth = np.repeat(np.arange(len(sizes)), sizes)
    angle = rng.uniform(0, 2 * np.pi, truth.size)
    radius = np.asarray(radii)[truth] + noise * rng.standard_normal(truth.size)
    values = np.zeros((truth.size, 2, 2))
    values[:, 0, 0] = 5 + radius * np.cos(angle)
    values[:, 0, 1] = 5 + radius * np.sin(angle)
    events = [f"e{i}" for i in range(truth.size)]
    fingerprint = xr.DataArray(
        values, dims=("event", "state", "next_state"), coords={"event": events}
    )
    return fingerprint, truth


def test_spectral_follows_the_neighbour_graph_where_kmeans_cuts_across(rng):
    from sklearn.metrics import adjusted_rand_score

    fingerprint, truth = two_rings(rng)
    spectral = cluster_fingerprints(fingerprint, 2, method="spectral", random_state=1)
    assert same_partition(spectral.labels.values, truth)
    kmeans = cluster_fingerprints(fingerprint, 2, method="kmeans", random_state=1)
    assert adjusted_rand_score(truth, kmeans.labels.values) < 0.1
    attrs = spectral.labels.attrs
    assert attrs["method"] == "spectral" and attrs["n_neighbors"] == 20
    assert attrs["graph_events"] == 300
    assert attrs["long_name"] == "spectral cluster of the fingerprint"


def test_spectral_equals_sklearn_on_the_same_neighbour_graph(rng):
    from sklearn.cluster import SpectralClustering

    fingerprint, _ = fingerprints_of_groups(rng, [30, 20, 25], noise=0.2)
    result = cluster_fingerprints(fingerprint, 3, method="spectral", n_neighbors=7, random_state=5)
    reference = SpectralClustering(
        3, affinity="nearest_neighbors", n_neighbors=7, assign_labels="discretize",
        random_state=5,
    )  # fmt: skip
    expected = reference.fit_predict(fingerprint.values.reshape(75, -1))
    np.testing.assert_array_equal(result.labels.values, expected)


def test_spectral_beyond_its_sample_labels_the_rest_by_their_neighbours(rng, monkeypatch):
    from sklearn.cluster import SpectralClustering
    from sklearn.neighbors import KNeighborsClassifier

    import specufex_dask.analysis.clustering as clustering

    monkeypatch.setattr(clustering, "SPECTRAL_SAMPLE", 80)
    fingerprint, truth = fingerprints_of_groups(rng, [120, 90, 90], noise=0.03)
    result = cluster_fingerprints(
        fingerprint, 3, method="spectral", n_neighbors=10, random_state=2
    )
    features = fingerprint.values.reshape(300, -1)
    members = np.sort(np.random.default_rng(2).choice(300, 80, replace=False))
    graph_labels = SpectralClustering(
        3, affinity="nearest_neighbors", n_neighbors=10, assign_labels="discretize",
        random_state=2,
    ).fit_predict(features[members])  # fmt: skip
    np.testing.assert_array_equal(result.labels.values[members], graph_labels)
    others = np.setdiff1d(np.arange(300), members)
    vote = KNeighborsClassifier(10).fit(features[members], graph_labels)
    np.testing.assert_array_equal(result.labels.values[others], vote.predict(features[others]))
    assert same_partition(result.labels.values, truth)
    assert result.labels.attrs["graph_events"] == 80
    assert result.labels.attrs["n_neighbors"] == 10
    # 20 neighbours of 80 graph events in 3 clusters: at most half the mean cluster size
    fewer = cluster_fingerprints(fingerprint, 3, method="spectral", random_state=2)
    assert fewer.labels.attrs["n_neighbors"] == 80 // 6
