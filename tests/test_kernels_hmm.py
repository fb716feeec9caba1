"""HMM kernels against brute-force enumeration and direct sums (ALGORITHM.md 2a, 2c, 3)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats
from scipy.special import digamma

from specufex_dask.kernels.hmm import (
    LANE_BLOCK,
    dirichlet_kl,
    emission_log_likelihood,
    fingerprints,
    forward_backward,
    hmm_local_step,
)

N_SEQUENCES, N_STATES, N_TIMES, N_PATTERNS = 2, 3, 5, 4


def _path_weights(emission, transition, initial):
    """Weight of every state path: pi[s0] e[s0, 0] prod_t a[s_{t-1}, s_t] e[s_t, t]."""
    S, M = emission.shape
    paths = np.array(list(itertools.product(range(S), repeat=M)))  # (S**M, M)
    weights = initial[paths[:, 0]] * emission[paths[:, 0], 0]
    for t in range(1, M):
        weights = weights * transition[paths[:, t - 1], paths[:, t]] * emission[paths[:, t], t]
    return paths, weights


def _brute_force_smoothed(emission, transition, initial):
    """State marginals, summed pairwise transition marginals and ln(sum of weights)."""
    S, M = emission.shape
    paths, weights = _path_weights(emission, transition, initial)
    total = weights.sum()
    gam = np.zeros((S, M))
    for t in range(M):
        np.add.at(gam[:, t], paths[:, t], weights)
    pairs = np.zeros((S, S))
    for t in range(1, M):
        np.add.at(pairs, (paths[:, t - 1], paths[:, t]), weights)
    return gam / total, pairs / total, np.log(total)


def _brute_force_filtered(emission, transition, initial):
    """The reference's quantities: marginals given the data up to t only (2c.2)."""
    S, M = emission.shape
    gam = np.zeros((S, M))
    pairs = np.zeros((S, S))
    for t in range(M):
        paths, weights = _path_weights(emission[:, : t + 1], transition, initial)
        np.add.at(gam[:, t], paths[:, t], weights)
        gam[:, t] /= weights.sum()
        if t >= 1:
            step_pairs = np.zeros((S, S))
            np.add.at(step_pairs, (paths[:, t - 1], paths[:, t]), weights)
            pairs += step_pairs / weights.sum()
    return gam, pairs


@pytest.fixture
def chain(rng: np.random.Generator):
    emission = rng.uniform(0.05, 1.0, size=(N_SEQUENCES, N_STATES, N_TIMES))
    # exp(E[ln a]) of a Dirichlet is sub-normalised; the pass must not assume sums of 1
    transition = rng.uniform(0.05, 1.0, size=(N_SEQUENCES, N_STATES, N_STATES))
    initial = rng.uniform(0.05, 1.0, size=(N_SEQUENCES, N_STATES))
    return emission, transition, initial


def test_forward_backward_matches_path_enumeration(chain) -> None:
    emission, transition, initial = chain
    result = forward_backward(emission, transition, initial)
    for n in range(N_SEQUENCES):
        gam, pairs, log_total = _brute_force_smoothed(emission[n], transition[n], initial[n])
        assert_allclose(result.state_probability[n], gam, rtol=1e-10)
        assert_allclose(result.transition_counts[n], pairs, rtol=1e-10)
        assert_allclose(result.log_evidence[n], log_total, rtol=1e-10)


def test_forward_backward_single_frame(chain) -> None:
    emission, transition, initial = chain
    result = forward_backward(emission[:, :, :1], transition, initial)
    for n in range(N_SEQUENCES):
        weights = initial[n] * emission[n, :, 0]
        assert_allclose(result.state_probability[n, :, 0], weights / weights.sum(), rtol=1e-12)
        assert_allclose(result.log_evidence[n], np.log(weights.sum()), rtol=1e-12)
    assert np.all(result.transition_counts == 0.0)


def test_compat_forward_backward_is_the_filter(chain) -> None:
    emission, transition, initial = chain
    result = forward_backward(emission, transition, initial, compat=True)
    for n in range(N_SEQUENCES):
        gam, pairs = _brute_force_filtered(emission[n], transition[n], initial[n])
        assert_allclose(result.state_probability[n], gam, rtol=1e-10)
        assert_allclose(result.transition_counts[n], pairs, rtol=1e-10)


def _naive_local_step(U, log_rate, rate, tau_initial, tau_transition, n_iter):
    """ALGORITHM.md 2a for one sequence, with brute-force posteriors."""
    log_emission = log_rate @ U - rate.sum(axis=1)[:, None]
    emission = np.exp(log_emission - log_emission.max(axis=0))
    S = rate.shape[0]
    A, Ppi = np.ones((S, S)), np.ones(S)
    for _ in range(n_iter):
        transition = np.exp(digamma(A) - digamma(A.sum(axis=1))[:, None])
        initial = np.exp(digamma(Ppi) - digamma(Ppi.sum()))
        gam, pairs, _ = _brute_force_smoothed(emission, transition, initial)
        Ppi = tau_initial + gam[:, 0]
        A = tau_transition + pairs
    return gam, A, Ppi, gam @ U.T, gam.sum(axis=1)


def test_local_step_matches_naive_iterations(rng: np.random.Generator) -> None:
    U = rng.gamma(1.0, 3.0, size=(N_SEQUENCES, N_PATTERNS, N_TIMES))
    B1 = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    B2 = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    log_rate, rate = digamma(B1) - np.log(B2), B1 / B2
    tau_initial, tau_transition = 0.01 / N_STATES, 0.1 / N_STATES
    result = hmm_local_step(
        U, log_rate, rate, tau_initial=tau_initial, tau_transition=tau_transition, n_iter=6
    )
    for n in range(N_SEQUENCES):
        gam, A, Ppi, emission_counts, state_counts = _naive_local_step(
            U[n], log_rate, rate, tau_initial, tau_transition, 6
        )
        assert_allclose(result.state_probability[n], gam, rtol=1e-9)
        assert_allclose(result.transition[n], A, rtol=1e-9)
        assert_allclose(result.initial[n], Ppi, rtol=1e-9)
        assert_allclose(result.emission_counts[n], emission_counts, rtol=1e-9)
        assert_allclose(result.state_counts[n], state_counts, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_local_step_of_a_sequence_does_not_depend_on_its_batch(rng, dtype) -> None:
    """The compiled pass vectorises across sequences and runs blocks of LANE_BLOCK: a
    sequence must get the same bits alone, in a short batch and in a long one."""
    S, K, M = 6, 8, 17
    n = 2 * LANE_BLOCK + 11
    U = rng.gamma(1.0, 3.0, size=(n, K, M)).astype(dtype)
    B1 = rng.gamma(2.0, 1.0, size=(S, K))
    B2 = rng.gamma(2.0, 1.0, size=(S, K))
    log_rate, rate = digamma(B1) - np.log(B2), B1 / B2
    taus = {"tau_initial": 0.01 / S, "tau_transition": 0.1 / S}
    batch = hmm_local_step(U, log_rate, rate, **taus)
    for index, batch_slice in (
        (n - 1, slice(n - 1, n)),
        (LANE_BLOCK + 3, slice(LANE_BLOCK - 4, LANE_BLOCK + 12)),
    ):
        part = hmm_local_step(U[batch_slice], log_rate, rate, **taus)
        position = index - batch_slice.start
        for name in ("state_probability", "transition", "initial", "elbo_per_sequence"):
            assert getattr(part, name)[position].tobytes() == getattr(batch, name)[index].tobytes()
    assert batch.state_probability.dtype == dtype


def test_emission_log_likelihood_is_poisson_up_to_a_state_constant(rng) -> None:
    U = rng.poisson(2.0, size=(1, N_PATTERNS, N_TIMES)).astype(float)
    rate = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    # with a point mass q(B), E[ln B] = ln B: the Poisson log pmf up to ln U! (same per state)
    result = emission_log_likelihood(U, np.log(rate), rate)[0]
    pmf = stats.poisson.logpmf(U[0][None], rate[:, :, None]).sum(axis=1)  # (S, M)
    constant = pmf - result
    assert_allclose(constant, np.broadcast_to(constant[:1], constant.shape), rtol=1e-12)


def _fingerprint_by_direct_sum(A, Ppi, horizon=100):
    S = A.shape[0]
    eps = np.finfo(np.float64).eps
    counts_initial = Ppi - 0.01 / S
    counts_transition = A - (0.1 - eps) / S
    p = counts_initial / counts_initial.sum()
    Q = counts_transition / counts_transition.sum(axis=1, keepdims=True)
    c = horizon / (horizon + 1)
    term, occupancy = p.copy(), np.zeros(S)
    for _ in range(horizon + 1):  # p^T (cQ)^k, k = 0 .. T
        occupancy += term
        term = c * term @ Q
    v = occupancy / occupancy.sum()
    return v[:, None] * np.sqrt(Q)


def test_fingerprints_match_direct_geometric_sum(rng: np.random.Generator) -> None:
    S = 4
    counts = rng.gamma(0.5, 3.0, size=(3, S, S))
    counts[0, 1, 2] = 0.0  # a transition never taken, as in real sequences
    A = 0.1 / S + counts
    Ppi = 0.01 / S + rng.dirichlet(np.ones(S), size=3)
    result = fingerprints(A, Ppi, tau_initial=0.01 / S, tau_transition=0.1 / S)
    for n in range(3):
        assert_allclose(
            result[n], _fingerprint_by_direct_sum(A[n], Ppi[n]), rtol=1e-10, atol=1e-14
        )
    # fp[i, j]**2 = v[i]**2 Q[i, j] with Q row-stochastic and v a distribution
    assert_allclose(np.sqrt((result**2).sum(axis=2)).sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    ("concentration", "prior"), [([2.0, 3.0, 5.0], 0.5), ([1.2, 7.0, 0.9, 4.0], 0.1 / 4)]
)
def test_dirichlet_kl_matches_monte_carlo(rng, concentration, prior) -> None:
    concentration = np.array(concentration)
    q = stats.dirichlet(concentration)
    samples = q.rvs(size=200_000, random_state=rng)
    samples = samples[np.all(samples > 0, axis=1)]
    log_ratio = q.logpdf(samples.T) - stats.dirichlet(np.full(len(concentration), prior)).logpdf(
        samples.T
    )
    mean, sem = log_ratio.mean(), log_ratio.std() / np.sqrt(len(log_ratio))
    kl = dirichlet_kl(concentration, prior)
    assert abs(kl - mean) < 5 * sem
    assert sem < 0.02 * abs(mean)  # the check is sharp enough to catch a wrong term
    # batched over leading axes
    assert_allclose(dirichlet_kl(np.stack([concentration] * 2), prior), [kl, kl], rtol=1e-14)


def test_local_elbo_is_the_bound_of_the_state_behind_the_statistics(
    rng: np.random.Generator,
) -> None:
    """elbo_per_sequence must be the ELBO of one variational state: the q(A), q(pi) of the
    last pass with q(states) optimal for them (ln Z - KL). That is the state whose state
    probabilities (and so statistics) are returned; the returned A, Ppi are one update
    further, as the reference's outputs have them."""
    U = rng.gamma(1.0, 3.0, size=(N_SEQUENCES, N_PATTERNS, N_TIMES))
    B1 = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    B2 = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    log_rate, rate = digamma(B1) - np.log(B2), B1 / B2
    tau_initial, tau_transition = 0.01 / N_STATES, 0.1 / N_STATES
    kwargs = {"tau_initial": tau_initial, "tau_transition": tau_transition}
    result = hmm_local_step(U, log_rate, rate, n_iter=3, **kwargs)
    before = hmm_local_step(U, log_rate, rate, n_iter=2, **kwargs)
    log_emission = log_rate @ U - rate.sum(axis=1)[None, :, None]
    A, Ppi = before.transition, before.initial
    for n in range(N_SEQUENCES):
        transition = np.exp(digamma(A[n]) - digamma(A[n].sum(axis=1))[:, None])
        initial = np.exp(digamma(Ppi[n]) - digamma(Ppi[n].sum()))
        marginals, _, log_total = _brute_force_smoothed(
            np.exp(log_emission[n]), transition, initial
        )
        expected = log_total - dirichlet_kl(A[n], tau_transition).sum()
        expected -= dirichlet_kl(Ppi[n], tau_initial)
        assert_allclose(result.elbo_per_sequence[n], expected, rtol=1e-10)
        assert_allclose(result.state_probability[n], marginals, rtol=1e-9, atol=1e-12)
