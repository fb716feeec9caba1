"""Random streams derived from one seed, keyed by purpose and step, never by worker.

Every random choice (initial state, minibatch of a step) comes from its own
``numpy.random.Generator`` built from ``SeedSequence(seed, spawn_key=(purpose, step))``,
so a result depends on the seed and the step only: not on how many workers ran it,
on the order tasks finished, or on any global state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["PURPOSES", "generator", "minibatch", "resolve_seed"]

PURPOSES = {
    "nmf_init": 1,
    "nmf_batch": 2,
    "hmm_init": 3,
    "hmm_batch": 4,
    "hmm_init_sample": 5,
    "hmm_init_data": 6,
    "nmf_init_sample": 7,
    "nmf_init_data": 8,
}


def resolve_seed(random_state: int | np.random.SeedSequence | None) -> int:
    """An integer seed: the one given, or fresh OS entropy when None."""
    if random_state is None:
        # a SeedSequence made without entropy draws an int
        return int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    if isinstance(random_state, np.random.SeedSequence):
        return int(random_state.entropy)  # type: ignore[arg-type]  # an int entropy only
    if isinstance(random_state, (int, np.integer)) and random_state >= 0:
        return int(random_state)
    raise ValueError(f"random_state must be a nonnegative int or None, got {random_state!r}")


def generator(seed: int, purpose: str, step: int = 0) -> np.random.Generator:
    """The generator of one purpose (see ``PURPOSES``) at one step."""
    key = (PURPOSES[purpose], int(step) + 1)  # +1: step counters start at -1
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def minibatch(seed: int, purpose: str, step: int, n_items: int, batch_size: int) -> NDArray[Any]:
    """Sorted indices of the minibatch of one step, drawn without replacement.

    ``batch_size >= n_items`` gives every item (a full-batch step).
    """
    if batch_size >= n_items:
        return np.arange(n_items)
    chosen = generator(seed, purpose, step).choice(n_items, size=batch_size, replace=False)
    return np.sort(chosen)
