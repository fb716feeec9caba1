"""The digamma function, vectorised (ALGORITHM.md: every E[ln x] of a Gamma or Dirichlet).

SciPy's digamma evaluates one element at a time with a data-dependent loop, which made
it a fifth of the NMF's fixed-point iteration. Here the recurrence is unrolled to a
fixed shift so that the compiler vectorises it across elements:

    psi(x) = psi(x + 10) - sum_{i<10} 1 / (x + i)

with the sum accumulated as one fraction (no division in the loop) and ``psi(x + 10)``
from the asymptotic series, whose first omitted term is below 1e-17 at 10. It agrees
with SciPy's to 4e-15 relative to max(|psi|, 1) for x > 0 (tested), the only domain
the variational parameters live in, and is 3-4x faster.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["digamma"]

SHIFT = 10
# Bernoulli terms B_2k / (2k) of the asymptotic series, k = 1..7
_B2, _B4, _B6, _B8, _B10, _B12, _B14 = (
    1.0 / 12.0,
    1.0 / 120.0,
    1.0 / 252.0,
    1.0 / 240.0,
    1.0 / 132.0,
    691.0 / 32760.0,
    1.0 / 12.0,
)
_FRACTION_LIMIT = 1e300  # the fraction's denominator overflows only for x beyond ~1e30


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _digamma_from_log(
    x: NDArray[np.float64], log_shifted: NDArray[np.float64]
) -> None:  # pragma: no cover - compiled
    """Overwrite ``log_shifted = log(x + SHIFT)`` (flat float64) with ``psi(x)``."""
    for index in range(x.size):
        z = x[index]
        numerator = 0.0
        denominator = 1.0
        for i in range(SHIFT):
            numerator = numerator * (z + i) + denominator
            denominator *= z + i
        # for huge x the product overflows; there sum 1/(x+i) is 10/x to rounding
        correction = numerator / denominator if denominator < _FRACTION_LIMIT else SHIFT / z
        inverse = 1.0 / (z + SHIFT)
        inverse2 = inverse * inverse
        series = inverse2 * (
            _B2
            - inverse2
            * (
                _B4
                - inverse2
                * (
                    _B6
                    - inverse2 * (_B8 - inverse2 * (_B10 - inverse2 * (_B12 - inverse2 * _B14)))
                )
            )
        )
        log_shifted[index] = log_shifted[index] - 0.5 * inverse - series - correction


def digamma(x: ArrayLike, out: NDArray[Any] | None = None) -> NDArray[Any]:
    """Elementwise digamma of positive values, computed in float64, returned in x's dtype.

    Parameters
    ----------
    x : array_like
        Values > 0 (Gamma shapes, Dirichlet concentrations). Scalars give 0-d arrays.
    out : ndarray, optional
        Where to write the result (same shape as x; may be x itself). A C-contiguous
        float64 ``out`` other than x is also the work space, which saves the kernels'
        iterations an allocation.

    Returns
    -------
    ndarray
        ``psi(x)``: ``out`` if given, else float32 for float32 input and float64 otherwise.
    """
    x = np.asarray(x)
    x64 = np.asarray(x, dtype=np.float64, order="C")
    direct = (
        out is not None
        and out.dtype == np.float64
        and out.flags.c_contiguous
        and not np.shares_memory(out, x64)
    )
    work = out if out is not None and direct else np.empty(x.shape, dtype=np.float64)
    # np.log is itself vectorised; computing it outside keeps the compiled loop free of
    # calls, which is what lets it vectorise
    np.add(x64, SHIFT, out=work)
    np.log(work, out=work)
    _digamma_from_log(x64.reshape(-1), work.reshape(-1))
    if out is None:
        return work.astype(np.float32, copy=False) if x.dtype == np.float32 else work
    if not direct:
        out[...] = work
    return out
