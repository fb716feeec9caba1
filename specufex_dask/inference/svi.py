"""The SVI loop: minibatch, statistics, global update, stopping rule, progress.

One loop drives every fit, in memory (:mod:`specufex_dask.models`) and on a cluster
(:mod:`specufex_dask.pipeline`). What differs is passed in:

* ``batches(step)``: the events of a step (:class:`SeededMinibatches`, drawn from the
  seed and the step number only, or :class:`InOrder`, the reference's one event per
  step in the order given);
* ``statistics(index, following)``: the sufficient statistics of those events (in
  memory, the local step on the arrays; in the pipeline, the workers). ``following`` is
  the next step's minibatch when ``lookahead`` is set (the step runners read it ahead);
* ``update(statistics, step)``: the model's global update, returning a
  :class:`StepResult` (the step's ELBO, its count of live patterns or states in use,
  and whether the stopping rule may be tested yet).

The loop feeds the :class:`~specufex_dask.inference.convergence.StageMonitor` and yields
one :class:`SVIProgress` per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from specufex_dask.inference.convergence import StageMonitor
from specufex_dask.inference.seeding import minibatch

__all__ = [
    "COUNT_NAMES",
    "Everything",
    "InOrder",
    "SVIProgress",
    "SeededMinibatches",
    "StepResult",
    "run_svi",
]

COUNT_NAMES = {"nmf": "n_patterns", "hmm": "n_states"}
"""What each stage counts: live NMF patterns, HMM states in use."""

Selection = NDArray[Any] | slice


@dataclass(frozen=True)
class SVIProgress:
    """The state of a stage after one SVI step.

    Attributes
    ----------
    stage : {"nmf", "hmm"}
    step : int
        Steps of the stage done, this one included.
    total : int
        The stage's step budget.
    elbo : float
        The step's ELBO estimate.
    count : int
        Live patterns (NMF) or states holding at least 1 % of the minibatch's frames
        (HMM) after the step.
    converged : bool
        Whether the stage stopped on this step by its stopping rule.
    counts : tuple of int
        The counts of the stopping rule's window (what a checkpoint keeps so that a
        resumed fit stops where an uninterrupted one does).
    """

    stage: str
    step: int
    total: int
    elbo: float
    count: int
    converged: bool
    counts: tuple[int, ...] = ()

    def info(self) -> dict[str, Any]:
        """The mapping a ``progress(stage, info)`` callback gets: ``step``, ``total``,
        ``elbo``, ``converged`` and ``n_patterns`` (NMF) or ``n_states`` (HMM)."""
        return {
            "step": self.step,
            "total": self.total,
            "elbo": self.elbo,
            "converged": self.converged,
            COUNT_NAMES[self.stage]: self.count,
        }


@dataclass(frozen=True)
class StepResult:
    """What a model's global update reports to the loop."""

    elbo: float
    count: int
    ready: bool = True
    """False while the stopping rule may not be tested (the NMF still annealing)."""


@dataclass(frozen=True)
class SeededMinibatches:
    """Sorted minibatches of ``batch_size`` of ``n_items``, the one of loop step ``s``
    drawn from ``(seed, purpose, first + s)`` only
    (:func:`~specufex_dask.inference.seeding.minibatch`).

    ``first`` is the draw number of loop step 0: the model's step counter when the loop
    starts counting from 0, or minus the steps already done.
    """

    seed: int
    purpose: str
    n_items: int
    batch_size: int
    first: int = 0

    def __call__(self, step: int) -> NDArray[Any]:
        return minibatch(self.seed, self.purpose, self.first + step, self.n_items, self.batch_size)


@dataclass(frozen=True)
class InOrder:
    """One item per step, in the order given: the reference's ``fit`` (a slice, a view)."""

    def __call__(self, step: int) -> slice:
        return slice(step, step + 1)


@dataclass(frozen=True)
class Everything:
    """Every item in every step (a ``partial_fit``)."""

    def __call__(self, step: int) -> slice:
        return slice(None)


def run_svi(
    stage: str,
    batches: Callable[[int], Selection],
    statistics: Callable[[Selection, Selection | None], Any],
    update: Callable[[Any, int], StepResult],
    *,
    budget: int,
    monitor: StageMonitor,
    start: int = 0,
    lookahead: bool = False,
) -> Iterator[SVIProgress]:
    """Run SVI steps ``start, start + 1, ...`` until ``budget`` steps or convergence.

    Parameters
    ----------
    stage : {"nmf", "hmm"}
    batches : callable
        ``batches(step)``: the events of loop step ``step`` (indices or a slice).
    statistics : callable
        ``statistics(index, following)``: the sufficient statistics of the events
        ``index``; ``following`` is ``batches(step + 1)`` with ``lookahead``, else None.
    update : callable
        ``update(statistics, step)``: the model's global update; a :class:`StepResult`.
    budget : int
        The stage's most steps (counted from 0, the steps before ``start`` included).
    monitor : StageMonitor
        The stopping rule, holding the history of the steps before ``start``.
    start : int, default=0
        Steps of the stage already done (a resumed fit).
    lookahead : bool, default=False
        Pass the next step's minibatch to ``statistics``.

    Yields
    ------
    SVIProgress
        After every step; the last one has ``converged`` set if the rule stopped it.
    """
    for step in range(start, budget):
        index = batches(step)
        following = batches(step + 1) if lookahead else None
        result = update(statistics(index, following), step)
        converged = monitor.report(result.elbo, result.count, result.ready)
        yield SVIProgress(
            stage,
            step + 1,
            budget,
            float(result.elbo),
            int(result.count),
            converged,
            tuple(monitor.counts),
        )
        if converged:
            return
