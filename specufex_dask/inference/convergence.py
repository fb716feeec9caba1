"""When a stage of the pipeline's fit stops: a settled ELBO and a settled model size.

The ELBO of a minibatch step is a noisy estimate (at 100k events of 513 x 51 it moved by
several per cent from one 64-event step to the next), and it can level off while the
model is still reorganising: the NMF may still be pruning patterns, the HMM still moving
frames onto states it had left empty (or off states it is about to lose). A stage of
:class:`specufex_dask.pipeline.SpecUFEx` therefore stops only when both have settled
(:class:`StageMonitor`):

* the ELBO: the means of the last two windows of steps differ by less than ``tol``
  relative, or by less than one standard error of that difference (the noise of a step,
  estimated from successive differences, shrinks as the windows grow). A window is a
  quarter of the steps run, at least ``window`` (one pass, at most 20 steps) and at
  most ``MAX_NOISY_WINDOW``: a fixed window of 20 steps never settled within 1e-4 at
  100k, where the stage then ran to its budget of three passes;
* the count: the NMF's live patterns (a property of the global model, with no noise)
  did not change over the last window, so a stage still pruning now and then runs on
  until a quarter of its steps passed without a prune; the HMM's states in use in the
  minibatch (:func:`states_in_use`), which move by one or two from one minibatch to the
  next, are compared as means: the last window's differs from the window's before by
  at most ``COUNT_SLACK``;
* at least ``min_steps`` steps (``MIN_STOP_STEPS`` in the pipeline): patterns that the
  data do not use are pruned by a slow decay of their share, so the pattern count is
  steady long before it is settled. On the real KW1 record (1 h) the NMF met the first
  two rules at step 40 with all 75 patterns; after 200 steps it keeps 30.

The in-memory estimators keep the plain rule of :class:`ConvergenceMonitor` (fixed
windows, no count). The step budget is an upper bound; :func:`auto_steps` is the
default one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specufex_dask.inference.diagnostics import MIN_STATE_SHARE

__all__ = [
    "COUNT_SLACK",
    "MAX_NOISY_WINDOW",
    "MAX_WINDOW",
    "ConvergenceMonitor",
    "MIN_STOP_STEPS",
    "StageMonitor",
    "auto_steps",
    "means_settled",
    "noisy_window",
    "states_in_use",
    "window_steps",
]

AUTO_MIN_STEPS = 1000
"""Floor of the default budget. The stopping rule ends most small fits well before it
(planted sets of 480 events: the NMF at 300-520 steps, the HMM at 200); a floor of 200
stopped the NMF while it was still pruning, with a planted ARI of 0.732 and 0.444 at the
medium and hard levels against 0.813 and 0.532 (fidelity benchmark)."""
AUTO_PASSES = 3
MIN_STOP_STEPS = 200
"""Steps a stage runs at least before it may stop on convergence."""

# Longest ELBO averaging window: one pass over a large archive is too long to wait for.
MAX_WINDOW = 20
MAX_NOISY_WINDOW = 250
"""Longest window of the pipeline's rule (which grows its windows to a quarter of the
steps run): 500 steps of history decide a stop at most."""
COUNT_SLACK = 0.5
"""Largest change of a window's mean count (patterns, states in use) that counts as
settled: less than one pattern or state on average."""


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
        if not ready:
            return False
        self.converged = self.settled()
        return self.converged

    def settled(self) -> bool:
        """Whether the means of the history's last two windows differ by less than
        ``tol`` relative to the latest (False with no ``tol`` or too short a history)."""
        if self.tol is None or len(self.history) < 2 * self.window:
            return False
        latest = np.mean(self.history[-self.window :])
        previous = np.mean(self.history[-2 * self.window : -self.window])
        return bool(abs(latest - previous) <= self.tol * abs(latest))


def window_steps(n_events: int, batch: int) -> int:
    """The shortest convergence window: one pass over the events, at most ``MAX_WINDOW``
    steps (the in-memory estimators' window; the pipeline's grows from it,
    :func:`noisy_window`)."""
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


def noisy_window(n_steps: int, window: int) -> int:
    """Steps per window of the pipeline's rule after ``n_steps`` steps: a quarter of
    them, at least ``window`` and at most ``MAX_NOISY_WINDOW``."""
    return max(1, min(max(int(window), n_steps // 4), MAX_NOISY_WINDOW))


def means_settled(values: NDArray[Any], window: int, tol: float) -> bool:
    """Whether the means of the last two windows of ``values`` differ by at most ``tol``
    relative to the latest or by at most one standard error of their difference.

    The standard error takes each step's noise from the successive differences of the
    last two windows (their variance is twice the noise's when the trend is small
    beside it), so a series that drifts slowly under a large noise counts as settled
    once the drift over a window is within what the windows' means can resolve.
    """
    latest, previous = values[-window:], values[-2 * window : -window]
    change = abs(float(latest.mean()) - float(previous.mean()))
    if change <= tol * abs(float(latest.mean())):
        return True
    steps = np.diff(values[-2 * window :])
    if len(steps) < 2:
        return False
    noise = float(np.std(steps, ddof=1)) / np.sqrt(2.0)
    return bool(change <= noise * np.sqrt(2.0 / window))


class StageMonitor:
    """The stopping rule of one stage (see the module's docstring).

    Parameters
    ----------
    tol : float or None
        Relative ELBO tolerance; None never stops early.
    window : int
        The shortest window of steps (one pass over the events, at most 20).
    history : iterable of float
        ELBOs of the steps already done (a resumed fit).
    counts : iterable of int
        Counts of the steps already done; only the last ``2 * MAX_NOISY_WINDOW`` are
        kept.
    min_steps : int, default=0
        Steps (those of ``history`` included) before the stage may stop.
    noise_aware : bool, default=True
        The pipeline's rule: growing windows, the standard-error test and the count
        rule. False is :class:`ConvergenceMonitor`'s rule alone, with windows of
        ``window`` steps (the in-memory estimators').
    noisy_count : bool, default=False
        Compare the windows' mean counts (the HMM's states in use in a minibatch)
        instead of asking the count not to change over the last window (the NMF's live
        patterns).

    Attributes
    ----------
    counts : list of int
        The count of the last ``2 * MAX_NOISY_WINDOW`` steps at most (what a checkpoint
        must keep for a resumed fit to stop where an uninterrupted one does).
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
        noise_aware: bool = True,
        noisy_count: bool = False,
    ) -> None:
        self.noisy_count = noisy_count
        self.min_steps = int(min_steps)
        self.noise_aware = noise_aware
        self._elbo = ConvergenceMonitor(tol, window)
        self._elbo.history = [float(value) for value in history]
        self.window = self._elbo.window
        self.counts = [int(count) for count in counts][-2 * MAX_NOISY_WINDOW :]
        self.converged = False

    def report(self, elbo: float, count: int, ready: bool = True) -> bool:
        """Record a step's ELBO and count; return True once the stage has converged.

        ``ready=False`` (the NMF still annealing) records without testing.
        """
        self.counts = (self.counts + [int(count)])[-2 * MAX_NOISY_WINDOW :]
        if not self.noise_aware:
            settled = self._elbo.report(elbo, ready)
        else:
            self._elbo.history.append(float(elbo))
            settled = ready and self._settled()
        enough = len(self._elbo.history) >= self.min_steps
        self.converged = settled and enough
        return self.converged

    def holds(self) -> bool:
        """Whether the rule holds on the steps recorded so far, without a new one (a
        finished stage asked to resume under other settings)."""
        if len(self._elbo.history) < self.min_steps:
            return False
        return self._settled() if self.noise_aware else self._elbo.settled()

    def _settled(self) -> bool:
        """The ELBO and the count rules of the pipeline, on the windows of now."""
        history, tol = self._elbo.history, self._elbo.tol
        window = noisy_window(len(history), self.window)
        if tol is None or len(history) < 2 * window or len(self.counts) < 2 * window:
            return False
        counts = np.asarray(self.counts[-2 * window :], dtype=float)
        if self.noisy_count:
            count_settled = abs(counts[window:].mean() - counts[:window].mean()) <= COUNT_SLACK
        else:  # the step before the window and every step of it
            count_settled = bool(np.all(counts[-window - 1 :] == counts[-1]))
        elbos = np.asarray(history[-2 * window :], dtype=float)
        return bool(count_settled and means_settled(elbos, window, tol))
