"""Planted synthetic data sets and the real records' loaders (specufex_dask.analysis.datasets)."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from scipy.signal import welch

from specufex_dask.analysis import datasets
from specufex_dask.ingest.preprocessing import SpectrogramParameters

# --------------------------------------------------------------------------------------
# Planted waveforms
# --------------------------------------------------------------------------------------


def test_planted_waveforms_are_deterministic_for_a_seed():
    first = datasets.planted_waveforms(20, "medium", seed=7)
    again = datasets.planted_waveforms(20, "medium", seed=7)
    other = datasets.planted_waveforms(20, "medium", seed=8)
    np.testing.assert_array_equal(first.waveforms, again.waveforms)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.allclose(first.waveforms, other.waveforms)
    # A generator built from the same seed draws the same events.
    from_generator = datasets.planted_waveforms(20, "medium", seed=np.random.default_rng(7))
    np.testing.assert_array_equal(first.waveforms, from_generator.waveforms)


def test_planted_waveforms_shapes_balance_and_shuffling():
    planted = datasets.planted_waveforms(40, "easy", seed=1, duration_s=15.0)
    assert planted.waveforms.shape == (40, 1500)
    assert planted.waveforms.dtype == np.float64
    assert planted.labels.dtype == np.int64
    assert planted.class_names == ("earthquake", "tremor", "bursts", "long_period")
    assert planted.fs == 100.0 and planted.difficulty == "easy"
    assert np.bincount(planted.labels).tolist() == [10, 10, 10, 10]
    # Shuffled, not in blocks of one class.
    assert np.count_nonzero(np.diff(planted.labels)) > 10
    assert np.isfinite(planted.waveforms).all()
    assert planted.snr_db.shape == (40,)
    assert ((planted.snr_db >= 15.0) & (planted.snr_db <= 30.0)).all()
    with pytest.raises(dataclasses.FrozenInstanceError):
        planted.fs = 50.0


def test_planted_waveforms_amplitudes_span_more_than_a_decade():
    planted = datasets.planted_waveforms(80, "easy", seed=2)
    peaks = np.abs(planted.waveforms).max(axis=1)
    assert peaks.max() / peaks.min() > 10.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_events": 10}, "multiple of the 4 classes, got 10"),
        ({"n_events": 0}, "got 0"),
        ({"difficulty": "extreme"}, "difficulty"),
        ({"fs": 20.0}, "fs"),
        ({"duration_s": 5.0}, "duration_s"),
    ],
)
def test_planted_waveforms_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        datasets.planted_waveforms(**{"n_events": 8, **kwargs})


def test_planted_classes_sit_in_their_bands():
    planted = datasets.planted_waveforms(40, "easy", seed=3)
    frequency, power = welch(planted.waveforms, fs=planted.fs, nperseg=400)
    peak = frequency[power.argmax(axis=1)]
    median_peak = {
        name: np.median(peak[planted.labels == label])
        for label, name in enumerate(planted.class_names)
    }
    assert 1.0 <= median_peak["long_period"] <= 3.0
    assert 2.5 <= median_peak["tremor"] <= 6.0
    assert median_peak["bursts"] > 10.0
    assert median_peak["long_period"] < median_peak["earthquake"] < median_peak["bursts"]


def test_planted_spectrograms_shape():
    planted = datasets.planted_waveforms(8, "hard", seed=0)
    spectrograms = datasets.planted_spectrograms(planted)
    assert spectrograms.shape == (8, 113, 39)
    assert spectrograms.dtype == np.float64
    assert np.isfinite(spectrograms).all() and spectrograms.min() >= 0.0


def test_kmeans_baseline_is_better_at_easy_than_at_hard():
    ari = {}
    for difficulty in ("easy", "hard"):
        planted = datasets.planted_waveforms(200, difficulty, seed=0)
        ari[difficulty] = datasets.kmeans_ari(
            datasets.planted_spectrograms(planted), planted.labels
        )
    # Measured 0.87 and 0.25 (n=600: 0.91-0.94 and 0.31-0.46 over five seeds).
    assert ari["easy"] > 0.75, ari
    assert ari["hard"] < 0.6, ari
    assert ari["easy"] - ari["hard"] > 0.3, ari


def test_kmeans_ari_rejects_unknown_features():
    with pytest.raises(ValueError, match="features"):
        datasets.kmeans_ari(np.zeros((4, 2, 3)), [0, 0, 1, 1], features="pca")


# --------------------------------------------------------------------------------------
# Planted patterns
# --------------------------------------------------------------------------------------


def _cosines(columns):
    unit = columns / np.linalg.norm(columns, axis=0)
    return unit.T @ unit


def test_planted_patterns_shapes_and_distinct_unit_sum_patterns():
    planted = datasets.planted_patterns(seed=0)
    assert planted.spectrograms.shape == (300, 64, 40)
    assert planted.patterns.shape == (64, 5)
    assert planted.activations.shape == (300, 5, 40)
    np.testing.assert_allclose(planted.patterns.sum(axis=0), 1.0, rtol=1e-12)
    assert planted.patterns.min() >= 0 and planted.activations.min() >= 0
    cosines = _cosines(planted.patterns)
    off_diagonal = cosines[~np.eye(5, dtype=bool)]
    assert off_diagonal.max() < 0.8
    # Sparse activations: most are exactly zero.
    assert 0.2 < np.mean(planted.activations > 0) < 0.4


def test_planted_patterns_are_poisson_counts_of_w_h():
    planted = datasets.planted_patterns(seed=1)
    data = planted.spectrograms
    assert data.min() >= 0 and np.array_equal(data, np.round(data))
    rate = np.einsum("dp,npm->ndm", planted.patterns, planted.activations)
    assert data.mean() == pytest.approx(rate.mean(), rel=0.01)
    # Poisson: the per-frequency means follow the rate's.
    np.testing.assert_allclose(data.mean(axis=(0, 2)), rate.mean(axis=(0, 2)), rtol=0.05)
    # Scaled like dB-above-median data.
    assert np.percentile(rate, 99) == pytest.approx(40.0)


def test_planted_patterns_are_recovered_by_a_plain_nmf():
    """The planted factors are identifiable: an off-the-shelf KL NMF finds every pattern."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.decomposition import NMF

    planted = datasets.planted_patterns(seed=1)
    n_frequencies, n_patterns = planted.patterns.shape
    counts = planted.spectrograms.transpose(1, 0, 2).reshape(n_frequencies, -1)
    nmf = NMF(
        n_patterns,
        beta_loss="kullback-leibler",
        solver="mu",
        init="nndsvdar",
        max_iter=500,
        tol=1e-5,
        random_state=0,
    )
    found = nmf.fit_transform(counts)
    truth = planted.patterns / np.linalg.norm(planted.patterns, axis=0)
    cosines = truth.T @ (found / np.linalg.norm(found, axis=0))
    rows, columns = linear_sum_assignment(-cosines)
    assert cosines[rows, columns].min() >= 0.95, cosines[rows, columns]


def test_planted_patterns_deterministic_and_validated():
    a = datasets.planted_patterns(10, seed=4)
    b = datasets.planted_patterns(10, seed=4)
    np.testing.assert_array_equal(a.spectrograms, b.spectrograms)
    assert not np.array_equal(a.patterns, datasets.planted_patterns(10, seed=5).patterns)
    with pytest.raises(ValueError, match="n_patterns"):
        datasets.planted_patterns(n_patterns=1)
    with pytest.raises(ValueError, match="too few"):
        datasets.planted_patterns(n_patterns=5, n_frequencies=12)


# --------------------------------------------------------------------------------------
# Windows of continuous records
# --------------------------------------------------------------------------------------


def test_continuous_windows_start_every_step():
    samples = np.arange(100.0)
    windows = datasets.continuous_windows(samples, 10.0, window_s=2.0, step_s=1.5)
    assert windows.shape == ((100 - 20) // 15 + 1, 20)
    np.testing.assert_array_equal(windows[:, 0], np.arange(windows.shape[0]) * 15.0)
    np.testing.assert_array_equal(windows[-1], samples[75:95])
    assert datasets.continuous_windows(samples, 10.0, 20.0, 1.0).shape == (0, 200)
    with pytest.raises(ValueError, match="one sample"):
        datasets.continuous_windows(samples, 10.0, 2.0, 0.01)


def test_record_spectrograms_skip_rejected_windows_and_keep_offsets(rng):
    fs = 100.0
    samples = rng.standard_normal(6000)
    samples[1000:3000] = 5.0  # constant from 10 to 30 s
    samples[4500] = np.nan  # not finite at 45 s
    params = SpectrogramParameters(fs=fs, window_s=1.0, overlap=0.5, nfft=128, fmin=1, fmax=45)
    spectrograms, frequency, offsets = datasets.record_spectrograms(samples, fs, params, 10, 5)
    # 10 s windows start at 0, 5, ..., 50 s: those at 10, 15 and 20 s are constant, those at
    # 40 and 45 s hold the NaN.
    np.testing.assert_array_equal(offsets, [0, 5, 25, 30, 35, 50])
    assert spectrograms.shape == (6, frequency.size, 19)
    assert frequency[0] >= 1 and frequency[-1] <= 45


# --------------------------------------------------------------------------------------
# Real records
# --------------------------------------------------------------------------------------


def test_kw1_record_and_spectrograms():
    samples, fs, starttime = datasets.kw1_record()
    assert samples.shape == (936001,) and fs == 100.0
    assert starttime == "2011-03-31T00:00:00.180000Z"
    samples[0] = 1e9  # a copy: the cached record is untouched
    assert datasets.kw1_record()[0][0] == -30.0
    spectrograms, frequency, offsets = datasets.kw1_spectrograms(hours=1.0)
    # (3600 s - 20 s) // 10 s + 1 windows
    assert spectrograms.shape == (359, 113, 39)
    assert frequency.shape == (113,)
    assert frequency[0] >= 1.0 and frequency[-1] <= 45.0
    np.testing.assert_array_equal(offsets, np.arange(359) * 10.0)
    assert np.isfinite(spectrograms).all() and spectrograms.min() >= 0.0
    assert spectrograms.max() > 10.0


def test_anmo_record_and_spectrograms():
    samples, fs, starttime = datasets.anmo_record()
    assert samples.shape == (86400,) and fs == 1.0
    assert starttime.startswith("2010-01-01T00:00:00")
    spectrograms, frequency, offsets = datasets.anmo_spectrograms()
    # (86400 s - 1800 s) // 900 s + 1 windows of 50 frequencies x 55 times
    assert spectrograms.shape == (95, 50, 55)
    assert 0.01 <= frequency[0] and frequency[-1] <= 0.4
    np.testing.assert_array_equal(offsets, np.arange(95) * 900.0)
    assert np.isfinite(spectrograms).all() and spectrograms.min() >= 0.0


def test_bav_spectrograms_match_the_golden_workflow(bav_dir, golden_dir):
    spectrograms, event_ids = datasets.bav_spectrograms(bav_dir)
    assert spectrograms.shape == (10, 241, 26)
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        group = h5["spectrograms/transformed_spectrograms"]
        assert sorted(event_ids) == sorted(group)
        golden = group[event_ids[0]][()]
    assert event_ids[0] == "10633"
    np.testing.assert_allclose(spectrograms[0], golden, rtol=0, atol=1e-12)


def test_bav_spectrograms_default_to_the_bundled_copy(bav_dir):
    bundled, bundled_ids = datasets.bav_spectrograms()
    shared, shared_ids = datasets.bav_spectrograms(bav_dir)
    assert bundled_ids == shared_ids
    np.testing.assert_array_equal(bundled, shared)
