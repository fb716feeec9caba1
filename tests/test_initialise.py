"""The default mode's data starts of q(B) and q(W), share pruning and pattern merging."""

from __future__ import annotations

import numpy as np
import pytest

from specufex_dask import BayesianHMM, BayesianNonparametricNMF
from specufex_dask.inference.initialise import (
    emission_start,
    init_sample,
    kmeans,
    pattern_start,
    spectrogram_frames,
)
from specufex_dask.inference.updates import NMFPrior, merge_patterns, prune_mask, similar_pairs


def _blobs(rng: np.random.Generator, centres: np.ndarray, per: int) -> tuple:
    points = np.concatenate(
        [c + 0.05 * rng.standard_normal((per, centres.shape[1])) for c in centres]
    )
    return points, np.repeat(np.arange(len(centres)), per)


def test_kmeans_finds_separated_groups_and_is_seeded(rng) -> None:
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])
    points, truth = _blobs(rng, centres, 30)
    labels = kmeans(points, 4, np.random.default_rng(1))
    # the same partition as the truth, whatever the numbering
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels, strict=True)}
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 4
    again = kmeans(points, 4, np.random.default_rng(1))
    np.testing.assert_array_equal(labels, again)


def test_kmeans_restarts_empty_clusters() -> None:
    """Five points, two of them repeated: every one of 4 clusters still gets a point."""
    points = np.array([[0.0], [0.0], [0.0], [1.0], [2.0], [10.0]])
    labels = kmeans(points, 4, np.random.default_rng(0))
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_emission_start_puts_states_at_group_means(rng) -> None:
    """E[B] of each state is the mean of its group's frames (an independent sum), and the
    states' weights (B2 - tau2) add up to the data set's frames in proportion to the
    groups' sizes."""
    centres = np.array([[50.0, 1.0, 1.0], [1.0, 80.0, 1.0], [1.0, 1.0, 20.0]])
    frames, truth = _blobs(rng, centres, 40)
    frames = np.abs(frames) ** 2
    B1, B2 = emission_start(frames, 3, 1000.0, np.random.default_rng(0), tau1=0.1, tau2=0.1)
    weight = B2[:, 0] - 0.1
    np.testing.assert_allclose(weight.sum(), 1000.0)
    np.testing.assert_allclose(np.sort(weight), [1000 / 3] * 3)
    expected = np.array([frames[truth == j].mean(axis=0) for j in range(3)])
    EB = (B1 - 0.1) / weight[:, None]
    order = np.argsort(np.argmax(EB, axis=1))
    np.testing.assert_allclose(EB[order], expected, rtol=1e-12)


def test_emission_start_with_fewer_distinct_frames_than_states() -> None:
    frames = np.array([[4.0, 1.0], [4.0, 1.0], [1.0, 9.0]])
    B1, B2 = emission_start(frames, 5, 30.0, np.random.default_rng(0), tau1=0.1, tau2=0.1)
    assert B1.shape == B2.shape == (5, 2) and np.all(np.isfinite(B1 / B2))
    assert np.all(B2 > 0.1)


def test_init_sample_is_bounded_and_sorted() -> None:
    sample = init_sample(np.random.default_rng(0), 10_000)
    assert len(sample) == 256 and np.all(np.diff(sample) > 0) and sample[-1] < 10_000
    np.testing.assert_array_equal(init_sample(np.random.default_rng(0), 7), np.arange(7))


def test_pattern_start_puts_patterns_at_group_mean_shapes(rng) -> None:
    """Frames of three spectral shapes at loudnesses 1 to 100: each pattern starts at the
    mean unit-sum shape of its group (an independent mean), floored, with column sums D
    and the reference draw's weight times the strength, whatever the loudness."""
    shapes = np.array([[8.0, 1.0, 1.0, 0.0], [0.0, 1.0, 8.0, 1.0], [1.0, 0.0, 1.0, 8.0]])
    shapes /= shapes.sum(axis=1, keepdims=True)
    truth = np.repeat(np.arange(3), 40)
    noisy = shapes[truth] * rng.uniform(0.95, 1.05, size=(120, 4))
    frames = noisy * rng.uniform(1.0, 100.0, size=(120, 1))
    W1, W2 = pattern_start(frames, 3, 500, np.random.default_rng(0), floor=0.2, strength=3.0)
    np.testing.assert_array_equal(W2, np.full((4, 3), 3.0 * 500 / 10))
    EW = W1 / W2
    np.testing.assert_allclose(EW.sum(axis=0), [4.0] * 3)
    unit = noisy / noisy.sum(axis=1, keepdims=True)
    expected = np.array([unit[truth == j].mean(axis=0) for j in range(3)])
    expected = 4 * (0.8 * expected / expected.sum(axis=1, keepdims=True) + 0.2 / 4)
    order = np.argsort(np.argmax(EW, axis=0))
    np.testing.assert_allclose(EW[:, order].T, expected[np.argsort(np.argmax(expected, axis=1))])
    assert EW.min() >= 0.2


def test_pattern_start_with_fewer_distinct_frames_than_patterns_breaks_the_ties() -> None:
    """Two distinct shapes (and a silent frame) for 5 patterns: 2 start at the shapes,
    the other 3 at the mean shape times noise, so no two patterns are the same."""
    frames = np.array([[4.0, 1.0, 0.0], [8.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 9.0]])
    W1, W2 = pattern_start(frames, 5, 10, np.random.default_rng(0))
    EW = W1 / W2
    assert np.all(np.isfinite(EW)) and EW.min() > 0
    assert np.unique(np.round(EW, 12), axis=1).shape[1] == 5
    shape = np.array([0.8, 0.2, 0.0])
    cosine = (EW / np.linalg.norm(EW, axis=0)).T @ (shape / np.linalg.norm(shape))
    assert np.sort(cosine)[-1] > 0.97  # the shape of the first two frames is a pattern
    with pytest.raises(ValueError, match="every spectrogram frame of the sample is zero"):
        pattern_start(np.zeros((3, 3)), 2, 10, np.random.default_rng(0))


def test_spectrogram_frames_are_columns_in_time_order(rng) -> None:
    X = rng.random((2, 3, 4))
    frames = spectrogram_frames(X)
    np.testing.assert_array_equal(frames[5], X[1, :, 1])
    assert frames.shape == (8, 3)


def test_nmf_starts_from_data_once_remembers_it_and_compat_refuses_it(tmp_path, rng) -> None:
    """init="data" replaces the reference's draw of q(W) at the first fit by the start
    from a sample of the spectrograms given (the same as pattern_start of their frames),
    once; the setting and the fact survive a file; compat mode refuses it."""
    X = rng.gamma(2.0, 2.0, size=(12, 6, 5))
    nmf = BayesianNonparametricNMF(X.shape, 4, init="data", max_steps=1, random_state=0)
    assert not nmf.initialised
    drawn = nmf.W1.copy()
    nmf.start_from_frames(spectrogram_frames(X))
    started = nmf.W1.copy()
    fresh = BayesianNonparametricNMF(X.shape, 4, init="data", max_steps=1, random_state=0)
    np.testing.assert_array_equal(fresh.W1, drawn)
    fresh.partial_fit(X)
    # one step from the data start, not from the draw
    again = BayesianNonparametricNMF(X.shape, 4, init="data", max_steps=1, random_state=0)
    again.W1 = started.copy()
    again.W2 = nmf.W2.copy()
    again.initialised = True
    again.partial_fit(X)
    np.testing.assert_array_equal(fresh.W1, again.W1)
    assert fresh.initialised and not np.allclose(started, drawn)
    fresh.save(tmp_path / "nmf.h5")
    loaded = BayesianNonparametricNMF.load(tmp_path / "nmf.h5")
    assert loaded.initialised and loaded.init == "data"
    before = loaded.W1.copy()
    loaded._start_from_data(X)  # already started: nothing happens
    np.testing.assert_array_equal(loaded.W1, before)
    with pytest.raises(ValueError, match="init='data' needs compat='default'"):
        BayesianNonparametricNMF(X.shape, 4, compat="specufex", init="data").fit(X)
    with pytest.raises(ValueError, match="init must be one of"):
        BayesianNonparametricNMF(X.shape, 4, init="kmeans").fit(X)
    random = BayesianNonparametricNMF(X.shape, 4, random_state=0)
    assert random._init() == "random" and random.initialised


def _two_regime_sequences(rng: np.random.Generator, n: int) -> np.ndarray:
    """Activations that switch between two spectral regimes of hundreds of counts."""
    V = np.empty((n, 3, 30))
    for i in range(n):
        regime = (np.arange(30) // rng.integers(3, 10)) % 2
        V[i] = np.where(regime == 0, [[300.0], [5.0], [5.0]], [[5.0], [5.0], [300.0]])
    return rng.poisson(V).astype(float)


def test_hmm_starts_from_data_once_and_remembers_it(tmp_path, rng) -> None:
    V = _two_regime_sequences(rng, 40)
    gain = np.ones(3)
    hmm = BayesianHMM(3, gain, 4, batch_size=8, max_steps=5, random_state=0)
    # the argument is kept as given; None means "data" in the default mode
    assert hmm.init is None and hmm._init() == "data" and not hmm.initialised
    drawn = hmm.B1.copy()
    hmm.fit(V)
    assert hmm.initialised and not np.allclose(hmm.B1, drawn)
    # both regimes are states, as the data say
    means = np.sort(np.round((hmm.B1 / hmm.B2)[:, [0, 2]].max(axis=1), -1))
    assert means[-1] > 200 and means[-2] > 200
    hmm.save(tmp_path / "hmm.h5")
    loaded = BayesianHMM.load(tmp_path / "hmm.h5")
    assert loaded.initialised and loaded.init == "data"
    before = loaded.B1.copy()
    assert loaded._ready(V, "fit")  # already started: no new start, nothing held
    np.testing.assert_array_equal(loaded.B1, before)
    assert loaded._held == ()


def _loop_model(rng: np.random.Generator, n_events: int):
    """An HMM built as the README's loop builds it (from an NMF's gain, which carries the
    NMF's data size), and sequences of that NMF."""
    X = rng.gamma(2.0, 2.0, size=(n_events, 6, 12))
    nmf = BayesianNonparametricNMF(X.shape, 4, random_state=0).fit(X[:4])
    V = nmf.transform(X)
    return (lambda: BayesianHMM(nmf.num_pat, nmf.gain, 3, random_state=1)), V


def _started_by_hand(make, V: np.ndarray, calls: list[int]):
    """What the held calls must give: a start from their sequences, then their steps."""
    hmm = make()
    held = V[calls]
    frames = (held * hmm.gain[None, :, None]).transpose(0, 2, 1).reshape(-1, hmm.num_pat)
    hmm.start_from_frames(frames, hmm._data_size() * V.shape[2])
    for index in calls:
        hmm.fit(V[index : index + 1])
    return hmm


def test_one_sequence_calls_are_held_until_the_data_start(rng) -> None:
    """The README's loop: calls of one sequence wait until they bring min(256, N)
    sequences, then q(B) starts from all of them and their steps run in order."""
    make, V = _loop_model(rng, 30)
    hmm = make()
    drawn = hmm.B1.copy()
    calls = [int(i) for i in rng.integers(30, size=30)]
    for count, index in enumerate(calls, start=1):
        hmm.fit(V[index : index + 1])
        if count < 30:
            assert not hmm.initialised and hmm.step == 0
            np.testing.assert_array_equal(hmm.B1, drawn)
    assert hmm.initialised and hmm.step == 30 and len(hmm.elbo_) == 30
    expected = _started_by_hand(make, V, calls)
    np.testing.assert_array_equal(hmm.B1, expected.B1)
    np.testing.assert_array_equal(hmm.B2, expected.B2)
    # a start from the first call's sequence alone gives another model
    alone = _started_by_hand(make, V, calls[:1])
    for index in calls[1:]:
        alone.fit(V[index : index + 1])
    assert not np.allclose(alone.B1, hmm.B1)


def test_a_held_start_runs_when_the_model_is_used(rng, tmp_path) -> None:
    make, V = _loop_model(rng, 30)
    calls = [3, 17, 17, 8]
    for use in ("transform", "save"):
        hmm = make()
        for index in calls:
            hmm.fit(V[index : index + 1])
        assert not hmm.initialised
        if use == "transform":
            fingerprint = hmm.transform(V)[0]
        else:
            hmm.save(tmp_path / "hmm.h5")
            hmm = BayesianHMM.load(tmp_path / "hmm.h5")
        expected = _started_by_hand(make, V, calls)
        assert hmm.initialised and hmm.step == len(calls)
        np.testing.assert_array_equal(hmm.B1, expected.B1)
        if use == "transform":
            np.testing.assert_array_equal(fingerprint, expected.transform(V)[0])


def test_hmm_init_settings_are_checked_and_compat_keeps_the_draw() -> None:
    gain, V = np.ones(3), np.ones((5, 3, 4))
    with pytest.raises(ValueError, match="init must be one of"):
        BayesianHMM(3, gain, 4, init="kmeans").fit(V)
    with pytest.raises(ValueError, match="init='data' needs compat='default'"):
        BayesianHMM(3, gain, 4, compat="specufex", init="data").fit(V)
    hmm = BayesianHMM(3, gain, 4, compat="specufex")
    drawn = hmm.B1.copy()
    assert hmm._init() == "random" and hmm.initialised
    hmm.fit(V[:1])
    assert hmm.B1.shape == drawn.shape and hmm.initialised


def test_hmm_takes_the_data_size_from_the_nmf_gain(rng) -> None:
    """The README's loop builds the HMM from ``nmf.gain``: its statistics are scaled by
    the NMF's data size, not by the one sequence each fit call gets."""
    X = rng.gamma(2.0, 2.0, size=(37, 6, 5))
    nmf = BayesianNonparametricNMF(X.shape, 4, random_state=0).fit(X[:3])
    # n_eff=None (the argument, kept as given) means the data size the gain carries
    assert BayesianHMM(nmf.num_pat, nmf.gain, 3)._data_size() == 37
    assert BayesianHMM(nmf.num_pat, nmf.gain, 3, n_eff=5)._data_size() == 5
    assert BayesianHMM(nmf.num_pat, np.asarray(nmf.gain), 3)._data_size() is None
    assert BayesianHMM(nmf.num_pat, nmf.gain, 3, compat="specufex").Neff == 100000


def test_prune_mask_by_share() -> None:
    A1 = np.array([[50.0, 0.04, 49.96]])
    A2 = np.ones((1, 3))
    np.testing.assert_array_equal(prune_mask(A1, A2), [True, True, True])
    np.testing.assert_array_equal(prune_mask(A1, A2, min_share=1e-3), [True, False, True])


def test_similar_pairs_are_disjoint_and_most_similar_first() -> None:
    EW = np.array([[1.0, 1.0, 0.0, 0.98], [0.0, 0.01, 1.0, 0.0], [0.0, 0.0, 0.0, 0.2]])
    # columns 0, 1, 3 are alike; 0-1 is the closest pair; 3 waits for the next step
    assert similar_pairs(EW, 0.95) == [(0, 1)]
    assert similar_pairs(EW, 0.9999999) == []


def test_merge_patterns_adds_the_data_parts() -> None:
    prior = NMFPrior(0.1, 1.0, 0.1, 1.0, 0.5, 1.0)
    W1 = np.array([[2.5, 4.5, 9.0], [3.5, 6.5, 9.0]])
    W2 = np.array([[3.0, 5.0, 2.0], [3.0, 5.0, 2.0]])
    A1 = np.array([[1.1, 2.1, 3.0]])
    A2 = np.array([[2.0, 4.0, 1.0]])
    W1m, W2m, A1m, A2m, keep = merge_patterns(W1, W2, A1, A2, [(0, 1)], prior)
    np.testing.assert_array_equal(keep, [True, False, True])
    np.testing.assert_allclose(W1m[:, 0], [2.5 + 4.5 - 0.5, 3.5 + 6.5 - 0.5])
    np.testing.assert_allclose(W2m[:, 0], [7.0, 7.0])
    np.testing.assert_allclose([A1m[0, 0], A2m[0, 0]], [3.1, 5.0])
    np.testing.assert_array_equal(W1m[:, 2], W1[:, 2])
    assert W1[0, 0] == 2.5  # inputs unchanged
