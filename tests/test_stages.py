"""Staged and reusable models (issue 20.6).

``fit(stage="nmf")`` then ``fit(stage="hmm")`` must give the model of one fit, and a
refit of the HMM with other settings must leave the stored NMF bit-identical;
``transform B --model A`` must give the outputs of A's model computed in Python on B's
spectrograms, count as made by the matching model, and refuse another frequency axis.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from test_resume import N_EVENTS, N_FREQUENCIES, N_TIMES, SETTINGS  # the resume tests' fit

from specufex_dask.cli import main
from specufex_dask.inference.params import ResumeMismatch
from specufex_dask.io import archive
from specufex_dask.io.status import APPLIED_MODEL_ATTR, output_problem, output_status
from specufex_dask.pipeline import SpecUFEx

NMF_ARRAYS = ("W1", "W2", "A1", "A2")
OUTPUTS = ("activation", "state_probability", "transition", "fingerprint")


class Interrupted(RuntimeError):
    """Raised from the progress callback to stop a fit."""


def _write(
    path: Path, seed: int = 5, n_frequencies: int = N_FREQUENCIES, top: float = 30.0
) -> str:
    rng = np.random.default_rng(seed)
    values = rng.gamma(1.0, 2.0, size=(N_EVENTS, n_frequencies, N_TIMES))
    events = [f"ev{i:03d}" for i in range(N_EVENTS)]
    frequency = np.linspace(1.0, top, n_frequencies)
    archive.write_spectrograms(
        path, values, events, frequency, np.arange(N_TIMES) * 0.5, chunk_events=8
    )
    return str(path)


def _group(path: str) -> dict[str, np.ndarray]:
    """The arrays of the archive's model group, read directly from Zarr."""
    group = zarr.open_group(path, mode="r", use_consolidated=False)[archive.MODEL_GROUP]
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def _progress(path: str) -> dict:
    group = zarr.open_group(path, mode="r", use_consolidated=False)[archive.MODEL_GROUP]
    return json.loads(group.attrs["progress"])


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, object]:
    """One archive fitted in one go, a copy fitted by stages; the NMF stage's arrays."""
    folder = tmp_path_factory.mktemp("staged")
    whole, parts = _write(folder / "whole.zarr"), _write(folder / "parts.zarr")
    SpecUFEx(**SETTINGS, client=False).fit(whole)
    nmf_only = SpecUFEx(**SETTINGS, client=False).fit(parts, stage="nmf")
    return {"whole": whole, "parts": parts, "nmf_only": nmf_only, "nmf": _group(parts)}


def test_the_nmf_stage_stores_only_the_nmf(staged) -> None:
    parts, nmf_only = staged["parts"], staged["nmf_only"]
    assert nmf_only.hmm_ is None and nmf_only.n_steps_ == {"nmf": 8, "hmm": 0}
    saved = _progress(parts)
    assert saved["stage"] == "hmm" and saved["nmf_steps"] == 8 and saved["hmm_steps"] == 0
    assert "B1" not in staged["nmf"]
    with pytest.raises(ValueError, match="holds no completely fitted model"):
        SpecUFEx.from_archive(parts, client=False)


def test_nmf_then_hmm_is_the_whole_fit_and_a_refit_keeps_the_nmf(staged) -> None:
    whole, parts = staged["whole"], staged["parts"]
    SpecUFEx(**SETTINGS, client=False).fit(parts, stage="hmm")
    expected, got = _group(whole), _group(parts)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
    # other HMM settings, and an NMF setting the refit does not use
    changed = {**SETTINGS, "num_pat": 40, "num_state": 5, "hmm_steps": 6, "random_state": 9}
    refit = SpecUFEx(**changed, client=False).fit(parts, stage="hmm")
    after = _group(parts)
    for name in NMF_ARRAYS:
        assert np.array_equal(after[name], staged["nmf"][name]), name
    assert after["B1"].shape[0] == 5 and refit.n_steps_ == {"nmf": 8, "hmm": 6}
    assert not np.array_equal(after["B1"][:3], expected["B1"])
    loaded = SpecUFEx.from_archive(parts, client=False)
    assert (loaded.num_pat, loaded.num_state, loaded.random_state) == (8, 5, 9)
    assert loaded.hmm_.num_state == 5


def test_an_interrupted_refit_resumes_with_the_hmm_settings_only(staged, tmp_path) -> None:
    """A resumed refit equals an uninterrupted one; ``num_pat`` (of the NMF) may differ,
    the HMM's ``num_state`` may not."""
    path = _write(tmp_path / "refit.zarr")
    SpecUFEx(**SETTINGS, client=False).fit(path, stage="nmf")
    refit = {**SETTINGS, "num_state": 4, "hmm_steps": 6, "checkpoint_every": 2}

    def stop(stage: str, info: dict) -> None:
        if stage == "hmm" and info["step"] == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        SpecUFEx(**refit, client=False, progress=stop).fit(path, stage="hmm")
    assert _progress(path)["hmm_steps"] == 2
    with pytest.raises(ResumeMismatch, match="num_state: checkpoint 4, now 3"):
        SpecUFEx(**{**refit, "num_state": 3}, client=False).fit(path, stage="hmm", resume=True)
    SpecUFEx(**{**refit, "num_pat": 40}, client=False).fit(path, stage="hmm", resume=True)
    resumed = _group(path)
    SpecUFEx(**refit, client=False).fit(path, stage="hmm")
    uninterrupted = _group(path)
    for name in uninterrupted:
        assert np.array_equal(resumed[name], uninterrupted[name]), name
    for name in NMF_ARRAYS:
        assert np.array_equal(resumed[name], staged["nmf"][name]), name


def test_a_refit_refuses_what_its_nmf_cannot_take(tmp_path) -> None:
    empty = _write(tmp_path / "empty.zarr")
    with pytest.raises(ValueError, match=f"{re.escape(empty)} holds no model to refit"):
        SpecUFEx(**SETTINGS, client=False).fit(empty, stage="hmm")
    with pytest.raises(ValueError, match="stage='everything': expected one of all, nmf, hmm"):
        SpecUFEx(**SETTINGS, client=False).fit(empty, stage="everything")

    def stop(stage: str, info: dict) -> None:
        if stage == "nmf" and info["step"] == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        SpecUFEx(**SETTINGS, checkpoint_every=4, client=False, progress=stop).fit(empty)
    with pytest.raises(ValueError, match="its NMF stage stopped at step 4; finish it"):
        SpecUFEx(**SETTINGS, client=False).fit(empty, stage="hmm")
    SpecUFEx(**SETTINGS, client=False).fit(empty, stage="nmf", resume=True)
    before = _group(empty)
    with pytest.raises(ValueError, match=r"compat and dtype \(dtype: NMF 'float64', now"):
        SpecUFEx(**SETTINGS, dtype="float32", client=False).fit(empty, stage="hmm")
    after = _group(empty)
    assert all(np.array_equal(after[name], before[name]) for name in before)


@pytest.fixture(scope="module")
def two_archives(tmp_path_factory) -> tuple[str, str]:
    """Archive A with its model, archive B (other spectrograms) with its own."""
    folder = tmp_path_factory.mktemp("two")
    a, b = _write(folder / "a.zarr", seed=1), _write(folder / "b.zarr", seed=2)
    SpecUFEx(**SETTINGS, client=False).fit(a)
    SpecUFEx(**{**SETTINGS, "num_state": 4}, client=False).fit(b)
    return a, b


def _transformed(path: str) -> dict[str, np.ndarray]:
    with xr.open_zarr(path, consolidated=False) as dataset:
        return {name: dataset[name].values for name in OUTPUTS}


def test_stage_flags_of_fit(tmp_path, local_cluster, capsys) -> None:
    cluster, _ = local_cluster
    path = _write(tmp_path / "events.zarr")
    flags = ["--num-pat", "8", "--nmf-steps", "8", "--hmm-steps", "4", "--batch-size", "8"]
    flags += ["--seed", "3", "--scheduler", cluster.scheduler_address, "--quiet"]
    assert main(["fit", path, "--stage", "nmf", *flags]) == 0
    assert "fitted" in capsys.readouterr().out and "B1" not in _group(path)
    nmf = _group(path)
    assert main(["fit", path, "--stage", "hmm", *flags, "--num-state", "5"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("patterns (8 steps); HMM of 5 states (4 steps)")
    after = _group(path)
    assert after["B1"].shape[0] == 5
    assert all(np.array_equal(after[name], nmf[name]) for name in NMF_ARRAYS)
    # the stages on the cluster: the bits of one fit in this process
    whole = _write(tmp_path / "whole.zarr")
    SpecUFEx(**{**SETTINGS, "num_state": 5}, client=False).fit(whole)
    expected = _group(whole)
    assert all(np.array_equal(after[name], expected[name]) for name in expected)
    with pytest.raises(SystemExit, match="2"):  # a transform needs the HMM
        main(["run", path, "--stage", "nmf", *flags])
    assert "invalid choice: 'nmf'" in capsys.readouterr().err


def test_transform_with_the_model_of_another_archive(two_archives, local_cluster, capsys):
    a, b = two_archives
    cluster, _ = local_cluster
    expected = SpecUFEx.from_archive(a, client=False).transform(b).compute()
    code = main(["transform", b, "--model", a, "--scheduler", cluster.scheduler_address])
    assert code == 0, capsys.readouterr().err
    assert f"with the model of {a}" in capsys.readouterr().out
    got = _transformed(b)
    for name in OUTPUTS:
        assert np.array_equal(got[name], expected[name].values), name
    # B's own model stays; A's outputs count as made by the model that matches
    with xr.open_zarr(b, group=archive.MODEL_GROUP, consolidated=False) as model:
        assert model.sizes[archive.STATE] == 4
    assert {s.model_match for s in output_status(b, N_EVENTS).values()} == {True}
    opened = archive.open_archive(b)
    assert [output_problem(opened, name, b) for name in OUTPUTS] == [None] * 4
    record = zarr.open_group(b).attrs[APPLIED_MODEL_ATTR]
    assert json.loads(record)["source"] == a
    # without the record, they would be those of another model than B's
    del zarr.open_group(b, mode="r+").attrs[APPLIED_MODEL_ATTR]
    assert {s.model_match for s in output_status(b, N_EVENTS).values()} == {False}
    zarr.open_group(b, mode="r+").attrs[APPLIED_MODEL_ATTR] = record
    assert main(["cluster", b, "--n-clusters", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", b]) == 0
    assert f"made by the model of {a} (transform --model)" in capsys.readouterr().out
    # the exported parameters are those of the model that made the outputs: A's
    assert main(["export", b, str(Path(b).parent / "catalog-b"), "--quiet"]) == 0
    capsys.readouterr()
    with h5py.File(Path(b).parent / "catalog-b" / "SpecUFEx_b.h5", "r") as h5:
        emission = h5["model_parameters/EB"][()]
    np.testing.assert_array_equal(emission, SpecUFEx.from_archive(a, client=False).hmm_.EB)
    # B's own model again: the record goes
    assert main(["transform", b, "--scheduler", cluster.scheduler_address, "--quiet"]) == 0
    assert APPLIED_MODEL_ATTR not in zarr.open_group(b).attrs
    assert {s.model_match for s in output_status(b, N_EVENTS).values()} == {True}
    own = SpecUFEx.from_archive(b, client=False).transform(b).compute()
    assert np.array_equal(_transformed(b)["fingerprint"], own["fingerprint"].values)


def test_saved_models_and_estimator_files_apply_alike(two_archives, tmp_path, local_cluster):
    a, b = two_archives
    cluster, _ = local_cluster
    model = SpecUFEx.from_archive(a, client=False)
    expected = model.transform(b).compute()
    model.save(str(tmp_path / "saved.zarr"))
    with pytest.raises(FileExistsError, match="saved.zarr exists"):
        model.save(str(tmp_path / "saved.zarr"))
    saved = SpecUFEx.from_archive(str(tmp_path / "saved.zarr"), client=False)
    assert saved.model_token() == model.model_token()
    assert np.array_equal(saved.frequency_, model.frequency_)
    model.nmf_.save(tmp_path / "nmf.h5")
    model.hmm_.save(tmp_path / "hmm.h5")
    target = str(tmp_path / "b.zarr")
    _write(Path(target), seed=2)
    nmf_file, hmm_file = str(tmp_path / "nmf.h5"), str(tmp_path / "hmm.h5")
    scheduler = ["--scheduler", cluster.scheduler_address, "--quiet"]
    assert main(["transform", target, "--model", nmf_file, hmm_file, *scheduler]) == 0
    got = _transformed(target)
    for name in OUTPUTS:
        assert np.array_equal(got[name], expected[name].values), name
    source = json.loads(zarr.open_group(target).attrs[APPLIED_MODEL_ATTR])["source"]
    assert source == f"{nmf_file} and {hmm_file}"
    hmm = model.hmm_
    hmm.compat = "specufex"
    with pytest.raises(ValueError, match="the NMF's compat is 'default' and the HMM's 'spe"):
        SpecUFEx.from_estimators(model.nmf_, hmm, source="pair")


@pytest.mark.parametrize(
    ("n_frequencies", "top", "given"),
    [(30, 40.0, "frequency axis 1..40 Hz differs"), (24, 30.0, "24 frequencies (1..30 Hz)")],
)
def test_another_frequency_axis_is_refused_naming_both(
    two_archives, tmp_path, capsys, n_frequencies, top, given
) -> None:
    a, _ = two_archives
    other = _write(tmp_path / "other.zarr", n_frequencies=n_frequencies, top=top)
    assert main(["transform", other, "--model", a, "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"specufex-dask: error: {other}: {given}")
    assert f"the model of {a}" in err and "1..30 Hz" in err.split(given)[1]
    assert len(err.splitlines()) == 1
    assert not set(OUTPUTS) & set(zarr.open_group(other).keys())
