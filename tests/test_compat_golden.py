"""compat="specufex" reproduces the reference package's numbers (ALGORITHM.md section 5).

The golden files were produced by the reference package; every comparison is to a
relative 1e-8.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.testing import assert_allclose

from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF

RTOL = 1e-8


def _workflow_stack(golden_dir: Path, group: str) -> np.ndarray:
    """Datasets of one group of the workflow file, stacked in the key order of ACM."""
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as file:
        event_ids = list(file["ACM"].keys())
        return np.stack([file[f"{group}/{event}"][()] for event in event_ids])


@pytest.fixture
def golden_spectrograms(golden_dir: Path) -> np.ndarray:
    return _workflow_stack(golden_dir, "spectrograms/transformed_spectrograms")


@pytest.fixture
def golden_activations(golden_dir: Path) -> np.ndarray:
    return _workflow_stack(golden_dir, "ACM")


def test_nmf_fit_steps_match_reference(golden_dir: Path) -> None:
    golden = np.load(golden_dir / "nmf_fit_steps.npz")
    X = golden["X"]
    model = BayesianNonparametricNMF(X.shape, 75, compat="specufex")
    model.W1 = golden["init_W1"]
    model.W2 = golden["init_W2"]
    model.A1 = golden["init_A1"]
    model.A2 = golden["init_A2"]
    model.step = int(golden["init_step"])
    # One call with the whole order: the reference sorts the patterns only at the end of
    # a fit call (numpy's default argsort among tied peaks), so 25 calls would give a
    # different order of tied patterns.
    model.fit(X[golden["order"]])

    for name in ("W1", "W2", "A1", "A2", "EW", "EA", "ElnWA", "gain"):
        assert_allclose(getattr(model, name), golden[f"final_{name}"], rtol=RTOL, err_msg=name)
    assert model.num_pat == int(golden["final_num_pat"])
    assert model.step == int(golden["final_step"])
    assert_allclose(model.transform(X), golden["transform_V"], rtol=RTOL)


def test_nmf_transform_of_reference_model(
    golden_dir: Path, golden_spectrograms: np.ndarray, golden_activations: np.ndarray
) -> None:
    model = BayesianNonparametricNMF.load(golden_dir / "nmf.h5")
    assert model.compat == "specufex"
    assert_allclose(model.transform(golden_spectrograms), golden_activations, rtol=RTOL)


def test_hmm_fit_steps_match_reference(golden_dir: Path) -> None:
    golden = np.load(golden_dir / "hmm_fit_steps.npz")
    V = golden["V"]
    model = BayesianHMM(75, golden["gain"], 15, compat="specufex")
    model.B1 = golden["init_B1"]
    model.B2 = golden["init_B2"]
    model.step = int(golden["init_step"])
    model.fit(V[golden["order"]])

    for name in ("B1", "B2", "EB", "ElnB"):
        assert_allclose(getattr(model, name), golden[f"final_{name}"], rtol=RTOL, err_msg=name)
    # the reference's counter grows by the index within the call: 0+1+...+6 = 21
    assert model.step == int(golden["final_step"]) == 21
    prints, transitions, gams = model.transform(V)
    assert_allclose(gams, golden["transform_gams"], rtol=RTOL)
    assert_allclose(transitions, golden["transform_As"], rtol=RTOL)
    assert_allclose(prints, golden["transform_fingerprints"], rtol=RTOL)


def test_hmm_transform_of_reference_model(
    golden_dir: Path, golden_activations: np.ndarray
) -> None:
    model = BayesianHMM.load(golden_dir / "hmm.h5")
    assert model.compat == "specufex"
    prints, transitions, gams = model.transform(golden_activations)

    assert_allclose(gams, _workflow_stack(golden_dir, "STM"), rtol=RTOL)
    assert_allclose(transitions, _workflow_stack(golden_dir, "SpecUFEx_output/As"), rtol=RTOL)
    golden_prints = _workflow_stack(golden_dir, "fingerprints")
    # Transitions never taken leave A - (0.1 - eps)/S at about eps/S after removing the
    # pseudo-count, so their fingerprint entries (~1e-18) are the rounding noise of that
    # cancellation and carry no relative precision; an absolute floor far below every
    # meaningful entry covers them.
    assert_allclose(prints, golden_prints, rtol=RTOL, atol=1e-12 * np.abs(golden_prints).max())
    assert np.abs(golden_prints).min() < 1e-15  # the floor is needed for these entries


def test_default_forward_backward_differs_from_reference(
    golden_dir: Path, golden_activations: np.ndarray
) -> None:
    compat_model = BayesianHMM.load(golden_dir / "hmm.h5")
    default_model = BayesianHMM.load(golden_dir / "hmm.h5", compat="default")
    assert default_model.compat == "default"
    _, _, compat_gams = compat_model.transform(golden_activations)
    _, _, default_gams = default_model.transform(golden_activations)
    assert np.abs(default_gams - compat_gams).max() > 1e-2
    # both are probability distributions over states per column
    assert_allclose(default_gams.sum(axis=1), 1.0, rtol=1e-12)
