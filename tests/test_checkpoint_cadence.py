"""When a fit writes its checkpoints: every ``checkpoint_every`` steps, or with "auto"
every 10 steps once 30 s have passed since the last, and always at each stage's end."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from specufex_dask import pipeline
from specufex_dask.io import archive
from specufex_dask.parallel import engine
from specufex_dask.pipeline import SpecUFEx

SETTINGS = {
    "num_pat": 6,
    "num_state": 3,
    "nmf_steps": 24,
    "hmm_steps": 12,
    "batch_size": 8,
    "tol": None,
    "random_state": 4,
    "client": False,
}


def _archive(path: Path) -> str:
    rng = np.random.default_rng(8)
    values = rng.gamma(1.0, 2.0, size=(24, 16, 12))
    archive.write_spectrograms(
        path, values, [f"ev{i:02d}" for i in range(24)], np.linspace(1.0, 16.0, 16),
        np.arange(12) * 0.5, chunk_events=8,
    )  # fmt: skip
    return str(path)


def _written(monkeypatch, path: str, **settings) -> list[tuple[str, int, int]]:
    """(stage, NMF steps, HMM steps) of every checkpoint a fit of ``path`` writes."""
    written: list[tuple[str, int, int]] = []
    original = engine.BackgroundCheckpoints.write

    def write(self, nmf, hmm, progress):
        written.append((progress["stage"], progress["nmf_steps"], progress["hmm_steps"]))
        return original(self, nmf, hmm, progress)

    monkeypatch.setattr(engine.BackgroundCheckpoints, "write", write)
    SpecUFEx(**{**SETTINGS, **settings}).fit(path)
    return written


@pytest.fixture
def path(tmp_path) -> str:
    return _archive(tmp_path / "events.zarr")


def test_a_number_of_steps_checkpoints_at_its_multiples(monkeypatch, path):
    written = _written(monkeypatch, path, checkpoint_every=5)
    assert written == [
        ("nmf", 5, 0), ("nmf", 10, 0), ("nmf", 15, 0), ("nmf", 20, 0),
        ("hmm", 24, 0), ("hmm", 24, 5), ("hmm", 24, 10), ("done", 24, 12),
    ]  # fmt: skip


def test_auto_checkpoints_only_the_stage_ends_of_a_fit_shorter_than_its_interval(
    monkeypatch, path
):
    assert SpecUFEx().checkpoint_every == "auto"
    assert _written(monkeypatch, path) == [("hmm", 24, 0), ("done", 24, 12)]


def test_auto_checkpoints_every_ten_steps_once_the_interval_passed(monkeypatch, path):
    # a clock that moves 40 s each time the fit reads it: the interval has always passed
    clock = itertools.count(0.0, 40.0)
    monkeypatch.setattr(pipeline, "monotonic", lambda: next(clock))
    written = _written(monkeypatch, path)
    assert written == [
        ("nmf", 10, 0), ("nmf", 20, 0), ("hmm", 24, 0), ("hmm", 24, 10), ("done", 24, 12),
    ]  # fmt: skip


@pytest.mark.parametrize("value", [0, 2.5, None, "often"])
def test_checkpoint_every_refuses_what_is_neither_a_count_nor_auto(value):
    with pytest.raises(ValueError, match="checkpoint_every"):
        SpecUFEx(checkpoint_every=value).fit("unused.zarr")
