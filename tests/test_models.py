"""In-memory models: planted truth, invariants of the SVI driver, ELBO, input errors."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import digamma

from specufex_dask.inference.stats import HMMStatistics, NMFStatistics
from specufex_dask.inference.updates import hmm_global_kl
from specufex_dask.kernels.hmm import (
    dirichlet_kl,
    emission_log_likelihood,
    forward_backward,
    hmm_local_step,
)
from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF

N_FREQUENCIES = 40
BUMP_SD, AMPLITUDE, BACKGROUND = 3.0, 20.0, 0.5


def _bumps(centres: list[int]) -> np.ndarray:
    """Gaussian spectral patterns, (N_FREQUENCIES, len(centres))."""
    frequency = np.arange(N_FREQUENCIES)[:, None]
    return AMPLITUDE * np.exp(-0.5 * ((frequency - np.array(centres)) / BUMP_SD) ** 2)


def _markov_path(rng, patterns, transition, n_times) -> list[int]:
    state = int(rng.integers(len(patterns)))
    path = []
    for _ in range(n_times):
        path.append(patterns[state])
        state = int(rng.choice(len(patterns), p=transition[state]))
    return path


def planted_classes(
    rng: np.random.Generator, per_class: int = 20, n_times: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Spectrograms of 4 patterns switched by 3 class-specific Markov chains; shuffled."""
    bumps = _bumps([6, 16, 26, 34])
    chains = [
        ([0, 1], np.array([[0.95, 0.05], [0.05, 0.95]])),  # sticky
        ([0, 1], np.array([[0.05, 0.95], [0.95, 0.05]])),  # fast alternation
        ([2, 3], np.array([[0.7, 0.3], [0.7, 0.3]])),  # 2 and 3 at 0.7 / 0.3
    ]
    spectrograms, labels = [], []
    for label, (patterns, transition) in enumerate(chains):
        for _ in range(per_class):
            path = _markov_path(rng, patterns, transition, n_times)
            spectrograms.append(rng.poisson(bumps[:, path] + BACKGROUND))
            labels.append(label)
    order = rng.permutation(len(labels))
    return np.array(spectrograms, dtype=np.float64)[order], np.array(labels)[order]


def planted_patterns(
    rng: np.random.Generator, n_events: int = 30, n_times: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Spectrograms mixing 3 patterns at random, and the patterns."""
    bumps = _bumps([8, 20, 32])
    states = rng.integers(3, size=(n_events, n_times))
    X = rng.poisson(bumps[:, states].transpose(1, 0, 2) + BACKGROUND).astype(np.float64)
    return X, bumps


@pytest.fixture(scope="module")
def three_patterns() -> tuple[np.ndarray, np.ndarray]:
    return planted_patterns(np.random.default_rng(11))


# --- planted truth ---------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["specufex", "default"])
def test_planted_classes_are_recovered(compat: str) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    X, labels = planted_classes(np.random.default_rng(3))
    if compat == "specufex":
        # the reference's usage: fit over seeded permutations, then one sequence per call
        order_rng = np.random.default_rng(1)
        nmf = BayesianNonparametricNMF(X.shape, 8, compat="specufex", random_state=0)
        for _ in range(10):
            nmf.fit(X[order_rng.permutation(len(X))])
        V = nmf.transform(X)
        hmm = BayesianHMM(nmf.num_pat, nmf.gain, 5, compat="specufex", random_state=0)
        for _ in range(40):  # ARI 1.0 from 30 calls on for six data seeds
            hmm.fit(V[order_rng.integers(len(V))][None])
    else:
        nmf = BayesianNonparametricNMF(X.shape, 8, batch_size=10, max_steps=100, random_state=0)
        V = nmf.fit(X).transform(X)
        hmm = BayesianHMM(nmf.num_pat, nmf.gain, 5, batch_size=10, max_steps=30, random_state=0)
        hmm.fit(V)
    prints, _, _ = hmm.transform(V)
    predicted = KMeans(3, n_init=10, random_state=0).fit_predict(prints.reshape(len(X), -1))
    assert adjusted_rand_score(labels, predicted) >= 0.9


def _best_cosine(truth: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """For every planted pattern, its best cosine similarity to a fitted column."""
    truth = truth / np.linalg.norm(truth, axis=0)
    fitted = fitted / np.linalg.norm(fitted, axis=0)
    return (truth.T @ fitted).max(axis=1)


def test_unused_patterns_are_pruned(three_patterns) -> None:
    X, bumps = three_patterns
    model = BayesianNonparametricNMF(X.shape, 20, batch_size=10, max_steps=200, random_state=0)
    model.fit(X)
    assert model.num_pat <= 12
    assert model.W1.shape == model.W2.shape == (N_FREQUENCIES, model.num_pat)
    assert model.A1.shape == model.A2.shape == (1, model.num_pat)
    assert np.all(model.EA > 1e-3)
    assert np.all(_best_cosine(bumps, model.EW) > 0.9)
    # the surviving patterns are sorted by the frequency of their peak
    assert np.all(np.diff(np.argmax(model.EW, axis=0)) >= 0)


# --- ELBO ------------------------------------------------------------------------------


def test_nmf_full_batch_elbo_rises(three_patterns) -> None:
    X, _ = three_patterns
    model = BayesianNonparametricNMF(
        X.shape, 6, batch_size=len(X), max_steps=25, step_size=1.0, anneal=False, random_state=0
    )
    model.fit(X)
    elbo = np.array(model.elbo_)
    assert len(elbo) == 25
    assert np.all(np.diff(elbo) >= -1e-9 * np.abs(elbo[1:]))
    assert elbo[-1] > elbo[0]


def _hmm_elbo(U, B1, B2, A, Ppi, tau_transition, tau_initial, tau1=0.1, tau2=0.1) -> float:
    """ELBO of q(B) and per-sequence q(A), q(pi), with q(states) optimal given them."""
    log_emission = emission_log_likelihood(U, digamma(B1) - np.log(B2), B1 / B2)
    column_max = log_emission.max(axis=1, keepdims=True)
    transition = np.exp(digamma(A) - digamma(A.sum(axis=-1))[..., None])
    initial = np.exp(digamma(Ppi) - digamma(Ppi.sum(axis=-1, keepdims=True)))
    posterior = forward_backward(np.exp(log_emission - column_max), transition, initial)
    local = (
        posterior.log_evidence
        + column_max.sum(axis=(1, 2))
        - dirichlet_kl(A, tau_transition).sum(axis=-1)
        - dirichlet_kl(Ppi, tau_initial)
    )
    return float(local.sum() - hmm_global_kl(B1, B2, tau1, tau2))


@pytest.fixture(scope="module")
def hmm_problem(three_patterns):
    X, _ = three_patterns
    nmf = BayesianNonparametricNMF(X.shape, 6, batch_size=len(X), max_steps=20, random_state=0)
    V = nmf.fit(X).transform(X)
    return V, nmf.gain


def test_hmm_local_elbo_rises_with_every_inner_iteration(hmm_problem) -> None:
    """For fixed q(B), each inner iteration is a coordinate ascent step of the ELBO.

    The recorded full-batch HMM ELBO need not rise step after step: q(A), q(pi) restart
    from ones at every step and can settle in a worse local optimum for the new q(B)
    than the previous step's posterior. What does hold is checked here and below.
    """
    V, gain = hmm_problem
    model = BayesianHMM(len(gain), gain, 4, random_state=0)
    model.fit(V)  # a few minibatch steps: a q(B) that is informative but not converged
    U = V * gain[:, None]
    values = []
    for n_iter in range(1, 9):
        local = hmm_local_step(
            U, model.ElnB, model.EB, tau_initial=model.tauPpi, tau_transition=model.tauA,
            n_iter=n_iter,
        )  # fmt: skip
        values.append(
            _hmm_elbo(U, model.B1, model.B2, local.transition, local.initial, model.tauA,
                      model.tauPpi)
        )  # fmt: skip
    values = np.array(values)
    assert np.all(np.diff(values) >= -1e-9 * np.abs(values[1:]))
    assert values[-1] > values[0]


def test_hmm_full_batch_update_maximises_elbo_for_fixed_local_posterior(hmm_problem) -> None:
    """With step size 1 and the full batch, the new q(B) beats the old one and any
    perturbation of it on the ELBO terms that depend on q(B)."""
    V, gain = hmm_problem
    model = BayesianHMM(len(gain), gain, 4, batch_size=len(V), step_size=1.0, random_state=0)
    for _ in range(3):
        model.partial_fit(V)
    U = V * gain[:, None]
    local = hmm_local_step(
        U, model.ElnB, model.EB, tau_initial=model.tauPpi, tau_transition=model.tauA
    )
    gam = local.state_probability

    def emission_terms(B1: np.ndarray, B2: np.ndarray) -> float:
        expected = np.einsum(
            "nst,nst->", gam, emission_log_likelihood(U, digamma(B1) - np.log(B2), B1 / B2)
        )
        return float(expected - hmm_global_kl(B1, B2, model.tau1, model.tau2))

    before = emission_terms(model.B1, model.B2)
    model.partial_fit(V)
    after = emission_terms(model.B1, model.B2)
    assert after >= before
    rng = np.random.default_rng(5)
    for _ in range(5):
        factor1 = np.exp(0.05 * rng.standard_normal(model.B1.shape))
        factor2 = np.exp(0.05 * rng.standard_normal(model.B2.shape))
        assert emission_terms(model.B1 * factor1, model.B2 * factor2) < after


# --- invariants of the driver ----------------------------------------------------------


def _fit_both(X: np.ndarray, dtype, random_state: int = 0):
    nmf = BayesianNonparametricNMF(
        X.shape, 6, batch_size=10, max_steps=20, random_state=random_state, dtype=dtype
    )
    V = nmf.fit(X).transform(X)
    hmm = BayesianHMM(
        nmf.num_pat, nmf.gain, 4, batch_size=10, max_steps=10, random_state=random_state,
        dtype=dtype,
    )  # fmt: skip
    return nmf, V, hmm, hmm.fit(V).transform(V)


def test_float32_is_close_to_float64(three_patterns) -> None:
    X, _ = three_patterns
    nmf64, V64, hmm64, outputs64 = _fit_both(X, np.float64)
    nmf32, V32, hmm32, outputs32 = _fit_both(X, np.float32)
    assert V32.dtype == np.float32 and outputs32[0].dtype == np.float32
    assert nmf32.num_pat == nmf64.num_pat
    assert_allclose(nmf32.EW, nmf64.EW, rtol=1e-3, atol=1e-3 * nmf64.EW.max())
    assert_allclose(V32, V64, rtol=1e-3, atol=1e-3 * V64.max())
    assert_allclose(hmm32.EB, hmm64.EB, rtol=1e-3, atol=1e-3 * hmm64.EB.max())
    # probabilities and fingerprints: tiny entries carry no relative precision in float32
    for out32, out64 in zip(outputs32, outputs64, strict=True):
        assert_allclose(out32, out64, rtol=1e-3, atol=1e-3 * np.abs(out64).max())


def test_same_random_state_gives_identical_bits(three_patterns) -> None:
    X, _ = three_patterns
    first = _fit_both(X, np.float64, random_state=7)
    second = _fit_both(X, np.float64, random_state=7)
    other = _fit_both(X, np.float64, random_state=8)
    for name in ("W1", "W2", "A1", "A2"):
        assert_array_equal(getattr(first[0], name), getattr(second[0], name))
    assert first[0].elbo_ == second[0].elbo_
    assert_array_equal(first[1], second[1])
    assert_array_equal(first[2].B1, second[2].B1)
    assert_array_equal(first[2].B2, second[2].B2)
    for out_first, out_second in zip(first[3], second[3], strict=True):
        assert_array_equal(out_first, out_second)
    assert not np.array_equal(first[0].W1, other[0].W1)  # the seed matters


def test_nmf_full_batch_fit_equals_partial_fit_chain(three_patterns) -> None:
    X, _ = three_patterns
    settings = dict(batch_size=len(X), max_steps=6, random_state=2)
    fitted = BayesianNonparametricNMF(X.shape, 10, **settings).fit(X)
    chained = BayesianNonparametricNMF(X.shape, 10, **settings)
    for _ in range(6):
        chained.partial_fit(X)
    chained.sort_patterns()  # fit sorts at its end, partial_fit does not
    for name in ("W1", "W2", "A1", "A2"):
        assert_array_equal(getattr(fitted, name), getattr(chained, name))
    assert fitted.step == chained.step == 5
    assert fitted.elbo_ == chained.elbo_


def test_hmm_full_batch_fit_equals_partial_fit_chain(hmm_problem) -> None:
    V, gain = hmm_problem
    settings = dict(batch_size=len(V), max_steps=4, random_state=2)
    fitted = BayesianHMM(len(gain), gain, 4, **settings).fit(V)
    chained = BayesianHMM(len(gain), gain, 4, **settings)
    for _ in range(4):
        chained.partial_fit(V)
    chained.sort_states()
    assert_array_equal(fitted.B1, chained.B1)
    assert_array_equal(fitted.B2, chained.B2)
    assert fitted.step == chained.step == 4
    assert fitted.elbo_ == chained.elbo_


def test_statistics_of_another_shape_are_refused(three_patterns) -> None:
    X, _ = three_patterns
    nmf = BayesianNonparametricNMF(X.shape, 6, random_state=0)
    with pytest.raises(ValueError, match=r"statistics of shape \(40, 5\) for a model of shape"):
        nmf.apply_statistics(NMFStatistics.zeros(N_FREQUENCIES, 5))
    hmm = BayesianHMM(6, np.ones(6), 4, random_state=0)
    with pytest.raises(ValueError, match=r"statistics of shape \(3, 6\) for a model of shape"):
        hmm.apply_statistics(HMMStatistics.zeros(3, 6))
    assert nmf.step == -1 and hmm.step == 0  # nothing was applied


# --- input errors ----------------------------------------------------------------------


@pytest.fixture
def fitted_nmf(three_patterns) -> BayesianNonparametricNMF:
    X, _ = three_patterns
    return BayesianNonparametricNMF(X.shape, 6, batch_size=10, max_steps=2, random_state=0).fit(X)


def test_negative_values_name_the_spectrograms(three_patterns, fitted_nmf) -> None:
    X = three_patterns[0].copy()
    X[[3, 17], 5, 2] = -1.0
    for method in (fitted_nmf.fit, fitted_nmf.transform, fitted_nmf.partial_fit):
        with pytest.raises(ValueError, match=r"negative values in spectrogram 3, 17\b"):
            method(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_spectrogram(three_patterns, fitted_nmf, bad) -> None:
    X = three_patterns[0].copy()
    X[8, 0, 0] = bad
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in spectrogram 8"):
        fitted_nmf.transform(X)


def test_wrong_ndim_and_sizes(three_patterns, fitted_nmf) -> None:
    X = three_patterns[0]
    with pytest.raises(ValueError, match=r"expected a 3-d array .* got ndim=2"):
        fitted_nmf.transform(X[0])
    with pytest.raises(
        ValueError, match="frequency axis has 39 entries, the model was fitted with 40"
    ):
        fitted_nmf.transform(X[:, :39])
    with pytest.raises(ValueError, match=r"empty input of shape \(0, 40, 30\)"):
        fitted_nmf.transform(X[:0])
    hmm = BayesianHMM(fitted_nmf.num_pat, fitted_nmf.gain, 3, random_state=0)
    with pytest.raises(ValueError, match=f"pattern axis has 2 entries, .* {fitted_nmf.num_pat}"):
        hmm.fit(np.ones((4, 2, 10)))


def test_unconvertible_dtypes_are_refused(fitted_nmf) -> None:
    with pytest.raises(ValueError, match="dtype <U3 cannot be converted"):
        fitted_nmf.transform(np.full((1, N_FREQUENCIES, 3), "abc"))
    objects = np.empty((1, N_FREQUENCIES, 3), dtype=object)
    objects[...] = {"a": 1}
    with pytest.raises(ValueError, match="dtype object cannot be converted"):
        fitted_nmf.transform(objects)


def test_complex_input_is_refused_not_truncated(fitted_nmf) -> None:
    """Complex spectra must be refused, not silently cast to their real part."""
    spectra = np.ones((1, N_FREQUENCIES, 3), dtype=complex) * (1 + 2j)
    with pytest.raises(ValueError, match="complex values; pass magnitudes"):
        fitted_nmf.transform(spectra)


def test_numeric_strings_and_ints_are_accepted(three_patterns, fitted_nmf) -> None:
    X = three_patterns[0][:2]
    expected = fitted_nmf.transform(X)
    assert_array_equal(fitted_nmf.transform(X.astype(np.int64)), expected)
    assert_array_equal(fitted_nmf.transform(X.astype(str)), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compat": "matlab"}, r"compat must be one of \('default', 'specufex'\), got 'matlab'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
        ({"compat": "specufex", "batch_size": 4}, "compat='specufex' steps through the data"),
        ({"compat": "specufex", "max_steps": 4}, "compat='specufex' steps through the data"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"step_size": 1.5}, r"step_size must be in \(0, 1\]"),
        ({"tol": -1.0}, "tol must be a nonnegative number or None, got -1.0"),
        ({"dtype": np.int32}, "dtype must be float32 or float64"),
        ({"random_state": -3}, "random_state must be a nonnegative int"),
    ],
)
def test_bad_settings_are_refused(kwargs, message) -> None:
    # checked when a fit starts (the initial state's own arguments at construction)
    X = np.ones((5, N_FREQUENCIES, 7))
    with pytest.raises(ValueError, match=message):
        BayesianNonparametricNMF(X.shape, 4, **kwargs).fit(X)
    with pytest.raises(ValueError, match=message):
        BayesianHMM(4, np.ones(4), 3, **kwargs).fit(np.ones((5, 4, 7)))


def test_bad_model_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"X_shape must be \(n_events, n_frequencies, n_times\)"):
        BayesianNonparametricNMF((N_FREQUENCIES, 7), 4)
    with pytest.raises(ValueError, match="num_pat must be a positive integer, got 0"):
        BayesianNonparametricNMF((5, N_FREQUENCIES, 7), 0)
    with pytest.raises(
        ValueError, match=r"gain must be 4 finite nonnegative numbers, got shape \(3,\)"
    ):
        BayesianHMM(4, np.ones(3), 3)
    with pytest.raises(ValueError, match="gain must be 4 finite nonnegative numbers"):
        BayesianHMM(4, [1.0, np.nan, 1.0, 1.0], 3)


def _broken_nmf(X: np.ndarray, bad: float) -> BayesianNonparametricNMF:
    model = BayesianNonparametricNMF(X.shape, 6, batch_size=10, max_steps=3, random_state=0)
    model.W2[:, 3] = bad
    return model


def _broken_hmm(V: np.ndarray, gain: np.ndarray, bad: float) -> BayesianHMM:
    model = BayesianHMM(
        len(gain), gain, 4, batch_size=10, max_steps=3, init="random", random_state=0
    )
    model.B2[2, 1] = bad
    return model


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [0.0, np.nan])
def test_non_finite_values_inside_the_iterations_raise(three_patterns, hmm_problem, bad) -> None:
    """A broken column of the variational state stops the fit at the step where it shows,
    instead of returning NaN, and leaves the state as it was."""
    X, _ = three_patterns
    nmf = _broken_nmf(X, bad)
    with pytest.raises(ValueError, match=r"NMF: non-finite values in \w+ at step 0, pattern"):
        nmf.fit(X)
    assert nmf.step == -1 and not nmf.elbo_
    V, gain = hmm_problem
    hmm = _broken_hmm(V, gain, bad)
    with pytest.raises(ValueError, match=r"HMM: non-finite values in \w+ at step 0"):
        hmm.fit(V)
    assert hmm.step == 0 and not hmm.elbo_


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [0.0, np.nan])
def test_non_finite_error_names_the_broken_pattern(three_patterns, hmm_problem, bad) -> None:
    """The message must point at the column that went bad (pattern 3 of the NMF, column 1
    of q(B)), not at every pattern its NaN spread to inside the local step."""
    X, _ = three_patterns
    with pytest.raises(ValueError, match=r"at step 0, patterns \[3\]$"):
        _broken_nmf(X, bad).fit(X)
    V, gain = hmm_problem
    with pytest.raises(ValueError, match=r"at step 0, \w+ \[1\]$"):
        _broken_hmm(V, gain, bad).fit(V)
