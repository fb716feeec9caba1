"""What every layer shares: the version, argument checks, splitting into spans, Zarr's
warnings and the cores this process may use. Imports nothing from the package."""

from __future__ import annotations

import contextlib
import numbers
import sys
import warnings
from collections.abc import Iterator
from types import FrameType

__all__ = [
    "ZARR_WARNINGS",
    "__version__",
    "available_cores",
    "check_positive_int",
    "ignore_zarr_warnings",
    "quiet_zarr",
    "spans",
    "warn_moved",
]

__version__ = "0.1.0"

ZARR_WARNINGS = (
    # Stores from other writers may lack consolidated metadata; the fallback is fine.
    "Failed to open Zarr store with consolidated",
    # Zarr 3 flags consolidated metadata as outside the v3 spec; xarray relies on it.
    "Consolidated metadata is currently not part",
)
"""Starts of the messages of Zarr and xarray about consolidated metadata, which is expected."""


def ignore_zarr_warnings() -> None:
    """Ignore the :data:`ZARR_WARNINGS` from now on (in the current warning filters)."""
    for message in ZARR_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Ignore the :data:`ZARR_WARNINGS` inside the ``with`` block."""
    with warnings.catch_warnings():
        ignore_zarr_warnings()
        yield


def check_positive_int(
    name: str, value: object, *, allow_none: bool = True, error: type[Exception] = ValueError
) -> None:
    """Raise ``error`` unless ``value`` is an integer (Python or NumPy) of at least 1, or None
    when ``allow_none``."""
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Integral) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")


def spans(n: int, size: int) -> list[slice]:
    """``0..n`` cut into consecutive slices of ``size`` items (the last may be shorter).

    Examples
    --------
    >>> spans(5, 2)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def available_cores() -> int:
    """Cores this process may use (its CPU affinity and any cgroup quota).

    ``dask.system.cpu_count``, imported on the first call: the lower layers load no Dask.
    """
    from dask.system import cpu_count

    return cpu_count()


# frames skipped to show a warning at the code that imports: the import system, the shims
_SHIMS = ("specufex_dask", "specufex_dask.ingest", __name__)


def warn_moved(old: str, new: str) -> None:
    """A DeprecationWarning that ``old`` is now ``new``, shown at the importing code."""
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module.startswith(("importlib", "_frozen_importlib")) or module in _SHIMS):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{old} moved to {new}", DeprecationWarning, stacklevel=level)
