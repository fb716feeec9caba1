"""Batched local step and transform of the Bayesian Poisson NMF (ALGORITHM.md section 1).

Everything here works on a *stack* of spectrograms ``X`` of shape ``(n, D, M)``. Columns
are independent given the global factors (ALGORITHM.md 1d), so the batch is one problem.
Every spectrogram's numbers must be the same bits whatever batch it sits in, so that
results do not depend on how events are grouped into batches, chunks and workers. The
fixed-point iterations' two products therefore run over a block of spectrograms only
where this BLAS, dtype and shape keep each row's bits wherever it sits, once every
spectrogram's frames are padded to an alignment (:func:`block_row_alignment` tries it);
elsewhere, and for the products once per step, each spectrogram gets its own.

The responsibilities ``P[k, t, d]`` are never formed. With ``E = exp(L / T)`` and
``F = exp(E[ln H] / T)`` they are ``E[d, k] F[k, t] / Z[d, t]`` with ``Z = E @ F``, so
(ALGORITHM.md 1c)

* ``sum_d P X = F * (E.T @ (X / Z))``  (patterns x times, per spectrogram)
* ``sum_t X P = E * ((X / Z) @ F.T)``  (frequencies x patterns, per spectrogram)

Symbols follow ALGORITHM.md: ``W1, W2`` (q(W) shape and rate), ``A1, A2`` (q(a)),
``V1, V2`` (q(H)), ``h01, h02`` (prior of H), ``T`` the annealing temperature.
Plain NumPy/SciPy only: no Dask, xarray or I/O here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

from specufex_dask.common import spans

from .special import digamma

__all__ = [
    "NMFLocalResult",
    "expected_log",
    "gamma_kl",
    "nmf_local_step",
    "nmf_transform",
]


def expected_log(shape: NDArray[Any], rate: NDArray[Any]) -> NDArray[Any]:
    """E[ln x] for x ~ Gamma(shape, rate): ``psi(shape) - ln(rate)``."""
    result: NDArray[Any] = digamma(shape) - np.log(rate)
    return result


def gamma_kl(
    shape: NDArray[Any],
    rate: NDArray[Any],
    prior_shape: float,
    prior_rate: float,
    digamma_shape: NDArray[Any] | None = None,
) -> NDArray[Any]:
    """Elementwise KL( Gamma(shape, rate) || Gamma(prior_shape, prior_rate) ).

    ``digamma_shape``, when the caller already has it, saves its evaluation.
    """
    if digamma_shape is None:
        digamma_shape = digamma(shape)
    kl: NDArray[Any] = (
        (shape - prior_shape) * digamma_shape
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (np.log(rate) - np.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )
    return kl


def _row_softmax_factor(
    log_values: NDArray[Any], temperature: float, axis: int, in_place: bool = False
) -> NDArray[Any]:
    """``exp(log_values / T)`` rescaled by its maximum along ``axis``.

    The scale cancels in the normalisation over patterns, and keeps ``exp`` finite.
    ``in_place`` overwrites ``log_values`` instead of allocating.
    """
    maximum = log_values.max(axis=axis, keepdims=True)
    if in_place:
        shifted = np.subtract(log_values, maximum, out=log_values)
    else:
        shifted = log_values - maximum
    if temperature != 1.0:
        shifted /= temperature
    factor: NDArray[Any] = np.exp(shifted, out=shifted)
    return factor


def _normaliser(E: NDArray[Any], F: NDArray[Any]) -> NDArray[Any]:
    """``Z = E @ F`` per spectrogram, guarded against underflow."""
    Z: NDArray[Any] = np.matmul(E, F)
    guarded: NDArray[Any] = np.maximum(Z, np.finfo(Z.dtype).tiny, out=Z)
    return guarded


@numba.njit(cache=True, nogil=True)
def _divide_by_normaliser(X: NDArray[Any], Z: NDArray[Any]) -> None:  # pragma: no cover - compiled
    """Overwrite ``Z`` with ``X / max(Z, tiny)`` (both C-contiguous, same dtype).

    The underflow guard and the division in one pass over the largest arrays of the
    iterations; NaN passes through as it would through ``np.maximum``.
    """
    data = X.reshape(-1)
    ratio = Z.reshape(-1)
    tiny = np.finfo(ratio.dtype).tiny
    for index in range(ratio.size):
        normaliser = ratio[index]
        if normaliser < tiny:
            normaliser = tiny
        ratio[index] = data[index] / normaliser


# Row alignments tried for one product over a block of spectrograms, smallest first, and
# the most padding rows an alignment may add, as a fraction of a spectrogram's frames.
ROW_ALIGNMENTS = (2, 4, 8)
MAX_ALIGNMENT_PADDING = 0.1


@functools.lru_cache(maxsize=1)
def _blas_controllers() -> tuple[Any, ...]:
    """threadpoolctl's handles of the loaded BLAS libraries (found once: 10 ms)."""
    from threadpoolctl import ThreadpoolController

    return tuple(c for c in ThreadpoolController().lib_controllers if c.user_api == "blas")


def _blas_threads() -> tuple[int, ...]:
    """The thread count of every loaded BLAS library now (a microsecond each)."""
    return tuple(controller.get_num_threads() for controller in _blas_controllers())


@functools.lru_cache(maxsize=1024)
def block_row_alignment(
    dtype: np.dtype[Any], M: int, K: int, D: int, threads: tuple[int, ...] = (1,)
) -> int | None:
    """Frames to pad a spectrogram to so that one product over a block of them is exact.

    The iterations' products ``(M, K) @ (K, D)`` and ``(M, D) @ (D, K)`` act on each
    frame's row alone, so a block of spectrograms can be one product over all their rows,
    which BLAS runs faster than one small product each (1.2-1.3x at 75 patterns in float64
    here). Whether a row's bits then depend on how many rows surround it and where it
    sits is a property of the BLAS kernel: OpenBLAS's Haswell kernels, which it runs on
    this project's AMD EPYC machines, give float64 rows the bits they get alone once
    every spectrogram has an even number of rows (an odd last row takes another code
    path), but round float32 rows by their offset modulo 12. So each alignment of
    ``ROW_ALIGNMENTS`` that pads at most ``MAX_ALIGNMENT_PADDING`` is tried once per shape,
    dtype, BLAS thread count (``threads``, which only keys the cache: two threads split a
    product by its size) and process, on seeded random rows placed alone and at the
    first, a middle and the last position of blocks of every size the kernels' loops
    make; the first that gives every placement the bits of the spectrogram alone is used.
    With none, every spectrogram gets its own products.

    Returns
    -------
    int or None
        The alignment, or None for products per spectrogram.
    """
    for alignment in ROW_ALIGNMENTS:
        rows = -(-M // alignment) * alignment
        if rows - M > MAX_ALIGNMENT_PADDING * M:
            continue
        if _placements_are_exact(np.dtype(dtype), M, rows, K, D):
            return alignment
    return None


def _placements_are_exact(dtype: np.dtype[Any], M: int, rows: int, K: int, D: int) -> bool:
    """Whether a padded spectrogram's product rows keep their bits in any block (see
    :func:`block_row_alignment`)."""
    rng = np.random.default_rng(0)
    for columns, inner in ((K, D), (D, K)):
        right = rng.random((columns, inner)).astype(dtype)
        alone = np.zeros((rows, columns), dtype=dtype)
        alone[:M] = rng.random((M, columns))
        expected = alone @ right
        for n in range(2, BLOCK + 1):
            for position in sorted({0, n // 2, n - 1}):
                block = np.zeros((n, rows, columns), dtype=dtype)
                block[:, :M] = rng.random((n, M, columns))
                block[position] = alone
                product = block.reshape(-1, columns) @ right
                if not np.array_equal(product.reshape(n, rows, inner)[position], expected):
                    return False
    return True


def _padded_frames(M: int, D: int, K: int, dtype: np.dtype[Any]) -> int | None:
    """Frames per spectrogram in the iterations' block products, or None for products
    per spectrogram."""
    alignment = block_row_alignment(dtype, M, K, D, _blas_threads())
    return None if alignment is None else -(-M // alignment) * alignment


def _stack_product(
    left: NDArray[Any], right: NDArray[Any], out: NDArray[Any], blocked: bool
) -> None:
    """``out = left @ right`` for a stack ``left``: one product over all its rows when
    ``blocked``, else one per spectrogram."""
    if blocked:
        np.matmul(left.reshape(-1, left.shape[-1]), right, out=out.reshape(-1, out.shape[-1]))
    else:
        np.matmul(left, right, out=out)


def _activation_iterations(
    X: NDArray[Any],
    E: NDArray[Any],
    E_transposed: NDArray[Any],
    log_rate: NDArray[Any],
    initial_shape: float,
    n_iter: int,
    temperature: float,
    h01: float,
    rate_in_first: bool,
) -> NDArray[Any]:
    """Fixed-point iterations of q(H)'s shape for fixed globals (ALGORITHM.md 1a/1b).

    The iterations start from the same shape everywhere, so the first one's activation
    factor is one vector for every column of every spectrogram: its normaliser is a
    matrix-vector product, not a matrix product. The later ones overwrite three work
    arrays (ratio, factor, shape) instead of allocating a new set per iteration.
    """
    dtype = X.dtype
    n, D, M = X.shape
    K = E.shape[1]
    if n_iter == 0:
        return np.full((n, K, M), initial_shape, dtype=dtype)
    # the probe tried blocks of up to BLOCK spectrograms, the size the callers' loops make
    padded = _padded_frames(M, D, K, dtype) if n <= BLOCK else None
    blocked = padded is not None
    frames = M if padded is None else padded
    # time-major work arrays: the products are (M, K) @ (K, D) and (M, D) @ (D, K), which
    # OpenBLAS on AVX-512 ran 6 % faster in the local step than (D, K) @ (K, M) and
    # (K, D) @ (D, M) (interleaved A/B at 513 x 51), and which stack over spectrograms;
    # padding frames are zeros, whose ratio stays zero
    if frames == M:
        X_time_major = np.ascontiguousarray(X.transpose(0, 2, 1))
    else:
        X_time_major = np.zeros((n, frames, D), dtype=dtype)
        X_time_major[:, :M] = X.transpose(0, 2, 1)
    log_activation = np.full(K, digamma(initial_shape), dtype=dtype)
    if rate_in_first:
        log_activation -= log_rate
    f = _row_softmax_factor(log_activation, temperature, axis=0)
    z = np.maximum(E @ f, np.finfo(dtype).tiny)
    ratio = np.divide(X_time_major, z)
    shape = np.empty((n, frames, K), dtype=dtype)
    _stack_product(ratio, E, shape, blocked)
    shape *= f
    _shape_update(shape, temperature, h01)
    factor = np.empty_like(shape)
    for _ in range(1, n_iter):
        digamma(shape, out=factor)
        factor -= log_rate
        _row_softmax_factor(factor, temperature, axis=-1, in_place=True)
        _stack_product(factor, E_transposed, ratio, blocked)
        _divide_by_normaliser(X_time_major, ratio)
        _stack_product(ratio, E, shape, blocked)
        shape *= factor
        _shape_update(shape, temperature, h01)
    return np.ascontiguousarray(shape[:, :M].transpose(0, 2, 1))


def _shape_update(counts: NDArray[Any], temperature: float, h01: float) -> NDArray[Any]:
    """Overwrite ``counts`` with ``1 + (h01 + counts - 1) / T`` (``h01 + counts`` at T = 1)."""
    counts += h01
    if temperature != 1.0:
        counts -= 1.0
        counts /= temperature
        counts += 1.0
    return counts


@dataclass(frozen=True)
class NMFLocalResult:
    """What one local step returns for a stack of spectrograms.

    Attributes
    ----------
    shape : ndarray of shape (n, K, M)
        Shape V1 of q(H) for every spectrogram.
    rate : ndarray of shape (K,)
        Rate V2 of q(H), shared by all columns.
    basis_counts : ndarray of shape (n, D, K)
        ``sum_t X[d, t] P[k, t, d]`` of every spectrogram.
    activation_sum : ndarray of shape (n, K)
        ``sum_t E[H[k, t]]`` of every spectrogram.
    elbo : ndarray of shape (n,)
        Each spectrogram's share of the evidence lower bound at T = 1, without the data
        constant ``-sum ln Gamma(X + 1)``: expected log likelihood minus KL(q(H) || p(H)).
        NaN when not computed.
    """

    shape: NDArray[Any]
    rate: NDArray[Any]
    basis_counts: NDArray[Any]
    activation_sum: NDArray[Any]
    elbo: NDArray[Any]


def nmf_local_step(
    X: NDArray[Any],
    log_basis: NDArray[Any],
    basis_weight: NDArray[Any],
    *,
    h01: float,
    h02: float,
    temperature: float,
    n_inner: int,
    with_elbo: bool = True,
) -> NMFLocalResult:
    """Local variational step of the NMF on a stack of spectrograms (ALGORITHM.md 1a).

    Parameters
    ----------
    X : ndarray of shape (n, D, M)
        Nonnegative spectrograms.
    log_basis : ndarray of shape (D, K)
        ``L = E[ln W] + E[ln a]`` of the current global state.
    basis_weight : ndarray of shape (K,)
        ``sum_d E[W[d, k]] E[a[k]]`` of the current global state.
    h01, h02 : float
        Gamma prior of the activations.
    temperature : float
        Annealing temperature T >= 1.
    n_inner : int
        Number of fixed-point iterations.
    with_elbo : bool, default=True
        Also compute the ELBO contributions (one more matrix product when T != 1).

    Returns
    -------
    NMFLocalResult
    """
    n, D, M = X.shape
    K = log_basis.shape[1]
    dtype = X.dtype
    log_basis = log_basis.astype(dtype, copy=False)
    rate = ((h02 + basis_weight) / temperature).astype(dtype, copy=False)
    factors = _BasisFactors.of(log_basis, temperature, with_elbo)
    shape = np.empty((n, K, M), dtype=dtype)
    basis_counts = np.empty((n, D, K), dtype=dtype)
    elbo = np.full(n, np.nan)
    for block in spans(n, BLOCK):
        shape[block], basis_counts[block], elbo[block] = _local_step_block(
            X[block], factors, log_basis, rate, basis_weight, h01, h02, temperature, n_inner,
            with_elbo,
        )  # fmt: skip
    activation_sum = shape.sum(axis=2) / rate
    return NMFLocalResult(shape, rate, basis_counts, activation_sum, elbo)


# Spectrograms per block of the kernels' loops: a block's ratio array (1.7 MB at 513 x 51
# in float64, against 6.7 MB for 32) is still in cache between the two matrix products
# of an iteration (5-11 % faster at 513 x 51 than blocks of 32 or 64 on one core).
# Blocks never change a spectrogram's numbers: every product is per spectrogram.
BLOCK = 8


@dataclass(frozen=True)
class _BasisFactors:
    """``E = exp((L - max) / T)``, its transpose and, for the ELBO, ``E`` at T = 1:
    computed once per call, shared by all blocks."""

    E: NDArray[Any]
    E_transposed: NDArray[Any]
    E_at_unit_temperature: NDArray[Any] | None = None

    @classmethod
    def of(
        cls, log_basis: NDArray[Any], temperature: float, with_elbo: bool = False
    ) -> _BasisFactors:
        E = _row_softmax_factor(log_basis, temperature, axis=1)
        E_at_unit_temperature = None
        if with_elbo:
            if temperature == 1.0:
                E_at_unit_temperature = E
            else:
                E_at_unit_temperature = _row_softmax_factor(log_basis, 1.0, axis=1)
        return cls(E, np.ascontiguousarray(E.T), E_at_unit_temperature)


def _local_step_block(
    X: NDArray[Any],
    factors: _BasisFactors,
    log_basis: NDArray[Any],
    rate: NDArray[Any],
    basis_weight: NDArray[Any],
    h01: float,
    h02: float,
    temperature: float,
    n_inner: int,
    with_elbo: bool,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any] | float]:
    """Shape of q(H), basis counts and ELBO terms (NaN without ``with_elbo``) of one block."""
    K = log_basis.shape[1]
    E = factors.E
    log_rate = np.log(rate)
    shape = _activation_iterations(
        X, E, factors.E_transposed, log_rate, 1.0 / K, n_inner, temperature, h01,
        rate_in_first=False,
    )  # fmt: skip
    digamma_shape = digamma(shape)
    log_activation = digamma_shape - log_rate[:, None]
    F = _row_softmax_factor(log_activation, temperature, axis=-2)
    Z = _normaliser(E, F)
    log_normaliser: NDArray[Any] | None = None
    if with_elbo and temperature == 1.0:
        # at T = 1 the ELBO's normaliser is this one: E and F are exp(L - max) and
        # exp(E[ln H] - max), so only its logarithm is extra work
        log_normaliser = _log_normaliser(Z, log_basis, log_activation)
    basis_counts = E * np.matmul(np.divide(X, Z, out=Z), F.transpose(0, 2, 1))
    if not with_elbo:
        return shape, basis_counts, np.nan
    if log_normaliser is None:
        # _BasisFactors.of sets it whenever with_elbo
        assert factors.E_at_unit_temperature is not None
        F1 = _row_softmax_factor(log_activation, 1.0, axis=-2)
        Z1 = _normaliser(factors.E_at_unit_temperature, F1)
        log_normaliser = _log_normaliser(Z1, log_basis, log_activation)
    elbo = _local_elbo(X, log_normaliser, shape, digamma_shape, rate, basis_weight, h01, h02)
    return shape, basis_counts, elbo


def _log_normaliser(
    Z: NDArray[Any], log_basis: NDArray[Any], log_activation: NDArray[Any]
) -> NDArray[Any]:
    """``ln sum_k exp(L[d, k] + E[ln H[k, t]])`` from ``Z = exp(L - max) @ exp(E[ln H] - max)``."""
    log_normaliser: NDArray[Any] = np.log(Z)
    log_normaliser += log_basis.max(axis=1, keepdims=True)
    log_normaliser += log_activation.max(axis=1, keepdims=True)
    return log_normaliser


def _local_elbo(
    X: NDArray[Any],
    log_normaliser: NDArray[Any],
    shape: NDArray[Any],
    digamma_shape: NDArray[Any],
    rate: NDArray[Any],
    basis_weight: NDArray[Any],
    h01: float,
    h02: float,
) -> NDArray[Any]:
    """ELBO terms of every spectrogram at T = 1 with the optimal responsibilities.

    With P optimal, ``sum_k P X (L + E[ln H] - ln P) = X ln sum_k exp(L + E[ln H])``.
    """
    data = np.sum(X * log_normaliser, axis=(1, 2), dtype=np.float64)
    # a row-wise sum, not a matrix-vector product: BLAS rounds each row by the number of rows
    expected_rate = np.sum((shape.sum(axis=2) / rate) * basis_weight, axis=1)
    kl_terms = gamma_kl(shape, rate[:, None], h01, h02, digamma_shape)
    kl = np.sum(kl_terms, axis=(1, 2), dtype=np.float64)
    elbo: NDArray[Any] = data - expected_rate - kl
    return elbo


def nmf_transform(
    X: NDArray[Any],
    log_basis: NDArray[Any],
    basis_weight: NDArray[Any],
    *,
    h01: float,
    h02: float,
    n_iter: int = 5,
) -> NDArray[Any]:
    """Activations E[H] of a stack of spectrograms for fixed globals (ALGORITHM.md 1b).

    Parameters
    ----------
    X : ndarray of shape (n, D, M)
    log_basis : ndarray of shape (D, K)
        The stored ``ElnWA``.
    basis_weight : ndarray of shape (K,)
        ``sum_d EW[d, k] EA[k]``.
    h01, h02 : float
        Gamma prior of the activations.
    n_iter : int, default=5
        Fixed-point iterations, starting from a shape of one.

    Returns
    -------
    ndarray of shape (n, K, M)
        ``V1 / V2``, the activation matrices (the reference's ACM).
    """
    n, _, M = X.shape
    dtype = X.dtype
    rate = (h02 + basis_weight).astype(dtype, copy=False)
    log_rate = np.log(rate)
    factors = _BasisFactors.of(log_basis.astype(dtype), 1.0)
    activation = np.empty((n, log_basis.shape[1], M), dtype=dtype)
    for block in spans(n, BLOCK):
        activation[block] = _activation_iterations(
            X[block], factors.E, factors.E_transposed, log_rate, 1.0, n_iter, 1.0, h01,
            rate_in_first=True,
        )  # fmt: skip
    activation /= rate[:, None]
    return activation
