"""A resumed fit keeps the settings that shape it (issue 19.3).

A checkpoint is written by a fit stopped after its NMF step 5 (checkpoints every 4
steps); every row of the parameter table that is not resumable is then changed, one at a
time, and the resumed fit must refuse with that difference and leave the checkpoint as it
was; the resumable rows, all changed at once, must resume to the model of an
uninterrupted fit with the new values.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from specufex_dask.cli import main
from specufex_dask.inference.params import (
    PIPELINE_PARAMETERS,
    ResumeMismatch,
    resumable_names,
    shaping_names,
)
from specufex_dask.io import archive
from specufex_dask.parallel import engine
from specufex_dask.pipeline import SpecUFEx

N_EVENTS, N_FREQUENCIES, N_TIMES = 32, 30, 20
SETTINGS = {
    "num_pat": 8,
    "num_state": 3,
    "nmf_steps": 8,
    "hmm_steps": 4,
    "batch_size": 8,
    "random_state": 3,
}
README = Path(__file__).resolve().parents[1] / "README.md"


class Interrupted(RuntimeError):
    """Raised from the progress callback to stop a fit."""


def _stop_at(stage: str, step: int):
    def progress(where: str, info: dict) -> None:
        if where == stage and info["step"] == step:
            raise Interrupted(f"{where} step {step}")

    return progress


def _write(path: Path, n_events: int = N_EVENTS, seed: int = 5) -> str:
    rng = np.random.default_rng(seed)
    values = rng.gamma(1.0, 2.0, size=(n_events, N_FREQUENCIES, N_TIMES))
    events = [f"ev{i:03d}" for i in range(n_events)]
    frequency = np.linspace(1.0, 30.0, N_FREQUENCIES)
    archive.write_spectrograms(
        path, values, events, frequency, np.arange(N_TIMES) * 0.5, chunk_events=8
    )
    return str(path)


def _interrupt(path: str, settings: dict, stage: str = "nmf", step: int = 5) -> None:
    fit = SpecUFEx(**settings, client=False, checkpoint_every=4, progress=_stop_at(stage, step))
    with pytest.raises(Interrupted):
        fit.fit(path)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> str:
    """An archive whose fit of ``SETTINGS`` stopped at NMF step 5 (checkpoint of step 4)."""
    path = _write(tmp_path_factory.mktemp("interrupted") / "events.zarr")
    _interrupt(path, SETTINGS)
    return path


def _digest(folder: str) -> str:
    """A digest of every file under ``folder`` (names and bytes)."""
    digest = hashlib.sha256()
    for item in sorted(Path(folder).rglob("*")):
        if item.is_file():
            digest.update(str(item.relative_to(folder)).encode() + item.read_bytes())
    return digest.hexdigest()


def _copy(path: str, folder: Path) -> str:
    target = folder / "copy.zarr"
    shutil.copytree(path, target)
    return str(target)


def _refusal(path: str, **changes) -> ResumeMismatch:
    """The ResumeMismatch of resuming ``path`` with ``SETTINGS`` changed; the archive
    must be left as it was."""
    before = _digest(path)
    with pytest.raises(ResumeMismatch) as error:
        SpecUFEx(**{**SETTINGS, **changes}, client=False).fit(path, resume=True)
    assert _digest(path) == before
    return error.value


# every row of the table that shapes the fit: the new value and the lines it must give
CHANGES = {
    "num_pat": ({"num_pat": 5}, ["num_pat: checkpoint 8, now 5"]),
    "num_state": ({"num_state": 4}, ["num_state: checkpoint 3, now 4"]),
    "compat": (
        {"compat": "specufex", "batch_size": "auto"},
        ["compat: checkpoint 'default', now 'specufex'", "batch_size: checkpoint 8, now 1"],
    ),
    "batch_size": ({"batch_size": 4}, ["batch_size: checkpoint 8, now 4"]),
    "random_state": ({"random_state": 8}, ["random_state: checkpoint 3, now 8"]),
    "dtype": ({"dtype": "float32"}, ["dtype: checkpoint 'float64', now 'float32'"]),
}


def test_every_setting_that_shapes_the_fit_is_tried() -> None:
    assert set(CHANGES) == set(shaping_names(PIPELINE_PARAMETERS))


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_changed_setting_is_refused_with_each_difference(interrupted: str, name: str) -> None:
    changes, lines = CHANGES[name]
    error = _refusal(interrupted, **changes)
    assert error.differences == lines
    message = str(error).splitlines()
    count = "1 setting differs" if len(lines) == 1 else f"{len(lines)} settings differ"
    assert message[0] == f"cannot resume the fit in {interrupted}: {count} from its checkpoint's"
    assert message[1:-1] == [f"  {line}" for line in lines]
    assert "fit without resume" in message[-1]


def test_a_batch_beyond_the_events_resumes(interrupted: str, tmp_path: Path) -> None:
    """The stored batch size is the one the fit used: min(batch_size, n_events)."""
    path = _copy(interrupted, tmp_path)
    wide = {**SETTINGS, "batch_size": N_EVENTS}
    _interrupt(path, wide)
    resumed = SpecUFEx(**{**wide, "batch_size": 10 * N_EVENTS}, client=False)
    assert resumed.fit(path, resume=True).n_steps_ == {"nmf": 8, "hmm": 4}


def test_the_resumable_settings_may_change_and_resume_as_a_fit_with_them(
    interrupted: str, tmp_path: Path, local_cluster
) -> None:
    """Step budgets, tolerance, checkpoints, chunking, the cluster and the reporting all
    change at once: the fit goes on from the checkpoint and ends as an uninterrupted fit
    with the new values."""
    _, client = local_cluster
    path = _copy(interrupted, tmp_path)
    reported: list[tuple[str, int]] = []
    changed = {
        "nmf_steps": 10, "hmm_steps": 5, "tol": None, "checkpoint_every": 3,
        "chunk_events": 5, "client": client, "no_worker_timeout": 60.0,
        "progress": lambda where, info: reported.append((where, info["step"])),
    }  # fmt: skip
    assert set(changed) == set(resumable_names(PIPELINE_PARAMETERS))
    resumed = SpecUFEx(**{**SETTINGS, **changed}).fit(path, resume=True)
    assert reported[0] == ("nmf", 5)  # continued after the checkpoint of step 4
    assert resumed.n_steps_ == {"nmf": 10, "hmm": 5}
    final = {**SETTINGS, "nmf_steps": 10, "hmm_steps": 5, "tol": None}
    whole = SpecUFEx(**final, client=False).fit(_write(tmp_path / "whole.zarr"))
    for name in ("W1", "W2", "A1", "A2"):
        assert np.array_equal(getattr(resumed.nmf_, name), getattr(whole.nmf_, name)), name
    for name in ("B1", "B2"):
        assert np.array_equal(getattr(resumed.hmm_, name), getattr(whole.hmm_, name)), name


def test_a_stored_model_has_the_settings_of_its_fit_and_resumes_as_done(
    interrupted: str, tmp_path: Path, caplog
) -> None:
    path = _copy(interrupted, tmp_path)
    fitted = SpecUFEx(**SETTINGS, client=False).fit(path, resume=True)
    loaded = SpecUFEx.from_archive(path, client=False)
    shaping = {name: fitted.get_params()[name] for name in shaping_names(PIPELINE_PARAMETERS)}
    assert {name: loaded.get_params()[name] for name in shaping} == shaping
    # its budgets and tol too (resumable settings, stored for this): resumed, it is done
    stopping = ("nmf_steps", "hmm_steps", "tol")
    assert {name: loaded.get_params()[name] for name in stopping} == {
        name: SETTINGS.get(name, fitted.get_params()[name]) for name in stopping
    }
    caplog.clear()
    assert loaded.fit(path, resume=True).n_steps_ == fitted.n_steps_
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_finished_stage_is_not_taken_further_by_a_resume(
    interrupted: str, tmp_path: Path, caplog
) -> None:
    """A finished fit resumed with its own settings is done, silently; with a larger
    budget for a stage that ran out of it, or another tol for a stage that converged, it
    stays done too (the stage was sorted and the next one built on it), but says so,
    naming the stage and what to do, and the model stays as it was."""
    path = _copy(interrupted, tmp_path)
    converging = {**SETTINGS, "hmm_steps": 400, "tol": 1e-3}
    fitted = SpecUFEx(**converging, client=False).fit(path, resume=True)
    assert fitted.n_steps_["nmf"] == 8 and fitted.converged_ == {"nmf": False, "hmm": True}
    before = _digest(path)
    caplog.clear()
    again = SpecUFEx(**converging, client=False).fit(path, resume=True)
    assert again.n_steps_ == fitted.n_steps_
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    hmm_steps = fitted.n_steps_["hmm"]
    going_on = {
        "nmf_steps": (12, "the NMF ran its budget of 8 steps, and 12 are asked"),
        "tol": (None, f"the HMM converged after {hmm_steps} steps under another tol"),
    }
    for name, (value, reason) in going_on.items():
        caplog.clear()
        resumed = SpecUFEx(**{**converging, name: value}, client=False)
        assert resumed.fit(path, resume=True).n_steps_ == fitted.n_steps_
        [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert reason in warning and "a finished stage does not resume" in warning
        assert _digest(path) == before
    assert "refit the HMM with stage 'hmm'" in warning
    # the refit of the HMM the message offers takes it further
    refit = SpecUFEx(**{**converging, "tol": None, "hmm_steps": 6}, client=False)
    assert refit.fit(path, stage="hmm").n_steps_["hmm"] == 6


def test_a_checkpoint_of_the_hmm_stage_refuses_another_number_of_states(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "events.zarr")
    _interrupt(path, SETTINGS, "hmm", 2)
    assert engine.read_model_group(path)[2]["stage"] == "hmm"
    assert _refusal(path, num_state=5).differences == ["num_state: checkpoint 3, now 5"]


def _rewrite_checkpoint(path: str, change) -> None:
    """Write the checkpoint of ``path`` again after ``change(nmf, hmm, progress)``."""
    nmf, hmm, progress = engine.read_model_group(path)
    change(nmf, hmm, progress)
    with engine.BackgroundCheckpoints(path) as checkpoints:
        checkpoints.write(nmf, hmm, progress)


def test_a_checkpoint_without_stored_settings_is_judged_by_its_models(
    interrupted: str, tmp_path: Path
) -> None:
    """Checkpoints written before the settings were stored: the seed from the model,
    the number of patterns through the priors it set (1 / num_pat)."""
    path = _copy(interrupted, tmp_path)
    _rewrite_checkpoint(path, lambda nmf, hmm, progress: progress.pop("settings"))
    saved = json.loads(xr.open_zarr(path, group="model").attrs["progress"])
    assert "settings" not in saved
    assert _refusal(path, random_state=8).differences == ["random_state: checkpoint 3, now 8"]
    differences = _refusal(path, num_pat=5).differences
    assert differences == [
        f"nmf.{name}: checkpoint {1 / 8!r}, now {1 / 5!r}" for name in ("h01", "a01")
    ]


def _set_likelihood_scale(nmf, hmm, progress) -> None:
    nmf.likelihood_scale = "frames"


def _set_prior(nmf, hmm, progress) -> None:
    nmf.w01 = 0.5


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (_set_likelihood_scale, "nmf.likelihood_scale: checkpoint 'frames', now 'spectrograms'"),
        (_set_prior, f"nmf.w01: checkpoint 0.5, now {10 / N_FREQUENCIES!r}"),
    ],
)
def test_the_models_own_settings_and_priors_are_compared(
    interrupted: str, tmp_path: Path, change, line: str
) -> None:
    path = _copy(interrupted, tmp_path)
    _rewrite_checkpoint(path, change)
    assert _refusal(path).differences == [line]


def test_a_checkpoint_of_other_data_is_refused(interrupted: str, tmp_path: Path) -> None:
    """An archive of more events (as after an append) draws other minibatches."""
    path = _write(tmp_path / "more.zarr", n_events=N_EVENTS + 8)
    nmf, hmm, progress = engine.read_model_group(interrupted)
    with engine.BackgroundCheckpoints(path) as checkpoints:
        checkpoints.write(nmf, hmm, progress)
    shapes = [N_EVENTS, N_FREQUENCIES, N_TIMES], [N_EVENTS + 8, N_FREQUENCIES, N_TIMES]
    assert _refusal(path).differences == [f"nmf.X_shape: checkpoint {shapes[0]}, now {shapes[1]}"]


def test_the_readme_lists_the_resumable_settings() -> None:
    text = " ".join(README.read_text().split())
    listed = re.search(r"may change only its resumable settings(.*?)Every other setting", text)
    assert listed is not None
    names = set(re.findall(r"`(\w+)`", listed.group(1)))
    assert set(resumable_names(PIPELINE_PARAMETERS)) <= names
    assert not names & set(shaping_names(PIPELINE_PARAMETERS))


def test_run_resume_with_other_flags_lists_each_difference_with_its_flag(
    tmp_path: Path, local_cluster, capsys
) -> None:
    """Issue 19.3: after a killed ``run --seed 7``, ``run --resume --num-pat 40
    --num-state 5 --batch-size 16 --seed 8`` must not go on."""
    from specufex_dask.cli import Reporter, effective_config, make_pipeline, parse_args

    cluster, _ = local_cluster
    path = _write(tmp_path / "events.zarr")
    first = ["run", path, "--seed", "7", "--nmf-steps", "20", "--checkpoint-every", "5"]
    model = make_pipeline(effective_config(parse_args(first)), False, Reporter(quiet=True))
    model.progress = _stop_at("nmf", 6)
    with pytest.raises(Interrupted):
        model.fit(path)
    before = _digest(path)
    changed = ["--num-pat", "40", "--num-state", "5", "--batch-size", "16", "--seed", "8"]
    code = main([*first, "--resume", *changed, "--scheduler", cluster.scheduler_address])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert _digest(path) == before  # no configuration recorded, no checkpoint written
    start = err.index(
        f"specufex-dask: error: cannot resume the fit in {path}: 4 settings differ from its "
        "checkpoint's"
    )
    assert err[start + 1 : start + 5] == [
        "  num_pat: checkpoint 75, now 40 (--num-pat)",
        "  num_state: checkpoint 15, now 5 (--num-state)",
        f"  batch_size: checkpoint {N_EVENTS}, now 16 (--batch-size)",
        "  random_state: checkpoint 7, now 8 (--seed)",
    ]
    assert "without --resume" in err[start + 5]
    assert [line for line in err if line.startswith("specufex-dask: error:")] == [err[start]]
