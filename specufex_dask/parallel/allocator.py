"""How a worker process's C allocator keeps the kernels' work arrays.

A nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (distributed's
``pre-spawn-environ``, so that freed memory goes back to the system). Setting the trim
threshold also turns off glibc's sliding mmap threshold: every array above 128 kB is
then mapped fresh and unmapped again when freed, and the kernels' temporaries of one
spectrogram (a 513 x 51 float32 frame is 105 kB, the blocks of 8 are 837 kB) pay page
faults on every use. Measured here on 64 events of 513 x 51 float32 (the NMF fit
statistics, one thread, median of 5): 229 ms with K = 75 and 78 ms with K = 17 under the
nanny's setting, 113 and 43 ms with the thresholds below, 169 and 42 ms with glibc's
defaults.

:func:`keep_work_arrays` raises both thresholds in the calling process: arrays below
``MMAP_THRESHOLD`` come from the heap, and up to ``TRIM_THRESHOLD`` of freed heap stays
with the process, a bounded amount beside a worker's few hundred MiB. The values are
the same bits either way; only the time differs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_work_arrays"]

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 * 2**20
"""Allocations below this come from the heap (glibc's ``M_MMAP_THRESHOLD``)."""
TRIM_THRESHOLD = 64 * 2**20
"""Freed heap kept by the process before it is returned (glibc's ``M_TRIM_THRESHOLD``)."""

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_work_arrays() -> bool:
    """Raise the calling process's mmap and trim thresholds (glibc only).

    Returns
    -------
    bool
        Whether both were set (False on another C library or system: nothing changes).
    """
    libc = _libc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        logger.debug("mallopt refused the thresholds; the allocator keeps its own")
    return done
