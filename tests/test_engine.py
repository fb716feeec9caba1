"""The Dask engine and ``SpecUFEx`` on Zarr archives.

Every result is compared with an independent computation: the in-memory models of
:mod:`specufex_dask.models` fed the same spectrograms, or a fit of the same data with
another chunking, another number of worker processes or without interruption. Equality
is bit for bit: the engine promises the same bits for any split of the events.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import dask
import dask.array
import numpy as np
import pytest
import xarray as xr
import zarr

from specufex_dask.inference.convergence import MIN_STOP_STEPS
from specufex_dask.inference.seeding import minibatch
from specufex_dask.inference.stats import fold
from specufex_dask.inference.steps import nmf_leaves
from specufex_dask.io import archive
from specufex_dask.io.archive import ArchiveError
from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
from specufex_dask.parallel import engine
from specufex_dask.pipeline import SpecUFEx


@pytest.fixture(autouse=True)
def one_task_per_chunk(monkeypatch):
    """These tests count and kill tasks per storage chunk: do not merge chunks."""
    monkeypatch.setattr(engine, "TASK_EVENTS", 1)


N_EVENTS, N_FREQUENCIES, N_TIMES = 32, 30, 20
ARCHIVE_CHUNK = 7  # 5 chunks: 4 of 7 events and one of 4
SETTINGS = {
    "num_pat": 8,
    "num_state": 3,
    "nmf_steps": 9,
    "hmm_steps": 6,
    "batch_size": 8,
    "random_state": 3,
}
NMF_ARRAYS = ("W1", "W2", "A1", "A2")
HMM_ARRAYS = ("B1", "B2", "gain")
OUTPUT_DIMS = {
    "activation": ("event", "pattern", "time"),
    "state_probability": ("event", "state", "time"),
    "transition": ("event", "state", "next_state"),
    "fingerprint": ("event", "state", "next_state"),
}
FREQUENCY = np.linspace(1.0, 30.0, N_FREQUENCIES)
TIME = np.arange(N_TIMES) * 0.5
EVENT_IDS = np.array([f"ev{i:03d}" for i in range(N_EVENTS)])


# ----------------------------------------------------------------------------- fixtures


def _planted_spectrograms(seed: int) -> np.ndarray:
    """Mixtures of three spectral patterns with bursty activations, plus gamma noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.gamma(2.0, 1.0, size=(N_FREQUENCIES, 3))
    patterns[:10, 0] *= 5
    patterns[10:20, 1] *= 5
    patterns[20:, 2] *= 5
    activations = rng.gamma(0.5, 1.0, size=(N_EVENTS, 3, N_TIMES))
    clean = np.einsum("dk,nkt->ndt", patterns, activations)
    return clean + rng.gamma(1.0, 0.1, size=clean.shape)


@pytest.fixture(scope="module")
def spectrograms() -> np.ndarray:
    return _planted_spectrograms(20181)


def _write(path: Path, values, chunk_events: int, frequency=FREQUENCY, sharded=True) -> str:
    """An archive in shards of ``chunk_events`` one-event chunks, or (``sharded`` False)
    in plain chunks of ``chunk_events``, as archives were written before shards."""
    n = values.shape[0]
    archive.write_spectrograms(
        path, values, EVENT_IDS[:n], frequency, TIME[: values.shape[2]], chunk_events=chunk_events,
        shard_events=chunk_events if sharded else None,
    )  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, spectrograms: np.ndarray) -> str:
    """An archive without outputs; tests copy it before writing into it."""
    return _write(tmp_path_factory.mktemp("pristine") / "events.zarr", spectrograms, ARCHIVE_CHUNK)


def _copy(source: str, folder: Path, name: str = "copy.zarr") -> str:
    target = folder / name
    shutil.copytree(source, target)
    return str(target)


@dataclass
class Reference:
    path: str
    model: SpecUFEx
    spectrograms: np.ndarray


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pristine: str, spectrograms: np.ndarray) -> Reference:
    """One uninterrupted fit and transform of the archive, without a cluster."""
    path = _copy(pristine, tmp_path_factory.mktemp("reference"))
    model = SpecUFEx(**SETTINGS, client=False, checkpoint_every=100).fit(path)
    with pytest.MonkeyPatch.context() as patch:
        # outputs chunked like the storage, as the resume tests of this module expect
        patch.setattr(engine, "TASK_EVENTS", 1)
        model.transform_to_zarr(path)
    return Reference(path, model, spectrograms)


def _model_arrays(model: SpecUFEx) -> dict[str, np.ndarray]:
    arrays = {name: getattr(model.nmf_, name) for name in NMF_ARRAYS}
    arrays.update({name: getattr(model.hmm_, name) for name in HMM_ARRAYS})
    return arrays


def assert_same_model(left: SpecUFEx, right: SpecUFEx, *, same_split: bool = True) -> None:
    """Same state bit for bit; the ELBO histories too when the events were split alike.

    Across splits the ELBO is only compared closely here: its exact bits are the business
    of ``test_elbo_history_has_the_same_bits_for_any_split``.
    """
    for name, value in _model_arrays(left).items():
        assert np.array_equal(value, _model_arrays(right)[name]), name
    if same_split:
        assert left.nmf_.elbo_ == right.nmf_.elbo_
        assert left.hmm_.elbo_ == right.hmm_.elbo_
    else:
        np.testing.assert_allclose(left.nmf_.elbo_, right.nmf_.elbo_, rtol=1e-12)
        np.testing.assert_allclose(left.hmm_.elbo_, right.hmm_.elbo_, rtol=1e-12)
    assert (left.nmf_.step, left.hmm_.step) == (right.nmf_.step, right.hmm_.step)


def stored_outputs(path: str) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path)
    return {name: ds[name].values for name in OUTPUT_DIMS}


def assert_same_outputs(left: dict, right: dict) -> None:
    for name in OUTPUT_DIMS:
        assert left[name].shape == right[name].shape, name
        assert np.array_equal(left[name], right[name]), name


def in_memory_outputs(model: SpecUFEx, spectrograms: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs through the in-memory models only (no engine code)."""
    activation = model.nmf_.transform(spectrograms)
    fingerprint, transition, state_probability = model.hmm_.transform(activation)
    return {
        "activation": activation,
        "state_probability": state_probability,
        "transition": transition,
        "fingerprint": fingerprint,
    }


@pytest.fixture
def transform_tasks(monkeypatch) -> list[int]:
    """First event of every chunk the transform writes (tasks run in this process)."""
    starts: list[int] = []
    original = engine._task_transform_to_zarr

    def counted(block, ids, start, path, nmf, hmm):
        result = original(block, ids, start, path, nmf, hmm)
        starts.append(start)
        return result

    monkeypatch.setattr(engine, "_task_transform_to_zarr", counted)
    return starts


def _chunk_starts(n_events: int, chunk_events: int) -> set[int]:
    return set(range(0, n_events, chunk_events))


# ----------------------------------------------------------------------------- 1. layout


def _in_memory_fit(X: np.ndarray) -> tuple[BayesianNonparametricNMF, BayesianHMM]:
    """The same SVI through the in-memory models alone."""
    nmf = BayesianNonparametricNMF(
        X.shape, SETTINGS["num_pat"], random_state=SETTINGS["random_state"],
        batch_size=SETTINGS["batch_size"], max_steps=SETTINGS["nmf_steps"],
    ).fit(X)  # fmt: skip
    hmm = BayesianHMM(
        nmf.num_pat, nmf.gain, SETTINGS["num_state"], random_state=SETTINGS["random_state"],
        batch_size=SETTINGS["batch_size"], max_steps=SETTINGS["hmm_steps"],
    ).fit(nmf.transform(X))  # fmt: skip
    return nmf, hmm


def test_fit_equals_the_in_memory_svi(reference: Reference) -> None:
    nmf, hmm = _in_memory_fit(reference.spectrograms)
    fitted = reference.model
    for name in NMF_ARRAYS:
        assert np.array_equal(getattr(fitted.nmf_, name), getattr(nmf, name)), name
    for name in HMM_ARRAYS:
        assert np.array_equal(getattr(fitted.hmm_, name), getattr(hmm, name)), name
    assert len(nmf.elbo_) == SETTINGS["nmf_steps"] and len(hmm.elbo_) == SETTINGS["hmm_steps"]
    np.testing.assert_allclose(fitted.nmf_.elbo_, nmf.elbo_, rtol=1e-12)
    np.testing.assert_allclose(fitted.hmm_.elbo_, hmm.elbo_, rtol=1e-12)


def test_elbo_history_has_the_same_bits_for_any_split(reference: Reference) -> None:
    """The ELBO decides convergence (``tol``), so it must not depend on the chunking either.

    The in-memory fit groups each minibatch's events 8 at a time in the kernel; the
    archive's chunks of 7 group them otherwise.
    """
    nmf, hmm = _in_memory_fit(reference.spectrograms)
    assert reference.model.nmf_.elbo_ == nmf.elbo_
    assert reference.model.hmm_.elbo_ == hmm.elbo_


def test_archive_holds_outputs_equal_to_the_in_memory_transform(reference: Reference) -> None:
    ds = xr.open_zarr(reference.path)
    expected = in_memory_outputs(reference.model, reference.spectrograms)
    K, S = reference.model.nmf_.num_pat, SETTINGS["num_state"]
    sizes = {"event": N_EVENTS, "pattern": K, "state": S, "next_state": S, "time": N_TIMES}
    for name, dims in OUTPUT_DIMS.items():
        assert ds[name].dims == dims, name
        assert ds[name].shape == tuple(sizes[d] for d in dims), name
        assert np.array_equal(ds[name].values, expected[name]), name
    assert np.array_equal(ds["spectrogram"].values, reference.spectrograms)
    assert [str(v) for v in ds["event"].values] == EVENT_IDS.tolist()
    assert np.array_equal(ds["time"].values, TIME)
    assert ds[engine.TRANSFORMED].values.all()
    assert ds.attrs[engine.TRANSFORM_COMPLETE_ATTR] is True


def test_model_group_holds_the_fitted_state(reference: Reference) -> None:
    group = xr.open_zarr(reference.path, group="model")
    nmf, hmm = reference.model.nmf_, reference.model.hmm_
    expected = {
        "EW": (("frequency", "pattern"), nmf.EW),
        "EA": (("pattern",), nmf.EA.ravel()),
        "gain": (("pattern",), nmf.gain),
        "W1": (("frequency", "pattern"), nmf.W1),
        "W2": (("frequency", "pattern"), nmf.W2),
        "A1": (("pattern",), nmf.A1.ravel()),
        "A2": (("pattern",), nmf.A2.ravel()),
        "EB": (("state", "pattern"), hmm.EB),
        "ElnB": (("state", "pattern"), hmm.ElnB),
        "B1": (("state", "pattern"), hmm.B1),
        "B2": (("state", "pattern"), hmm.B2),
    }
    for name, (dims, values) in expected.items():
        assert group[name].dims == dims, name
        assert np.array_equal(group[name].values, values), name
    assert np.array_equal(group["frequency"].values, FREQUENCY)
    progress = json.loads(group.attrs["progress"])
    assert progress["stage"] == "done"
    assert (progress["nmf_steps"], progress["hmm_steps"]) == (9, 6)
    assert int(group.attrs[engine.MODEL_VERSION_ATTR]) >= 1
    loaded = SpecUFEx.from_archive(reference.path, client=False)
    assert_same_model(loaded, reference.model)


@pytest.fixture
def hmm_starts(monkeypatch) -> list[tuple[np.ndarray, int]]:
    """``(frames, n_frames)`` of every :meth:`BayesianHMM.start_from_frames` call."""
    calls: list[tuple[np.ndarray, int]] = []
    original = BayesianHMM.start_from_frames

    def recorded(self, frames, n_frames):
        calls.append((np.array(frames), n_frames))
        return original(self, frames, n_frames)

    monkeypatch.setattr(BayesianHMM, "start_from_frames", recorded)
    return calls


@pytest.mark.parametrize("chunk_events", [5, 40])
def test_a_dataarray_fit_starts_the_hmm_from_the_frames_of_the_in_memory_model(
    spectrograms: np.ndarray, hmm_starts: list, chunk_events: int
) -> None:
    """The HMM's q(B) starts from the emission frames of a sample of events, computed
    where the events are: the same frames, bit for bit, as the in-memory model's, so
    the same B1, B2 and fingerprints."""
    data = xr.DataArray(spectrograms, dims=("event", "frequency", "time"))
    model = SpecUFEx(**SETTINGS, client=False, chunk_events=chunk_events).fit(data)
    nmf, hmm = _in_memory_fit(spectrograms)
    assert len(hmm_starts) == 2  # the pipeline's, then the in-memory model's
    (pipeline_frames, pipeline_n), (memory_frames, memory_n) = hmm_starts
    assert pipeline_frames.shape == (N_EVENTS * N_TIMES, nmf.num_pat)  # 32 <= 256: all
    assert pipeline_frames.dtype == memory_frames.dtype
    assert np.array_equal(pipeline_frames, memory_frames)
    assert pipeline_n == memory_n == N_EVENTS * N_TIMES
    assert model.hmm_.initialised and model.hmm_.init == "data"
    for name in ("B1", "B2"):
        assert np.array_equal(getattr(model.hmm_, name), getattr(hmm, name)), name
    fingerprints = model.transform(data)["fingerprint"].values
    assert np.array_equal(fingerprints, hmm.transform(nmf.transform(spectrograms))[0])


@pytest.mark.parametrize("source", ["archive", "dataarray"])
def test_emission_frames_of_a_sample_are_in_index_order(reference: Reference, source: str) -> None:
    nmf = reference.model.nmf_
    data = reference.path
    if source == "dataarray":
        data = xr.DataArray(reference.spectrograms, dims=("event", "frequency", "time"))
    chunks = engine.EventChunks.from_data(data, 5)
    hmm = BayesianHMM(nmf.num_pat, nmf.gain, 3, random_state=3)
    index = np.array([0, 3, 4, 11, 12, 30])
    frames = engine.emission_frames(
        chunks, index, nmf.transform_parameters(), hmm.step_parameters(), None
    )
    V = nmf.transform(reference.spectrograms)[index]
    U = V * hmm.gain[None, :, None]
    assert np.array_equal(frames, U.transpose(0, 2, 1).reshape(-1, nmf.num_pat))


# ----------------------------------------------------------------------------- 2. lazy API


def test_transform_is_lazy_and_equals_transform_to_zarr(reference: Reference, monkeypatch) -> None:
    calls: list[int] = []
    original = engine._task_transform

    def counted(block, ids, nmf, hmm):
        calls.append(len(ids))
        return original(block, ids, nmf, hmm)

    monkeypatch.setattr(engine, "_task_transform", counted)
    lazy = reference.model.transform(reference.path)
    assert calls == []
    for name, dims in OUTPUT_DIMS.items():
        assert isinstance(lazy[name].data, dask.array.Array), name
        assert lazy[name].dims == dims
    computed = lazy.compute()
    assert sorted(calls) == [4, 7, 7, 7, 7]  # every chunk once, for all four outputs
    assert [str(v) for v in computed["event"].values] == EVENT_IDS.tolist()
    assert_same_outputs(
        {n: computed[n].values for n in OUTPUT_DIMS}, stored_outputs(reference.path)
    )


@pytest.mark.parametrize("backing", ["numpy", "dask"])
def test_transform_of_a_dataarray(reference: Reference, backing: str) -> None:
    spectrogram = xr.open_zarr(reference.path)["spectrogram"]
    if backing == "numpy":
        data = spectrogram.load()
    else:
        data = spectrogram.chunk({"event": 11})  # chunks unlike the archive's
    lazy = reference.model.transform(data)
    assert isinstance(lazy["fingerprint"].data, dask.array.Array)
    assert_same_outputs({n: lazy[n].values for n in OUTPUT_DIMS}, stored_outputs(reference.path))


@pytest.mark.parametrize(
    ("backing", "chunk_events"), [("numpy", 5), ("dask", 40)], ids=["numpy-5", "dask-40"]
)
def test_fit_of_a_dataarray_equals_the_archive_fit(
    reference: Reference, backing: str, chunk_events: int
) -> None:
    data = xr.DataArray(
        reference.spectrograms,
        dims=("event", "frequency", "time"),
        coords={"event": EVENT_IDS, "frequency": FREQUENCY, "time": TIME},
    )
    if backing == "dask":
        data = data.chunk({"event": chunk_events})
    model = SpecUFEx(**SETTINGS, client=False, chunk_events=chunk_events).fit(data)
    assert_same_model(model, reference.model, same_split=False)


# ----------------------------------------------------------------------------- 3. full batch


def test_full_batch_equals_in_memory_batch_variational_bayes(spectrograms: np.ndarray) -> None:
    X = spectrograms
    data = xr.DataArray(X, dims=("event", "frequency", "time"))
    # tol=None: the in-memory fits below run every step (full batch: windows of 1 step)
    settings = {**SETTINGS, "batch_size": None, "nmf_steps": 10, "hmm_steps": 6, "tol": None}
    # chunks of 8 group the events in the kernel as the in-memory fit does
    model = SpecUFEx(**settings, client=False, chunk_events=8).fit(data)
    nmf = BayesianNonparametricNMF(
        X.shape, SETTINGS["num_pat"], random_state=SETTINGS["random_state"],
        batch_size=N_EVENTS, step_size=1.0, max_steps=10,
    ).fit(X)  # fmt: skip
    hmm = BayesianHMM(
        nmf.num_pat, nmf.gain, SETTINGS["num_state"], random_state=SETTINGS["random_state"],
        batch_size=N_EVENTS, step_size=1.0, max_steps=6,
    ).fit(nmf.transform(X))  # fmt: skip
    assert model.nmf_.elbo_ == nmf.elbo_
    assert model.hmm_.elbo_ == hmm.elbo_
    for name in NMF_ARRAYS:
        assert np.array_equal(getattr(model.nmf_, name), getattr(nmf, name)), name
    for name in ("B1", "B2"):
        assert np.array_equal(getattr(model.hmm_, name), getattr(hmm, name)), name
    # batch variational Bayes: the bound never decreases (annealing included)
    assert np.all(np.diff(model.nmf_.elbo_) >= 0)
    assert np.all(np.diff(model.hmm_.elbo_) >= -1e-9 * np.abs(model.hmm_.elbo_[1:]))


# ----------------------------------------------------------------------------- 4. determinism


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda k: f"{k}-workers")
def cluster(request):
    """One local cluster per worker count, shared by the module's tests."""
    from distributed import LocalCluster

    local = LocalCluster(
        n_workers=request.param, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    )  # fmt: skip
    try:
        yield local
    finally:
        local.close()


# chunkings unlike the reference's 7 where possible, so workers and chunks both change
CHUNK_FOR_WORKERS = {1: 40, 2: 5, 4: 7}


def test_same_bits_for_any_worker_count_and_chunking(
    reference: Reference, cluster, tmp_path: Path
) -> None:
    from distributed import Client

    n_workers = len(cluster.workers)
    chunk_events = CHUNK_FOR_WORKERS[n_workers]
    path = _write(tmp_path / "events.zarr", reference.spectrograms, chunk_events)
    # the default client for this test only (see the non-default client test below)
    with Client(cluster) as client:
        client.wait_for_workers(n_workers, timeout=120)
        model = SpecUFEx(**SETTINGS, client=client, checkpoint_every=100).fit(path)
        assert_same_model(model, reference.model, same_split=chunk_events == ARCHIVE_CHUNK)
        model.transform_to_zarr(path)
        lazy = model.transform(path)
        fingerprint = client.compute(lazy["fingerprint"].data).result()
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))
    assert np.array_equal(fingerprint, stored_outputs(reference.path)["fingerprint"])
    assert xr.open_zarr(path)[engine.TRANSFORMED].chunks[0][0] == min(chunk_events, N_EVENTS)
    assert len(executed) == n_workers
    if n_workers > 1:
        assert sum(count > 0 for count in executed.values()) > 1  # the work was spread


@pytest.mark.parametrize("cluster", [2], indirect=True, ids=["2-workers"])
def test_data_start_of_q_w_reads_the_sample_on_the_workers_with_the_same_bits(
    spectrograms: np.ndarray, cluster, tmp_path: Path, monkeypatch
) -> None:
    """With the NMF's data start of q(W) chosen, the pipeline reads the sample's frames
    on the workers (the driver reads no event) and fits, on 2 workers and chunks of 5,
    the same bits as the in-memory model with ``init="data"`` (not the default: one
    worker count keeps the test's cost small)."""
    from distributed import Client

    monkeypatch.setattr(BayesianNonparametricNMF, "default_init", staticmethod(lambda c: "data"))
    n_workers = len(cluster.workers)
    path = _write(tmp_path / "events.zarr", spectrograms, CHUNK_FOR_WORKERS[n_workers])
    reads: list[tuple] = []
    read = engine._read
    monkeypatch.setattr(engine, "_read", lambda *args: reads.append(args) or read(*args))
    with Client(cluster) as client:
        client.wait_for_workers(n_workers, timeout=120)
        model = SpecUFEx(**SETTINGS, client=client, checkpoint_every=100).fit(path)
    assert reads == []  # every event was read in a task on a worker
    nmf = BayesianNonparametricNMF(
        spectrograms.shape, SETTINGS["num_pat"], random_state=SETTINGS["random_state"],
        batch_size=SETTINGS["batch_size"], max_steps=SETTINGS["nmf_steps"], init="data",
    ).fit(spectrograms)  # fmt: skip
    assert model.nmf_.initialised and model.nmf_.init == "data"
    for name in NMF_ARRAYS:
        assert np.array_equal(getattr(model.nmf_, name), getattr(nmf, name)), name
    drawn = BayesianNonparametricNMF(
        spectrograms.shape, SETTINGS["num_pat"], random_state=SETTINGS["random_state"],
        init="random",
    )  # fmt: skip
    assert model.nmf_.elbo_ == nmf.elbo_ and not np.allclose(nmf.W1, drawn.W1)


def test_an_unsharded_archive_fits_to_the_same_bits_and_takes_appends(
    reference: Reference, tmp_path: Path
) -> None:
    """The same events in plain chunks (as written before shards) give the model of the
    sharded reference bit for bit, and the archive still takes appends."""
    path = _write(tmp_path / "plain.zarr", reference.spectrograms, ARCHIVE_CHUNK, sharded=False)
    assert zarr.open_array(path, path=archive.SPECTROGRAM).shards is None
    assert zarr.open_array(reference.path, path=archive.SPECTROGRAM).shards[0] == ARCHIVE_CHUNK
    model = SpecUFEx(**SETTINGS, client=False, checkpoint_every=100).fit(path)
    assert_same_model(model, reference.model)
    more = reference.spectrograms[:3] * 2
    archive.write_spectrograms(path, more, ["new0", "new1", "new2"], FREQUENCY, TIME, mode="a")
    appended = archive.open_archive(path)
    assert appended.spectrogram.encoding.get("shards") is None
    expected = np.concatenate([reference.spectrograms, more])
    np.testing.assert_array_equal(appended.spectrogram.values, expected)


@pytest.mark.parametrize("cluster", [1], indirect=True, ids=["1-workers"])
def test_transform_to_zarr_with_a_client_that_is_not_the_default(
    reference: Reference, cluster, tmp_path: Path
) -> None:
    from distributed import Client

    path = _copy(reference.path, tmp_path)
    with Client(cluster, set_as_default=False) as client:
        model = SpecUFEx.from_archive(path, client=client)
        model.transform_to_zarr(path)
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))


@pytest.mark.parametrize("cluster", [2], indirect=True, ids=["2-workers"])
def test_a_steps_tasks_spread_over_the_workers(pristine: str, cluster, monkeypatch) -> None:
    """No key shared by a step's tasks pulls them all to the worker that holds it."""
    from distributed import Client, get_task_stream

    monkeypatch.setattr(engine, "STEP_TASK_EVENTS", 1)  # one task per chunk: 5 tasks
    chunks = engine.EventChunks.from_data(pristine)
    # parameters of realistic size (30 x 4000 float64 here, 513 x 75 in use): the
    # scheduler weighs the cost of moving a task's dependencies against idle workers
    params = BayesianNonparametricNMF(chunks.shape, 4000, random_state=3).step_parameters()
    index = np.arange(N_EVENTS)
    with Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
        spread = []
        for _ in range(3):
            with get_task_stream(client=client) as stream:
                engine.nmf_statistics(chunks, index, params, client)
            workers = [task["worker"] for task in stream.data if "nodes" in str(task["key"])]
            spread.append(sorted(workers.count(w) for w in set(workers)))
    # dask's queue hands each idle worker two root tasks, then the fifth to the first free
    assert spread == [[2, 3]] * 3, spread


def test_the_driver_keeps_no_history_of_step_parameters(pristine: str) -> None:
    """The local scheduler and the client keep no long log of the steps' task messages,
    which carry each step's parameters."""
    import gc

    from specufex_dask.inference.steps import NMFStepParameters
    from specufex_dask.parallel.clusters import MESSAGE_LOG_LENGTH, connect

    chunks = engine.EventChunks.from_data(pristine)
    # a pattern count no other test uses tells this test's parameters apart
    n_patterns = 13
    params = BayesianNonparametricNMF(chunks.shape, n_patterns, random_state=3).step_parameters()
    n_steps = 3 * MESSAGE_LOG_LENGTH
    with connect(workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as handle:
        for step in range(n_steps):
            index = minibatch(3, "nmf_batch", step, N_EVENTS, 8)
            engine.nmf_statistics(chunks, index, params, handle.client)
        gc.collect()
        alive = sum(
            isinstance(item, NMFStepParameters) and item.basis_weight.shape == (n_patterns,)
            for item in gc.get_objects()
        )
    # distributed's default keeps the last 1000 messages: all n_steps would be alive
    assert alive <= MESSAGE_LOG_LENGTH + 2, alive


# ----------------------------------------------------------------------------- 5. resume


class Interrupted(RuntimeError):
    """Raised from the progress callback to stop a fit."""


@pytest.mark.parametrize(("stage", "at_step"), [("nmf", 7), ("hmm", 2), ("hmm", 5)])
def test_interrupted_fit_resumes_to_the_same_model(
    reference: Reference, pristine: str, tmp_path: Path, stage: str, at_step: int
) -> None:
    path = _copy(pristine, tmp_path)

    def interrupt(where: str, info: dict) -> None:
        if where == stage and info["step"] == at_step:
            raise Interrupted(f"{where} step {at_step}")

    with pytest.raises(Interrupted):
        SpecUFEx(**SETTINGS, client=False, checkpoint_every=3, progress=interrupt).fit(path)
    saved = json.loads(xr.open_zarr(path, group="model").attrs["progress"])
    last_checkpoint = at_step - at_step % 3
    assert saved["stage"] == stage
    assert saved[f"{stage}_steps"] == last_checkpoint
    with pytest.raises(ValueError, match="no completely fitted model"):
        SpecUFEx.from_archive(path, client=False)

    reported: list[tuple[str, int]] = []
    resumed = SpecUFEx(
        **SETTINGS, client=False, checkpoint_every=3,
        progress=lambda where, info: reported.append((where, info["step"])),
    ).fit(path, resume=True)  # fmt: skip
    assert reported[0] == (stage, last_checkpoint + 1)  # continued, not restarted
    if stage == "hmm":
        assert all(where == "hmm" for where, _ in reported)
    assert_same_model(resumed, reference.model)
    assert_same_model(SpecUFEx.from_archive(path, client=False), reference.model)


def test_a_checkpoint_whose_hmm_has_not_started_resumes_from_the_data(
    reference: Reference, pristine: str, tmp_path: Path, hmm_starts: list
) -> None:
    """A checkpoint of the HMM stage with q(B) not yet started from the data (as one
    written before the start existed would be): the resumed fit starts it first."""
    path = _copy(pristine, tmp_path)

    def interrupt(where: str, info: dict) -> None:
        if where == "hmm":
            raise Interrupted("hmm step 1")

    with pytest.raises(Interrupted):
        SpecUFEx(**SETTINGS, client=False, checkpoint_every=100, progress=interrupt).fit(path)
    nmf, hmm, done = engine.read_model_group(path)
    assert done["stage"] == "hmm" and done["hmm_steps"] == 0 and hmm.initialised
    unstarted = SpecUFEx(**SETTINGS, client=False)
    unstarted.nmf_ = nmf
    unstarted = unstarted._new_hmm(N_EVENTS)
    assert not unstarted.initialised
    with engine.BackgroundCheckpoints(path) as checkpoints:
        checkpoints.write(nmf, unstarted, done)
    assert not engine.read_model_group(path)[1].initialised
    hmm_starts.clear()
    resumed = SpecUFEx(**SETTINGS, client=False).fit(path, resume=True)
    assert len(hmm_starts) == 1
    assert_same_model(resumed, reference.model)


def test_resume_without_checkpoint_fits_from_the_start(
    reference: Reference, pristine: str, tmp_path: Path
) -> None:
    path = _copy(pristine, tmp_path)
    model = SpecUFEx(**SETTINGS, client=False, checkpoint_every=100).fit(path, resume=True)
    assert_same_model(model, reference.model)


def test_a_checkpoint_holds_the_state_of_when_it_was_asked_for(
    reference: Reference, pristine: str, tmp_path: Path, monkeypatch
) -> None:
    path = _copy(pristine, tmp_path)
    model = copy.deepcopy(reference.model)
    expected = {name: array.copy() for name, array in _model_arrays(model).items()}
    release = threading.Event()
    write = engine.write_model_dataset

    def held_back(*args):
        assert release.wait(30)
        write(*args)

    monkeypatch.setattr(engine, "write_model_dataset", held_back)
    with engine.BackgroundCheckpoints(path) as checkpoints:
        checkpoints.write(model.nmf_, model.hmm_, {"stage": "done"})
        # the fit goes on changing its state while the checkpoint is being written
        for array in _model_arrays(model).values():
            array *= 2.0
        release.set()
    saved_nmf, saved_hmm, progress = engine.read_model_group(path)
    assert progress == {"stage": "done"}
    for name in NMF_ARRAYS:
        np.testing.assert_array_equal(getattr(saved_nmf, name), expected[name], err_msg=name)
    for name in HMM_ARRAYS:
        np.testing.assert_array_equal(getattr(saved_hmm, name), expected[name], err_msg=name)


def test_a_failed_checkpoint_stops_the_fit_at_the_next_one(tmp_path: Path) -> None:
    model = SpecUFEx(**SETTINGS, client=False)._new_nmf((4, 6, 5))
    checkpoints = engine.BackgroundCheckpoints(str(tmp_path / "no-such-archive.zarr"))
    with pytest.raises(FileNotFoundError):
        with checkpoints:
            checkpoints.write(model, None, {"stage": "nmf", "nmf_steps": 3})
            checkpoints.write(model, None, {"stage": "nmf", "nmf_steps": 6})
            pytest.fail("the second checkpoint did not raise the first one's error")
    assert not (tmp_path / "no-such-archive.zarr").exists()


def test_failed_transform_resumes_only_the_missing_chunks(
    reference: Reference, pristine: str, tmp_path: Path, monkeypatch
) -> None:
    path = _copy(pristine, tmp_path)
    started: list[str] = []
    completed: list[int] = []
    original_chunk = engine._task_transform_to_zarr
    original_transform = engine._task_transform

    def planted_failure(block, ids, nmf, hmm):
        # the third chunk to run fails, whichever it is (dask picks the order)
        started.append(str(ids[0]))
        if len(started) == 3:
            raise RuntimeError(f"planted failure in the chunk of {ids[0]}")
        return original_transform(block, ids, nmf, hmm)

    def recorded(block, ids, start, path, nmf, hmm):
        result = original_chunk(block, ids, start, path, nmf, hmm)
        completed.append(start)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_task_transform", planted_failure)
        patch.setattr(engine, "_task_transform_to_zarr", recorded)
        # one task at a time: nothing keeps writing after the failure surfaced
        with (
            dask.config.set(scheduler="synchronous"),
            pytest.raises(RuntimeError, match="planted"),
        ):
            reference.model.transform_to_zarr(path)

    group = zarr.open_group(path, mode="r")
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is False
    markers = group[engine.TRANSFORMED][:]
    assert not markers.all()
    expected_markers = np.zeros(N_EVENTS, dtype=bool)
    for start in completed:
        expected_markers[start : start + ARCHIVE_CHUNK] = True
    assert np.array_equal(markers, expected_markers)
    assert len(completed) == 2  # one task at a time: two chunks were done before the failure

    recomputed: list[int] = []

    def counted(block, ids, start, path, nmf, hmm):
        recomputed.append(start)
        return original_chunk(block, ids, start, path, nmf, hmm)

    monkeypatch.setattr(engine, "_task_transform_to_zarr", counted)
    reference.model.transform_to_zarr(path, resume=True)
    assert sorted(recomputed) == sorted(_chunk_starts(N_EVENTS, ARCHIVE_CHUNK) - set(completed))
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))
    group = zarr.open_group(path, mode="r")
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is True
    assert group[engine.TRANSFORMED][:].all()


def test_resume_recomputes_a_chunk_whose_marker_is_false(
    reference: Reference, tmp_path: Path, transform_tasks: list[int]
) -> None:
    path = _copy(reference.path, tmp_path)
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    rows = slice(14, 21)  # the third chunk: a crash after some of its outputs were written
    group["activation"][rows] = 0.0
    group["fingerprint"][15:17] = -1.0
    group[engine.TRANSFORMED][rows] = False
    group.attrs[engine.TRANSFORM_COMPLETE_ATTR] = False
    reference.model.transform_to_zarr(path, resume=True)
    assert transform_tasks == [14]
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))
    assert zarr.open_group(path, mode="r").attrs[engine.TRANSFORM_COMPLETE_ATTR] is True


def test_resume_with_another_model_recomputes_everything(
    reference: Reference, tmp_path: Path, transform_tasks: list[int]
) -> None:
    path = _copy(reference.path, tmp_path)
    data = xr.open_zarr(path)["spectrogram"].load()
    other = SpecUFEx(
        **{**SETTINGS, "random_state": 4, "nmf_steps": 3, "hmm_steps": 2}, client=False
    ).fit(data)
    other.transform_to_zarr(path, resume=True)
    assert sorted(transform_tasks) == sorted(_chunk_starts(N_EVENTS, ARCHIVE_CHUNK))
    outputs = stored_outputs(path)
    assert_same_outputs(outputs, in_memory_outputs(other, reference.spectrograms))
    assert not np.array_equal(
        outputs["fingerprint"], stored_outputs(reference.path)["fingerprint"]
    )


def test_resume_of_a_complete_transform_computes_nothing(
    reference: Reference, tmp_path: Path, transform_tasks: list[int]
) -> None:
    path = _copy(reference.path, tmp_path)
    reference.model.transform_to_zarr(path, resume=True)
    assert transform_tasks == []
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))


# ----------------------------------------------------------------------------- 6. reading


@pytest.fixture
def reads(monkeypatch) -> list:
    """Rows of every read of the archive by path: event indices (a step's) or a slice
    (a pass's). Tasks run in this process."""
    seen: list = []
    original = engine.StoredRows.read

    def recorded(self: engine.StoredRows) -> np.ndarray:
        seen.append(self.rows)
        return original(self)

    monkeypatch.setattr(engine.StoredRows, "read", recorded)
    return seen


@pytest.fixture
def no_dask_blocks(monkeypatch) -> None:
    """Fail when anything builds the dask blocks of the spectrogram array."""

    def refuse(self: engine.EventChunks) -> list:
        raise AssertionError("the dask blocks of the archive were built")

    monkeypatch.setattr(engine.EventChunks, "blocks", property(refuse))


def test_a_step_reads_only_its_events_in_groups_of_whole_chunks(
    pristine: str, spectrograms: np.ndarray, monkeypatch, reads: list, no_dask_blocks: None
) -> None:
    monkeypatch.setattr(engine, "TASK_EVENTS", 256)
    monkeypatch.setattr(engine, "STEP_TASK_EVENTS", 3)
    chunks = engine.EventChunks.from_data(pristine)
    assert chunks.stored
    # nor the dask array at all: its graph grows with the number of chunks
    assert chunks.array is None
    assert chunks.bounds == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 32)]
    # chunks of 7: four events in chunk 0, then 2 + 1 (chunks 1, 2), then 2 + 2 (3, 4)
    index = np.array([0, 1, 2, 6, 8, 13, 20, 22, 27, 28, 31])
    params = BayesianNonparametricNMF(chunks.shape, 8, random_state=3).step_parameters()
    statistics = engine.nmf_statistics(chunks, index, params, None)
    groups = sorted(rows.tolist() for rows in reads)
    assert groups == [[0, 1, 2, 6], [8, 13, 20], [22, 27, 28, 31]]
    expected = fold(nmf_leaves(spectrograms[index], params))
    assert np.array_equal(statistics.basis_counts, expected.basis_counts)
    assert np.array_equal(statistics.activation_sum, expected.activation_sum)
    assert statistics.elbo == expected.elbo


def test_tasks_get_an_absolute_archive_path(pristine: str, monkeypatch) -> None:
    """Workers open the archive by path, from whatever folder they run in."""
    monkeypatch.chdir(Path(pristine).parent)
    chunks = engine.EventChunks.from_data(Path(pristine).name)
    assert chunks.path == pristine
    assert all(source.path == pristine for _, _, source in chunks.sources())


@pytest.mark.parametrize("step_task_events", [1, 64])
def test_same_model_for_any_grouping_of_a_steps_events(
    reference: Reference, pristine: str, tmp_path: Path, monkeypatch, step_task_events: int
) -> None:
    """One task per chunk of a step's events, or one task for all of them: same bits."""
    monkeypatch.setattr(engine, "TASK_EVENTS", 256)
    monkeypatch.setattr(engine, "STEP_TASK_EVENTS", step_task_events)
    path = _copy(pristine, tmp_path)
    model = SpecUFEx(**SETTINGS, client=False, checkpoint_every=100).fit(path)
    assert_same_model(model, reference.model)


def test_an_archive_path_is_read_by_the_tasks_without_a_dask_graph(
    reference: Reference, tmp_path: Path, reads: list, no_dask_blocks: None
) -> None:
    path = _copy(reference.path, tmp_path)
    model = SpecUFEx.from_archive(path, client=False)
    model.transform_to_zarr(path)
    fingerprint = model.transform(path)["fingerprint"].values
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))
    assert np.array_equal(fingerprint, stored_outputs(reference.path)["fingerprint"])
    # two passes (to Zarr, lazy) over every chunk, each a range read once
    assert all(isinstance(rows, slice) for rows in reads)
    assert sorted(rows.start for rows in reads) == sorted(2 * list(range(0, N_EVENTS, 7)))


def test_an_archive_that_xarray_decodes_is_read_through_dask(
    reference: Reference, tmp_path: Path
) -> None:
    """With a fill value other than NaN xarray masks stored values: tasks see its view."""
    path = str(tmp_path / "masked.zarr")
    data = xr.open_zarr(reference.path)[["spectrogram"]].load()
    data["spectrogram"].encoding = {"chunks": (ARCHIVE_CHUNK, N_FREQUENCIES, N_TIMES)}
    encoding = {"spectrogram": {"_FillValue": -7.0}}
    data.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding)
    assert not engine.EventChunks.from_data(path).stored
    model = SpecUFEx(**SETTINGS, client=False, checkpoint_every=100).fit(path)
    assert_same_model(model, reference.model)
    model.transform_to_zarr(path)
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))
    _plant(path, {17: -7.0})  # the fill value: missing in xarray's view, not negative
    with pytest.raises(ArchiveError, match=r"ev017: 1 non-finite value\(s\)$"):
        model.transform_to_zarr(path)


@pytest.mark.parametrize("cluster", [1], indirect=True, ids=["1-workers"])
@pytest.mark.parametrize("growing", [False, True], ids=["fixed", "growing"])
def test_a_transform_keeps_few_tasks_in_flight(
    reference: Reference, cluster, tmp_path: Path, monkeypatch, growing: bool
) -> None:
    """Two tasks per worker thread; with workers joining, the window follows them."""
    from distributed import Client

    expected = engine.IN_FLIGHT_PER_THREAD
    if growing:  # as if two more single-thread workers joined after the first task
        windows = iter([1])
        monkeypatch.setattr(engine, "_in_flight", lambda client: next(windows, 3))
        monkeypatch.setattr(engine, "WINDOW_LOOKUP_S", 0.0)
        expected = 3
    path = _copy(reference.path, tmp_path)
    submitted: list = []
    most_in_flight = 0
    with Client(cluster, set_as_default=False) as client:
        compute = client.compute

        def recorded(collections, *args, **kwargs):
            nonlocal most_in_flight
            result = compute(collections, *args, **kwargs)
            if not isinstance(collections, list):  # one task (the parameters come as a list)
                submitted.append(result)
                pending = sum(future.status == "pending" for future in submitted)
                most_in_flight = max(most_in_flight, pending)
            return result

        monkeypatch.setattr(client, "compute", recorded)
        SpecUFEx.from_archive(path, client=client).transform_to_zarr(path)
    assert len(submitted) == 5  # one task per chunk (TASK_EVENTS = 1)
    assert most_in_flight == expected
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))


# ----------------------------------------------------------------------------- 7. bad input


def _dataset(values: np.ndarray, dims=("event", "frequency", "time"), name="spectrogram"):
    return xr.Dataset({name: (dims, values)})


BAD_ARCHIVES = {
    "missing-variable": (
        lambda path: _dataset(np.ones((4, 3, 2)), name="spectrum").to_zarr(path),
        r"variable 'spectrogram' is missing.*spectrum",
    ),
    "wrong-dims": (
        lambda path: _dataset(np.ones((4, 2, 3)), dims=("event", "time", "frequency")).to_zarr(
            path
        ),
        r"dims \('event', 'time', 'frequency'\), expected",
    ),
    "empty-group": (
        lambda path: zarr.open_group(path, mode="w"),
        r"variable 'spectrogram' is missing",
    ),
    "no-events": (
        lambda path: _dataset(np.ones((0, 3, 2))).to_zarr(path),
        r"dimension 'event' of 'spectrogram' is empty",
    ),
    "missing-path": (lambda path: None, r"does not exist"),
}


@pytest.mark.parametrize("kind", list(BAD_ARCHIVES))
def test_bad_archive_gives_one_clear_error(tmp_path: Path, kind: str) -> None:
    build, message = BAD_ARCHIVES[kind]
    path = str(tmp_path / "bad.zarr")
    build(path)
    model = SpecUFEx(**SETTINGS, client=False)
    with pytest.raises(ArchiveError, match=message) as error:
        model.fit(path)
    assert "bad.zarr" in str(error.value)
    assert not (tmp_path / "bad.zarr" / "model").exists()


def test_bad_dataarray_gives_one_clear_error() -> None:
    wrong = xr.DataArray(np.ones((4, 2, 3)), dims=("event", "time", "frequency"))
    with pytest.raises(ArchiveError, match=r"dims are \('event', 'time', 'frequency'\), expected"):
        SpecUFEx(**SETTINGS, client=False).fit(wrong)
    with pytest.raises(ArchiveError, match="no 'spectrogram' variable"):
        SpecUFEx(**SETTINGS, client=False).fit(xr.Dataset({"x": ("event", np.ones(3))}))


def _plant(path: str, values: dict[int, float]) -> None:
    array = zarr.open_array(path, path="spectrogram", mode="r+")
    for event, value in values.items():
        array[event, 3, 5] = value


def test_bad_values_met_by_a_step_name_every_bad_event_before_anything_is_written(
    pristine: str, tmp_path: Path
) -> None:
    """The first step draws ev017 and ev030, not ev005: all three are named all the same."""
    path = _copy(pristine, tmp_path)
    _plant(path, {5: np.nan, 17: -1.0, 30: np.inf})  # in chunks 0, 2 and 4
    steps: list[int] = []
    with pytest.raises(ArchiveError) as error:
        SpecUFEx(
            **SETTINGS, client=False, progress=lambda stage, info: steps.append(info["step"])
        ).fit(path)
    assert steps == []  # the first step met them
    # the NMF's step counter starts at -1
    first_step = minibatch(SETTINGS["random_state"], "nmf_batch", -1, N_EVENTS, 8).tolist()
    assert {17, 30} <= set(first_step) and 5 not in first_step
    assert isinstance(error.value, engine.BadValues)
    message = str(error.value)
    assert "ev005: 1 non-finite" in message
    assert "ev017: 1 negative value(s), min -1" in message
    assert "ev030: 1 non-finite" in message
    assert "ev006" not in message and "ev016" not in message
    assert path in message
    assert not (Path(path) / "model").exists()


def test_a_bad_event_that_no_step_draws_is_caught_by_the_transform(
    pristine: str, tmp_path: Path, reads: list, monkeypatch
) -> None:
    # the HMM starts from the frames of up to 256 events (all 32 here): take 8 of them,
    # as an archive of more than 256 events leaves most of its events out
    sample = BayesianHMM.init_sample
    monkeypatch.setattr(BayesianHMM, "init_sample", lambda self, n: sample(self, n)[::4])
    settings = {**SETTINGS, "nmf_steps": 2, "hmm_steps": 1, "checkpoint_every": 100}
    SpecUFEx(**settings, client=False).fit(_copy(pristine, tmp_path, "clean.zarr"))
    drawn = np.concatenate(reads)
    never = int(np.setdiff1d(np.arange(N_EVENTS), drawn)[0])
    path = _copy(pristine, tmp_path)
    _plant(path, {never: -1.0})
    model = SpecUFEx(**settings, client=False).fit(path)  # never reads the bad event
    message = re.escape(f"{path} in events {EVENT_IDS[never]}: 1 negative")
    with pytest.raises(engine.BadValues, match=message):
        model.transform_to_zarr(path)
    group = zarr.open_group(path, mode="r")
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is False
    first = never - never % ARCHIVE_CHUNK
    assert not group[engine.TRANSFORMED][first : first + ARCHIVE_CHUNK].any()


@pytest.mark.parametrize("cluster", [1], indirect=True, ids=["1-workers"])
def test_bad_values_met_on_a_worker_name_every_bad_event(
    pristine: str, cluster, tmp_path: Path
) -> None:
    from distributed import Client

    path = _copy(pristine, tmp_path)
    _plant(path, {5: np.nan, 17: -1.0, 30: np.inf})
    with Client(cluster, set_as_default=False) as client, pytest.raises(ArchiveError) as error:
        SpecUFEx(**SETTINGS, client=client).fit(path)
    assert isinstance(error.value, engine.BadValues)
    for event in ("ev005", "ev017", "ev030"):
        assert event in str(error.value)


def test_failed_transform_never_looks_complete(
    reference: Reference, pristine: str, tmp_path: Path
) -> None:
    path = _copy(pristine, tmp_path)
    _plant(path, {17: -1.0})
    with pytest.raises(ArchiveError, match="ev017: 1 negative"):
        reference.model.transform_to_zarr(path)
    group = zarr.open_group(path, mode="r")
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is False
    markers = group[engine.TRANSFORMED][:]
    assert not markers[14:21].any()
    assert not markers.all()
    with pytest.raises(ArchiveError, match="ev017: 1 negative"):
        reference.model.transform(path).compute()


def test_failed_rerun_of_a_transformed_archive_is_marked_incomplete(
    reference: Reference, tmp_path: Path
) -> None:
    path = _copy(reference.path, tmp_path)
    _plant(path, {2: np.nan})
    with pytest.raises(ArchiveError, match="ev002: 1 non-finite"):
        reference.model.transform_to_zarr(path)
    group = zarr.open_group(path, mode="r")
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is False
    assert not group[engine.TRANSFORMED][:].all()


def test_frequency_count_different_from_the_model(reference: Reference, tmp_path: Path) -> None:
    fewer = reference.spectrograms[:, :25]
    path = _write(tmp_path / "fewer.zarr", fewer, ARCHIVE_CHUNK, frequency=FREQUENCY[:25])
    # both axes named
    both = r"25 frequencies \(1\.\.25 Hz\), the model was fitted on 30 frequencies \(1\.\.30 Hz\)"
    with pytest.raises(ValueError, match=both):
        reference.model.transform_to_zarr(path)
    with pytest.raises(ValueError, match=both):
        reference.model.transform(path)
    assert "activation" not in zarr.open_group(path, mode="r")


def test_frequency_values_different_from_the_model(reference: Reference, tmp_path: Path) -> None:
    # same number of bins, other frequencies: the patterns do not describe these spectra
    path = _write(
        tmp_path / "shifted.zarr", reference.spectrograms, ARCHIVE_CHUNK, frequency=FREQUENCY * 2
    )
    with pytest.raises(ValueError, match="frequenc"):
        reference.model.transform_to_zarr(path)
    with pytest.raises(ValueError, match="frequenc"):
        reference.model.transform(path)
    assert "activation" not in zarr.open_group(path, mode="r")


def test_appended_events_are_transformed_on_resume_and_never_look_complete_before(
    reference: Reference, tmp_path: Path, transform_tasks: list[int]
) -> None:
    path = _write(tmp_path / "events.zarr", reference.spectrograms[:30], ARCHIVE_CHUNK)
    reference.model.transform_to_zarr(path)
    transform_tasks.clear()
    archive.write_spectrograms(
        path, reference.spectrograms[30:], EVENT_IDS[30:], FREQUENCY, TIME, mode="a"
    )
    group = zarr.open_group(path, mode="r")
    complete_after_append = group.attrs[engine.TRANSFORM_COMPLETE_ATTR]
    assert not group[engine.TRANSFORMED][30:].any()

    reference.model.transform_to_zarr(path, resume=True)
    assert transform_tasks == [28]  # the last chunk grew from 2 to 4 events
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))
    assert zarr.open_group(path, mode="r").attrs[engine.TRANSFORM_COMPLETE_ATTR] is True
    # new events without outputs: the store must not claim a complete transform
    assert complete_after_append is False


def test_passes_over_all_events_merge_chunks_into_larger_tasks(
    monkeypatch, tmp_path, reference: Reference
) -> None:
    """A transform in tasks of several storage chunks writes the same bits."""
    path = _copy(reference.path, tmp_path)
    monkeypatch.setattr(engine, "TASK_EVENTS", 15)
    merged = engine.EventChunks.from_data(path).merged()
    assert [stop - start for start, stop in merged.bounds] == [21, 11]
    reference.model.transform_to_zarr(path)
    assert xr.open_zarr(path)[engine.TRANSFORMED].values.all()
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))


def test_transform_outputs_are_chunked_like_its_tasks_and_resume_follows_them(
    reference: Reference, tmp_path: Path, transform_tasks: list[int], monkeypatch
) -> None:
    """Tasks of two storage chunks write one output chunk each; a resume whose tasks
    would straddle those chunks starts over instead of racing on them."""
    path = _copy(reference.path, tmp_path)
    monkeypatch.setattr(engine, "TASK_EVENTS", 14)
    reference.model.transform_to_zarr(path)
    assert sorted(transform_tasks) == [0, 14, 28]
    group = zarr.open_group(path, mode="r")
    for name in (*OUTPUT_DIMS, engine.TRANSFORMED):
        assert group[name].chunks[0] == 14, name
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))

    writable = zarr.open_group(path, mode="r+", use_consolidated=False)
    writable[engine.TRANSFORMED][14:28] = False
    writable["activation"][14:28] = 0.0
    transform_tasks.clear()
    reference.model.transform_to_zarr(path, resume=True)
    assert transform_tasks == [14]
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))

    monkeypatch.setattr(engine, "TASK_EVENTS", 1)
    transform_tasks.clear()
    reference.model.transform_to_zarr(path, resume=True)
    assert sorted(transform_tasks) == sorted(_chunk_starts(N_EVENTS, ARCHIVE_CHUNK))
    assert zarr.open_group(path, mode="r")[engine.TRANSFORMED].chunks[0] == ARCHIVE_CHUNK
    assert_same_outputs(stored_outputs(path), stored_outputs(reference.path))


def test_output_chunks_fall_back_to_storage_chunks_for_uneven_task_ranges(
    pristine: str,
) -> None:
    chunks = engine.EventChunks.from_data(pristine)
    uneven = replace(chunks, bounds=[(0, 7), (7, 21), (21, 32)])
    assert engine.output_chunk_events(uneven) == ARCHIVE_CHUNK
    even = replace(chunks, bounds=[(0, 14), (14, 28), (28, 32)])
    assert engine.output_chunk_events(even) == 14


# ----------------------------------------------------------------------------- 8. convergence

# tol 1e-3 settles both stages of the planted data well inside these budgets (steps 112
# and 40 of 300); windows of 4 steps (one pass of 32 events at 8 per step)
CONVERGING = {**SETTINGS, "nmf_steps": 500, "hmm_steps": 500, "tol": 1e-3}


@pytest.fixture(scope="module")
def planted_data(spectrograms: np.ndarray) -> xr.DataArray:
    return xr.DataArray(spectrograms, dims=("event", "frequency", "time"))


def _fit_reporting(data, settings: dict, **options) -> tuple[SpecUFEx, dict[str, list[dict]]]:
    reported: dict[str, list[dict]] = {"nmf": [], "hmm": []}
    model = SpecUFEx(
        **settings, client=False, progress=lambda stage, info: reported[stage].append(info),
        **options,
    ).fit(data)  # fmt: skip
    return model, reported


def _rule_holds(elbo: np.ndarray, count: np.ndarray, stage: str) -> bool:
    """The pipeline's stopping rule, written out on a stage's reported ELBOs and counts
    (windows of 4 steps, one pass of 32 events at 8, growing to a quarter of the steps)."""
    window = max(4, len(elbo) // 4)
    latest, previous = elbo[-window:].mean(), elbo[-2 * window : -window].mean()
    noise = np.std(np.diff(elbo[-2 * window :]), ddof=1) / np.sqrt(2)
    elbo_settled = abs(latest - previous) <= max(1e-3 * abs(latest), noise * np.sqrt(2 / window))
    if stage == "nmf":
        count_settled = len(set(count[-window - 1 :].tolist())) == 1
    else:
        count_settled = abs(count[-window:].mean() - count[-2 * window : -window].mean()) <= 0.5
    return bool(elbo_settled and count_settled)


def test_a_stage_stops_once_converged_and_the_model_records_the_steps_run(
    planted_data: xr.DataArray,
) -> None:
    model, reported = _fit_reporting(planted_data, CONVERGING)
    for stage, fitted in (("nmf", model.nmf_), ("hmm", model.hmm_)):
        infos = reported[stage]
        n_steps = model.n_steps_[stage]
        assert MIN_STOP_STEPS <= n_steps < 500, stage
        assert model.converged_[stage], stage
        assert len(fitted.elbo_) == len(infos) == n_steps
        assert [info["step"] for info in infos] == list(range(1, n_steps + 1))
        assert {info["total"] for info in infos} == {500}
        assert [info["converged"] for info in infos] == [False] * (n_steps - 1) + [True]
        # the rule holds at the last step and not at the one before: ELBO window means
        # within tol or one standard error, the count settled (windows of n / 4 steps)
        elbo = np.array([info["elbo"] for info in infos])
        count = np.array([info["n_patterns" if stage == "nmf" else "n_states"] for info in infos])
        assert _rule_holds(elbo, count, stage)
        assert not _rule_holds(elbo[:-1], count[:-1], stage) or n_steps == MIN_STOP_STEPS
    assert model.nmf_.step + 1 == model.n_steps_["nmf"]  # the NMF counts from -1
    assert model.hmm_.step == model.n_steps_["hmm"]
    # not before the annealing is over (temperature 1 + 0.75**(step - 1))
    assert model.n_steps_["nmf"] > 33
    assert all(1 <= info["n_states"] <= SETTINGS["num_state"] for info in reported["hmm"])


def test_without_tol_every_step_runs(planted_data: xr.DataArray) -> None:
    settings = {**CONVERGING, "nmf_steps": 45, "hmm_steps": 50, "tol": None}
    model, reported = _fit_reporting(planted_data, settings)
    assert model.n_steps_ == {"nmf": 45, "hmm": 50}
    assert model.converged_ == {"nmf": False, "hmm": False}
    assert (len(model.nmf_.elbo_), len(model.hmm_.elbo_)) == (45, 50)
    assert not any(info["converged"] for infos in reported.values() for info in infos)


def test_the_reference_mode_runs_its_whole_budget(planted_data: xr.DataArray) -> None:
    """The default mode stops these stages before 500 steps (the test above); the
    reference's mode, whose prune is slow, runs every step of its budget."""
    settings = {**CONVERGING, "compat": "specufex", "batch_size": 1, "nmf_steps": 260}
    settings["hmm_steps"] = 230
    model, reported = _fit_reporting(planted_data, settings)
    assert model.n_steps_ == {"nmf": 260, "hmm": 230}
    assert len(model.nmf_.elbo_) == 260
    # the rule would have stopped both stages before (it held at some earlier step)
    for stage in ("nmf", "hmm"):
        elbo = np.array([info["elbo"] for info in reported[stage]])
        count = np.array(
            [info["n_patterns" if stage == "nmf" else "n_states"] for info in reported[stage]]
        )
        assert any(_rule_holds(elbo[:n], count[:n], stage) for n in range(200, len(elbo))), stage


def test_the_hmm_does_not_stop_while_its_states_in_use_change(
    planted_data: xr.DataArray, monkeypatch
) -> None:
    """The ELBO alone would stop the HMM at the first step it may (200); a count of
    states in use whose mean keeps moving (one more state every ten steps) keeps it
    going to the budget."""
    from specufex_dask import pipeline

    calls = []

    def changing(state_counts, n_frames):
        calls.append(n_frames)
        return 2 + len(calls) // 10

    settings = {**CONVERGING, "nmf_steps": 40, "hmm_steps": 260}
    stopped, _ = _fit_reporting(planted_data, settings)
    assert stopped.n_steps_["hmm"] < 260
    monkeypatch.setattr(pipeline, "states_in_use", changing)
    model, reported = _fit_reporting(planted_data, settings)
    assert model.n_steps_["hmm"] == 260 and not model.converged_["hmm"]
    assert [info["n_states"] for info in reported["hmm"][8:11]] == [2, 3, 3]
    assert set(calls) == {SETTINGS["batch_size"] * N_TIMES}  # the minibatch's frames


def test_the_default_budget_is_at_least_1000_steps(planted_data: xr.DataArray) -> None:
    seen: list[tuple[str, int]] = []

    def first_step(stage: str, info: dict) -> None:
        seen.append((stage, info["total"]))
        if stage == "hmm":
            raise Interrupted("enough")

    settings = {k: v for k, v in SETTINGS.items() if k not in ("nmf_steps", "hmm_steps")}
    model = SpecUFEx(**settings, client=False, progress=first_step)
    assert (model.nmf_steps, model.hmm_steps, model.tol) == (None, None, 1e-4)
    with pytest.raises(Interrupted):
        model.fit(planted_data)
    # 3 passes of 32 events at 8 per step are 12 steps: the floor of 1000 applies
    assert set(seen) == {("nmf", 1000), ("hmm", 1000)}


@pytest.mark.parametrize("stage", ["nmf", "hmm"])
def test_a_resumed_fit_stops_at_the_step_an_uninterrupted_one_does(
    pristine: str, tmp_path: Path, stage: str
) -> None:
    """The counts of the last window travel in the checkpoint: a fit resumed one step
    before the stop would otherwise need a window of new steps to see a steady count."""
    settings = {**CONVERGING, "nmf_steps": 500 if stage == "nmf" else 40}
    uninterrupted = SpecUFEx(**settings, client=False, checkpoint_every=1000).fit(
        _copy(pristine, tmp_path, "whole.zarr")
    )
    stop = uninterrupted.n_steps_[stage]
    assert uninterrupted.converged_[stage]
    path = _copy(pristine, tmp_path)

    def interrupt(where: str, info: dict) -> None:
        if where == stage and info["step"] == stop - 1:
            raise Interrupted(f"{where} step {stop - 1}")

    with pytest.raises(Interrupted):
        SpecUFEx(**settings, client=False, checkpoint_every=stop - 2, progress=interrupt).fit(path)
    assert engine.read_model_group(path)[2][f"{stage}_steps"] == stop - 2
    resumed = SpecUFEx(**settings, client=False, checkpoint_every=stop - 2).fit(path, resume=True)
    assert resumed.n_steps_ == uninterrupted.n_steps_
    assert_same_model(resumed, uninterrupted)
    loaded = SpecUFEx.from_archive(path, client=False)
    assert (loaded.n_steps_, loaded.converged_) == (resumed.n_steps_, resumed.converged_)
