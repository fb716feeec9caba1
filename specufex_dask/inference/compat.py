"""What the reference package does that the default mode does not (ALGORITHM.md 2c).

Kept in one place: the HMM step-counter schedule of the reference and the layout of
its saved model files. The reference's forward-backward lives in
:mod:`specufex_dask.kernels.hmm` behind ``compat=True``.
"""

from __future__ import annotations

__all__ = ["HMM_NEFF", "REFERENCE_HMM_KEYS", "REFERENCE_NMF_KEYS", "hmm_schedule"]

HMM_NEFF = 100000
"""The reference's fixed HMM data size (also the scale of the initial state)."""

REFERENCE_NMF_KEYS = ("W1", "W2", "A1", "A2", "step", "N_eff", "dim", "num_pat")
REFERENCE_HMM_KEYS = ("B1", "B2", "step", "num_pat", "num_state", "gain")


def hmm_schedule(step: int, index: int) -> tuple[int, int, float]:
    """The reference's step counter, batch count and step size for sequence ``index``.

    Within one call of its ``fit``, the counter grows by the sequence's index in the
    call (0, 1, 2, ...) before the step, and the step size uses
    ``n = int(round(1 + 10 * 0.75**(step - 1)))`` as if n sequences had been seen.

    Returns
    -------
    step : int
        The counter after this sequence.
    n : int
        The batch count used for the scale ``Neff / n`` and the step size.
    rho : float
        ``(250 / (1 + 5 (n - 1)) + step) ** -0.51``.
    """
    step = step + index
    n = int(round(1 + 10 * 0.75 ** (step - 1)))
    rho = (250 / (1 + 5 * (n - 1)) + step) ** -0.51
    return step, n, rho
