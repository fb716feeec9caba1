"""Sufficient statistics of the local steps: values that add across batches and workers.

The global updates of both models only need sums over spectrogram columns
(ALGORITHM.md 1d), so a chunk's statistics can be computed where the chunk lives and
folded on the driver. Scaling by the data size is the update's business, not theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["HMMStatistics", "NMFStatistics", "fold", "tree_nodes", "tree_root"]


def _check_same_shapes(left: object, right: object) -> None:
    if type(left) is not type(right):
        raise TypeError(f"cannot add {type(left).__name__} and {type(right).__name__}")
    for field in fields(left):  # type: ignore[arg-type]
        a, b = getattr(left, field.name), getattr(right, field.name)
        if isinstance(a, np.ndarray) and a.shape != b.shape:
            raise ValueError(
                f"{type(left).__name__}.{field.name}: shapes {a.shape} and {b.shape} differ "
                "(statistics of models with different numbers of patterns or states?)"
            )


_Statistics = TypeVar("_Statistics", "NMFStatistics", "HMMStatistics")


def _field_sums(left: _Statistics, right: _Statistics) -> _Statistics:
    """``left + right`` field by field, once their shapes are checked to agree."""
    _check_same_shapes(left, right)
    sums = (getattr(left, field.name) + getattr(right, field.name) for field in fields(left))
    return type(left)(*sums)


@dataclass(frozen=True)
class NMFStatistics:
    """Sums over the columns of one or more spectrograms (ALGORITHM.md 1a).

    Attributes
    ----------
    basis_counts : ndarray of shape (n_frequencies, n_patterns)
        ``sum_t X[d, t] P[k, t, d]``.
    activation_sum : ndarray of shape (n_patterns,)
        ``sum_t E[H[k, t]]``.
    n_columns : int
        Number of time columns summed.
    n_spectrograms : int
        Number of spectrograms summed.
    elbo : float
        Sum of the local ELBO terms (see :func:`specufex_dask.kernels.nmf.nmf_local_step`).
    """

    basis_counts: NDArray[Any]
    activation_sum: NDArray[Any]
    n_columns: int
    n_spectrograms: int
    elbo: float

    @classmethod
    def zeros(cls, n_frequencies: int, n_patterns: int) -> NMFStatistics:
        """Statistics of no data."""
        return cls(np.zeros((n_frequencies, n_patterns)), np.zeros(n_patterns), 0, 0, 0.0)

    def __add__(self, other: NMFStatistics) -> NMFStatistics:
        return _field_sums(self, other)


@dataclass(frozen=True)
class HMMStatistics:
    """Sums over the time steps of one or more sequences (ALGORITHM.md 2a).

    Attributes
    ----------
    emission_counts : ndarray of shape (n_states, n_patterns)
        ``Bup1 = sum_t gam U^T``.
    state_counts : ndarray of shape (n_states,)
        ``Bup2 = sum_t gam``.
    n_sequences : int
    elbo : float
        Sum of the local ELBO terms.
    """

    emission_counts: NDArray[Any]
    state_counts: NDArray[Any]
    n_sequences: int
    elbo: float

    @classmethod
    def zeros(cls, n_states: int, n_patterns: int) -> HMMStatistics:
        """Statistics of no data."""
        return cls(np.zeros((n_states, n_patterns)), np.zeros(n_states), 0, 0.0)

    def __add__(self, other: HMMStatistics) -> HMMStatistics:
        return _field_sums(self, other)


def _tree_height(total: int) -> int:
    return max(0, (total - 1).bit_length())


def _subtree_value(level: int, low: int, leaves: Sequence[Any], offset: int, total: int) -> Any:
    """Value of the node at ``level`` whose first leaf is ``low``: left + right, in order."""
    if level == 0:
        return leaves[low - offset]
    middle = low + (1 << (level - 1))
    left = _subtree_value(level - 1, low, leaves, offset, total)
    if middle >= total:
        return left
    return left + _subtree_value(level - 1, middle, leaves, offset, total)


def tree_nodes(leaves: Sequence[Any], start: int, total: int) -> dict[tuple[int, int], Any]:
    """Fold a contiguous run of leaves into the nodes of the fixed summation tree.

    The tree is the balanced binary tree over ``total`` leaf positions (node
    ``(level, index)`` covers positions ``index * 2**level`` to ``(index+1) * 2**level``).
    ``leaves`` sit at positions ``start .. start + len(leaves)``; the result holds the
    largest nodes entirely inside that run, at most two per level. Whoever holds the
    other runs (another chunk, another worker) returns its own nodes, and
    :func:`tree_root` assembles them. The additions done are the same whatever the runs
    are, so the sum has the same bits for any chunking and any number of workers.
    """
    stop = start + len(leaves)
    if not 0 <= start < stop <= total:
        raise ValueError(f"leaves {start}..{stop} do not fit in a tree of {total}")
    nodes: dict[tuple[int, int], Any] = {}

    def collect(level: int, index: int) -> None:
        low = index << level
        high = min(low + (1 << level), total)
        if high <= start or low >= stop:
            return
        if start <= low and high <= stop:
            nodes[(level, index)] = _subtree_value(level, low, leaves, start, total)
            return
        collect(level - 1, 2 * index)
        collect(level - 1, 2 * index + 1)

    collect(_tree_height(total), 0)
    return nodes


def tree_root(nodes: dict[tuple[int, int], Any], total: int) -> Any:
    """Sum of all leaves from the nodes of :func:`tree_nodes` of runs that cover them."""

    def value(level: int, index: int) -> Any:
        if (level, index) in nodes:
            return nodes[(level, index)]
        if level == 0:
            raise ValueError(f"leaf {index} of {total} is missing from the statistics")
        left = value(level - 1, 2 * index)
        middle = (index << level) + (1 << (level - 1))
        return left + value(level - 1, 2 * index + 1) if middle < total else left

    return value(_tree_height(total), 0)


def fold(leaves: Sequence[Any]) -> Any:
    """Sum leaves in the fixed tree of :func:`tree_nodes` (same bits as any split)."""
    if not leaves:
        raise ValueError("nothing to fold")
    return tree_root(tree_nodes(leaves, 0, len(leaves)), len(leaves))
