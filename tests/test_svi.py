"""The one SVI loop (specufex_dask.inference.svi): its progress record, and that the
in-memory estimators and the pipeline both run it with the same minibatches."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import xarray as xr

import specufex_dask.inference.svi as svi
from specufex_dask import BayesianHMM, BayesianNonparametricNMF, SpecUFEx, models, pipeline
from specufex_dask.inference.convergence import StageMonitor
from specufex_dask.inference.svi import (
    InOrder,
    SeededMinibatches,
    StepResult,
    SVIProgress,
    run_svi,
)


def test_the_progress_record_is_frozen_and_tells_the_callback_what_it_did() -> None:
    record = SVIProgress("nmf", 3, 10, -1.5, 7, False, (7, 7))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.step = 4
    assert record.info() == {
        "step": 3, "total": 10, "elbo": -1.5, "converged": False, "n_patterns": 7,
    }  # fmt: skip
    assert SVIProgress("hmm", 1, 2, 0.0, 4, True).info()["n_states"] == 4


def _toy_loop(elbos, *, budget, start=0, lookahead=False, tol=1e-3, window=2):
    """run_svi with recorded calls: statistics are the indices, the update reads ELBOs."""
    calls = []

    def statistics(index, following):
        calls.append((index, following))
        return index

    def update(stats, step):
        return StepResult(elbos[step], count=5, ready=True)

    batches = SeededMinibatches(seed=4, purpose="nmf_batch", n_items=30, batch_size=3, first=-1)
    monitor = StageMonitor(tol, window)
    records = list(
        run_svi("nmf", batches, statistics, update, budget=budget, monitor=monitor,
                start=start, lookahead=lookahead)
    )  # fmt: skip
    return records, calls, batches


def test_the_loop_runs_the_budget_draws_seeded_minibatches_and_reads_ahead() -> None:
    elbos = [-100.0 * (i + 1) for i in range(6)]  # never settles
    records, calls, batches = _toy_loop(elbos, budget=6, lookahead=True)
    assert [r.step for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r.total == 6 and not r.converged and r.count == 5 for r in records)
    assert [r.elbo for r in records] == elbos
    for step, (index, following) in enumerate(calls):
        assert np.array_equal(index, batches(step)) and np.array_equal(
            following, batches(step + 1)
        )
        assert np.array_equal(index, np.sort(index)) and len(index) == 3
    # loop step s draws number first + s: the model's step counter in the NMF
    assert np.array_equal(calls[0][0], svi.minibatch(4, "nmf_batch", -1, 30, 3))
    # a resumed loop goes on with the same numbering and draws
    resumed, resumed_calls, _ = _toy_loop(elbos, budget=6, start=4)
    assert [r.step for r in resumed] == [5, 6]
    assert [c[1] for c in resumed_calls] == [None, None]
    assert np.array_equal(resumed_calls[0][0], calls[4][0])


def test_the_loop_stops_on_the_step_it_converged() -> None:
    records, calls, _ = _toy_loop([-10.0] * 20, budget=20, tol=1e-6, window=2)
    assert [r.converged for r in records] == [False, False, False, True]
    assert len(calls) == 4 and records[-1].counts == (5, 5, 5, 5)


def test_in_order_batches_are_the_reference_one_event_per_step() -> None:
    data = np.arange(5)
    assert [data[InOrder()(step)].tolist() for step in range(3)] == [[0], [1], [2]]


@pytest.fixture
def drawn(monkeypatch) -> list[tuple[str, int, tuple]]:
    """Every minibatch drawn through the loop: (purpose, number, indices)."""
    calls = []
    original = svi.minibatch

    def recorded(seed, purpose, step, n_items, batch_size):
        index = original(seed, purpose, step, n_items, batch_size)
        calls.append((purpose, step, tuple(index.tolist())))
        return index

    monkeypatch.setattr(svi, "minibatch", recorded)
    return calls


def test_the_estimators_and_the_pipeline_run_the_same_loop(drawn) -> None:
    """Same seed, same minibatch sequence of both stages, same model: SpecUFEx steps
    through the estimators' loop, with the statistics computed by its tasks."""
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, 2.0, size=(30, 12, 9))
    nmf = BayesianNonparametricNMF(X.shape, 6, batch_size=7, max_steps=6, random_state=5)
    nmf.fit(X)
    hmm = BayesianHMM(nmf.num_pat, nmf.gain, 3, batch_size=7, max_steps=5, n_eff=len(X),
                      random_state=5)  # fmt: skip
    hmm.fit(nmf.transform(X))
    in_memory, drawn[:] = list(drawn), []
    data = xr.DataArray(X, dims=("event", "frequency", "time"))
    model = SpecUFEx(6, 3, nmf_steps=6, hmm_steps=5, batch_size=7, tol=None, random_state=5,
                     client=False, chunk_events=8).fit(data)  # fmt: skip
    assert [d[0] for d in in_memory] == ["nmf_batch"] * 6 + ["hmm_batch"] * 5
    assert drawn == in_memory
    assert np.array_equal(model.nmf_.W1, nmf.W1) and np.array_equal(model.hmm_.B1, hmm.B1)
    # the same last record, but for the stopping rule's window (the pipeline's is longer)
    for stage, estimator in (("nmf", nmf), ("hmm", hmm)):
        record = model.progress_[stage]
        assert dataclasses.replace(record, counts=()) == dataclasses.replace(
            estimator.progress_, counts=()
        )


def test_the_reference_schedule_is_applied_in_one_place() -> None:
    """ALGORITHM.md 2c: compat.hmm_schedule, called by BayesianHMM.svi_update only."""
    assert "hmm_schedule" not in inspect.getsource(pipeline)
    assert inspect.getsource(models).count("hmm_schedule(") == 1
    assert "hmm_schedule(" in inspect.getsource(BayesianHMM.svi_update)
