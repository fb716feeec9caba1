"""SpecUFEx on Dask: Bayesian NMF + HMM fingerprints of spectrogram archives.

``BayesianNonparametricNMF`` and ``BayesianHMM`` are the in-memory models with the
reference package's API; ``SpecUFEx`` runs both on Zarr archives with Dask. All three are
imported when first asked for, so that ``import specufex_dask.kernels.nmf`` (say) loads only
its own layer.

The modules that moved into the layer folders keep importing under their old names
(``specufex_dask.archive`` is ``specufex_dask.io.archive``) with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from specufex_dask.common import __version__, warn_moved

__all__ = ["BayesianHMM", "BayesianNonparametricNMF", "SpecUFEx", "__version__"]

_EXPORTS = {
    "BayesianHMM": "specufex_dask.models",
    "BayesianNonparametricNMF": "specufex_dask.models",
    "SpecUFEx": "specufex_dask.pipeline",
}

MOVED = {
    "archive": "io.archive",
    "chunkread": "io.chunkread",
    "h5import": "io.h5import",
    "compat": "inference.compat",
    "convergence": "inference.convergence",
    "diagnostics": "inference.diagnostics",
    "initialise": "inference.initialise",
    "seeding": "inference.seeding",
    "stats": "inference.stats",
    "steps": "inference.steps",
    "updates": "inference.updates",
    "validation": "inference.validation",
    "preprocessing": "ingest.preprocessing",
    "engine": "parallel.engine",
    "runners": "parallel.runners",
    "clusters": "parallel.clusters",
    "clustering": "analysis.clustering",
    "plot": "analysis.plot",
    "datasets": "analysis.datasets",
    "config": "cli.config",
}
"""Old module names under ``specufex_dask`` and where the modules are now."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``specufex_dask.<old>`` as the module it moved to (one module object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}"
        warn_moved(spec.name, new)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        # the import system gave the module the old name's spec: give it back its own
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
