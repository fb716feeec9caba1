"""Model files: exact HDF5 round trips, versioning, reference files, no pickled objects."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from specufex_dask import persistence
from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF, ConvergenceWarning

NMF_ARRAYS = ("W1", "W2", "A1", "A2")
NMF_VALUES = ("step", "num_pat", "N_eff", "dim", "h01", "h02", "a01", "a02", "w01", "w02",
              "compat", "batch_size", "max_steps", "tol", "step_size", "anneal", "random_state",
              "verbose", "dtype", "input_dims")  # fmt: skip
HMM_ARRAYS = ("B1", "B2", "gain")
HMM_VALUES = ("step", "num_pat", "num_state", "tau1", "tau2", "tauA", "tauPpi", "_max_inner_ite",
              "compat", "batch_size", "max_steps", "tol", "step_size", "n_eff", "Neff",
              "random_state", "verbose", "dtype")  # fmt: skip


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    X = rng.poisson(3.0, size=(12, 16, 9)).astype(np.float64)
    return X, rng.gamma(1.0, 1.0, size=(12, 5, 9))


def _fitted_nmf(X: np.ndarray, compat: str) -> BayesianNonparametricNMF:
    if compat == "specufex":
        return BayesianNonparametricNMF(X.shape, 5, compat=compat, random_state=3).fit(X[:4])
    model = BayesianNonparametricNMF(
        X.shape, 5, batch_size=4, max_steps=3, tol=1e-3, step_size=0.7, anneal=False,
        random_state=3, dtype=np.float32,
    )  # fmt: skip
    with warnings.catch_warnings():
        # three steps cannot meet tol; tol is here only to be saved and restored
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X)


def _fitted_hmm(V: np.ndarray, compat: str) -> BayesianHMM:
    gain = np.linspace(0.5, 2.0, V.shape[1])
    if compat == "specufex":
        return BayesianHMM(V.shape[1], gain, 3, compat=compat, random_state=3).fit(V[:3])
    model = BayesianHMM(
        V.shape[1], gain, 3, batch_size=4, max_steps=3, step_size=0.5, n_eff=1000,
        random_state=3, dtype=np.float32,
    )  # fmt: skip
    return model.fit(V)


def _assert_same_model(loaded, original, arrays, values) -> None:
    assert type(loaded) is type(original)
    for name in arrays:
        stored, kept = getattr(loaded, name), getattr(original, name)
        assert stored.dtype == kept.dtype and stored.tobytes() == kept.tobytes(), name
    for name in values:
        assert getattr(loaded, name) == getattr(original, name), name
    assert loaded.elbo_ == original.elbo_
    assert len(loaded.elbo_) > 0


@pytest.mark.parametrize("compat", ["default", "specufex"])
def test_nmf_round_trip_is_exact(tmp_path: Path, data, compat: str) -> None:
    X, _ = data
    model = _fitted_nmf(X, compat)
    model.save(tmp_path / "nmf.h5")
    loaded = BayesianNonparametricNMF.load(tmp_path / "nmf.h5")
    _assert_same_model(loaded, model, NMF_ARRAYS, NMF_VALUES)
    assert_allclose(loaded.transform(X), model.transform(X), rtol=1e-13)
    assert list(tmp_path.iterdir()) == [tmp_path / "nmf.h5"]  # no temporary left behind


@pytest.mark.parametrize("compat", ["default", "specufex"])
def test_hmm_round_trip_is_exact(tmp_path: Path, data, compat: str) -> None:
    _, V = data
    model = _fitted_hmm(V, compat)
    model.save(tmp_path / "hmm.h5")
    loaded = BayesianHMM.load(tmp_path / "hmm.h5")
    _assert_same_model(loaded, model, HMM_ARRAYS, HMM_VALUES)
    for out_loaded, out_model in zip(loaded.transform(V), model.transform(V), strict=True):
        assert_allclose(out_loaded, out_model, rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("compat", ["default", "specufex"])
def test_loaded_model_computes_the_same_bits(tmp_path: Path, data, compat: str) -> None:
    """A fitted model and its reloaded copy hold the same numbers, so they must give the
    same bits: results may not depend on the memory layout left by sorting or pruning."""
    X, V = data
    nmf = _fitted_nmf(X, compat)
    nmf.save(tmp_path / "nmf.h5")
    assert_array_equal(BayesianNonparametricNMF.load(tmp_path / "nmf.h5").transform(X),
                       nmf.transform(X))  # fmt: skip
    hmm = _fitted_hmm(V, compat)
    hmm.save(tmp_path / "hmm.h5")
    reloaded = BayesianHMM.load(tmp_path / "hmm.h5").transform(V)
    for out_loaded, out_model in zip(reloaded, hmm.transform(V), strict=True):
        assert_array_equal(out_loaded, out_model)


def test_training_resumes_identically_after_a_round_trip(tmp_path: Path, data) -> None:
    """Resuming from a saved model (a checkpoint) continues with the same bits."""
    X, _ = data
    model = _fitted_nmf(X, "default")
    model.save(tmp_path / "nmf.h5")
    loaded = BayesianNonparametricNMF.load(tmp_path / "nmf.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
        loaded.fit(X)
    _assert_same_model(loaded, model, NMF_ARRAYS, NMF_VALUES)


def _walk(file: h5py.File) -> list:
    items: list = []
    file.visititems(lambda name, item: items.append((name, item)))
    return items


@pytest.mark.parametrize("kind", ["nmf", "hmm"])
def test_file_is_plain_numeric_hdf5_with_version(tmp_path: Path, data, kind: str) -> None:
    X, V = data
    model = _fitted_nmf(X, "default") if kind == "nmf" else _fitted_hmm(V, "default")
    path = tmp_path / "model.h5"
    model.save(path)
    assert h5py.is_hdf5(path)
    with h5py.File(path, "r") as file:
        assert file.attrs["specufex_dask_format"] == type(model).__name__
        assert int(file.attrs["format_version"]) == persistence.FORMAT_VERSION
        datasets = [item for _, item in _walk(file) if isinstance(item, h5py.Dataset)]
        assert datasets
        # numbers only: no object, opaque (pickle bytes), string or compound datasets
        assert all(item.dtype.kind in "biuf" for item in datasets), [
            (item.name, item.dtype) for item in datasets if item.dtype.kind not in "biuf"
        ]
        for value in file.attrs.values():
            assert isinstance(value, (str, int, np.integer))


def test_newer_format_version_is_refused(tmp_path: Path, data) -> None:
    X, _ = data
    path = tmp_path / "nmf.h5"
    _fitted_nmf(X, "default").save(path)
    with h5py.File(path, "r+") as file:
        file.attrs["format_version"] = persistence.FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=r"format version 2 is newer than this package reads"):
        BayesianNonparametricNMF.load(path)


def test_loading_the_other_model_kind_is_refused(tmp_path: Path, data) -> None:
    X, V = data
    _fitted_nmf(X, "default").save(tmp_path / "nmf.h5")
    _fitted_hmm(V, "default").save(tmp_path / "hmm.h5")
    with pytest.raises(ValueError, match="holds a BayesianNonparametricNMF, not a BayesianHMM"):
        BayesianHMM.load(tmp_path / "nmf.h5")
    with pytest.raises(ValueError, match="holds a BayesianHMM, not a BayesianNonparametricNMF"):
        BayesianNonparametricNMF.load(tmp_path / "hmm.h5")


def test_loading_a_reference_file_of_the_other_kind_says_so(golden_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"not a BayesianHMM model file \(missing datasets"):
        BayesianHMM.load(golden_dir / "nmf.h5")
    with pytest.raises(ValueError, match="not a BayesianNonparametricNMF model file"):
        BayesianNonparametricNMF.load(golden_dir / "hmm.h5")


def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BayesianHMM.load(tmp_path / "absent.h5")
    text = tmp_path / "model.h5"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match="not an HDF5 model file"):
        BayesianNonparametricNMF.load(text)


def test_reference_files_load_in_compat_mode_unless_overridden(golden_dir: Path) -> None:
    nmf = BayesianNonparametricNMF.load(golden_dir / "nmf.h5")
    hmm = BayesianHMM.load(golden_dir / "hmm.h5")
    assert nmf.compat == hmm.compat == "specufex"
    with h5py.File(golden_dir / "nmf.h5", "r") as file:
        assert_array_equal(nmf.W1, file["W1"][()])
        assert nmf.step == int(file["step"][()]) and nmf.num_pat == int(file["num_pat"][()])
        assert nmf.input_dims == tuple(int(v) for v in file["input_dims"][()])
    with h5py.File(golden_dir / "hmm.h5", "r") as file:
        assert_array_equal(hmm.B2, file["B2"][()])
        assert hmm.Neff == int(file["Neff"][()])
    assert BayesianNonparametricNMF.load(golden_dir / "nmf.h5", compat="default").compat == (
        "default"
    )
    overridden = BayesianHMM.load(golden_dir / "hmm.h5", compat="default")
    assert overridden.compat == "default"
    assert_array_equal(overridden.B1, hmm.B1)


def test_the_likelihood_scale_is_saved_and_a_loaded_model_goes_on_with_it(tmp_path):
    """A model fitted with the frames scale goes on after a save and a load exactly as
    without them; a file without the setting (written before it) is read as the old
    default, the spectrograms' scale."""
    X = np.random.default_rng(3).gamma(1.0, 3.0, size=(6, 8, 5))
    options = {"likelihood_scale": "frames", "batch_size": 2, "max_steps": 3, "random_state": 0}
    kept = BayesianNonparametricNMF(X.shape, 4, **options).fit(X)
    path = tmp_path / "nmf.h5"
    kept.save(path)
    loaded = BayesianNonparametricNMF.load(path)
    assert loaded.likelihood_scale == "frames"
    kept.fit(X)
    loaded.fit(X)
    assert_array_equal(loaded.W1, kept.W1)
    spectrograms = BayesianNonparametricNMF(
        X.shape, 4, **{**options, "likelihood_scale": "spectrograms"}
    )
    assert not np.array_equal(spectrograms.fit(X).fit(X).W1, kept.W1)
    with h5py.File(path, "r+") as file:
        settings = json.loads(file.attrs["settings"])
        del settings["likelihood_scale"]
        file.attrs["settings"] = json.dumps(settings)
    assert BayesianNonparametricNMF.load(path).likelihood_scale == "spectrograms"
