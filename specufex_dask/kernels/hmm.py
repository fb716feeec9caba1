"""Batched local step of the Bayesian HMM and fingerprints (ALGORITHM.md sections 2 and 3).

Every function works on a batch of sequences at once: the time recursion of the
forward-backward pass is a Python loop over time steps, each step a batched
matrix-vector product over all sequences, so its cost is shared by the batch.

Symbols follow ALGORITHM.md: ``U`` (n, K, M) the gain-weighted activations, ``EB``,
``ElnB`` (S, K) the emission rates, ``A`` (n, S, S) and ``Ppi`` (n, S) the per-sequence
Dirichlet parameters, ``gam`` (n, S, M) the state probabilities. Plain NumPy/SciPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import digamma, gammaln

__all__ = [
    "HMMLocalResult",
    "dirichlet_kl",
    "emission_log_likelihood",
    "fingerprints",
    "forward_backward",
    "hmm_local_step",
]


def emission_log_likelihood(U: NDArray, log_rate: NDArray, rate: NDArray) -> NDArray:
    """``sum_k ElnB[j, k] U[k, t] - sum_k EB[j, k]`` for every sequence: (n, S, M).

    The term ``-ln Gamma(U + 1)`` is the same for every state and is left out.
    """
    return np.matmul(log_rate, U) - rate.sum(axis=1)[None, :, None]


def _expected_transition(A: NDArray, compat: bool) -> NDArray:
    """``exp(E[ln a])`` of the rows of Dirichlet parameters A (n, S, S).

    ``compat=True`` reproduces the reference, which subtracts the digamma of the row
    sums along the wrong axis (ALGORITHM.md 2c.1).
    """
    row_total = digamma(A.sum(axis=-1))
    if compat:
        return np.exp(digamma(A) - row_total[:, None, :])
    return np.exp(digamma(A) - row_total[:, :, None])


def _expected_initial(Ppi: NDArray) -> NDArray:
    return np.exp(digamma(Ppi) - digamma(Ppi.sum(axis=-1, keepdims=True)))


@dataclass(frozen=True)
class ForwardBackward:
    """Posterior of one forward-backward pass for a batch of sequences.

    Attributes
    ----------
    state_probability : ndarray of shape (n, S, M)
    transition_counts : ndarray of shape (n, S, S)
        ``sum_{t>=1} xi_t``.
    log_evidence : ndarray of shape (n,)
        ``ln`` of the sum over paths with the sub-normalised parameters
        (relative to the per-column maximum removed from the emissions).
    """

    state_probability: NDArray
    transition_counts: NDArray
    log_evidence: NDArray


def forward_backward(
    emission: NDArray, transition: NDArray, initial: NDArray, *, compat: bool = False
) -> ForwardBackward:
    """Scaled forward-backward pass of many sequences (ALGORITHM.md 2a).

    Parameters
    ----------
    emission : ndarray of shape (n, S, M)
        Emission likelihoods ``e`` (already scaled per column).
    transition : ndarray of shape (n, S, S)
        ``a[i, j]``, from state i to state j.
    initial : ndarray of shape (n, S)
    compat : bool, default=False
        Reproduce the reference's backward pass, whose beta is constant, so that the
        state probabilities are the filtered ones (ALGORITHM.md 2c.2).

    Returns
    -------
    ForwardBackward
    """
    n, S, M = emission.shape
    dtype = emission.dtype
    # Time-major copies keep every step's slice contiguous; the S x S products of many
    # sequences are one einsum rather than one BLAS call per sequence.
    e = np.ascontiguousarray(emission.transpose(2, 0, 1))  # (M, n, S)
    alpha = np.empty((M, n, S), dtype=dtype)
    predicted = np.empty((M, n, S), dtype=dtype)  # (a^T alpha_{t-1})[j], t >= 1
    log_evidence = np.zeros(n, dtype=np.float64)
    alpha[0] = initial * e[0]
    # The first column stays unnormalised as in the original; its sum still enters the
    # evidence through the next normaliser.
    for t in range(1, M):
        prediction = np.einsum("ni,nij->nj", alpha[t - 1], transition, out=predicted[t])
        column = np.multiply(prediction, e[t], out=alpha[t])
        total = column.sum(axis=1)
        log_evidence += np.log(total)
        column /= total[:, None]
    if M == 1:
        log_evidence += np.log(alpha[0].sum(axis=1))

    beta = np.empty((M, n, S), dtype=dtype)
    beta[M - 1] = 1.0
    if compat:
        beta[: M - 1] = 1.0 / S
    else:
        for t in range(M - 2, -1, -1):
            column = np.einsum("nij,nj->ni", transition, beta[t + 1] * e[t + 1], out=beta[t])
            column /= column.sum(axis=1, keepdims=True)

    gam = alpha * beta
    gam /= gam.sum(axis=2, keepdims=True)

    weighted = beta[1:] * e[1:]  # (M-1, n, S)
    # xi_t[i, j] = a[i, j] alpha[i, t-1] w[j, t] / norm_t, norm_t = alpha_{t-1}^T a w_t
    norm = (predicted[1:] * weighted).sum(axis=2)  # (M-1, n)
    scaled = alpha[:-1] / norm[:, :, None]
    transition_counts = transition * np.matmul(
        scaled.transpose(1, 2, 0), weighted.transpose(1, 0, 2)
    )
    gam = np.ascontiguousarray(gam.transpose(1, 2, 0))
    return ForwardBackward(gam, transition_counts, log_evidence)


def dirichlet_kl(concentration: NDArray, prior: float) -> NDArray:
    """KL( Dir(concentration) || Dir(prior, ..., prior) ) over the last axis."""
    total = concentration.sum(axis=-1)
    size = concentration.shape[-1]
    return (
        gammaln(total)
        - gammaln(concentration).sum(axis=-1)
        - gammaln(size * prior)
        + size * gammaln(prior)
        + ((concentration - prior) * (digamma(concentration) - digamma(total)[..., None])).sum(
            axis=-1
        )
    )


@dataclass(frozen=True)
class HMMLocalResult:
    """Local posteriors and sufficient statistics of a batch of sequences.

    Attributes
    ----------
    state_probability : ndarray of shape (n, S, M)
        ``gam``.
    transition : ndarray of shape (n, S, S)
        Final Dirichlet parameters ``A`` of every sequence (the reference's ``As``).
    initial : ndarray of shape (n, S)
        Final Dirichlet parameters ``Ppi``.
    emission_counts : ndarray of shape (n, S, K)
        ``Bup1 = sum_t gam U^T`` of every sequence.
    state_counts : ndarray of shape (n, S)
        ``Bup2 = sum_t gam`` of every sequence.
    elbo_per_sequence : ndarray of shape (n,)
        Each sequence's ELBO share with the last iteration's parameters (without the
        data constant): log evidence minus the Dirichlet KL terms.
    """

    state_probability: NDArray
    transition: NDArray
    initial: NDArray
    emission_counts: NDArray
    state_counts: NDArray
    elbo_per_sequence: NDArray


def hmm_local_step(
    U: NDArray,
    log_rate: NDArray,
    rate: NDArray,
    *,
    tau_initial: float,
    tau_transition: float,
    n_iter: int = 20,
    compat: bool = False,
) -> HMMLocalResult:
    """Variational local step of a batch of sequences (ALGORITHM.md 2a).

    Parameters
    ----------
    U : ndarray of shape (n, K, M)
        ``diag(gain) V`` of every sequence.
    log_rate, rate : ndarray of shape (S, K)
        ``ElnB`` and ``EB``.
    tau_initial, tau_transition : float
        Dirichlet pseudo-counts ``tauPpi`` and ``tauA``.
    n_iter : int, default=20
    compat : bool, default=False
        The reference's forward-backward (ALGORITHM.md 2c.1 and 2c.2).

    Returns
    -------
    HMMLocalResult
    """
    n, _, M = U.shape
    S = rate.shape[0]
    dtype = U.dtype
    log_emission = emission_log_likelihood(U, log_rate.astype(dtype), rate.astype(dtype))
    column_max = log_emission.max(axis=1, keepdims=True)
    emission = np.exp(log_emission - column_max)
    A = np.ones((n, S, S), dtype=dtype)
    Ppi = np.ones((n, S), dtype=dtype)
    for _ in range(n_iter):
        used_A, used_Ppi = A, Ppi
        transition = _expected_transition(A, compat)
        initial = _expected_initial(Ppi)
        posterior = forward_backward(emission, transition, initial, compat=compat)
        Ppi = tau_initial + posterior.state_probability[:, :, 0]
        A = tau_transition + posterior.transition_counts
    gam = posterior.state_probability
    # The bound of the last pass: its evidence with the Dirichlets that produced it.
    elbo = posterior.log_evidence + column_max.sum(axis=(1, 2))
    elbo -= dirichlet_kl(used_A, tau_transition).sum(axis=-1) + dirichlet_kl(used_Ppi, tau_initial)
    return HMMLocalResult(
        state_probability=gam,
        transition=A,
        initial=Ppi,
        emission_counts=np.matmul(gam, U.transpose(0, 2, 1)),
        state_counts=gam.sum(axis=2),
        elbo_per_sequence=elbo,
    )


def fingerprints(
    transition: NDArray,
    initial: NDArray,
    *,
    tau_initial: float,
    tau_transition: float,
    horizon: int = 100,
) -> NDArray:
    """S x S fingerprints from final Dirichlet parameters (ALGORITHM.md section 3).

    Parameters
    ----------
    transition : ndarray of shape (n, S, S)
    initial : ndarray of shape (n, S)
    tau_initial, tau_transition : float
        The pseudo-counts to remove (``0.01 / S`` and ``0.1 / S`` in the reference).
    horizon : int, default=100
        T of the discounted state occupancy ``p^T sum_{k<=T} (cQ)^k``, ``c = T/(T+1)``.

    Returns
    -------
    ndarray of shape (n, S, S)
        ``v[i] * sqrt(Q[i, j])``.
    """
    n, S, _ = transition.shape
    eps = np.finfo(np.float64).eps
    counts_initial = initial - tau_initial
    counts_transition = transition - (tau_transition - eps / S)
    p = counts_initial / counts_initial.sum(axis=1, keepdims=True)
    Q = counts_transition / counts_transition.sum(axis=2, keepdims=True)
    discount = horizon / (horizon + 1.0)
    cQ = discount * Q
    identity = np.broadcast_to(np.eye(S), (n, S, S))
    geometric = identity - np.linalg.matrix_power(cQ, horizon + 1)
    # v = p^T (I - cQ)^-1 (I - (cQ)^(T+1)): solve (I - cQ)^T y = p, then v = y^T geometric
    y = np.linalg.solve(np.swapaxes(identity - cQ, 1, 2), p[:, :, None])
    v = np.matmul(np.swapaxes(y, 1, 2), geometric)[:, 0, :]
    v /= v.sum(axis=1, keepdims=True)
    return v[:, :, None] * np.sqrt(Q)
