"""Batched NMF and HMM kernels (NumPy, and Numba where a loop must be compiled).

Numba's cache of compiled functions goes to a per-user folder instead of next to these
sources: files written into an installed package are unknown to pip, so uninstalling the
package would leave a folder behind that shadows a later editable install. A
``NUMBA_CACHE_DIR`` chosen by the user wins; the setting only takes effect if Numba is
imported after this package.
"""

from __future__ import annotations

import os
from pathlib import Path


def _user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/specufex-dask/numba``, by default under ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "specufex-dask" / "numba"


os.environ.setdefault("NUMBA_CACHE_DIR", str(_user_cache_dir()))
