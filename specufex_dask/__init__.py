"""SpecUFEx on Dask: Bayesian NMF + HMM fingerprints of spectrogram archives.

``BayesianNonparametricNMF`` and ``BayesianHMM`` are the in-memory models with the
reference package's API; ``SpecUFEx`` runs both on Zarr archives with Dask.
"""

from __future__ import annotations

from typing import Any

from .models import BayesianHMM, BayesianNonparametricNMF

__version__ = "0.1.0"
__all__ = ["BayesianHMM", "BayesianNonparametricNMF", "SpecUFEx", "__version__"]


def __getattr__(name: str) -> Any:
    # SpecUFEx pulls in dask and xarray; the in-memory models do not need them.
    if name == "SpecUFEx":
        from .pipeline import SpecUFEx

        return SpecUFEx
    raise AttributeError(f"module 'specufex_dask' has no attribute {name!r}")
