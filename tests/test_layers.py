"""The package's layers: each imports only from the layers below it, and loads only what it
needs (README, "Layout")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "specufex_dask"

LAYERS = (
    "common", "kernels", "inference", "io", "models", "parallel", "ingest", "pipeline",
    "analysis", "cli",
)  # fmt: skip
"""Lowest first: a module may import from its own layer and the ones before it."""

# modules at the top of the package and the layer each belongs to
TOP_MODULES = {"common": "common", "models": "models", "persistence": "models",
               "pipeline": "pipeline"}  # fmt: skip

HEAVY = ("dask", "distributed", "xarray", "zarr", "h5py")


def _modules(folder: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def layer_of(module: str) -> int:
    """Rank of a module of the package in ``LAYERS``; the package root is above them all."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)
    name = TOP_MODULES.get(parts[1], parts[1])
    if name not in LAYERS:
        raise ValueError(f"{module} belongs to no layer")
    return LAYERS.index(name)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """The package's modules that ``source`` imports anywhere (functions included)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # ``from package import module`` imports the module, anything else the package
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name.split(".")[0] == "specufex_dask"}


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` (the code of ``module``) from a layer above its own."""
    own = layer_of(module)
    wrong = []
    for name in sorted(imported_modules(source, module, is_package)):
        try:
            if layer_of(name) > own:
                wrong.append(f"{module} imports {name}")
        except ValueError:
            wrong.append(f"{module} imports {name}, which is in no layer")
    return wrong


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize(
    "module", [name for name in MODULES if name != "specufex_dask"]
)  # fmt: skip
def test_no_module_imports_from_a_layer_above(module):
    path = MODULES[module]
    assert upward_imports(path.read_text(), module, path.name == "__init__.py") == []


def test_the_static_check_finds_upward_imports():
    # archive.py once imported the package root for its version, loading the estimators
    found = upward_imports("from specufex_dask import __version__", "specufex_dask.io.archive")
    assert found == ["specufex_dask.io.archive imports specufex_dask"]
    found = upward_imports("def f():\n    from ..models import fold", "specufex_dask.io.chunkread")
    assert found == ["specufex_dask.io.chunkread imports specufex_dask.models"]
    assert upward_imports("import specufex_dask.parallel.engine", "specufex_dask.inference.steps")
    # an old module path inside the package
    assert upward_imports("from specufex_dask import archive", "specufex_dask.models")
    assert upward_imports("from . import stats\nfrom ..kernels import nmf",
                          "specufex_dask.inference.steps") == []  # fmt: skip


def loaded_by(*modules: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = textwrap.dedent(f"""
        import json, sys
        for name in {list(modules)!r}:
            __import__(name)
        print(json.dumps(sorted(sys.modules)))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=PACKAGE.parent,
    )  # fmt: skip
    return set(json.loads(done.stdout.splitlines()[-1]))


def _layer(name: str) -> list[str]:
    return [module for module in MODULES if module.startswith(f"specufex_dask.{name}")]


def _top(loaded: set[str]) -> set[str]:
    return {name.split(".")[0] for name in loaded}


@pytest.mark.parametrize("layer", ["kernels", "inference"])
def test_kernels_and_inference_load_no_dask_zarr_or_h5py(layer):
    loaded = loaded_by(*_layer(layer))
    assert not _top(loaded) & set(HEAVY)
    assert "specufex_dask.models" not in loaded


def test_the_io_layer_loads_no_estimator():
    loaded = loaded_by(*_layer("io"))
    assert not {"specufex_dask.models", "specufex_dask.persistence"} & loaded
    assert not _top(loaded) & {"h5py", "distributed", "numba"}


def test_the_package_root_is_cheap():
    loaded = loaded_by("specufex_dask")
    assert not _top(loaded) & {"numpy", *HEAVY}


def test_the_root_still_exports_the_estimators():
    import specufex_dask
    from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
    from specufex_dask.pipeline import SpecUFEx

    assert specufex_dask.BayesianHMM is BayesianHMM
    assert specufex_dask.BayesianNonparametricNMF is BayesianNonparametricNMF
    assert specufex_dask.SpecUFEx is SpecUFEx
    assert set(specufex_dask.__all__) <= set(dir(specufex_dask))


@pytest.mark.parametrize("old", sorted(__import__("specufex_dask").MOVED))
def test_old_module_paths_import_with_a_warning(old):
    import importlib

    import specufex_dask

    new = importlib.import_module(f"specufex_dask.{specufex_dask.MOVED[old]}")

    def forget() -> None:
        sys.modules.pop(f"specufex_dask.{old}", None)
        vars(specufex_dask).pop(old, None)

    forget()
    message = f"specufex_dask.{old} moved to {new.__name__}"
    with pytest.warns(DeprecationWarning, match=message):
        module = importlib.import_module(f"specufex_dask.{old}")
    assert module is new and module.__spec__.name == new.__name__
    forget()
    with pytest.warns(DeprecationWarning, match=message):
        assert getattr(specufex_dask, old) is new  # from specufex_dask import <old>


def test_the_ingest_package_keeps_the_old_module_names():
    from specufex_dask import ingest
    from specufex_dask.ingest import driver, readers

    assert ingest.ingest_waveforms is driver.ingest_waveforms
    assert ingest.expand_sources is readers.expand_sources
    with pytest.warns(DeprecationWarning, match="specufex_dask.ingest.driver._run"):
        assert ingest._run is driver._run
