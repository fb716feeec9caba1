"""When a stage of the pipeline's fit stops: a settled ELBO and a settled model size.

The ELBO of a minibatch step is a noisy estimate, and it can level off while the model
is still reorganising: the NMF may still be pruning patterns, the HMM still moving frames
onto states it had left empty (or off states it is about to lose). A stage of
:class:`specufex_dask.pipeline.SpecUFEx` therefore stops only when both have settled:

* the ELBO rule of :class:`ConvergenceMonitor` (the means of the
  last two windows of steps differ by less than ``tol`` relative), and
* a count that did not change over the last window of steps: the NMF's live patterns,
  or the HMM's states in use in the minibatch (:func:`states_in_use`), and
* at least ``min_steps`` steps (``MIN_STOP_STEPS`` in the pipeline): patterns that the
  data do not use are pruned by a slow decay of their share, so the pattern count is
  steady long before it is settled. On the real KW1 record (1 h) the NMF met the first
  two rules at step 40 with all 75 patterns; after 200 steps it keeps 30.

The step budget is an upper bound; :func:`auto_steps` is the default one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specufex_dask.inference.diagnostics import MIN_STATE_SHARE

__all__ = [
    "MAX_WINDOW",
    "ConvergenceMonitor",
    "MIN_STOP_STEPS",
    "StageMonitor",
    "auto_steps",
    "states_in_use",
    "window_steps",
]

AUTO_MIN_STEPS = 200
AUTO_PASSES = 3
MIN_STOP_STEPS = 200
"""Steps a stage runs at least before it may stop on convergence."""

# Longest ELBO averaging window: one pass over a large archive is too long to wait for.
MAX_WINDOW = 20


class ConvergenceMonitor:
    """ELBO history and the stopping rule of a fit.

    The ELBO of a minibatch step is a noisy estimate, so the rule compares the means of
    the last two windows of ``window`` steps (one pass over the data, at most 20 steps;
    a full-batch fit compares consecutive steps): converged when they differ by less than
    ``tol`` relative to the latest mean.

    Parameters
    ----------
    tol : float or None
        Relative tolerance; None never stops early.
    window : int
        Steps per window.
    """

    def __init__(self, tol: float | None, window: int = 1) -> None:
        self.tol = tol
        self.window = max(1, int(window))
        self.history: list[float] = []
        self.converged = False

    def report(self, elbo: float, ready: bool = True) -> bool:
        """Record a step's ELBO; return True once converged.

        ``ready=False`` (annealing still on) records without testing.
        """
        self.history.append(float(elbo))
        if self.tol is None or not ready or len(self.history) < 2 * self.window:
            return False
        latest = np.mean(self.history[-self.window :])
        previous = np.mean(self.history[-2 * self.window : -self.window])
        self.converged = bool(abs(latest - previous) <= self.tol * abs(latest))
        return self.converged


def window_steps(n_events: int, batch: int) -> int:
    """Steps per convergence window: one pass over the events, at most ``MAX_WINDOW``."""
    return min(-(-n_events // batch), MAX_WINDOW)


def auto_steps(n_events: int, batch: int) -> int:
    """The default step budget of a stage: ``AUTO_PASSES`` passes over the events at
    ``batch`` events per step, and at least ``AUTO_MIN_STEPS``."""
    return max(AUTO_MIN_STEPS, AUTO_PASSES * -(-n_events // batch))


def states_in_use(
    state_counts: NDArray[Any], n_frames: int, share: float = MIN_STATE_SHARE
) -> int:
    """States holding at least ``share`` of a minibatch's ``n_frames`` frames (the share
    :func:`specufex_dask.inference.diagnostics.states_in_use` asks of all frames).

    ``state_counts`` are the HMM statistics' ``sum_t gam`` per state (the minibatch's
    expected frames in each state).
    """
    return int(np.count_nonzero(np.asarray(state_counts) / n_frames >= share))


class StageMonitor:
    """The stopping rule of one stage: the ELBO rule AND a count steady over a window.

    Parameters
    ----------
    tol : float or None
        Relative ELBO tolerance; None never stops early.
    window : int
        Steps per window (of the ELBO means, and over which the count must not change).
    history : iterable of float
        ELBOs of the steps already done (a resumed fit).
    counts : iterable of int
        Counts of the steps already done; only the last ``window + 1`` are kept.
    min_steps : int, default=0
        Steps (those of ``history`` included) before the stage may stop.
    steady_count : bool, default=True
        Whether the count must hold still; False is the ELBO rule alone (the in-memory
        estimators' :class:`ConvergenceMonitor`).

    Attributes
    ----------
    counts : list of int
        The count of the last ``window + 1`` steps at most (what a checkpoint must keep
        for a resumed fit to stop where an uninterrupted one does).
    converged : bool
    """

    def __init__(
        self,
        tol: float | None,
        window: int,
        history: Iterable[float] = (),
        counts: Iterable[int] = (),
        min_steps: int = 0,
        *,
        steady_count: bool = True,
    ) -> None:
        self.min_steps = int(min_steps)
        self.steady_count = steady_count
        self._elbo = ConvergenceMonitor(tol, window)
        self._elbo.history = [float(value) for value in history]
        self.window = self._elbo.window
        self.counts = [int(count) for count in counts][-(self.window + 1) :]
        self.converged = False

    def count_steady(self) -> bool:
        """Whether the count stayed the same over the last ``window`` steps."""
        return len(self.counts) > self.window and len(set(self.counts)) == 1

    def report(self, elbo: float, count: int, ready: bool = True) -> bool:
        """Record a step's ELBO and count; return True once the stage has converged.

        ``ready=False`` (the NMF still annealing) records without testing.
        """
        elbo_settled = self._elbo.report(elbo, ready)
        self.counts = (self.counts + [int(count)])[-(self.window + 1) :]
        enough = len(self._elbo.history) >= self.min_steps
        steady = self.count_steady() or not self.steady_count
        self.converged = elbo_settled and steady and enough
        return self.converged
