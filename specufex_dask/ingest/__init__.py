"""Waveforms into spectrogram archives: the spectrogram settings and transform
(``preprocessing``), the waveform readers (``readers``) and the ingest driver (``driver``).

The driver's functions are importable from here, loaded when first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from specufex_dask.common import warn_moved

__all__ = [
    "WAVEFORM_SUFFIXES",
    "IngestError",
    "IngestReport",
    "default_event_id",
    "expand_sources",
    "ingest_arrays",
    "ingest_catalog",
    "ingest_continuous",
    "ingest_quakeml",
    "ingest_waveforms",
]


def __getattr__(name: str) -> Any:
    # what ``specufex_dask.ingest`` held when it was one module
    for submodule in ("driver", "readers"):
        module = importlib.import_module(f"{__name__}.{submodule}")
        if hasattr(module, name):
            if name not in __all__:
                warn_moved(f"{__name__}.{name}", f"{module.__name__}.{name}")
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
