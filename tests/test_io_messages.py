"""Bad stores and failed writes: one-line errors naming the store, the attribute or file,
and the fix; nothing half-written left behind."""

from __future__ import annotations

import errno
import json
import re
import shlex
import shutil
import warnings
from pathlib import Path

import dask
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

from specufex_dask import persistence
from specufex_dask.ingest import driver
from specufex_dask.ingest.driver import ingest_arrays
from specufex_dask.ingest.preprocessing import SpectrogramParameters
from specufex_dask.io import archive, modelgroup
from specufex_dask.io.archive import ArchiveError, DiskFullError
from specufex_dask.models import BayesianNonparametricNMF, ConvergenceWarning
from specufex_dask.parallel import engine
from specufex_dask.pipeline import SpecUFEx

FREE = 123_456_789  # planted free space: "123.5 MB"


def _archive(path: Path, rng: np.random.Generator, n: int = 12) -> Path:
    values = rng.gamma(2.0, 1.0, size=(n, 10, 6))
    ids = [f"e{i}" for i in range(n)]
    return archive.write_spectrograms(
        path, values, ids, np.linspace(1.0, 10.0, 10), np.arange(6.0), shard_events=4
    )


def _set_attribute(path: Path, name: str, value: str) -> None:
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    group.attrs[name] = value
    archive.consolidate(path)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def planted_free_space(monkeypatch) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda path: usage._replace(free=FREE))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name)


# ----------------------------------------------------------------------------- Zarr format 2


def test_a_zarr_v2_store_is_refused_for_writes_with_a_working_conversion(
    tmp_path: Path, rng
) -> None:
    values = rng.gamma(2.0, 1.0, size=(6, 5, 4))
    source = tmp_path / "v2.zarr"
    xr.Dataset(
        {"spectrogram": (("event", "frequency", "time"), values)},
        coords={"event": [f"e{i}" for i in range(6)], "frequency": np.arange(5.0),
                "time": np.arange(4.0)},
    ).to_zarr(source, zarr_format=2)  # fmt: skip
    assert archive.open_archive(source).sizes["event"] == 6  # reading is fine
    with pytest.raises(ArchiveError) as caught:
        engine.require_writable(str(source), "transform outputs")
    message = str(caught.value)
    assert message.startswith(
        f"store {source}: Zarr format 2, not supported for writing the transform outputs: "
        "convert with python -c "
    )
    assert "read-only" not in message
    with pytest.raises(ArchiveError, match="Zarr format 2, not supported for writing the append"):
        archive.write_spectrograms(source, values, [f"n{i}" for i in range(6)],
                                   np.arange(5.0), np.arange(4.0), mode="a")  # fmt: skip
    # the conversion the message gives works, and its result takes writes
    command = shlex.split(message.split("convert with ")[1].split(" and use ")[0])
    assert command[:2] == ["python", "-c"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(command[2], {})
    target = tmp_path / "v2-v3.zarr"
    assert message.endswith(f"and use {target}")
    engine.require_writable(str(target), "transform outputs")
    np.testing.assert_array_equal(archive.open_archive(target).spectrogram.values, values)


# ----------------------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("spectrogram_parameters", "fs=100", "is not JSON (Expecting value: line 1 column 1 "
         "(char 0); it starts 'fs=100')"),
        ("spectrogram_parameters", "[1, 2]", "is JSON of a list, not of an object"),
        ("specufex_dask_config", "{'nmf': 1}", "is not JSON (Expecting property name enclosed "
         "in double quotes: line 1 column 2 (char 1); it starts \"{'nmf': 1}\")"),
    ],
)  # fmt: skip
def test_malformed_json_attributes_are_named_with_the_store(
    tmp_path: Path, rng, name: str, text: str, problem: str
) -> None:
    path = _archive(tmp_path / "events.zarr", rng)
    _set_attribute(path, name, text)
    with pytest.raises(ArchiveError) as caught:
        archive.open_archive(path)
    fix = archive.JSON_ATTRS[name]
    assert str(caught.value) == f"store {path}: attribute {name!r} {problem}; {fix}"


def test_spectrogram_parameters_of_an_opened_dataset_name_the_store(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "events.zarr", rng)
    _set_attribute(path, archive.PARAMETERS_ATTR, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(path)
    with pytest.raises(ArchiveError, match=f"^store {path}: attribute 'spectrogram_param"):
        archive.spectrogram_parameters(ds)


def test_a_malformed_model_group_attribute_is_named(tmp_path: Path, rng) -> None:
    path = _archive(tmp_path / "events.zarr", rng)
    state = xr.Dataset(attrs={archive.MODEL_VERSION_ATTR: 1, "nmf_state": "{}"})
    modelgroup.write_model_dataset(str(path), state)
    folder = path / archive.MODEL_GROUP
    import zarr

    zarr.open_group(str(folder), mode="r+").attrs["nmf_state"] = "{oops"  # damaged later
    with pytest.raises(ArchiveError) as caught:
        engine.read_model_group(str(path))
    assert str(caught.value).startswith(f"store {folder}: attribute 'nmf_state' is not JSON (")
    assert str(caught.value).endswith(f"; delete {folder} and fit again without --resume")


# ----------------------------------------------------------------------------- model settings


@pytest.fixture(scope="module")
def nmf_file(tmp_path_factory) -> Path:
    X = np.random.default_rng(4).poisson(3.0, size=(8, 12, 7)).astype(np.float64)
    model = BayesianNonparametricNMF(X.shape, 4, batch_size=4, max_steps=2, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    path = tmp_path_factory.mktemp("model") / "nmf.h5"
    persistence.save_model(path, model)
    return path


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("fit", "would replace the method BayesianNonparametricNMF.fit"),
        ("EW", "would replace the property BayesianNonparametricNMF.EW"),
        ("colour", "is not a setting of a BayesianNonparametricNMF"),
    ],
)
def test_stored_settings_outside_the_parameter_table_are_refused(
    nmf_file: Path, tmp_path: Path, setting: str, problem: str
) -> None:
    path = tmp_path / "edited.h5"
    shutil.copy(nmf_file, path)
    with h5py.File(path, "r+") as file:
        settings = json.loads(file.attrs["settings"])
        file.attrs["settings"] = json.dumps({**settings, setting: "x"})
    with pytest.raises(ValueError) as caught:
        persistence.load_model(path, BayesianNonparametricNMF)
    message = str(caught.value)
    assert message.startswith(f"{path}: setting {setting!r} {problem}; remove it from the file")
    assert "'batch_size'" in message  # the settings it may hold are listed
    persistence.load_model(nmf_file, BayesianNonparametricNMF)  # the unedited file loads


def test_non_json_settings_of_a_model_file_are_named(nmf_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "edited.h5"
    shutil.copy(nmf_file, path)
    with h5py.File(path, "r+") as file:
        file.attrs["settings"] = "compat=default"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: attribute 'settings' is not"):
        persistence.load_model(path, BayesianNonparametricNMF)


# ----------------------------------------------------------------------------- disk full


def _first_region_only(write_region, written: list[int]):
    """``write_region`` that writes one region (its start appended to ``written``), then
    finds the disk full."""

    def second_region_fails(path, name, start, block):
        if written:
            _no_space()
        written.append(start)
        return write_region(path, name, start, block)

    return second_region_fails


def _axes(params: SpectrogramParameters, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    from specufex_dask.ingest.preprocessing import spectrogram_axes

    resolved = params.resolved(params.fs)
    return spectrogram_axes(resolved, resolved.fs, n_samples)


def test_disk_full_during_ingest_leaves_nothing_and_says_so(
    tmp_path: Path, rng, monkeypatch, planted_free_space
) -> None:
    waveforms = rng.standard_normal((10, 400))
    params = SpectrogramParameters(fs=50.0, window_s=1.0)
    monkeypatch.setattr(driver, "DEFAULT_SHARD_EVENTS", 4)  # write regions of 4 events
    written: list[int] = []
    original = driver.write_region
    second_region_fails = _first_region_only(original, written)
    monkeypatch.setattr(driver, "write_region", second_region_fails)
    target = tmp_path / "events.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.raises(DiskFullError) as caught:
        ingest_arrays(waveforms, target, params, chunk_events=4, dtype=np.float32)
    frequency, time = _axes(params, 400)
    n_bytes = 10 * frequency.size * time.size * 4  # float32
    assert str(caught.value) == (
        f"disk full: writing 10 spectrograms ({n_bytes / 1000:.1f} kB) to {target} failed "
        f"with 123.5 MB free there; nothing was left at {target}; free space and rerun"
    )
    assert len(written) == 1 and not target.exists() and _leftovers(tmp_path) == []

    # an append that runs out of space is rolled back
    monkeypatch.setattr(driver, "write_region", original)
    ingest_arrays(waveforms[:5], target, params, chunk_events=4, dtype=np.float32)
    before = archive.open_archive(target).spectrogram.values
    written.clear()
    monkeypatch.setattr(driver, "write_region", second_region_fails)
    with dask.config.set(scheduler="synchronous"), pytest.raises(DiskFullError) as caught:
        ingest_arrays(waveforms[5:], target, params, append=True, event=[f"n{i}" for i in
                      range(5)], chunk_events=4, dtype=np.float32)  # fmt: skip
    assert str(caught.value).endswith(
        f"the append was rolled back: {target} is as before; free space and rerun"
    )
    np.testing.assert_array_equal(archive.open_archive(target).spectrogram.values, before)


SETTINGS = {"num_pat": 3, "num_state": 2, "nmf_steps": 4, "hmm_steps": 2, "batch_size": 4,
            "random_state": 1, "client": False}  # fmt: skip


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_no_partial_group(
    tmp_path: Path, rng, monkeypatch, planted_free_space
) -> None:
    path = _archive(tmp_path / "events.zarr", rng)
    original = modelgroup._write_group
    calls = []

    async def second_checkpoint_fails(folder, dataset):
        calls.append(folder)
        await original(folder, dataset)  # the partial group is on disk when space runs out
        if len(calls) == 2:
            _no_space()

    monkeypatch.setattr(modelgroup, "_write_group", second_checkpoint_fails)
    with pytest.raises(DiskFullError) as caught:
        SpecUFEx(**SETTINGS, checkpoint_every=2).fit(str(path))
    message = str(caught.value)
    assert re.fullmatch(
        rf"disk full: writing a checkpoint of the model \(\d+\.\d kB\) to {re.escape(str(path))}"
        r" failed with 123\.5 MB free there; the previous checkpoint is intact; free space and "
        r"rerun with --resume",
        message,
    ), message
    assert _leftovers(path) == [] and len(calls) == 2
    _, _, progress = engine.read_model_group(str(path))
    assert progress["nmf_steps"] == 2  # the first checkpoint, as it was written


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, SpecUFEx]:
    """A small archive, fitted (its model group written) and transformed."""
    rng = np.random.default_rng(11)
    path = _archive(tmp_path_factory.mktemp("fitted") / "events.zarr", rng)
    model = SpecUFEx(**SETTINGS, checkpoint_every=100).fit(str(path))
    model.transform_to_zarr(str(path))
    return path, model


def test_every_array_of_a_fitted_archive_is_checksummed(fitted: tuple[Path, SpecUFEx]) -> None:
    from zarr.codecs import Crc32cCodec, ShardingCodec

    arrays = dict(zarr.open_group(str(fitted[0]), mode="r").arrays())
    model = zarr.open_group(str(fitted[0] / archive.MODEL_GROUP), mode="r")
    arrays.update({f"model/{name}": array for name, array in model.arrays()})
    assert {*engine.OUTPUT_NAMES, engine.TRANSFORMED, "model/W1", "spectrogram"} <= set(arrays)
    for name, array in arrays.items():
        last = [array.metadata.codecs[-1]]
        if type(last[0]) is ShardingCodec:  # each inner chunk and the index of a shard
            assert name == "spectrogram"
            last = [last[0].codecs[-1], last[0].index_codecs[-1]]
        assert [type(codec) for codec in last] == [Crc32cCodec] * len(last), name


def test_a_model_group_setting_that_shadows_a_method_is_refused(
    fitted: tuple[Path, SpecUFEx], tmp_path: Path
) -> None:
    path = tmp_path / "events.zarr"
    shutil.copytree(fitted[0], path)
    group = zarr.open_group(str(path / archive.MODEL_GROUP), mode="r+")
    state = json.loads(group.attrs["hmm_state"])
    state["settings"]["transform"] = "x"
    group.attrs["hmm_state"] = json.dumps(state)
    with pytest.raises(ValueError) as caught:
        engine.read_model_group(str(path))
    assert str(caught.value).startswith(
        f"{path / archive.MODEL_GROUP}: setting 'transform' would replace the method "
        "BayesianHMM.transform; remove it from the file (the settings are ["
    )


def test_disk_full_in_the_transform_keeps_the_outputs_done_and_resumes(
    fitted: tuple[Path, SpecUFEx], tmp_path: Path, monkeypatch, planted_free_space
) -> None:
    path = tmp_path / "events.zarr"
    shutil.copytree(fitted[0], path)
    model = fitted[1]
    expected = {name: archive.open_archive(path)[name].values for name in engine.OUTPUT_NAMES}
    monkeypatch.setattr(engine, "TASK_EVENTS", 1)  # one task per storage chunk of 4 events
    original = archive.write_region

    def third_chunk_fails(where, name, start, block):
        if start == 8 and name == archive.FINGERPRINT:
            _no_space()
        return original(where, name, start, block)

    monkeypatch.setattr(archive, "write_region", third_chunk_fails)
    with dask.config.set(scheduler="synchronous"), pytest.raises(DiskFullError) as caught:
        model.transform_to_zarr(str(path))
    assert re.fullmatch(
        rf"disk full: writing the outputs of 12 events \(\d+\.\d kB\) to {re.escape(str(path))} "
        r"failed with 123\.5 MB free there; the outputs written so far are kept; free space "
        r"and rerun with --resume",
        str(caught.value),
    ), str(caught.value)
    monkeypatch.setattr(archive, "write_region", original)
    model.transform_to_zarr(str(path), resume=True)
    for name, values in expected.items():
        np.testing.assert_array_equal(archive.open_archive(path)[name].values, values)


@pytest.mark.parametrize("failing", ["region", "chunk file", "metadata"])
def test_disk_full_in_write_spectrograms_leaves_nothing(
    tmp_path: Path, rng, monkeypatch, planted_free_space, failing: str
) -> None:
    import zarr.storage._local as local

    if failing == "region":
        written: list[int] = []
        write = _first_region_only(archive.write_region, written)
        monkeypatch.setattr(archive, "write_region", write)
    else:
        # Zarr's own file write: the second chunk of the spectrogram, or the first metadata
        put = local._put
        wanted = "spectrogram/c/1/" if failing == "chunk file" else "zarr.json"

        def full_disk_put(path, value, exclusive=False):
            if wanted in path.as_posix():
                _no_space()
            return put(path, value, exclusive)

        monkeypatch.setattr(local, "_put", full_disk_put)
    target = tmp_path / "events.zarr"
    with pytest.raises(DiskFullError) as caught:
        _archive(target, rng)  # 12 events of 10 x 6 float64: 5760 bytes
    assert str(caught.value) == (
        f"disk full: writing 12 spectrograms (5.8 kB) to {target} failed with 123.5 MB free "
        f"there; nothing was left at {target}; free space and rerun"
    )
    assert not target.exists() and _leftovers(tmp_path) == []
