"""NMF kernels against naive evaluations that materialise P[k, t, d] (ALGORITHM.md 1a-1c)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate, stats
from scipy.special import digamma, gammaln

from specufex_dask.inference.updates import nmf_inner_iterations
from specufex_dask.kernels import nmf
from specufex_dask.kernels.nmf import expected_log, gamma_kl, nmf_local_step, nmf_transform

N_EVENTS, N_FREQUENCIES, N_TIMES, N_PATTERNS = 3, 7, 5, 4
H01, H02 = 1.0 / N_PATTERNS, 1.0


def _responsibilities(log_basis: np.ndarray, log_activation: np.ndarray, T: float) -> np.ndarray:
    """P[k, t, d] proportional to exp((L[d, k] + ElnV[k, t]) / T), normalised over k."""
    logits = (log_basis.T[:, None, :] + log_activation[:, :, None]) / T
    weights = np.exp(logits)
    return weights / weights.sum(axis=0, keepdims=True)


def _naive_local_step(x, log_basis, basis_weight, T, n_inner):
    """One spectrogram's local step written out as in ALGORITHM.md 1a."""
    K, M = log_basis.shape[1], x.shape[1]
    rate = (H02 + basis_weight) / T
    shape = np.full((K, M), 1.0 / K)
    for i in range(n_inner):
        log_activation = digamma(shape) - (np.log(rate)[:, None] if i > 0 else 0.0)
        P = _responsibilities(log_basis, log_activation, T)
        counts = np.einsum("ktd,dt->kt", P, x)
        shape = 1.0 + (H01 + counts - 1.0) / T
    log_activation = digamma(shape) - np.log(rate)[:, None]
    P = _responsibilities(log_basis, log_activation, T)
    basis_counts = np.einsum("dt,ktd->dk", x, P)
    activation_sum = (shape / rate[:, None]).sum(axis=1)
    return shape, rate, basis_counts, activation_sum


def _naive_local_elbo(x, log_basis, basis_weight, shape, rate):
    """Expected log likelihood with P at T = 1 minus KL(q(H) || p(H)), term by term."""
    log_activation = digamma(shape) - np.log(rate)[:, None]
    P = _responsibilities(log_basis, log_activation, 1.0)
    log_joint = log_basis.T[:, None, :] + log_activation[:, :, None]  # (K, M, D)
    data = np.sum(x.T[None] * P * (log_joint - np.log(P)))
    expected_activation = shape / rate[:, None]
    expected_rate = np.sum(basis_weight[:, None] * expected_activation)
    # E_q[ln p(H)] + entropy of q(H), with the entropy from scipy
    expected_log_prior = np.sum(
        H01 * np.log(H02) - gammaln(H01) + (H01 - 1.0) * log_activation - H02 * expected_activation
    )
    entropy = np.sum(stats.gamma(shape, scale=1.0 / rate[:, None]).entropy())
    return data - expected_rate + expected_log_prior + entropy


@pytest.fixture
def problem(rng: np.random.Generator):
    X = rng.poisson(3.0, size=(N_EVENTS, N_FREQUENCIES, N_TIMES)).astype(np.float64)
    X[0, 2, :] = 0.0  # an all-zero row, as spectrogram clipping produces
    W1 = rng.gamma(2.0, 1.0, size=(N_FREQUENCIES, N_PATTERNS))
    W2 = rng.gamma(2.0, 1.0, size=(N_FREQUENCIES, N_PATTERNS))
    A1 = rng.gamma(2.0, 1.0, size=(1, N_PATTERNS))
    A2 = rng.gamma(2.0, 1.0, size=(1, N_PATTERNS))
    log_basis = expected_log(W1, W2) + expected_log(A1, A2)
    basis_weight = ((W1 / W2) * (A1 / A2)).sum(axis=0)
    return X, log_basis, basis_weight


@pytest.mark.parametrize("temperature", [1.0, 1.75])
def test_local_step_matches_naive_responsibilities(problem, temperature: float) -> None:
    X, log_basis, basis_weight = problem
    n_inner = nmf_inner_iterations(temperature)
    result = nmf_local_step(
        X, log_basis, basis_weight, h01=H01, h02=H02, temperature=temperature, n_inner=n_inner
    )
    for event, x in enumerate(X):
        shape, rate, basis_counts, activation_sum = _naive_local_step(
            x, log_basis, basis_weight, temperature, n_inner
        )
        assert_allclose(result.shape[event], shape, rtol=1e-10)
        assert_allclose(result.rate, rate, rtol=1e-10)
        assert_allclose(result.basis_counts[event], basis_counts, rtol=1e-10, atol=1e-300)
        assert_allclose(result.activation_sum[event], activation_sum, rtol=1e-10)
    # the counts redistribute the data: every column's mass goes somewhere
    assert_allclose(result.basis_counts.sum(axis=2), X.sum(axis=2), rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 1.75])
def test_local_elbo_matches_naive_evaluation(problem, temperature: float) -> None:
    X, log_basis, basis_weight = problem
    result = nmf_local_step(
        X, log_basis, basis_weight, h01=H01, h02=H02, temperature=temperature, n_inner=12
    )
    for event, x in enumerate(X):
        # the kernel's ELBO is the T = 1 bound evaluated at the q(H) it returns
        expected = _naive_local_elbo(x, log_basis, basis_weight, result.shape[event], result.rate)
        assert_allclose(result.elbo[event], expected, rtol=1e-10)


def test_local_elbo_is_a_bound_maximised_by_the_optimal_responsibilities(problem, rng) -> None:
    """Any other P gives a smaller value of the same expression (Jensen)."""
    X, log_basis, basis_weight = problem
    result = nmf_local_step(
        X, log_basis, basis_weight, h01=H01, h02=H02, temperature=1.0, n_inner=12
    )
    x, shape, rate = X[1], result.shape[1], result.rate
    log_activation = digamma(shape) - np.log(rate)[:, None]
    log_joint = log_basis.T[:, None, :] + log_activation[:, :, None]
    other = rng.dirichlet(np.ones(N_PATTERNS), size=(N_TIMES, N_FREQUENCIES)).transpose(2, 0, 1)
    data_other = np.sum(x.T[None] * other * (log_joint - np.log(other)))
    optimal = _responsibilities(log_basis, log_activation, 1.0)
    data_optimal = np.sum(x.T[None] * optimal * (log_joint - np.log(optimal)))
    assert data_other < data_optimal


def test_transform_matches_naive_responsibilities(problem) -> None:
    X, log_basis, basis_weight = problem
    activations = nmf_transform(X, log_basis, basis_weight, h01=H01, h02=H02, n_iter=5)
    rate = H02 + basis_weight
    for event, x in enumerate(X):
        shape = np.ones((N_PATTERNS, N_TIMES))
        for _ in range(5):
            log_activation = digamma(shape) - np.log(rate)[:, None]
            P = _responsibilities(log_basis, log_activation, 1.0)
            shape = H01 + np.einsum("ktd,dt->kt", P, x)
        assert_allclose(activations[event], shape / rate[:, None], rtol=1e-10)


def test_local_step_survives_extreme_log_basis(problem) -> None:
    """Shifting L by a constant leaves P unchanged; the kernel must not overflow."""
    X, log_basis, basis_weight = problem
    reference = nmf_local_step(
        X, log_basis, basis_weight, h01=H01, h02=H02, temperature=1.0, n_inner=5
    )
    shifted = nmf_local_step(
        X, log_basis + 800.0, basis_weight, h01=H01, h02=H02, temperature=1.0, n_inner=5
    )
    assert_allclose(shifted.shape, reference.shape, rtol=1e-10)
    assert_allclose(shifted.basis_counts, reference.basis_counts, rtol=1e-10)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("D", "M", "K"), [(513, 51, 75), (241, 26, 9), (12, 7, 9), (40, 17, 3)])
def test_a_spectrogram_gets_the_same_bits_in_any_batch(rng, threads, dtype, D, M, K) -> None:
    """A spectrogram's numbers must not depend on its neighbours, its position or the
    batch size, whether the products are per spectrogram or one over a block of padded
    spectrograms (odd and even frame counts; batches that end inside a block of the
    kernels' loops and span several), at one or two BLAS threads."""
    from threadpoolctl import threadpool_limits

    n = 11
    X = rng.poisson(3.0, size=(n, D, M)).astype(dtype)
    log_basis = rng.normal(-1.0, 1.0, size=(D, K))
    basis_weight = rng.gamma(2.0, 1.0, size=K)
    args = {"h01": 1.0 / K, "h02": 1.0}
    step = {"temperature": 1.0, "n_inner": 3}
    with threadpool_limits(limits=threads, user_api="blas"):
        alone = nmf_local_step(X[5:6], log_basis, basis_weight, **args, **step)
        alone_activation = nmf_transform(X[5:6], log_basis, basis_weight, **args)
        for batch in (slice(0, n), slice(4, 6), slice(5, 8), slice(1, 10), slice(2, 7)):
            position = 5 - batch.start
            local = nmf_local_step(X[batch], log_basis, basis_weight, **args, **step)
            for name in ("shape", "basis_counts", "activation_sum", "elbo"):
                assert (
                    getattr(local, name)[position].tobytes() == getattr(alone, name)[0].tobytes()
                )
            activation = nmf_transform(X[batch], log_basis, basis_weight, **args)
            assert activation[position].tobytes() == alone_activation[0].tobytes()
    assert alone.shape.dtype == dtype and np.isfinite(alone.elbo).all()


def test_block_products_agree_with_products_per_spectrogram(rng) -> None:
    """Where the products run over blocks of padded spectrograms, they give what one
    product per spectrogram gives, to rounding (an odd frame count is padded here)."""
    D, M, K = 241, 27, 75
    X = rng.poisson(3.0, size=(6, D, M)).astype(np.float64)
    log_basis = rng.normal(-1.0, 1.0, size=(D, K))
    basis_weight = rng.gamma(2.0, 1.0, size=K)
    args = {"h01": 1.0 / K, "h02": 1.0}
    blocked = nmf_local_step(X, log_basis, basis_weight, **args, temperature=1.0, n_inner=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nmf, "block_row_alignment", lambda *shape: None)
        separate = nmf_local_step(X, log_basis, basis_weight, **args, temperature=1.0, n_inner=4)
    assert_allclose(blocked.shape, separate.shape, rtol=1e-12)
    assert_allclose(blocked.basis_counts, separate.basis_counts, rtol=1e-12)
    assert_allclose(blocked.elbo, separate.elbo, rtol=1e-12)


@pytest.mark.parametrize(
    ("shape", "rate", "prior_shape", "prior_rate"),
    [(2.5, 1.5, 1.0, 1.0), (0.7, 3.0, 0.25, 1.0), (40.0, 8.0, 10.0 / 241, 1.0)],
)
def test_gamma_kl_matches_numerical_integral(shape, rate, prior_shape, prior_rate) -> None:
    q = stats.gamma(shape, scale=1.0 / rate)
    p = stats.gamma(prior_shape, scale=1.0 / prior_rate)

    # integrate in log x so that the mass near 0 of small shapes is resolved
    def integrand(log_x: float) -> float:
        x = np.exp(log_x)
        return q.pdf(x) * x * (q.logpdf(x) - p.logpdf(x))

    low, high = np.log(q.ppf(1e-14)), np.log(q.isf(1e-14))
    expected, _ = integrate.quad(integrand, low, high, limit=200, epsabs=1e-13, epsrel=1e-11)
    assert_allclose(
        gamma_kl(np.array(shape), np.array(rate), prior_shape, prior_rate), expected, rtol=1e-7
    )


def test_expected_log_matches_monte_carlo(rng: np.random.Generator) -> None:
    samples = stats.gamma(3.0, scale=1.0 / 2.0).rvs(size=400_000, random_state=rng)
    mean, sem = np.log(samples).mean(), np.log(samples).std() / np.sqrt(samples.size)
    assert abs(expected_log(np.array(3.0), np.array(2.0)) - mean) < 5 * sem
