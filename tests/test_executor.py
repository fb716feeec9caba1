"""The executor interface: both implementations give the same bits on a fit, and passes
over all events (the engine's and the ingest driver's) keep a bounded number of tasks
in flight."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from specufex_dask import pipeline
from specufex_dask.ingest import ingest_arrays
from specufex_dask.ingest.preprocessing import SpectrogramParameters
from specufex_dask.io import archive
from specufex_dask.parallel import executor as executor_module
from specufex_dask.parallel.executor import (
    IN_FLIGHT_PER_THREAD,
    Executor,
    TaskExecutor,
    executor_for,
)
from specufex_dask.parallel.runners import ActorExecutor, StepRunner

N_EVENTS, N_FREQUENCIES, N_TIMES = 40, 12, 9


def _archive(path: Path, rng: np.random.Generator) -> str:
    values = rng.gamma(2.0, 1.0, size=(N_EVENTS, N_FREQUENCIES, N_TIMES)).astype(np.float32)
    archive.write_spectrograms(
        path, values, [f"ev{i:02d}" for i in range(N_EVENTS)],
        np.linspace(1.0, 20.0, N_FREQUENCIES), np.arange(N_TIMES) * 0.5, chunk_events=4,
    )  # fmt: skip
    return str(path)


def _slow_square(number: int) -> int:
    time.sleep(0.02)
    return number * number


class _Recorder:
    """Wraps ``client.compute``: the most futures pending at once after a submission."""

    def __init__(self, client, monkeypatch) -> None:
        self.submitted: list = []
        self.most_in_flight = 0
        compute = client.compute

        def recorded(collections, *args, **kwargs):
            result = compute(collections, *args, **kwargs)
            self.submitted.extend(result if isinstance(result, list) else [result])
            pending = sum(future.status == "pending" for future in self.submitted)
            self.most_in_flight = max(self.most_in_flight, pending)
            return result

        monkeypatch.setattr(client, "compute", recorded)


def test_both_implementations_follow_the_protocol(local_cluster) -> None:
    _, client = local_cluster
    assert isinstance(TaskExecutor(client), Executor)
    with ActorExecutor(client) as on_actors:
        assert isinstance(on_actors, Executor)
        assert executor_for(on_actors) is on_actors
    assert isinstance(executor_for(client), TaskExecutor)
    assert not isinstance(client, Executor)


def test_both_implementations_give_the_same_fit(
    local_cluster, tmp_path: Path, rng: np.random.Generator, monkeypatch
) -> None:
    from specufex_dask import SpecUFEx

    _, client = local_cluster
    path = _archive(tmp_path / "a.zarr", rng)
    settings = {"num_pat": 3, "num_state": 2, "nmf_steps": 4, "hmm_steps": 3, "batch_size": 12}
    calls = {"run": 0}
    original = StepRunner.run

    def counted(self, *args, **kwargs):
        calls["run"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StepRunner, "run", counted)  # the workers are threads of this process
    on_actors = SpecUFEx(**settings, client=client).fit(path)
    assert calls["run"] == 8  # every step (and the HMM's start) ran on the actor
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_step_runners", lambda client, chunks: TaskExecutor(client))
        as_tasks = SpecUFEx(**settings, client=client).fit(path)
    assert calls["run"] == 8  # none more: the second fit ran as tasks
    for name in ("W1", "W2", "A1", "A2"):
        np.testing.assert_array_equal(getattr(on_actors.nmf_, name), getattr(as_tasks.nmf_, name))
    for name in ("B1", "B2", "gain"):
        np.testing.assert_array_equal(getattr(on_actors.hmm_, name), getattr(as_tasks.hmm_, name))


def test_a_pass_keeps_a_window_of_tasks_on_a_cluster(local_cluster, monkeypatch) -> None:
    _, client = local_cluster
    recorder = _Recorder(client, monkeypatch)
    results: dict[int, int] = {}
    count = TaskExecutor(client).map_events(
        _slow_square, ((n,) for n in range(12)), results.__setitem__
    )
    assert count == 12 and results == {n: n * n for n in range(12)}
    assert len(recorder.submitted) == 12
    assert recorder.most_in_flight == IN_FLIGHT_PER_THREAD  # one worker thread


def test_a_pass_without_a_cluster_runs_in_waves(monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "available_cores", lambda: 1)
    pulled, done, most = 0, 0, 0

    def arguments():
        nonlocal pulled, most
        for n in range(7):
            pulled += 1
            most = max(most, pulled - done)
            yield (n,)

    def finished(_number: int, _value: int) -> None:
        nonlocal done
        done += 1

    assert TaskExecutor(None).map_events(_slow_square, arguments(), finished) == 7
    assert done == 7 and most == IN_FLIGHT_PER_THREAD


def test_ingest_keeps_a_window_of_tasks_on_a_cluster(
    local_cluster, tmp_path: Path, rng: np.random.Generator, monkeypatch
) -> None:
    from specufex_dask.ingest import driver

    _, client = local_cluster
    monkeypatch.setattr(driver, "DEFAULT_SHARD_EVENTS", 1)  # one write task per event
    recorder = _Recorder(client, monkeypatch)
    waveforms = rng.standard_normal((10, 400))
    params = SpectrogramParameters(fs=20.0, window_s=2.0, fmin=1.0)
    report = ingest_arrays(waveforms, tmp_path / "w.zarr", params, client=client, chunk_events=1)
    assert report.n_written == 10
    assert len(recorder.submitted) == 20  # one inspection per unit, one write per shard
    assert recorder.most_in_flight <= IN_FLIGHT_PER_THREAD
    alone = ingest_arrays(waveforms, tmp_path / "a.zarr", params, chunk_events=1)
    np.testing.assert_array_equal(
        archive.open_archive(report.path).spectrogram.values,
        archive.open_archive(alone.path).spectrogram.values,
    )


def test_dask_input_is_written_through_an_executor(local_cluster, tmp_path, rng, monkeypatch):
    import dask.array as da

    _, client = local_cluster
    recorder = _Recorder(client, monkeypatch)
    values = rng.gamma(2.0, 1.0, size=(9, 4, 3))
    lazy = da.from_array(values, chunks=(2, -1, -1))
    ids, frequency, times = [f"e{i}" for i in range(9)], np.arange(4.0), np.arange(3.0)
    path = archive.write_spectrograms(
        tmp_path / "d.zarr", lazy, ids, frequency, times, shard_events=2,
        executor=TaskExecutor(client),
    )  # fmt: skip
    assert len(recorder.submitted) == 5  # one write per region
    assert recorder.most_in_flight <= IN_FLIGHT_PER_THREAD
    here = archive.write_spectrograms(
        tmp_path / "h.zarr", lazy, ids, frequency, times, chunk_events=2
    )
    for written in (path, here):
        np.testing.assert_array_equal(archive.open_archive(written).spectrogram.values, values)
