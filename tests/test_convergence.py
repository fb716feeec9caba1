"""The stopping rule of the pipeline's stages (specufex_dask.inference.convergence)."""

from __future__ import annotations

import numpy as np
import pytest

from specufex_dask.inference.convergence import (
    MAX_NOISY_WINDOW,
    StageMonitor,
    auto_steps,
    means_settled,
    noisy_window,
    states_in_use,
    window_steps,
)
from specufex_dask.models import ConvergenceMonitor


def _report_all(monitor: StageMonitor, elbos, counts, ready=True) -> list[bool]:
    return [monitor.report(e, c, ready) for e, c in zip(elbos, counts, strict=True)]


def _first_stop(monitor: StageMonitor, elbos, counts) -> int | None:
    """The step (1-based) the monitor stops at, None if it never does."""
    for step, (elbo, count) in enumerate(zip(elbos, counts, strict=True), start=1):
        if monitor.report(elbo, count):
            return step
    return None


def _noisy_elbos(rng, n: int, noise: float, drift: float = 0.0) -> np.ndarray:
    """A minibatch-like ELBO: -3e10 plus a relative drift per step and white noise."""
    level = -3e10 * (1.0 - drift * np.arange(n))
    return level * (1.0 + noise * rng.standard_normal(n))


def test_a_flat_elbo_and_a_steady_count_converge_after_two_windows() -> None:
    monitor = StageMonitor(1e-4, 3)
    assert _report_all(monitor, [100.0] * 6, [5] * 6) == [False] * 5 + [True]
    assert monitor.converged


def test_the_window_grows_to_a_quarter_of_the_steps_up_to_its_bound() -> None:
    assert [noisy_window(n, 20) for n in (0, 40, 80, 200, 1000, 5000)] == [
        20, 20, 20, 50, 250, MAX_NOISY_WINDOW,
    ]  # fmt: skip
    assert noisy_window(3, 1) == 1 and noisy_window(10, 1) == 2


def test_a_noisy_stationary_elbo_stops_where_a_fixed_window_runs_on() -> None:
    """White noise of 3 % a step (what a 64-event step gave at 100k): two means of 20
    steps differ by about 1 %, so the fixed window meets 1e-4 on about 1 % of the steps,
    by chance; the growing window with the standard-error test stops at the minimum of
    200 steps on every draw of the noise."""
    for seed in range(5):
        elbos = _noisy_elbos(np.random.default_rng(seed), 3000, 0.03)
        fixed = ConvergenceMonitor(1e-4, 20)
        assert np.mean([fixed.report(e) for e in elbos]) < 0.02
        assert _first_stop(StageMonitor(1e-4, 20, min_steps=200), elbos, [30] * 3000) == 200


def test_holds_judges_the_steps_recorded_as_the_next_report_would() -> None:
    """What a resumed stage that stopped is asked: does the rule hold on its history
    under these settings? Where the first monitor stopped it does, under the same
    settings; not under a tol of None, nor with more steps asked before a stop, nor
    one step earlier; and a drifting history never holds."""
    elbos = _noisy_elbos(np.random.default_rng(3), 600, 0.03)
    stop = _first_stop(StageMonitor(1e-4, 20, min_steps=200), elbos, [30] * 600)
    assert stop is not None
    history, counts = elbos[:stop], [30] * stop
    assert StageMonitor(1e-4, 20, history, counts, 200).holds()
    assert not StageMonitor(None, 20, history, counts, 200).holds()
    assert not StageMonitor(1e-4, 20, history, counts, stop + 1).holds()
    earlier = StageMonitor(1e-4, 20, history[:-1], counts[:-1], 200)
    assert not earlier.holds()  # the first monitor did not stop there
    drifting = _noisy_elbos(np.random.default_rng(1), 2000, 0.01, drift=1e-3 / 3)
    assert not StageMonitor(1e-4, 20, drifting, [30] * 2000, 200).holds()
    # the in-memory rule: fixed windows within tol
    flat = [100.0] * 40
    assert StageMonitor(1e-4, 20, flat, [], noise_aware=False).holds()
    assert not StageMonitor(1e-4, 20, flat[:39], [], noise_aware=False).holds()


def test_a_drift_larger_than_the_noise_holds_the_stop_back() -> None:
    """1e-3 relative a step under 1 % of noise: a window's mean moves by 5 standard
    errors and more, and the rule runs the whole budget; the same noise alone stops."""
    rng = np.random.default_rng(1)
    drifting = _noisy_elbos(rng, 2000, 0.01, drift=1e-3 / 3)
    assert _first_stop(StageMonitor(1e-4, 20, min_steps=200), drifting, [30] * 2000) is None
    flat = _noisy_elbos(rng, 2000, 0.01)
    assert _first_stop(StageMonitor(1e-4, 20, min_steps=200), flat, [30] * 2000) is not None


def test_means_settled_within_tol_or_one_standard_error() -> None:
    assert means_settled(np.array([10.0, 10.0, 10.0, 10.001]), 2, 1e-3)
    assert not means_settled(np.array([10.0, 10.0, 11.0, 11.0]), 2, 1e-3)
    # alternating noise of +-1 around 10 and 10.2: the step's noise is about 1.4, the
    # standard error of two means of 50 steps about 0.28, so 0.2 is within it ...
    noise = np.tile([1.0, -1.0], 50)
    assert means_settled(np.concatenate([10.0 + noise[:50], 10.2 + noise[50:]]), 50, 1e-6)
    # ... and 1.0 is not
    assert not means_settled(np.concatenate([10.0 + noise[:50], 11.0 + noise[50:]]), 50, 1e-6)


def test_a_pattern_count_that_changed_within_the_window_holds_the_stop_back() -> None:
    """The NMF's count has no noise: it must not change over the last window (a quarter
    of the steps run), so a late prune starts the wait again."""
    # a prune every third step, the last one at step 103 (index 102)
    counts = [75 - i // 3 for i in range(102)] + [41] * 298
    stop = _first_stop(StageMonitor(1e-4, 4), [5.0] * 400, counts)
    # the window of n // 4 steps and the step before it all hold 41 once
    # n - n // 4 - 1 >= 102, from n = 137 on
    assert stop == 137


def test_a_count_whose_window_mean_moved_holds_the_stop_back() -> None:
    monitor = StageMonitor(1e-4, 3, noisy_count=True)
    #                               the count falls by one at the 5th step
    stops = _report_all(monitor, [100.0] * 9, [5, 5, 5, 5, 4, 4, 4, 4, 4])
    # windows of 3: step 6 compares 5, 5, 5 with 5, 4, 4 (a change of 0.67), step 7 5
    # with 4, step 8 4.67 with 4; step 9 compares 4.33 with 4 (0.33)
    assert stops == [False] * 8 + [True]


def test_a_noisy_count_with_a_steady_mean_does_not_hold_the_stop_back() -> None:
    """States in use in a minibatch go up and down by one from step to step."""
    rng = np.random.default_rng(2)
    counts = 12 + rng.integers(-1, 2, size=400)
    noisy = StageMonitor(1e-4, 20, min_steps=200, noisy_count=True)
    assert _first_stop(noisy, [5.0] * 400, counts) == 200
    assert _first_stop(StageMonitor(1e-4, 20, min_steps=200), [5.0] * 400, counts) is None


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
    rng = np.random.default_rng(3)
    n = 1300
    elbos = list(_noisy_elbos(rng, n, 0.02) * (1 + 0.3 * 0.99 ** np.arange(n)))
    counts = list(np.maximum(20, 75 - np.arange(n) // 8) + rng.integers(0, 2, size=n))
    whole = StageMonitor(1e-4, 20, min_steps=200, noisy_count=True)
    expected = _report_all(whole, elbos, counts)
    assert expected.index(True) == 998  # the count settles about step 440
    for cut in (1, 150, 399, 400, 401, 777, 998):
        first = StageMonitor(1e-4, 20, min_steps=200, noisy_count=True)
        _report_all(first, elbos[:cut], counts[:cut])
        # what a checkpoint keeps: two of the longest windows of counts
        assert len(first.counts) == min(cut, 2 * MAX_NOISY_WINDOW)
        resumed = StageMonitor(
            1e-4, 20, history=elbos[:cut], counts=first.counts, min_steps=200, noisy_count=True
        )
        assert _report_all(resumed, elbos[cut:], counts[cut:]) == expected[cut:], cut


def test_the_in_memory_rule_is_the_plain_elbo_rule() -> None:
    rng = np.random.default_rng(0)
    elbos = 1e5 + np.cumsum(rng.normal(0, 5, size=60)) - 1e4 * 0.8 ** np.arange(60)
    for tol in (1e-3, 1e-4, 1e-5):
        alone = ConvergenceMonitor(tol, 4)
        combined = StageMonitor(tol, 4, noise_aware=False)
        counts = rng.integers(1, 9, size=60)  # ignored
        assert [alone.report(e) for e in elbos] == _report_all(combined, elbos, counts)


def test_states_in_use_hold_one_percent_of_the_frames() -> None:
    # 1000 frames: 0.01 * 1000 = 10 frames is just enough
    counts = np.array([600.0, 300.0, 80.0, 10.0, 9.999, 0.001])
    assert states_in_use(counts, 1000) == 4
    assert states_in_use(np.zeros(3), 10) == 0


@pytest.mark.parametrize(
    ("n_events", "batch", "window", "budget"),
    [(32, 8, 4, 1000), (10, 10, 1, 1000), (10_000, 64, 20, 1000), (100_000, 64, 20, 4689)],
)
def test_window_and_automatic_budget(n_events: int, batch: int, window: int, budget: int) -> None:
    assert window_steps(n_events, batch) == window
    assert auto_steps(n_events, batch) == budget


def test_no_stop_before_the_minimum_number_of_steps() -> None:
    """A flat ELBO and a steady count meet the rule at once; ``min_steps`` (counting a
    resumed fit's earlier steps) holds the stop back until then."""
    monitor = StageMonitor(1e-3, 2, history=[5.0] * 6, counts=[3] * 6, min_steps=10)
    stops = [monitor.report(5.0, 3) for _ in range(5)]
    assert stops == [False, False, False, True, True]
    assert StageMonitor(1e-3, 2, history=[5.0] * 6, counts=[3] * 6).report(5.0, 3)
