"""Per-event statistics of one SVI step: what a worker computes for its events.

A step's global quantities are packed once into a small frozen parameter object, sent to
wherever the events are, and each event's statistics come back as one leaf of the fixed
summation tree of :mod:`specufex_dask.inference.stats`. The in-memory models and the Dask engine
both go through these functions, so they compute the same numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specufex_dask.common import spans
from specufex_dask.inference.stats import HMMStatistics, NMFStatistics
from specufex_dask.kernels.hmm import HMMLocalResult, fingerprints, hmm_local_step
from specufex_dask.kernels.nmf import nmf_local_step, nmf_transform

__all__ = [
    "HMMStepParameters",
    "NMFStepParameters",
    "hmm_leaves",
    "hmm_outputs",
    "nmf_activations",
    "nmf_leaves",
    "hold_single_threaded_blas",
    "single_threaded_blas",
]

# Events per kernel call: big enough to amortise Python overhead, small enough that the
# (n, D, M) temporaries stay in cache.
NMF_GROUP = 8
HMM_GROUP = 512


@dataclass(frozen=True)
class NMFStepParameters:
    """Global quantities the NMF local step needs (ALGORITHM.md 1a/1b).

    Attributes
    ----------
    log_basis : ndarray of shape (D, K)
        ``E[ln W] + E[ln a]``.
    basis_weight : ndarray of shape (K,)
        ``sum_d E[W] E[a]``.
    h01, h02 : float
    temperature : float
    n_inner : int
        Fixed-point iterations of a fit step.
    transform_iterations : int
        Fixed-point iterations of the transform.
    dtype : str
        Floating dtype of the kernels.
    threads : int
        Threads over groups of events (1 on Dask workers, which parallelise by task).
    """

    log_basis: NDArray[Any]
    basis_weight: NDArray[Any]
    h01: float
    h02: float
    temperature: float = 1.0
    n_inner: int = 10
    transform_iterations: int = 5
    dtype: str = "float64"
    threads: int = 1

    def model_arguments(self) -> dict[str, Any]:
        """The keyword arguments that the fit step's and the transform's kernels share."""
        return {
            "log_basis": self.log_basis,
            "basis_weight": self.basis_weight,
            "h01": self.h01,
            "h02": self.h02,
        }


def _free_blas_control() -> None:
    """Let the next thread that sets OpenBLAS's thread count through threadpoolctl do so.

    threadpoolctl (3.8) lets only the thread that set the count first change it, until
    that thread leaves its last ``with`` limit; a call of any other thread does nothing,
    silently. The shared limit below is set and restored by whichever thread comes
    first and leaves last, under its own lock, so it frees that control around each call.
    """
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:  # older threadpoolctl: every thread's call takes effect
        clear(force=True)


class _SharedBlasLimit:
    """BLAS limited to one thread while any thread of the process is inside a ``with``.

    The matrix products here are small (one spectrogram each); a multi-threaded BLAS
    spends more time synchronising than computing on them, badly so on a loaded machine.
    Parallelism comes from running groups of events on threads instead, and one BLAS
    thread makes every product's bits independent of the machine's core count: two
    OpenBLAS threads split a product elsewhere and round some entries differently
    (``nmf_local_step`` at 200 frequencies x 41 times x 75 patterns).

    The limit is process-wide (OpenBLAS has one thread count), so a limit per ``with``
    races: a thread that leaves restores the count it found, two threads, while another
    thread is still computing inside its own limit. Here the first thread to enter sets
    the limit and the last to leave restores it, both under one lock, so no thread ever
    computes outside a limit it entered. It is restored at all, rather than set once
    for good, because the in-memory models run in the user's own process, whose other
    work should keep every core; a Dask worker holds it for good
    (:func:`hold_single_threaded_blas`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._controller: Any = None
        self._limiter: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                if self._controller is None:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                _free_blas_control()
                self._limiter = self._controller.limit(limits=1, user_api="blas")
                _free_blas_control()
            self._users += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                limiter, self._limiter = self._limiter, None
                _free_blas_control()
                limiter.restore_original_limits()
                _free_blas_control()


_BLAS_LIMIT = _SharedBlasLimit()
_held_for_good = threading.Event()


def single_threaded_blas() -> _SharedBlasLimit:
    """BLAS limited to one thread for the duration of a ``with`` block, whatever other
    threads of the process do (see :class:`_SharedBlasLimit`)."""
    return _BLAS_LIMIT


def hold_single_threaded_blas() -> None:
    """Limit this process's BLAS to one thread for the rest of its life (a Dask worker's).

    It enters the shared limit and never leaves it, so no task leaving its own ``with``
    block can restore more threads, even one running when this is called.
    """
    with _BLAS_LIMIT._lock:
        if _held_for_good.is_set():
            return
        _held_for_good.set()
    _BLAS_LIMIT.__enter__()


def map_groups(function: Callable[[Any], Any], groups: list[Any], threads: int) -> list[Any]:
    """``function`` over groups of events, on up to ``threads`` threads, in order."""
    with single_threaded_blas():
        if threads <= 1 or len(groups) <= 1:
            return [function(group) for group in groups]
        with ThreadPoolExecutor(max_workers=min(threads, len(groups))) as pool:
            return list(pool.map(function, groups))


def nmf_leaves(X: NDArray[Any], params: NMFStepParameters) -> list[NMFStatistics]:
    """Statistics of every spectrogram of ``X`` (n, D, M), one leaf each."""
    X = np.asarray(X, dtype=params.dtype)

    def group_leaves(group: slice) -> list[NMFStatistics]:
        local = nmf_local_step(
            X[group],
            **params.model_arguments(),
            temperature=params.temperature,
            n_inner=params.n_inner,
        )
        return [
            NMFStatistics(
                local.basis_counts[i].astype(np.float64),
                local.activation_sum[i].astype(np.float64),
                X.shape[2],
                1,
                float(local.elbo[i]),
            )
            for i in range(len(local.elbo))
        ]

    parts = map_groups(group_leaves, spans(len(X), NMF_GROUP), params.threads)
    return [leaf for part in parts for leaf in part]


def nmf_activations(X: NDArray[Any], params: NMFStepParameters) -> NDArray[Any]:
    """Activations (n, K, M) of spectrograms ``X`` (n, D, M)."""
    X = np.asarray(X, dtype=params.dtype)
    out = np.empty((X.shape[0], params.log_basis.shape[1], X.shape[2]), dtype=X.dtype)

    def transform_group(group: slice) -> None:
        out[group] = nmf_transform(
            X[group], **params.model_arguments(), n_iter=params.transform_iterations
        )

    map_groups(transform_group, spans(len(X), NMF_GROUP), params.threads)
    return out


@dataclass(frozen=True)
class HMMStepParameters:
    """Global quantities the HMM local step needs (ALGORITHM.md 2a, 3).

    Attributes
    ----------
    log_rate, rate : ndarray of shape (S, K)
        ``ElnB`` and ``EB``.
    gain : ndarray of shape (K,)
        NMF pattern gains: the emissions are ``U = diag(gain) V``.
    tau_initial, tau_transition : float
    n_iter : int
    compat : bool
        The reference's forward-backward.
    dtype : str
    threads : int
        Threads over groups of sequences.
    """

    log_rate: NDArray[Any]
    rate: NDArray[Any]
    gain: NDArray[Any]
    tau_initial: float
    tau_transition: float
    n_iter: int = 20
    compat: bool = False
    dtype: str = "float64"
    threads: int = 1


def _hmm_groups(n: int, threads: int) -> list[slice]:
    """Groups of sequences: large (the time loop's cost is per group), one per thread."""
    return spans(n, max(1, min(HMM_GROUP, -(-n // max(threads, 1)))))


def _hmm_local(V: NDArray[Any], params: HMMStepParameters) -> HMMLocalResult:
    U = np.asarray(V, dtype=params.dtype) * params.gain.astype(params.dtype)[:, None]
    return hmm_local_step(
        U,
        params.log_rate,
        params.rate,
        tau_initial=params.tau_initial,
        tau_transition=params.tau_transition,
        n_iter=params.n_iter,
        compat=params.compat,
    )


def hmm_leaves(V: NDArray[Any], params: HMMStepParameters) -> list[HMMStatistics]:
    """Statistics of every activation sequence of ``V`` (n, K, M), one leaf each."""

    def group_leaves(group: slice) -> list[HMMStatistics]:
        local = _hmm_local(V[group], params)
        return [
            HMMStatistics(
                local.emission_counts[i].astype(np.float64),
                local.state_counts[i].astype(np.float64),
                1,
                float(local.elbo_per_sequence[i]),
            )
            for i in range(len(local.elbo_per_sequence))
        ]

    parts = map_groups(group_leaves, _hmm_groups(len(V), params.threads), params.threads)
    return [leaf for part in parts for leaf in part]


def hmm_outputs(
    V: NDArray[Any], params: HMMStepParameters
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """``(fingerprints, As, gams)`` of activation sequences ``V`` (n, K, M)."""
    n, _, M = V.shape
    S = params.rate.shape[0]
    dtype = np.dtype(params.dtype)
    prints = np.empty((n, S, S), dtype=dtype)
    transitions = np.empty((n, S, S), dtype=dtype)
    gams = np.empty((n, S, M), dtype=dtype)

    def outputs_group(group: slice) -> None:
        local = _hmm_local(V[group], params)
        gams[group] = local.state_probability
        transitions[group] = local.transition
        prints[group] = fingerprints(
            local.transition.astype(np.float64),
            local.initial.astype(np.float64),
            tau_initial=params.tau_initial,
            tau_transition=params.tau_transition,
        )

    map_groups(outputs_group, _hmm_groups(n, params.threads), params.threads)
    return prints, transitions, gams
