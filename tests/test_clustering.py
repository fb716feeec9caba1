"""Tests of specufex_dask.clustering: k-means (optionally after PCA) on fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from specufex_dask.clustering import cluster_fingerprints, fingerprint_features


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
