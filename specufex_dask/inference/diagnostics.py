"""Measures of what a fitted model makes of the data: are the fingerprints informative?

A collapsed fit is easy to miss: every step runs, the ELBO settles, and yet every frame
sits in one HMM state and every fingerprint is the same. These functions say so in
numbers: states in use, the fraction of distinct fingerprints, and the ELBO per frame
on events the model did not see (the same local step for every model, so that models
fitted in either fidelity mode can be compared).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from specufex_dask.inference.stats import fold
from specufex_dask.inference.steps import hmm_leaves, nmf_activations, nmf_leaves

__all__ = ["distinct_fraction", "heldout_elbo_per_frame", "state_occupancy", "states_in_use"]

MIN_STATE_SHARE = 0.01
"""A state is in use when it is the most probable state of at least 1 % of all frames."""


def state_occupancy(state_probability: ArrayLike) -> NDArray[Any]:
    """Share of all frames whose most probable state is each state: (n_states,).

    Parameters
    ----------
    state_probability : array_like of shape (n_events, n_states, n_times)
    """
    gam = np.asarray(state_probability)
    winners = np.argmax(gam, axis=1).ravel()
    share: NDArray[Any] = np.bincount(winners, minlength=gam.shape[1]) / winners.size
    return share


def states_in_use(state_probability: ArrayLike, min_share: float = MIN_STATE_SHARE) -> int:
    """States that are the most probable state of at least ``min_share`` of all frames."""
    return int((state_occupancy(state_probability) >= min_share).sum())


def distinct_fraction(fingerprint: ArrayLike, atol: float = 1e-6) -> float:
    """Distinct fingerprints over events: 1 when all differ, 1/n when all are the same.

    Fingerprints are probabilities times square roots of probabilities, in [0, 1]; two
    that round to the same multiples of ``atol`` in every entry count as one.

    Examples
    --------
    >>> distinct_fraction(np.zeros((4, 2, 2)))
    0.25
    """
    values = np.asarray(fingerprint, dtype=np.float64)
    cells = np.round(values.reshape(len(values), -1) / atol).astype(np.int64)
    return len(np.unique(cells, axis=0)) / len(values)


def heldout_elbo_per_frame(nmf: Any, hmm: Any, X: ArrayLike) -> tuple[float, float]:
    """ELBO per frame of spectrograms ``X`` (n, D, M) under a fitted NMF and HMM.

    Both terms use the default mode's local steps whatever mode the models were fitted
    in (the NMF at temperature 1 with its 10 inner iterations; the MATLAB original's
    forward-backward), so numbers of models from either mode compare.

    Returns
    -------
    nmf_elbo, hmm_elbo : float
        The NMF's local ELBO (Poisson likelihood bound of the spectrogram values, less
        the KL of the activations; without the data constant) and the HMM's local ELBO
        of the gain-weighted activations, each divided by the number of frames.
    """
    X = np.asarray(X, dtype=np.float64)
    frames = X.shape[0] * X.shape[2]
    nmf_params = replace(nmf.step_parameters(), temperature=1.0, n_inner=10)
    nmf_elbo = fold(nmf_leaves(X, nmf_params)).elbo
    activation = nmf_activations(X, nmf.transform_parameters())
    hmm_params = replace(hmm.step_parameters(), compat=False)
    hmm_elbo = fold(hmm_leaves(activation, hmm_params)).elbo
    return nmf_elbo / frames, hmm_elbo / frames
