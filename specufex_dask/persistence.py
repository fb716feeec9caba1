"""Model files: HDF5, one dataset per attribute, settings as JSON; nothing is executed.

Files written here carry ``specufex_dask_format`` (the class name) and
``format_version`` attributes. Files without them are read as the reference package's
own model files, which store one dataset per attribute under the same names.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from specufex_dask.inference import compat as reference
from specufex_dask.inference.params import ParameterContract

__all__ = ["FORMAT_VERSION", "build_model", "load_model", "model_state", "save_model"]

FORMAT_VERSION = 1

_STATE = {
    "BayesianNonparametricNMF": {
        "arrays": ("W1", "W2", "A1", "A2"),
        "scalars": ("step", "N_eff", "dim", "num_pat", "h01", "h02", "a01", "a02", "w01", "w02"),
        "settings": ("compat", "batch_size", "max_steps", "tol", "step_size", "anneal",
                     "min_pattern_share", "merge_cosine", "likelihood_scale", "init",
                     "initialised", "random_state", "verbose",
                     "input_dims"),
    },
    "BayesianHMM": {
        "arrays": ("B1", "B2", "gain"),
        "scalars": ("step", "num_pat", "num_state", "tau1", "tau2", "tauA", "tauPpi",
                    "_max_inner_ite"),
        "settings": ("compat", "batch_size", "max_steps", "tol", "step_size", "n_eff", "Neff",
                     "init", "initialised", "random_state", "verbose"),
    },
}  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def model_state(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """``(arrays, scalars, settings)`` that fully describe a model (JSON-able settings)."""
    layout = _STATE[type(model).__name__]
    arrays = {name: np.asarray(getattr(model, name)) for name in layout["arrays"]}
    scalars = {name: _jsonable(getattr(model, name)) for name in layout["scalars"]}
    # as resolved: the seed drawn for random_state=None, "auto" decided
    resolved = model._saved_settings()
    settings = {
        name: _jsonable(resolved[name] if name in resolved else getattr(model, name))
        for name in layout["settings"]
    }
    settings["dtype"] = np.dtype(model.dtype).name
    return arrays, scalars, settings


def save_model(filename: str | Path, model: Any) -> None:
    """Write ``model`` to ``filename`` atomically (a temporary file renamed into place)."""
    kind = type(model).__name__
    path = Path(filename)
    arrays, scalars, settings = model_state(model)
    handle, temporary = tempfile.mkstemp(dir=path.parent or ".", suffix=".h5.partial")
    os.close(handle)
    try:
        with h5py.File(temporary, "w") as file:
            file.attrs["specufex_dask_format"] = kind
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["settings"] = json.dumps(settings)
            for name, value in {**arrays, **scalars}.items():
                file.create_dataset(name, data=value)
            file.create_dataset("elbo_", data=np.asarray(model.elbo_, dtype=np.float64))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read(file: h5py.File, name: str, filename: Path) -> Any:
    if name not in file:
        raise ValueError(f"{filename}: dataset {name!r} is missing; not a complete model file")
    value = file[name][()]
    return value.item() if np.ndim(value) == 0 else np.asarray(value)


def load_model(
    filename: str | Path, cls: type[ParameterContract], compat: str | None = None
) -> Any:
    """Read a model of class ``cls`` from one of our files or a reference file.

    Parameters
    ----------
    filename : str or Path
    cls : type
        ``BayesianNonparametricNMF`` or ``BayesianHMM``.
    compat : {"default", "specufex"}, optional
        Mode of the loaded model; None keeps the file's (``"specufex"`` for a reference
        file).
    """
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    kind = cls.__name__
    layout = _STATE[kind]
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not an HDF5 model file ({error})") from error
    with file:
        stored_kind = file.attrs.get("specufex_dask_format")
        if stored_kind is not None and stored_kind != kind:
            raise ValueError(f"{path} holds a {stored_kind}, not a {kind}")
        if stored_kind is not None and int(file.attrs["format_version"]) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format version {file.attrs['format_version']} is newer than this "
                f"package reads ({FORMAT_VERSION}); upgrade specufex-dask"
            )
        if stored_kind is not None:
            settings = _stored_settings(file, path)
            elbo = list(np.asarray(file["elbo_"][()], dtype=float))
        else:
            settings = _reference_settings(file, kind, path)
            elbo = []
        values = {name: _read(file, name, path) for name in layout["arrays"] + layout["scalars"]}
        values["elbo_"] = elbo
    if compat is not None:
        settings["compat"] = compat
    return build_model(cls, values, settings, where=str(path))


def _stored_settings(file: h5py.File, path: Path) -> dict[str, Any]:
    """The file's ``settings`` attribute: JSON text of an object."""
    problem = None
    try:
        settings = json.loads(file.attrs["settings"])
    except KeyError:
        problem = "is missing"
    except (TypeError, ValueError) as error:
        problem = f"is not JSON ({error})"
    else:
        if not isinstance(settings, dict):
            problem = "is not a JSON object"
    if problem is not None:
        raise ValueError(f"{path}: attribute 'settings' {problem}; save the model again")
    return settings


def _refuse_foreign_names(cls: type, given: Any, allowed: set[str], what: str, where: str) -> None:
    """Refuse names of ``given`` outside ``allowed``: setting them on the model could
    replace a method or property (``fit = "x"``: ``model.fit(...)`` would fail far from
    the cause)."""
    for name in sorted(set(given) - allowed):
        member = getattr(cls, name, None)
        if callable(member) or isinstance(member, property):
            kind = "property" if isinstance(member, property) else "method"
            problem = f"would replace the {kind} {cls.__name__}.{name}"
        else:
            problem = f"is not a {what} of a {cls.__name__}"
        raise ValueError(
            f"{where}: {what} {name!r} {problem}; remove it from the file "
            f"(the {what}s are {sorted(allowed)})"
        )


def _check_names(
    cls: type[ParameterContract], values: dict[str, Any], settings: dict[str, Any], where: str
) -> None:
    """Only the names of the parameter table and of the saved state are set on a model."""
    layout = _STATE[cls.__name__]
    table = {name for name in cls._parameter_table if name not in cls._state_names}
    _refuse_foreign_names(cls, settings, table | set(layout["settings"]), "setting", where)
    state = {*layout["arrays"], *layout["scalars"], "elbo_"}
    _refuse_foreign_names(cls, values, state, "state variable", where)
    missing = sorted({"compat", "dtype"} - set(settings))
    if missing:
        raise ValueError(f"{where}: settings {missing} are missing; save the model again")


def _reference_settings(file: h5py.File, kind: str, path: Path) -> dict[str, Any]:
    """Settings of a reference model file (which has none of ours)."""
    keys = reference.REFERENCE_NMF_KEYS if kind.endswith("NMF") else reference.REFERENCE_HMM_KEYS
    missing = [key for key in keys if key not in file]
    if missing:
        raise ValueError(f"{path}: not a {kind} model file (missing datasets {missing})")
    settings: dict[str, Any] = {
        "compat": "specufex",
        "batch_size": 1,
        "max_steps": None,
        "tol": None,
        "step_size": None,
        "random_state": 0,
        "verbose": False,
        "dtype": "float64",
    }
    if kind.endswith("NMF"):
        settings["anneal"] = True
        settings["input_dims"] = [int(v) for v in file["input_dims"][()]]
    else:
        settings["n_eff"] = None
        settings["Neff"] = int(file["Neff"][()]) if "Neff" in file else reference.HMM_NEFF
    return settings


def build_model(
    cls: type[ParameterContract],
    values: dict[str, Any],
    settings: dict[str, Any],
    where: str = "model state",
) -> Any:
    """A model of class ``cls`` from the state of :func:`model_state` (plus ``elbo_``).

    Raises
    ------
    ValueError
        Naming ``where`` (the file) and the name, for a setting or state variable that
        is neither in the class's parameter table nor in its saved state.
    """
    _check_names(cls, values, settings, where)
    # Any: the state set below is the model class's own, which this layer cannot import
    model: Any = cls.__new__(cls)
    settings = dict(settings)
    compat = settings["compat"]
    cls._parameter_table["compat"].check(compat)
    if compat != "default":
        # the reference fitted one event per step; the checks only ask that of new fits
        settings.update(batch_size=1, max_steps=None, tol=None)
    settings["dtype"] = np.dtype(settings["dtype"])
    for name, value in settings.items():
        setattr(model, name, tuple(value) if name == "input_dims" else value)
    for name, value in values.items():
        if name in ("step", "N_eff", "dim", "num_pat", "num_state", "_max_inner_ite"):
            value = int(value)
        elif isinstance(value, np.ndarray):
            value = value.astype(np.float64)
        elif isinstance(value, (int, np.integer)) and name not in ("step",):
            value = float(value)
        setattr(model, name, value)
    if cls.__name__ == "BayesianHMM":
        model.gain = np.asarray(model.gain, dtype=np.float64).ravel()
    model._restored()
    return model
