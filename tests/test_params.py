"""The parameter table (specufex_dask.inference.params): scikit-learn's contract for the
estimators and SpecUFEx, and every rule enforced alike by them and by the configuration."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest
import xarray as xr
from sklearn.base import clone

from specufex_dask import BayesianHMM, BayesianNonparametricNMF, SpecUFEx
from specufex_dask.cli import config as config_module
from specufex_dask.cli.config import Config, ConfigError, merge_config
from specufex_dask.inference.params import (
    HMM_PARAMETERS,
    NMF_PARAMETERS,
    PIPELINE_PARAMETERS,
    REQUIRED,
    reference_mode_message,
)

TABLES = {
    BayesianNonparametricNMF: NMF_PARAMETERS,
    BayesianHMM: HMM_PARAMETERS,
    SpecUFEx: PIPELINE_PARAMETERS,
}
X = np.random.default_rng(1).gamma(1.0, 2.0, size=(6, 5, 4))
V = np.random.default_rng(2).gamma(1.0, 2.0, size=(6, 3, 4))
REQUIRED_ARGUMENTS = {
    BayesianNonparametricNMF: {"X_shape": X.shape, "num_pat": 3},
    BayesianHMM: {"num_pat": 3, "gain": np.ones(3), "num_state": 2},
    SpecUFEx: {"num_pat": 3, "num_state": 2, "client": False, "nmf_steps": 2, "hmm_steps": 2},
}


def _data(cls):
    if cls is SpecUFEx:
        return xr.DataArray(X, dims=("event", "frequency", "time"))
    return X if cls is BayesianNonparametricNMF else V


def _fit(cls, **arguments):
    """Construct ``cls`` and fit it on small data (where the arguments are checked)."""
    return cls(**{**REQUIRED_ARGUMENTS[cls], **arguments}).fit(_data(cls))


@pytest.mark.parametrize("cls", list(TABLES))
def test_the_table_is_the_constructor_signature(cls) -> None:
    signature = inspect.signature(cls.__init__).parameters
    names = [name for name in signature if name != "self"]
    assert names == list(TABLES[cls])
    for name in names:
        default = signature[name].default
        declared = TABLES[cls][name].default
        assert (declared is REQUIRED) == (default is inspect.Parameter.empty), name
        if declared is not REQUIRED:
            assert declared is default or declared == default, name


GIVEN = {
    BayesianNonparametricNMF: {
        "X_shape": [6, 5, 4], "num_pat": np.int64(3), "compat": "default", "batch_size": 2,
        "max_steps": 3, "tol": 0.0, "step_size": 0.5, "anneal": False,
        "min_pattern_share": 0.01, "merge_cosine": 0.99, "likelihood_scale": "frames",
        "init": "data", "random_state": 7,
        "dtype": "float32", "verbose": False,
    },
    BayesianHMM: {
        "num_pat": 3, "gain": [1.0, 2.0, 3.0], "num_state": 2, "compat": "default",
        "batch_size": 2, "max_steps": 3, "tol": None, "step_size": None, "n_eff": 100,
        "init": "random", "random_state": 7, "dtype": np.float32, "verbose": True,
    },
    SpecUFEx: {
        "num_pat": 3, "num_state": 2, "compat": "default", "nmf_steps": 2, "hmm_steps": 2,
        "batch_size": 3, "tol": None, "random_state": 9, "checkpoint_every": 5,
        "client": False, "chunk_events": 2, "dtype": np.float64, "progress": None,
        "no_worker_timeout": 60.0,
    },
}  # fmt: skip


@pytest.mark.filterwarnings("ignore::specufex_dask.models.ConvergenceWarning")
@pytest.mark.parametrize("cls", list(TABLES))
def test_get_params_returns_the_arguments_unchanged_and_clone_rebuilds_them(cls) -> None:
    given = GIVEN[cls]
    model = cls(**given)
    params = model.get_params()
    assert list(params) == list(TABLES[cls])
    assert all(params[name] is value for name, value in given.items())
    fitted = _fit(cls, **given)
    copy = clone(fitted)
    assert type(copy) is cls and copy is not fitted
    for name, value in copy.get_params().items():
        assert np.array_equal(value, given[name]) if name == "gain" else value == given[name]
    # unfitted: no fitted attribute but the estimators' empty ELBO history, which belongs
    # to the initial state they draw at construction (drawn again: the same)
    fitted_names = [name for name in vars(copy) if name.endswith("_") and name[0] != "_"]
    assert fitted_names == ([] if cls is SpecUFEx else ["elbo_"])
    if cls is not SpecUFEx:
        unfitted = cls(**given)
        for name in ("W1", "A1") if cls is BayesianNonparametricNMF else ("B1", "B2"):
            assert np.array_equal(getattr(copy, name), getattr(unfitted, name)), name
        assert copy.step == unfitted.step and copy.elbo_ == []


@pytest.mark.parametrize("cls", list(TABLES))
def test_fitted_attributes_end_in_an_underscore(cls) -> None:
    model = cls(**REQUIRED_ARGUMENTS[cls])
    before = set(vars(model))
    model.fit(_data(cls))
    added = {name for name in set(vars(model)) - before if not name.startswith("_")}
    assert added and all(name.endswith("_") for name in added), added


def test_the_reference_attributes_stay_state_and_the_arguments_parameters() -> None:
    """The NMF's ``num_pat`` is its current number of patterns (the reference's README
    builds the HMM from it); ``get_params`` keeps the argument."""
    nmf = BayesianNonparametricNMF(X.shape, 5, batch_size=6, max_steps=400, random_state=0)
    nmf.fit(X)
    assert nmf.num_pat < 5 and nmf.W1.shape[1] == nmf.num_pat
    assert nmf.get_params()["num_pat"] == 5 and clone(nmf).num_pat == 5
    hmm = BayesianHMM(nmf.num_pat, nmf.gain, 2)
    assert hmm.get_params()["gain"] is not hmm.gain and hmm.gain.dtype == np.float64
    assert hmm._data_size() == len(X) == clone(hmm)._data_size()  # the gain's data size


def test_set_params_replaces_arguments_and_draws_the_state_they_define_again() -> None:
    nmf = BayesianNonparametricNMF(X.shape, 3, random_state=1)
    assigned = np.full_like(nmf.W1, 2.0)
    nmf.W1 = assigned  # the reference's state, assignable before fit
    assert nmf.set_params(tol=1e-3, max_steps=2) is nmf
    assert nmf.W1 is assigned and nmf.get_params()["tol"] == 1e-3
    nmf.set_params(num_pat=4)
    assert nmf.W1.shape == (5, 4) and nmf.num_pat == 4
    assert np.array_equal(nmf.W1, BayesianNonparametricNMF(X.shape, 4, random_state=1).W1)
    with pytest.raises(ValueError, match="Invalid parameter 'num_patterns' for estimator"):
        nmf.set_params(num_patterns=4)
    model = SpecUFEx(client=False).set_params(batch_size=None, num_state=4)
    assert model.get_params()["batch_size"] is None and model.num_state == 4


# every (class, parameter, invalid value) of the table
CASES = [
    pytest.param(cls, name, value, id=f"{cls.__name__}-{name}-{value!r}")
    for cls, table in TABLES.items()
    for name, parameter in table.items()
    for value in parameter.rule.invalid
]


@pytest.mark.parametrize(("cls", "name", "value"), CASES)
def test_every_rule_is_enforced_with_its_message(cls, name, value) -> None:
    message = TABLES[cls][name].rule.message(name, value)
    with pytest.raises(ValueError) as error:
        _fit(cls, **{name: value})
    assert str(error.value) == message


CONFIG_CASES = [
    pytest.param(key, name, value, id=f"{key}-{value!r}")
    for key, name in config_module.FIT_KEYS.items()
    for value in PIPELINE_PARAMETERS[name].rule.invalid
]


@pytest.mark.parametrize(("key", "name", "value"), CONFIG_CASES)
def test_the_configuration_enforces_the_pipeline_rules_with_the_same_message(
    key, name, value
) -> None:
    section, field = key.split(".")
    hint = typing.get_type_hints(type(getattr(Config(), section)))[field]
    try:
        config_module._coerce(value, hint, key, "test")
    except ConfigError as error:  # the YAML typing refuses it first, naming the key
        assert f"wrong type for '{key}'" in str(error) or f"for '{key}'" in str(error)
        return
    with pytest.raises(ConfigError) as error:
        merge_config(Config(), {section: {field: value}}, source="flags")
    message = PIPELINE_PARAMETERS[name].rule.message(name, value)
    assert str(error.value) == f"invalid value for '{key}': {message} (in flags)"


def test_every_range_rule_of_the_configuration_is_tried() -> None:
    """Each configured parameter has an invalid value of the configuration's own type."""
    tried = {key for key, name in config_module.FIT_KEYS.items() if name != "compat"}
    for key in tried:
        name = config_module.FIT_KEYS[key]
        section, field = key.split(".")
        hint = typing.get_type_hints(type(getattr(Config(), section)))[field]
        accepted = []
        for value in PIPELINE_PARAMETERS[name].rule.invalid:
            try:
                config_module._coerce(value, hint, key, "test")
                accepted.append(value)
            except ConfigError:
                pass
        assert accepted, key


def test_the_configuration_defaults_are_the_pipeline_defaults() -> None:
    config = Config()
    model = SpecUFEx()
    for key, name in config_module.FIT_KEYS.items():
        section, field = key.split(".")
        assert getattr(getattr(config, section), field) == model.get_params()[name], key


def test_the_reference_mode_refuses_another_batch_size_everywhere() -> None:
    message = reference_mode_message("batch_size", 4)
    for cls in TABLES:
        with pytest.raises(ValueError) as error:
            _fit(cls, compat="specufex", batch_size=4)
        assert str(error.value) == message, cls
    with pytest.raises(ValueError, match="batch_size=None needs compat='default'"):
        _fit(SpecUFEx, compat="specufex", batch_size=None)
    with pytest.raises(ConfigError) as error:
        merge_config(Config(), {"fit": {"compat": "specufex"}, "nmf": {"batch_size": 4}})
    assert message in str(error.value)
    # "auto" (the default) is one event per step in the reference's mode
    seen = []
    model = _fit(SpecUFEx, compat="specufex", progress=lambda stage, info: seen.append(stage))
    assert model.nmf_.step == 1 and seen == ["nmf", "nmf", "hmm", "hmm"]
    merge_config(Config(), {"fit": {"compat": "specufex"}, "nmf": {"batch_size": 1}})


@pytest.mark.filterwarnings("ignore::specufex_dask.models.ConvergenceWarning")
def test_a_zero_tolerance_is_accepted_everywhere() -> None:
    for cls in TABLES:
        _fit(cls, tol=0.0, **({} if cls is SpecUFEx else {"max_steps": 2}))
    assert merge_config(Config(), {"nmf": {"tol": 0}}).nmf.tol == 0.0
