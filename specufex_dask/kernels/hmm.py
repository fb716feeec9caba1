"""Batched local step of the Bayesian HMM and fingerprints (ALGORITHM.md sections 2 and 3).

Every function works on a batch of sequences at once. The time recursion of the
forward-backward pass is inherently sequential and its steps are tiny (S x S), so in
NumPy its cost would be call overhead and temporaries; it is compiled instead (Numba),
with the sequences as the innermost axis so that each step is vectorised across them.

Symbols follow ALGORITHM.md: ``U`` (n, K, M) the gain-weighted activations, ``EB``,
``ElnB`` (S, K) the emission rates, ``A`` (n, S, S) and ``Ppi`` (n, S) the per-sequence
Dirichlet parameters, ``gam`` (n, S, M) the state probabilities. No Dask, xarray or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

from specufex_dask.common import spans

from .special import digamma

__all__ = [
    "HMMLocalResult",
    "dirichlet_kl",
    "emission_log_likelihood",
    "fingerprints",
    "forward_backward",
    "hmm_local_step",
]


def emission_log_likelihood(
    U: NDArray[Any], log_rate: NDArray[Any], rate: NDArray[Any]
) -> NDArray[Any]:
    """``sum_k ElnB[j, k] U[k, t] - sum_k EB[j, k]`` for every sequence: (n, S, M).

    The term ``-ln Gamma(U + 1)`` is the same for every state and is left out.
    """
    emission: NDArray[Any] = np.matmul(log_rate, U) - rate.sum(axis=1)[None, :, None]
    return emission


def _expected_transition(A: NDArray[Any], compat: bool) -> NDArray[Any]:
    """``exp(E[ln a])`` of Dirichlet rows, sequences last: A is (S, S, n), rows ``A[i]``.

    ``compat=True`` reproduces the reference, which subtracts the digamma of the row
    sums along the wrong axis (ALGORITHM.md 2c.1).
    """
    row_total = digamma(A.sum(axis=1))  # (S, n): state i's row
    row_digamma = row_total[None, :, :] if compat else row_total[:, None, :]
    transition: NDArray[Any] = np.exp(digamma(A) - row_digamma)
    return transition


def _expected_initial(Ppi: NDArray[Any]) -> NDArray[Any]:
    """``exp(E[ln pi])``, sequences last: Ppi is (S, n)."""
    initial: NDArray[Any] = np.exp(digamma(Ppi) - digamma(Ppi.sum(axis=0)))
    return initial


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

    state_probability: NDArray[Any]
    transition_counts: NDArray[Any]
    log_evidence: NDArray[Any]


@numba.njit(cache=True, nogil=True)
def _forward_backward_lanes(
    emission: NDArray[Any], transition: NDArray[Any], initial: NDArray[Any], compat: bool
) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.float64]]:  # pragma: no cover
    """The scaled forward-backward recursion with the sequences as the last axis.

    ``emission`` (M, S, n), ``transition`` (S, S, n) and ``initial`` (S, n) hold one
    sequence per lane of the last axis, so that every inner loop runs over sequences:
    the compiler vectorises it across them, and a sequence's arithmetic is the same
    whatever else shares its batch (its results are bit-for-bit independent of the
    batch). Returns ``gam`` (M, S, n), ``sum_t xi_t`` (S, S, n) and the log evidence (n).
    """
    M, S, n = emission.shape
    alpha = np.empty((M, S, n), emission.dtype)
    predicted = np.zeros((M, S, n), emission.dtype)  # (a^T alpha_{t-1})[j], t >= 1
    beta = np.empty((M, S, n), emission.dtype)
    weighted = np.empty((S, n), emission.dtype)
    total = np.empty(n, emission.dtype)
    log_evidence = np.zeros(n, np.float64)
    for s in range(S):
        for k in range(n):
            alpha[0, s, k] = initial[s, k] * emission[0, s, k]
    # The first column stays unnormalised as in the original; its sum still enters the
    # evidence through the next normaliser.
    for t in range(1, M):
        for i in range(S):
            for j in range(S):
                for k in range(n):
                    predicted[t, j, k] += alpha[t - 1, i, k] * transition[i, j, k]
        total[:] = 0.0
        for j in range(S):
            for k in range(n):
                alpha[t, j, k] = predicted[t, j, k] * emission[t, j, k]
                total[k] += alpha[t, j, k]
        for j in range(S):
            for k in range(n):
                alpha[t, j, k] /= total[k]
        for k in range(n):
            log_evidence[k] += np.log(total[k])
    if M == 1:
        total[:] = 0.0
        for s in range(S):
            for k in range(n):
                total[k] += alpha[0, s, k]
        for k in range(n):
            log_evidence[k] += np.log(total[k])

    beta[M - 1] = 1.0
    if compat:
        beta[: M - 1] = 1.0 / S
    else:
        for t in range(M - 2, -1, -1):
            for j in range(S):
                for k in range(n):
                    weighted[j, k] = beta[t + 1, j, k] * emission[t + 1, j, k]
            beta[t] = 0.0
            total[:] = 0.0
            for i in range(S):
                for j in range(S):
                    for k in range(n):
                        beta[t, i, k] += transition[i, j, k] * weighted[j, k]
                for k in range(n):
                    total[k] += beta[t, i, k]
            for i in range(S):
                for k in range(n):
                    beta[t, i, k] /= total[k]

    state_probability = np.empty((M, S, n), emission.dtype)
    for t in range(M):
        total[:] = 0.0
        for s in range(S):
            for k in range(n):
                state_probability[t, s, k] = alpha[t, s, k] * beta[t, s, k]
                total[k] += state_probability[t, s, k]
        for s in range(S):
            for k in range(n):
                state_probability[t, s, k] /= total[k]

    # xi_t[i, j] = a[i, j] alpha[i, t-1] w[j, t] / norm_t, w_t = beta_t e_t and
    # norm_t = alpha_{t-1}^T a w_t = sum_j predicted[j, t] w[j, t]
    pair_sum = np.zeros((S, S, n), emission.dtype)
    scaled = np.empty((S, n), emission.dtype)
    for t in range(1, M):
        total[:] = 0.0
        for j in range(S):
            for k in range(n):
                weighted[j, k] = beta[t, j, k] * emission[t, j, k]
                total[k] += predicted[t, j, k] * weighted[j, k]
        for i in range(S):
            for k in range(n):
                scaled[i, k] = alpha[t - 1, i, k] / total[k]
        for i in range(S):
            for j in range(S):
                for k in range(n):
                    pair_sum[i, j, k] += scaled[i, k] * weighted[j, k]
    for i in range(S):
        for j in range(S):
            for k in range(n):
                pair_sum[i, j, k] *= transition[i, j, k]
    return state_probability, pair_sum, log_evidence


def _lanes(array: NDArray[Any], axes: tuple[int, ...]) -> NDArray[Any]:
    """``array`` transposed to ``axes`` and made contiguous (sequences last)."""
    return np.ascontiguousarray(array.transpose(axes))


def forward_backward(
    emission: NDArray[Any],
    transition: NDArray[Any],
    initial: NDArray[Any],
    *,
    compat: bool = False,
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
    dtype = np.result_type(emission, transition, initial)
    gam, pair_sum, log_evidence = _forward_backward_lanes(
        _lanes(emission.astype(dtype, copy=False), (2, 1, 0)),
        _lanes(transition.astype(dtype, copy=False), (1, 2, 0)),
        _lanes(initial.astype(dtype, copy=False), (1, 0)),
        compat,
    )
    return ForwardBackward(_lanes(gam, (2, 1, 0)), _lanes(pair_sum, (2, 0, 1)), log_evidence)


def dirichlet_kl(concentration: NDArray[Any], prior: float) -> NDArray[Any]:
    """KL( Dir(concentration) || Dir(prior, ..., prior) ) over the last axis."""
    total = concentration.sum(axis=-1)
    size = concentration.shape[-1]
    kl: NDArray[Any] = (
        gammaln(total)
        - gammaln(concentration).sum(axis=-1)
        - gammaln(size * prior)
        + size * gammaln(prior)
        + ((concentration - prior) * (digamma(concentration) - digamma(total)[..., None])).sum(
            axis=-1
        )
    )
    return kl


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

    state_probability: NDArray[Any]
    transition: NDArray[Any]
    initial: NDArray[Any]
    emission_counts: NDArray[Any]
    state_counts: NDArray[Any]
    elbo_per_sequence: NDArray[Any]


_RESULT_FIELDS = tuple(field.name for field in fields(HMMLocalResult))
LANE_BLOCK = 64  # sequences per compiled pass: its (M, S, n) arrays stay in the L2 cache


def hmm_local_step(
    U: NDArray[Any],
    log_rate: NDArray[Any],
    rate: NDArray[Any],
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
    if n > LANE_BLOCK:
        # Sequences are independent: blocks keep the recursion's arrays in cache.
        parts = [
            hmm_local_step(
                U[block], log_rate, rate, tau_initial=tau_initial,
                tau_transition=tau_transition, n_iter=n_iter, compat=compat,
            )
            for block in spans(n, LANE_BLOCK)
        ]  # fmt: skip
        return HMMLocalResult(
            *(np.concatenate([getattr(part, name) for part in parts]) for name in _RESULT_FIELDS)
        )
    S = rate.shape[0]
    dtype = U.dtype
    log_emission = emission_log_likelihood(U, log_rate.astype(dtype), rate.astype(dtype))
    column_max = log_emission.max(axis=1, keepdims=True)
    emission = np.exp(log_emission - column_max)
    # sequences last through the iterations: see _forward_backward_lanes
    emission = _lanes(emission, (2, 1, 0))
    A = np.ones((S, S, n), dtype=dtype)
    Ppi = np.ones((S, n), dtype=dtype)
    for _ in range(n_iter):
        used_A, used_Ppi = A, Ppi
        gam, pair_sum, log_evidence = _forward_backward_lanes(
            emission, _expected_transition(A, compat), _expected_initial(Ppi), compat
        )
        Ppi = tau_initial + gam[0]
        A = tau_transition + pair_sum
    gam = _lanes(gam, (2, 1, 0))
    A = _lanes(A, (2, 0, 1))
    Ppi = _lanes(Ppi, (1, 0))
    # The bound of the last pass: its evidence with the Dirichlets that produced it.
    elbo = log_evidence + column_max.sum(axis=(1, 2))
    elbo -= dirichlet_kl(_lanes(used_A, (2, 0, 1)), tau_transition).sum(axis=-1)
    elbo -= dirichlet_kl(_lanes(used_Ppi, (1, 0)), tau_initial)
    return HMMLocalResult(
        state_probability=gam,
        transition=A,
        initial=Ppi,
        emission_counts=np.matmul(gam, U.transpose(0, 2, 1)),
        state_counts=gam.sum(axis=2),
        elbo_per_sequence=elbo,
    )


def fingerprints(
    transition: NDArray[Any],
    initial: NDArray[Any],
    *,
    tau_initial: float,
    tau_transition: float,
    horizon: int = 100,
) -> NDArray[Any]:
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
    guide: NDArray[Any] = v[:, :, None] * np.sqrt(Q)
    return guide
