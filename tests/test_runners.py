"""SVI steps on step runners (Dask actors): same statistics as tasks, rows read a step
ahead used exactly once, runners that follow the cluster's workers and notice a lost one."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from specufex_dask.inference.stats import tree_root
from specufex_dask.inference.steps import NMFStepParameters
from specufex_dask.io import archive
from specufex_dask.parallel import engine, executor, runners, tasks
from specufex_dask.parallel.engine import EventChunks, StoredRows
from specufex_dask.parallel.runners import ActorExecutor, StepRunner, StepRunners
from specufex_dask.parallel.tasks import stored_task

N_EVENTS, N_FREQUENCIES, N_TIMES, N_PATTERNS = 40, 12, 9, 4


def _archive(path: Path, rng: np.random.Generator, chunk_events: int = 4) -> str:
    values = rng.gamma(2.0, 1.0, size=(N_EVENTS, N_FREQUENCIES, N_TIMES)).astype(np.float32)
    archive.write_spectrograms(
        path, values, [f"ev{i:02d}" for i in range(N_EVENTS)],
        np.linspace(1.0, 20.0, N_FREQUENCIES), np.arange(N_TIMES) * 0.5,
        chunk_events=chunk_events, shard_events=chunk_events,
    )  # fmt: skip
    return str(path)


def _params(rng: np.random.Generator) -> NMFStepParameters:
    return NMFStepParameters(
        log_basis=np.log(rng.gamma(1.0, 1.0, size=(N_FREQUENCIES, N_PATTERNS))),
        basis_weight=rng.gamma(2.0, 1.0, size=N_PATTERNS),
        h01=0.1, h02=0.1, n_inner=3, dtype="float32",
    )  # fmt: skip


def _task(path: str, rows: np.ndarray, first: int, total: int, params) -> tuple:
    ids = np.array([f"ev{i:02d}" for i in rows])
    return (StoredRows(path, rows), None, ids, first, total, engine._nmf_leaves, params)


def _expected(path: str, rows: np.ndarray, params) -> object:
    """Statistics of ``rows`` computed from what the archive holds now, without runners."""
    return tree_root(engine.task_nodes(*_task(path, rows, 0, len(rows), params)), len(rows))


def _overwrite(path: str, values: np.ndarray) -> None:
    archive.write_region(path, archive.SPECTROGRAM, 0, values)


def test_rows_read_ahead_are_used_once(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    params = _params(rng)
    rows = np.array([1, 6, 7, 30])
    before = _expected(path, rows, params)
    runner = StepRunner()
    assert runner.read_ahead([StoredRows(path, rows)]) == 1
    _overwrite(path, np.full((N_EVENTS, N_FREQUENCIES, N_TIMES), 3.0, np.float32))
    after = _expected(path, rows, params)
    assert not np.array_equal(before.basis_counts, after.basis_counts)

    # the step reads nothing: it gets the rows as they were when read ahead
    first = tree_root(runner.run(engine.task_nodes, [_task(path, rows, 0, 4, params)]), 4)
    np.testing.assert_array_equal(first.basis_counts, before.basis_counts)
    # once only: the next step reads the archive again
    second = tree_root(runner.run(engine.task_nodes, [_task(path, rows, 0, 4, params)]), 4)
    np.testing.assert_array_equal(second.basis_counts, after.basis_counts)


def test_a_call_reads_the_next_calls_rows_on_its_reader_thread(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    params = _params(rng)
    rows = np.array([2, 3, 17])
    before = _expected(path, rows, params)
    runner = StepRunner()
    other = _task(path, np.array([0, 1]), 0, 2, params)
    first = runner.run(engine.task_nodes, [other], ahead=[StoredRows(path, rows)])
    np.testing.assert_array_equal(
        tree_root(first, 2).basis_counts, _expected(path, np.array([0, 1]), params).basis_counts
    )
    runner._reading.result()  # the read on the runner's reader thread has finished
    _overwrite(path, np.full((N_EVENTS, N_FREQUENCIES, N_TIMES), 3.0, np.float32))
    got = tree_root(runner.run(engine.task_nodes, [_task(path, rows, 0, 3, params)]), 3)
    np.testing.assert_array_equal(got.basis_counts, before.basis_counts)


def test_a_call_records_its_events_and_the_read_ahead_it_waited_for(
    tmp_path: Path, rng, monkeypatch
) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    params = _params(rng)
    read = StoredRows.read

    def slow_read(self):
        time.sleep(0.05)
        return read(self)

    monkeypatch.setattr(StoredRows, "read", slow_read)
    monkeypatch.setattr(runners, "CALL_TIMES", runners.deque(maxlen=2))
    runner = StepRunner()
    first = _task(path, np.array([0, 1, 5]), 0, 3, params)
    runner.run(engine.task_nodes, [first], ahead=[StoredRows(path, np.array([2, 3]))])
    runner.run(engine.task_nodes, [_task(path, np.array([2, 3]), 0, 2, params)])
    earlier, later = runners.CALL_TIMES
    assert (earlier["events"], later["events"]) == (3.0, 2.0)
    # the first call read its own rows; the second's were read ahead, on the reader thread
    assert earlier["compute"] >= 0.05 and earlier["read_ahead"] == 0.0
    assert later["read_ahead"] >= 0.05
    assert later["start"] >= earlier["end"] >= earlier["start"]
    runner.run(engine.task_nodes, [first])
    assert runners.CALL_TIMES[-1]["read_ahead"] == 0.0  # each read ahead is counted once


def test_opening_an_archive_for_a_fit_holds_no_index_of_its_ids(
    tmp_path: Path, monkeypatch
) -> None:
    import tracemalloc

    n = 50_000
    monkeypatch.setattr(archive, "_COORD_CHUNK", 4096)  # chunks of ids, as at 1M events
    path = archive.write_spectrograms(
        tmp_path / "a.zarr", np.ones((n, 1, 1), np.float32), [f"ev{i:07d}" for i in range(n)],
        [1.0], [0.0], chunk_events=65536, shard_events=None,
    )  # fmt: skip
    monkeypatch.setattr(archive, "_ID_BLOCK", 2048)  # the duplicate check's block, scaled down
    tracemalloc.start()
    try:
        chunks = EventChunks.from_data(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(chunks.event) == n
    # a pandas index of the ids and a sort of them as str take over 200 bytes an event;
    # the duplicate check keeps 8 (a hash), beside one stored chunk of ids as it reads them
    assert peak < 60 * n, f"opening took {peak / n:.0f} bytes an event"


def test_an_archives_ids_stay_in_it_until_a_task_names_an_event(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    chunks = EventChunks.from_data(path)
    assert isinstance(chunks.event, tasks.StoredEventIds) and len(chunks.event) == N_EVENTS
    ids = chunks.event[np.array([3, 17, 30])]
    assert len(ids) == 3 and "values" not in vars(ids)  # nothing read yet
    assert [ids[0], ids[2]] == ["ev03", "ev30"]
    assert list(chunks.event[5:8].values) == ["ev05", "ev06", "ev07"]
    assert np.asarray(chunks.event).tolist() == [f"ev{i:02d}" for i in range(N_EVENTS)]
    values = np.full((N_EVENTS, N_FREQUENCIES, N_TIMES), 1.0, np.float32)
    values[17, 0, 0] = -1.0
    _overwrite(path, values)
    task = stored_task(chunks, np.array([3, 17, 30]), 0, 3, (engine._nmf_leaves, _params(rng)))
    with pytest.raises(engine.BadValues, match="events ev17: 1 negative"):
        engine.task_nodes(*task)


def test_the_next_steps_rows_are_read_after_the_tasks_and_used_by_the_next_call(
    tmp_path: Path, rng, monkeypatch
) -> None:
    """The read ahead starts when a call's tasks end (beside them it slows their kernels),
    and the next call's task gets those rows without reading them again."""
    path = _archive(tmp_path / "a.zarr", rng)
    reads: list[tuple[int, ...]] = []
    read = StoredRows.read

    def recorded(self):
        reads.append(tuple(np.asarray(self.rows).tolist()))
        return read(self)

    given: list[bool] = []

    def records_the_reads(source, *rest, values=None) -> dict:
        given.append(values is not None)
        time.sleep(0.2)  # time enough for a read started beside the task to happen
        return {(0, 0): float(len(reads))}

    monkeypatch.setattr(StoredRows, "read", recorded)
    runner = StepRunner()
    first = _task(path, np.array([0, 1]), 0, 2, _params(rng))
    ahead = [StoredRows(path, np.array([5, 6]))]
    # no read had started when the task ran: it saw none
    assert runner.run(records_the_reads, [first], ahead=ahead) == {(0, 0): 0.0}
    second = _task(path, np.array([5, 6]), 0, 2, _params(rng))
    assert runner.run(records_the_reads, [second]) == {(0, 0): 1.0}
    assert reads == [(5, 6)] and given == [False, True]


def test_rows_read_ahead_are_not_taken_for_other_rows(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    params = _params(rng)
    runner = StepRunner()
    runner.read_ahead([StoredRows(path, np.array([1, 2, 3]))])
    _overwrite(path, np.full((N_EVENTS, N_FREQUENCIES, N_TIMES), 3.0, np.float32))
    rows = np.array([1, 2, 4])
    got = tree_root(runner.run(engine.task_nodes, [_task(path, rows, 0, 3, params)]), 3)
    np.testing.assert_array_equal(got.basis_counts, _expected(path, rows, params).basis_counts)


def test_a_failed_read_ahead_is_left_to_the_step(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    rows = np.array([0, 1])
    chunk = Path(path) / archive.SPECTROGRAM / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    runner = StepRunner()
    assert runner.read_ahead([StoredRows(path, rows)]) == 0
    with pytest.raises(archive.ArchiveError, match=str(chunk)):
        runner.run(engine.task_nodes, [_task(path, rows, 0, 2, _params(rng))])


def test_threads_give_the_same_nodes(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "a.zarr", rng)
    params = _params(rng)
    index = np.sort(rng.choice(N_EVENTS, 12, replace=False))
    tasks = [_task(path, index[a : a + 4], a, 12, params) for a in (0, 4, 8)]
    one = StepRunner().run(engine.task_nodes, tasks, threads=1)
    three = StepRunner().run(engine.task_nodes, tasks, threads=3)
    assert one.keys() == three.keys()
    for key in one:
        np.testing.assert_array_equal(one[key].basis_counts, three[key].basis_counts)
    whole = _expected(path, index, params)
    np.testing.assert_array_equal(tree_root(three, 12).basis_counts, whole.basis_counts)


# 15 events in 6 of the 10 chunks of 4 events: 4, 1, 2, 3, 1 and 4 events
PLANTED = np.array([0, 1, 2, 3, 5, 8, 9, 12, 13, 14, 30, 36, 37, 38, 39])


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (1, [(0, 15)]),
        (2, [(0, 7), (7, 15)]),  # 7.5 events each: the chunk end at 7 is nearest
        (3, [(0, 5), (5, 10), (10, 15)]),
        (6, [(0, 4), (4, 5), (5, 7), (7, 10), (10, 11), (11, 15)]),
        (20, [(0, 4), (4, 5), (5, 7), (7, 10), (10, 11), (11, 15)]),  # one per chunk at most
    ],
)
def test_balanced_groups_take_whole_chunks(tmp_path: Path, rng, parts, expected) -> None:
    chunks = EventChunks.from_data(_archive(tmp_path / "a.zarr", rng, chunk_events=4))
    groups = chunks.balanced_groups(PLANTED, parts)
    assert groups == expected
    chunks_read = [set(PLANTED[a:b] // 4) for a, b in groups]
    assert sum(len(read) for read in chunks_read) == len(set().union(*chunks_read))


def test_groups_are_dealt_one_per_worker_thread(tmp_path: Path, rng, monkeypatch) -> None:
    chunks = EventChunks.from_data(_archive(tmp_path / "a.zarr", rng, chunk_events=4))
    pool = StepRunners(client=None)
    pool._runners, pool._threads = ["a", "b"], [1, 2]  # three threads: a, b, b
    assert pool._groups(chunks, PLANTED, engine.TASK_EVENTS) == [[(0, 5)], [(5, 10), (10, 15)]]
    # at most about 4 events a group: 6 groups
    assert pool._groups(chunks, PLANTED, 4) == [
        [(0, 4), (7, 10)],
        [(4, 5), (5, 7), (10, 11), (11, 15)],
    ]


class _Silent:
    """An actor call whose worker never answers."""

    def result(self, timeout=None):
        raise TimeoutError


class _Scheduler:
    def __init__(self, workers: dict) -> None:
        self.workers = workers

    def nthreads(self) -> dict:
        return self.workers


def test_a_call_to_a_worker_that_left_fails(monkeypatch) -> None:
    monkeypatch.setattr(runners, "LIVENESS_CHECK_S", 0.0)
    pool = StepRunners(client=_Scheduler({"tcp://127.0.0.1:2": 1}))
    with pytest.raises(OSError, match="tcp://127.0.0.1:1 left the cluster"):
        pool._result(_Silent(), "tcp://127.0.0.1:1")


def test_runners_follow_the_workers_and_match_the_tasks(
    local_cluster, tmp_path: Path, rng: np.random.Generator, monkeypatch, caplog
) -> None:
    cluster, client = local_cluster
    caplog.set_level(logging.INFO, logger="specufex_dask")
    monkeypatch.setattr(executor, "WINDOW_LOOKUP_S", 0.0)  # look the workers up every step
    path = _archive(tmp_path / "a.zarr", rng)
    chunks = EventChunks.from_data(path)
    params = _params(rng)
    index = np.sort(rng.choice(N_EVENTS, 32, replace=False))
    following = np.sort(rng.choice(N_EVENTS, 32, replace=False))
    by_tasks = engine.nmf_statistics(chunks, index, params, client)
    with ActorExecutor(client) as on_actors:
        pool = on_actors.runners
        first = engine.nmf_statistics(chunks, index, params, client, on_actors, following)
        assert pool._addresses == sorted(client.nthreads())
        assert (runners.STEP_TIMES[-1]["events"], runners.STEP_TIMES[-1]["calls"]) == (32, 1)
        np.testing.assert_array_equal(first.basis_counts, by_tasks.basis_counts)

        cluster.scale(2)
        client.wait_for_workers(2)
        second = engine.nmf_statistics(chunks, following, params, client, on_actors, None)
        assert len(pool._addresses) == 2
        assert pool._addresses == sorted(client.nthreads())
        expected = engine.nmf_statistics(chunks, following, params, client)
        np.testing.assert_array_equal(second.basis_counts, expected.basis_counts)
        assert second.elbo == expected.elbo
    assert "step runners failed" not in caplog.text  # the runners ran both steps


def _one_node(source, local, ids, position, total, *arguments, values=None) -> dict:
    return {(0, position): float(len(ids))}


def test_calls_go_to_the_workers_without_the_scheduler_relaying_them(
    local_cluster, tmp_path: Path, rng, monkeypatch
) -> None:
    cluster, client = local_cluster
    path = _archive(tmp_path / "a.zarr", rng)
    relayed: list[str] = []
    proxy = cluster.scheduler.handlers["proxy"]

    async def counted_proxy(*args, **kwargs):
        relayed.append(kwargs.get("worker", ""))
        return await proxy(*args, **kwargs)

    monkeypatch.setitem(cluster.scheduler.handlers, "proxy", counted_proxy)
    task = _task(path, np.array([3, 4]), 0, 2, _params(rng))
    with StepRunners(client) as pool:
        pool._follow_cluster()
        assert pool._runners[0].run(_one_node, [task]).result() == {(0, 0): 2.0}
        assert relayed == []
        # told not to talk to workers directly, the client's calls go through the scheduler
        monkeypatch.setattr(client, "direct_to_workers", False)
        pool.release()
        pool._follow_cluster()
        assert pool._runners[0].run(_one_node, [task]).result() == {(0, 0): 2.0}
        assert relayed == [pool._addresses[0]]


def test_a_fit_runs_its_steps_on_the_runners(local_cluster, tmp_path: Path, rng, monkeypatch):
    from specufex_dask import SpecUFEx

    _, client = local_cluster
    path = _archive(tmp_path / "a.zarr", rng)
    calls: dict[str, int] = {"run": 0, "read_ahead": 0}

    def counted(name: str):
        original = getattr(StepRunner, name)

        def method(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name in calls:  # the cluster's workers are threads of this process
        monkeypatch.setattr(StepRunner, name, counted(name))
    settings = {"num_pat": 3, "num_state": 2, "nmf_steps": 4, "hmm_steps": 3, "batch_size": 12}
    on_runners = SpecUFEx(**settings, client=client).fit(path)
    # one worker: one call per step, and one for the frames the HMM starts from
    assert calls["run"] == 8
    deadline = time.monotonic() + 30  # the last read ahead may still be on its way
    while calls["read_ahead"] < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls["read_ahead"] == 7
    alone = SpecUFEx(**settings, client=False).fit(path)
    for name in ("W1", "W2", "A1", "A2"):
        np.testing.assert_array_equal(getattr(on_runners.nmf_, name), getattr(alone.nmf_, name))
    for name in ("B1", "B2", "gain"):
        np.testing.assert_array_equal(getattr(on_runners.hmm_, name), getattr(alone.hmm_, name))


def test_after_a_failure_steps_run_as_tasks_for_a_while(
    local_cluster, tmp_path: Path, rng: np.random.Generator, monkeypatch
) -> None:
    _, client = local_cluster
    path = _archive(tmp_path / "a.zarr", rng)
    chunks = EventChunks.from_data(path)
    params = _params(rng)
    index = np.sort(rng.choice(N_EVENTS, 16, replace=False))
    expected = engine.nmf_statistics(chunks, index, params, client)
    tries: list[int] = []

    def broken(self, *args):
        tries.append(1)
        raise OSError("Unable to contact Actor's worker")

    monkeypatch.setattr(StepRunners, "nodes", broken)
    with ActorExecutor(client) as on_actors:
        pool = on_actors.runners
        for _ in range(3):
            got = engine.nmf_statistics(chunks, index, params, client, on_actors, index)
            np.testing.assert_array_equal(got.basis_counts, expected.basis_counts)
        assert len(tries) == 1 and not pool.ready()
        monkeypatch.setattr(runners, "RETRY_AFTER_S", 0.0)
        pool.failed()
        engine.nmf_statistics(chunks, index, params, client, on_actors, index)
        assert len(tries) == 2


def test_large_minibatches_are_not_read_ahead(tmp_path: Path, rng, monkeypatch) -> None:
    chunks = EventChunks.from_data(_archive(tmp_path / "a.zarr", rng))
    pool = StepRunners(client=None)
    pool._runners, pool._threads = ["a", "b"], [1, 1]
    following = np.sort(rng.choice(N_EVENTS, 16, replace=False))
    # 16 rows of 12 x 9 float64 are 13824 bytes
    monkeypatch.setattr(runners, "READ_AHEAD_MAX_BYTES", 16 * 12 * 9 * 8)
    ahead = pool._ahead(chunks, following, engine.TASK_EVENTS)
    read = np.concatenate([source.rows for sources in ahead for source in sources])
    np.testing.assert_array_equal(np.sort(read), following)
    assert all(ahead)  # both runners read some
    monkeypatch.setattr(runners, "READ_AHEAD_MAX_BYTES", 16 * 12 * 9 * 8 - 1)
    assert pool._ahead(chunks, following, engine.TASK_EVENTS) == [[], []]
    assert pool._ahead(chunks, None, engine.TASK_EVENTS) == [[], []]
