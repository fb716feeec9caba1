"""The stopping rule of the pipeline's stages (specufex_dask.inference.convergence)."""

from __future__ import annotations

import numpy as np
import pytest

from specufex_dask.inference.convergence import (
    StageMonitor,
    auto_steps,
    states_in_use,
    window_steps,
)
from specufex_dask.models import ConvergenceMonitor


def _report_all(monitor: StageMonitor, elbos, counts, ready=True) -> list[bool]:
    return [monitor.report(e, c, ready) for e, c in zip(elbos, counts, strict=True)]


def test_a_flat_elbo_and_a_steady_count_converge_after_two_windows() -> None:
    monitor = StageMonitor(1e-4, 3)
    assert _report_all(monitor, [100.0] * 6, [5] * 6) == [False] * 5 + [True]
    assert monitor.converged


def test_the_elbo_rule_is_the_in_memory_models_rule() -> None:
    rng = np.random.default_rng(0)
    elbos = 1e5 + np.cumsum(rng.normal(0, 5, size=60)) - 1e4 * 0.8 ** np.arange(60)
    for tol in (1e-3, 1e-4, 1e-5):
        alone, combined = ConvergenceMonitor(tol, 4), StageMonitor(tol, 4)
        assert [alone.report(e) for e in elbos] == _report_all(combined, elbos, [7] * 60)


def test_a_count_that_changed_within_the_last_window_holds_the_stop_back() -> None:
    monitor = StageMonitor(1e-4, 3)
    #                                           the count changes at the 5th step
    assert _report_all(monitor, [100.0] * 9, [5, 5, 5, 5, 4, 4, 4, 4, 4]) == (
        [False] * 7 + [True, True]
    )
    # the step after the change plus a whole window of steps with the same count
    assert monitor.counts == [4, 4, 4, 4]


def test_a_changing_elbo_holds_the_stop_back_whatever_the_count() -> None:
    monitor = StageMonitor(1e-4, 2)
    assert not any(_report_all(monitor, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], [3] * 6))


def test_no_tol_never_stops() -> None:
    monitor = StageMonitor(None, 2)
    assert not any(_report_all(monitor, [5.0] * 20, [1] * 20))


def test_steps_not_ready_are_recorded_but_never_stop() -> None:
    monitor = StageMonitor(1e-4, 2)
    assert not any(_report_all(monitor, [5.0] * 6, [1] * 6, ready=False))
    assert monitor.report(5.0, 1, True)


def test_a_resumed_monitor_decides_as_the_uninterrupted_one() -> None:
    elbos = [10.0, 12.0, 12.5, 12.6, 12.6, 12.6, 12.6, 12.6, 12.6, 12.6]
    counts = [9, 8, 8, 7, 7, 7, 7, 7, 7, 7]
    whole = StageMonitor(1e-3, 3)
    expected = _report_all(whole, elbos, counts)
    assert any(expected)
    for cut in range(1, len(elbos)):
        first = StageMonitor(1e-3, 3)
        _report_all(first, elbos[:cut], counts[:cut])
        resumed = StageMonitor(1e-3, 3, history=elbos[:cut], counts=first.counts)
        assert len(first.counts) <= 4  # what a checkpoint keeps: window + 1 counts
        assert _report_all(resumed, elbos[cut:], counts[cut:]) == expected[cut:], cut


def test_states_in_use_hold_one_percent_of_the_frames() -> None:
    # 1000 frames: 0.01 * 1000 = 10 frames is just enough
    counts = np.array([600.0, 300.0, 80.0, 10.0, 9.999, 0.001])
    assert states_in_use(counts, 1000) == 4
    assert states_in_use(np.zeros(3), 10) == 0


@pytest.mark.parametrize(
    ("n_events", "batch", "window", "budget"),
    [(32, 8, 4, 200), (10, 10, 1, 200), (10_000, 64, 20, 471), (100_000, 64, 20, 4689)],
)
def test_window_and_automatic_budget(n_events: int, batch: int, window: int, budget: int) -> None:
    assert window_steps(n_events, batch) == window
    assert auto_steps(n_events, batch) == budget


def test_no_stop_before_the_minimum_number_of_steps() -> None:
    """A flat ELBO and a steady count meet the rule at once; ``min_steps`` (counting a
    resumed fit's earlier steps) holds the stop back until then."""
    monitor = StageMonitor(1e-3, 2, history=[5.0] * 6, counts=[3, 3, 3], min_steps=10)
    stops = [monitor.report(5.0, 3) for _ in range(5)]
    assert stops == [False, False, False, True, True]
    assert StageMonitor(1e-3, 2, history=[5.0] * 6, counts=[3, 3, 3]).report(5.0, 3)
