"""Global SVI updates of both models: pure functions of (state, statistics, step size).

ALGORITHM.md 1a (NMF) and 2b (HMM). Nothing here changes its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specufex_dask.kernels.nmf import expected_log, gamma_kl

__all__ = [
    "NMFPrior",
    "NonFiniteError",
    "check_finite",
    "hmm_global_update",
    "hmm_step_size",
    "merge_patterns",
    "nmf_global_update",
    "nmf_inner_iterations",
    "nmf_step_size",
    "nmf_temperature",
    "pattern_order",
    "prune_mask",
    "similar_pairs",
    "state_order",
]

PRUNE_THRESHOLD = 1e-3


class NonFiniteError(FloatingPointError, ValueError):
    """A NaN or infinity appeared inside the iterations."""


@dataclass(frozen=True)
class NMFPrior:
    """Hyperparameters of the NMF (ALGORITHM.md 1): Gamma(shape, rate) priors."""

    h01: float
    h02: float
    a01: float
    a02: float
    w01: float
    w02: float

    @classmethod
    def default(cls, n_frequencies: int, n_patterns: int) -> NMFPrior:
        """``h01 = a01 = 1/K0``, ``h02 = a02 = w02 = 1``, ``w01 = 10/D``."""
        return cls(1.0 / n_patterns, 1.0, 1.0 / n_patterns, 1.0, 10.0 / n_frequencies, 1.0)


def nmf_temperature(step: int, anneal: bool = True) -> float:
    """Annealing temperature ``T = 1 + 0.75**(step - 1)``, or 1 without annealing."""
    return 1.0 + 0.75 ** (step - 1) if anneal else 1.0


def nmf_inner_iterations(temperature: float) -> int:
    """``10 + round(1 + 5 (T - 1)) - 1`` fixed-point iterations (Python rounding)."""
    return 10 + round(1 + 5 * (temperature - 1)) - 1


def _decreasing_step_size(step: int, spread: float) -> float:
    """``(250 / (1 + 5 spread) + step) ** -0.51``, capped at 1: both stages' schedule."""
    return min(1.0, float((250.0 / (1.0 + 5.0 * spread) + step) ** -0.51))


def nmf_step_size(step: int, temperature: float) -> float:
    """``rho = (250 / (1 + 5 (T - 1)) + step) ** -0.51``, capped at 1."""
    return _decreasing_step_size(step, temperature - 1.0)


def nmf_global_update(
    W1: NDArray[Any],
    W2: NDArray[Any],
    A1: NDArray[Any],
    A2: NDArray[Any],
    basis_counts: NDArray[Any],
    activation_sum: NDArray[Any],
    *,
    scale: float,
    step_size: float,
    temperature: float,
    prior: NMFPrior,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Blend q(W), q(a) toward their minibatch optimum (ALGORITHM.md 1a).

    ``scale`` multiplies the statistics (number of data units over units in the batch);
    ``A2`` uses the ``W1, W2`` just updated, as in the original.
    """
    rho, T = step_size, temperature
    EA = A1 / A2
    W1_new = (1 - rho) * W1 + rho * (1 + (prior.w01 + scale * basis_counts - 1) / T)
    W2_new = (1 - rho) * W2 + rho * (prior.w02 + scale * EA * activation_sum) / T
    A1_new = (1 - rho) * A1 + rho * (
        1 + (prior.a01 + scale * basis_counts.sum(axis=0, keepdims=True) - 1) / T
    )
    weighted = ((W1_new / W2_new) * activation_sum).sum(axis=0, keepdims=True)
    A2_new = (1 - rho) * A2 + rho * (prior.a02 + scale * weighted) / T
    return W1_new, W2_new, A1_new, A2_new


def nmf_global_kl(
    W1: NDArray[Any], W2: NDArray[Any], A1: NDArray[Any], A2: NDArray[Any], prior: NMFPrior
) -> float:
    """KL(q(W) || p(W)) + KL(q(a) || p(a))."""
    return float(
        gamma_kl(W1, W2, prior.w01, prior.w02).sum() + gamma_kl(A1, A2, prior.a01, prior.a02).sum()
    )


def prune_mask(
    A1: NDArray[Any],
    A2: NDArray[Any],
    threshold: float = PRUNE_THRESHOLD,
    min_share: float | None = None,
) -> NDArray[Any]:
    """Patterns to keep: ``E[a] = A1 / A2 > threshold`` and, with ``min_share``, a share
    ``A1[k] / sum(A1)`` of the data's counts of at least ``min_share``.

    ``A1`` is the prior shape plus the counts the data give pattern k (scaled to the data
    size), so its share is the pattern's part of the data. The reference's threshold on
    ``E[a]`` alone depends on the data's scale: with the statistics scaled to the data
    size as VB requires, ``E[a]`` stays near 1 for every pattern that keeps a count or
    two, and no pattern is pruned from a real record.
    """
    keep: NDArray[np.bool_] = (A1 / A2).ravel() > threshold
    if min_share is not None:
        keep &= (A1 / A1.sum()).ravel() >= min_share
    return keep


def similar_pairs(EW: NDArray[Any], min_cosine: float) -> list[tuple[int, int]]:
    """Disjoint pairs of patterns whose ``E[W]`` columns have a cosine >= ``min_cosine``.

    Most similar first; a pattern is in at most one pair, so one call merges each
    pattern at most once (a triple merges over two steps).
    """
    unit = EW / np.linalg.norm(EW, axis=0, keepdims=True)
    first, second = np.triu_indices(EW.shape[1], 1)
    cosine = (unit.T @ unit)[first, second]
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for index in np.argsort(-cosine, kind="stable"):
        if cosine[index] < min_cosine:
            break
        a, b = int(first[index]), int(second[index])
        if a not in used and b not in used:
            pairs.append((a, b))
            used.update((a, b))
    return pairs


def merge_patterns(
    W1: NDArray[Any],
    W2: NDArray[Any],
    A1: NDArray[Any],
    A2: NDArray[Any],
    pairs: list[tuple[int, int]],
    prior: NMFPrior,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Fold the second pattern of each pair into the first; returns the state and the
    mask of patterns kept.

    Each Gamma parameter is its prior plus the data's (scaled) contribution, and two
    patterns of the same shape explain the data as one would with their activations
    added, so the data parts add: ``W1 = W1[a] + W1[b] - w01`` and likewise for W2 (the
    activation sums), A1 (the counts) and A2. The symmetric start of q(W) makes such
    twins: on planted data of 5 patterns the default fit kept 8-14, the extra ones
    copies (cosine 0.96-0.99) of planted ones that share its counts.
    """
    W1, W2, A1, A2 = (array.copy() for array in (W1, W2, A1, A2))
    keep = np.ones(W1.shape[1], dtype=bool)
    for a, b in pairs:
        W1[:, a] += W1[:, b] - prior.w01
        W2[:, a] += W2[:, b] - prior.w02
        A1[:, a] += A1[:, b] - prior.a01
        A2[:, a] += A2[:, b] - prior.a02
        keep[b] = False
    return W1, W2, A1, A2, keep


def pattern_order(EW: NDArray[Any], stable: bool = True) -> NDArray[Any]:
    """Patterns sorted by the frequency bin of each EW column's maximum.

    ``stable=False`` is numpy's default sort, whose order among ties the reference's
    outputs depend on.
    """
    peak = np.argmax(EW, axis=0)
    order: NDArray[Any] = np.argsort(peak, kind="stable") if stable else np.argsort(peak)
    return order


def hmm_step_size(step: int, batch_size: int) -> float:
    """``rho = (250 / (1 + 5 (n - 1)) + step) ** -0.51``, capped at 1 (ALGORITHM.md 2b)."""
    return _decreasing_step_size(step, batch_size - 1)


def hmm_global_update(
    B1: NDArray[Any],
    B2: NDArray[Any],
    emission_counts: NDArray[Any],
    state_counts: NDArray[Any],
    *,
    scale: float,
    step_size: float,
    tau1: float,
    tau2: float,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Blend q(B) toward its minibatch optimum (ALGORITHM.md 2b)."""
    rho = step_size
    B1_new = (1 - rho) * B1 + rho * (tau1 + scale * emission_counts)
    B2_new = (1 - rho) * B2 + rho * (tau2 + scale * state_counts[:, None])
    return B1_new, B2_new


def hmm_global_kl(B1: NDArray[Any], B2: NDArray[Any], tau1: float, tau2: float) -> float:
    """KL(q(B) || p(B))."""
    return float(gamma_kl(B1, B2, tau1, tau2).sum())


def state_order(EB: NDArray[Any], stable: bool = True) -> NDArray[Any]:
    """States by decreasing energy ``sum_k EB[j, k]``."""
    energy = EB.sum(axis=1)
    return np.argsort(-energy, kind="stable") if stable else np.argsort(-energy)


def check_finite(model: str, step: int, **arrays: NDArray[Any]) -> None:
    """Raise :class:`NonFiniteError` naming the step, array and columns that went bad."""
    for name, array in arrays.items():
        bad = ~np.isfinite(array)
        if bad.any():
            columns = np.flatnonzero(bad.reshape(-1, array.shape[-1]).any(axis=0))
            unit = "pattern" if model == "NMF" or name == "emission_counts" else "column"
            raise NonFiniteError(
                f"{model}: non-finite values in {name} at step {step}, "
                f"{unit}s {columns.tolist()[:20]}"
            )


__all__ += ["expected_log", "hmm_global_kl", "nmf_global_kl"]
