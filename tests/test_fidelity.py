"""The default mode's fingerprints carry structure: no collapse on a real record, planted
classes told apart, planted patterns recovered and the rest pruned.

A collapse (every frame in one HMM state, every fingerprint the same) passes every
shape and finiteness check, so these tests measure what the fit makes of data:
states in use, distinct fingerprints, ARI against planted classes, patterns kept.
Each also runs the setting the default replaced, to show that the measure tells them
apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from specufex_dask import BayesianHMM, BayesianNonparametricNMF, SpecUFEx
from specufex_dask.analysis import datasets
from specufex_dask.analysis.clustering import cluster_fingerprints
from specufex_dask.inference.diagnostics import distinct_fraction, states_in_use

K0, S = 75, 15


@pytest.fixture(scope="module")
def kw1_half_hour() -> np.ndarray:
    """179 windows of 20 s (10 s apart) of the real BW.KW1 record."""
    return datasets.kw1_spectrograms(hours=0.5)[0]


def _loop(X: np.ndarray, seed: int, nmf_calls: int, hmm_calls: int, **hmm_options):
    """The reference README's loop: one spectrogram, then one sequence, per fit call."""
    rng = np.random.default_rng(seed)
    nmf = BayesianNonparametricNMF(X.shape, K0, random_state=seed)
    for _ in range(nmf_calls):
        nmf.fit(X[rng.integers(len(X), size=1)])
    V = nmf.transform(X)
    hmm = BayesianHMM(nmf.num_pat, nmf.gain, S, random_state=seed, **hmm_options)
    for _ in range(hmm_calls):
        hmm.fit(V[rng.integers(len(V), size=1)])
    return nmf, hmm


def _outputs(nmf, hmm, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prints, _, gam = hmm.transform(nmf.transform(X))
    return prints, gam


def _assert_distinct_but_for_one_state_windows(prints: np.ndarray, gam: np.ndarray) -> None:
    """>= 98 % distinct fingerprints, and every window that shares its fingerprint with
    another spends all its frames in one state (with no transition, nothing tells such
    windows apart: that is not a collapse)."""
    assert distinct_fraction(prints) >= 0.98
    cells = np.round(prints.reshape(len(prints), -1) / 1e-6)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.ravel()] > 1
    states_per_window = np.array([len(np.unique(w)) for w in gam.argmax(axis=1)])
    assert (states_per_window[shared] == 1).all(), states_per_window[shared]


def _as_dataarray(X: np.ndarray) -> xr.DataArray:
    return xr.DataArray(
        X, dims=("event", "frequency", "time"), coords={"event": [str(i) for i in range(len(X))]}
    )


def test_real_record_loop_protocol_uses_states(kw1_half_hour) -> None:
    """The README's loop on a real record: several states, distinct fingerprints."""
    X = kw1_half_hour
    prints, gam = _outputs(*_loop(X, 0, 200, 100), X)
    assert states_in_use(gam) >= 4
    _assert_distinct_but_for_one_state_windows(prints, gam)


def test_real_record_pipeline_uses_states_and_prunes(kw1_half_hour) -> None:
    """SpecUFEx with its defaults (in-process) on the same record."""
    X = kw1_half_hour
    model = SpecUFEx(K0, S, hmm_steps=60, random_state=0, client=False)
    model.fit(_as_dataarray(X))
    prints, gam = _outputs(model.nmf_, model.hmm_, X)
    assert states_in_use(gam) >= 4
    _assert_distinct_but_for_one_state_windows(prints, gam)
    assert model.nmf_.num_pat <= 0.6 * K0  # 40 of 75 measured


def test_on_the_same_activations_the_random_start_collapses(kw1_half_hour) -> None:
    """The case reported on the real record: minibatches of 16, every pattern kept. The
    reference's random start of q(B) puts every frame in one state (one fingerprint for
    all); the data start uses them all."""
    X = kw1_half_hour
    nmf = BayesianNonparametricNMF(X.shape, K0, batch_size=16, max_steps=150,
                                   min_pattern_share=None, random_state=0).fit(X)  # fmt: skip
    V = nmf.transform(X)

    def fit(init: str) -> tuple[np.ndarray, np.ndarray]:
        hmm = BayesianHMM(nmf.num_pat, nmf.gain, S, batch_size=16, max_steps=100, init=init,
                          random_state=0).fit(V)  # fmt: skip
        prints, _, gam = hmm.transform(V)
        return prints, gam

    prints, gam = fit("random")
    assert states_in_use(gam) == 1 and distinct_fraction(prints) < 0.05
    prints, gam = fit("data")
    assert states_in_use(gam) >= 10 and distinct_fraction(prints) >= 0.99


def test_planted_waveform_classes_are_told_apart() -> None:
    """Four planted seismic-like classes (medium level, 200 events): the `cluster`
    command's default (spectral clustering of the idf fingerprints) tells them apart; the
    Hellinger and the raw fingerprints do markedly worse (measured: spectral 0.829 on
    idf, 0.660 on hellinger; k-means 0.698 on idf, 0.586 on hellinger, 0.403 on the raw
    fingerprints). At fit seeds 1 and 2 spectral and k-means come out within 0.05 of each
    other (0.608 / 0.659, 0.543 / 0.576); the benchmark's converged fits of 600 events are
    where the two methods are told apart."""
    planted = datasets.planted_waveforms(200, difficulty="medium", seed=3)
    X = datasets.planted_spectrograms(planted)
    model = SpecUFEx(K0, S, nmf_steps=100, hmm_steps=100, random_state=0, client=False)
    model.fit(_as_dataarray(X))
    prints, _ = _outputs(model.nmf_, model.hmm_, X)
    fingerprint = xr.DataArray(prints, dims=("event", "state", "next_state"))
    fingerprint = fingerprint.assign_coords(event=np.arange(len(X)))
    from sklearn.metrics import adjusted_rand_score

    def ari(transform: str, method: str = "spectral") -> float:
        clustering = cluster_fingerprints(
            fingerprint, 4, transform=transform, method=method, n_init=30
        )
        return adjusted_rand_score(planted.labels, clustering.labels.values)

    idf = ari("idf")
    assert idf >= 0.75
    assert idf >= ari("hellinger") + 0.1 and idf >= ari("none", "kmeans") + 0.3


def test_nmf_recovers_planted_patterns_and_prunes_the_rest() -> None:
    """5 planted patterns, K0 = 75. The default mode prunes to P to 2P (10 measured;
    14 with a share pruning at 1e-3) and matches each planted one with
    cosine >= 0.95; so does the scale by the data's frames (``likelihood_scale="frames"``,
    5 measured); without share pruning no pattern is pruned at all."""
    planted = datasets.planted_patterns(seed=0)
    X, W = planted.spectrograms, planted.patterns
    P = W.shape[1]

    def fit(**options) -> BayesianNonparametricNMF:
        nmf = BayesianNonparametricNMF(
            X.shape, K0, batch_size=64, max_steps=200, random_state=0, **options
        )
        return nmf.fit(X)

    def worst_match(nmf: BayesianNonparametricNMF) -> float:
        unit = nmf.EW / np.linalg.norm(nmf.EW, axis=0)
        return float(((W / np.linalg.norm(W, axis=0)).T @ unit).max(axis=1).min())

    default = fit()
    assert P <= default.num_pat <= 2 * P
    assert worst_match(default) >= 0.95
    by_frames = fit(likelihood_scale="frames")
    assert P <= by_frames.num_pat <= 2 * P
    assert worst_match(by_frames) >= 0.95
    assert fit(min_pattern_share=None).num_pat == K0
