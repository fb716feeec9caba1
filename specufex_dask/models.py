"""In-memory SpecUFEx models with the reference's API (ALGORITHM.md sections 1-3).

``BayesianNonparametricNMF`` and ``BayesianHMM`` keep the names of the public
``specufex`` package, so a script written for it runs with only its import changed.
Their variational parameters are public attributes under the reference's names
(``W1, W2, A1, A2, step``; ``B1, B2, step``); derived quantities (``EW``, ``EA``,
``ElnWA``, ``gain``; ``EB``, ``ElnB``) are computed from them, so setting a state by hand
is enough. Layout: spectrograms are (n, D, M) = (events, frequencies, times); ``W`` is
D x K (frequencies x patterns), activations are (n, K, M).

Two fidelity modes (``compat``):

``"default"``
    The MATLAB original's forward-backward (ALGORITHM.md 2a), minibatches of
    ``batch_size`` events scaled by (data size / batch size), a decreasing HMM step size.
``"specufex"``
    Reproduces the reference bit for bit in its quirks (ALGORITHM.md 2c): one event per
    step, scale ``N_eff / M``, its forward-backward and its HMM step counter.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from specufex_dask import persistence
from specufex_dask.common import available_cores
from specufex_dask.inference import compat as reference
from specufex_dask.inference import steps
from specufex_dask.inference.convergence import (
    MAX_WINDOW,
    ConvergenceMonitor,
    StageMonitor,
    states_in_use,
)
from specufex_dask.inference.initialise import (
    INIT_EVENTS,
    emission_frames,
    emission_start,
    init_sample,
    pattern_start,
    spectrogram_frames,
)
from specufex_dask.inference.params import (
    COMPAT_MODES,
    HMM_INITS,
    HMM_PARAMETERS,
    MIN_PATTERN_SHARE,
    NMF_PARAMETERS,
    ParameterContract,
    check_reference_mode,
)
from specufex_dask.inference.seeding import generator, resolve_seed
from specufex_dask.inference.stats import HMMStatistics, NMFStatistics, fold
from specufex_dask.inference.svi import (
    Everything,
    InOrder,
    SeededMinibatches,
    StepResult,
    SVIProgress,
    run_svi,
)
from specufex_dask.inference.updates import (
    NMFPrior,
    check_finite,
    hmm_global_kl,
    hmm_global_update,
    hmm_step_size,
    merge_patterns,
    nmf_global_kl,
    nmf_global_update,
    nmf_inner_iterations,
    nmf_step_size,
    nmf_temperature,
    pattern_order,
    prune_mask,
    similar_pairs,
    state_order,
)
from specufex_dask.inference.validation import check_stack
from specufex_dask.kernels.nmf import expected_log

__all__ = [
    "COMPAT_MODES",
    "HMM_INITS",
    "MIN_PATTERN_SHARE",
    "BayesianHMM",
    "BayesianNonparametricNMF",
    "ConvergenceMonitor",
    "ConvergenceWarning",
]

logger = logging.getLogger("specufex_dask")

# Temperature above 1 below which annealing counts as over.
ANNEALED = 1e-4


class ConvergenceWarning(UserWarning):
    """The step budget ran out before the ELBO settled."""


class PatternGain(np.ndarray):
    """Pattern gains ``sum_d E[W]`` that remember the NMF's data size.

    The reference's loop builds the HMM from ``nmf.gain`` and fits it one sequence at a
    time, so the HMM never sees how many sequences there are; the gain tells it
    (``n_events``), and the HMM scales its statistics by that instead of by 1.
    """

    n_events: int | None

    def __array_finalize__(self, obj: object) -> None:
        self.n_events = getattr(obj, "n_events", None)


class _SVIModel(ParameterContract):
    """What both models share: the parameter contract, the SVI loop's set-up, files.

    The constructor stores its arguments unchanged and draws the reference's initial
    state from the few it needs (:meth:`_draw_state`, which checks those); every
    argument is checked when a fit starts (:mod:`specufex_dask.inference.params`).
    ``set_params`` of an argument the state is drawn from draws it again, as a new
    model would.
    """

    _batch_purpose: str
    _stage: str
    # the constructor arguments both models take, stored by _store_arguments
    compat: str
    batch_size: int
    max_steps: int | None
    tol: float | None
    step_size: float | None
    random_state: int | None
    dtype: DTypeLike
    verbose: bool
    step: int
    # arguments the initial state is drawn from
    _state_inputs: frozenset[str] = frozenset()
    # arguments compat="specufex" fixes (inference.params.REFERENCE_FIXED)
    _reference_fixed: tuple[str, ...] = ()

    def _construct(self, arguments: dict[str, Any]) -> None:
        """What ``__init__`` does with its arguments: store them, draw the initial state."""
        self._store_arguments(arguments)
        self._draw_state()

    def _check_drawn_from(self, names: tuple[str, ...]) -> None:
        """Check the arguments ``names`` the initial state is drawn from."""
        arguments = self.get_params()
        for name in names:
            self._parameter_table[name].check(arguments[name])

    def _draw_state(self) -> None:
        raise NotImplementedError

    def _parameters_set(self, names: set[str]) -> None:
        if names & self._state_inputs:
            self._draw_state()

    def _check_parameters(self) -> None:
        super()._check_parameters()
        check_reference_mode(self.compat, self.get_params(), self._reference_fixed)

    @property
    def _dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def _saved_settings(self) -> dict[str, Any]:
        """Settings as files store them: resolved (the seed drawn, "auto" decided)."""
        return {"random_state": self._seed}

    def _restored(self) -> None:
        """Set what the constructor derives, on a model built from a file's settings."""
        self._seed = resolve_seed(self.random_state)

    def save(self, filename: str | Path) -> None:
        """Write the model to an HDF5 file (no pickle; see :mod:`specufex_dask.persistence`)."""
        persistence.save_model(filename, self)

    @classmethod
    def load(cls, filename: str | Path, compat: str | None = None):
        """Read a model saved by :meth:`save` or by the reference package.

        ``compat=None`` keeps the file's mode (``"specufex"`` for the reference's files).
        """
        return persistence.load_model(filename, cls, compat)

    def _log(self, message: str, *args: object) -> None:
        logger.log(logging.INFO if self.verbose else logging.DEBUG, message, *args)

    def _svi_update(self, stats: Any, step: int, data: NDArray) -> StepResult:
        raise NotImplementedError

    def _statistics(self, data: NDArray) -> Any:
        raise NotImplementedError

    def _run_svi(self, data: NDArray, batches: str) -> SVIProgress | None:
        """SVI steps over ``data`` by :func:`~specufex_dask.inference.svi.run_svi`.

        ``batches``: "seeded" (``max_steps`` steps, default one pass, of seeded
        minibatches of ``batch_size``, stopping early when ``tol`` is met), "in order"
        (the reference: every item of ``data``, in order, is one step) or "all" (one
        step with all of ``data``).
        """
        n = len(data)
        if batches == "seeded":
            per_pass = math.ceil(n / self.batch_size)
            budget = self.max_steps if self.max_steps is not None else per_pass
            monitor = StageMonitor(self.tol, min(per_pass, MAX_WINDOW), noise_aware=False)
            source: SeededMinibatches | InOrder | Everything = SeededMinibatches(
                self._seed, self._batch_purpose, n, self.batch_size, first=self.step
            )
        else:
            budget = n if batches == "in order" else 1
            monitor = StageMonitor(None, 1, noise_aware=False)
            source = InOrder() if batches == "in order" else Everything()
        last: SVIProgress | None = None
        for last in run_svi(  # noqa: B007 - the last record is what the loop leaves
            self._stage,
            source,
            lambda index, _: self._statistics(data[index]),
            lambda stats, step: self._svi_update(stats, step, data),
            budget=budget,
            monitor=monitor,
        ):
            pass
        self.progress_ = last
        if batches != "seeded":
            return last
        if last is not None and last.converged:
            self._log("%s converged after %d steps", type(self).__name__, last.step)
        elif self.tol is not None and self.max_steps is not None:
            warnings.warn(
                f"{type(self).__name__}: ELBO not converged to tol={self.tol} in "
                f"{budget} steps; raise max_steps",
                ConvergenceWarning,
                stacklevel=3,
            )
        return last


class BayesianNonparametricNMF(_SVIModel):
    """Bayesian nonparametric Poisson NMF of spectrograms fitted by SVI.

    Parameters
    ----------
    X_shape : tuple of int
        ``(n_events, n_frequencies, n_times)`` of the data set; ``n_events`` is the data
        size ``N_eff`` that scales the minibatch statistics.
    num_pat : int, default=75
        Initial number of patterns K0; unused patterns are pruned during fitting.
    compat : {"default", "specufex"}, default="default"
        Fidelity mode (see the module docstring).
    batch_size : int, default=1
        Spectrograms per SVI step, concatenated along time (ALGORITHM.md 1d).
    max_steps : int, optional
        Steps per call of :meth:`fit`; default one pass over the data given.
    tol : float, optional
        Relative ELBO tolerance for an early stop (tested once annealing is over).
    step_size : float, optional
        A fixed step size rho (1 with a full batch is batch variational Bayes); default
        the decreasing schedule of ALGORITHM.md 1a.
    anneal : bool, default=True
        Use the annealing temperature ``1 + 0.75**(step - 1)``; False fixes T = 1.
    min_pattern_share : float, None or "auto", default="auto"
        Once annealing is over, prune a pattern whose share ``A1[k] / sum(A1)`` of the
        data's counts falls below this. "auto": 1e-2 in the default mode, None (only the
        reference's ``E[a] <= 1e-3``) in compat mode.
    merge_cosine : float or None, default=None
        Once annealing is over, merge two patterns whose ``E[W]`` columns have at least
        this cosine (:func:`specufex_dask.inference.updates.merge_patterns`; default mode only).
        Off by default: it removes the copies of patterns that the symmetric start of
        q(W) makes, but on spectrograms of waveforms it also merges distinct broadband
        patterns (see the README's fidelity benchmark).
    likelihood_scale : {"spectrograms", "frames"}, default="spectrograms"
        What the minibatch statistics are scaled to. ``"spectrograms"``:
        ``N_eff / n_spectrograms``, the whole data set's likelihood (a full batch is then
        exact variational Bayes). ``"frames"`` (always so in compat mode, as the
        reference): ``N_eff / n_columns``, a likelihood tempered by the frames per
        spectrogram. In the fidelity benchmark "frames" raised the held-out ELBO and
        kept exactly the 5 planted patterns of
        :func:`~specufex_dask.analysis.datasets.planted_patterns`, but pruned the ten BAV
        events' dictionary to 1-2 patterns and lowered the ARI at the hard level, so it
        is not the default.
    init : {"data", "random"}, optional
        Start of q(W). ``"data"``: at the first fit, each pattern starts at the mean
        spectral shape of a seeded k-means group of the frames of up to 256 of the
        spectrograms given (:func:`specufex_dask.inference.initialise.pattern_start`).
        ``"random"`` (the default, and always so in compat mode): the reference's draw at
        construction, the same flat Gamma for every pattern. Set it when assigning
        ``W1, W2`` by hand, or the first fit replaces them. In the fidelity benchmark the
        data start raised the planted medium-level ARI by 0.04 (within the spread over
        fit seeds) and changed neither the easy nor the hard level, but kept more
        patterns on every data set (43 of 75 against 14 on
        :func:`~specufex_dask.analysis.datasets.planted_patterns`), so it is not the
        default.
    random_state : int, optional
        Seed of the initial state and of the minibatches.
    dtype : {float64, float32}, default=float64
        Precision of the kernels; the global state is kept in float64.
    verbose : bool, default=False
        Log every step at INFO level (logger ``specufex_dask``).

    Attributes
    ----------
    W1, W2 : ndarray of shape (n_frequencies, num_pat)
        Shape and rate of q(W).
    A1, A2 : ndarray of shape (1, num_pat)
        Shape and rate of q(a).
    step : int
        SVI step counter (-1 before the first step).
    num_pat : int
        Current number of patterns.
    EW, EA, ElnWA, gain : ndarray
        ``W1/W2``, ``A1/A2``, ``E[ln W] + E[ln a]`` and ``sum_d EW``.
    elbo_ : list of float
        ELBO estimate of every step (without the data constant).
    progress_ : SVIProgress
        The last step's :class:`~specufex_dask.inference.svi.SVIProgress` (after a fit).

    Notes
    -----
    The constructor stores its arguments unchanged (``get_params``, ``set_params`` and
    ``sklearn.base.clone`` see them as given) and draws the reference's initial state
    from ``X_shape``, ``num_pat`` and ``random_state``; the other arguments are checked
    when a fit starts. The attribute ``num_pat`` is the reference's: the current number
    of patterns, which pruning lowers; ``get_params()["num_pat"]`` stays the argument.

    Holtzman et al. (2018), Science Advances 4(5), eaao2929.
    """

    _parameter_table = NMF_PARAMETERS
    _state_names = ("num_pat",)
    _state_inputs = frozenset({"X_shape", "num_pat", "init", "random_state"})
    _reference_fixed = (
        "batch_size", "max_steps", "tol", "min_pattern_share", "merge_cosine",
        "likelihood_scale", "init",
    )  # fmt: skip
    _batch_purpose = "nmf_batch"
    _stage = "nmf"
    X_shape: tuple[int, ...]
    _num_pat_argument: int
    anneal: bool
    # what model files written before share pruning and merging (and the reference's) did
    min_pattern_share = None
    merge_cosine = None
    likelihood_scale = "spectrograms"  # what files written before it was a setting used
    init = "random"  # what files written before the data start of q(W) (and the reference's) were
    initialised = True

    def __init__(
        self,
        X_shape: tuple[int, ...],
        num_pat: int = 75,
        *,
        compat: str = "default",
        batch_size: int = 1,
        max_steps: int | None = None,
        tol: float | None = None,
        step_size: float | None = None,
        anneal: bool = True,
        min_pattern_share: float | None | str = "auto",
        merge_cosine: float | None = None,
        likelihood_scale: str = "spectrograms",
        init: str | None = None,
        random_state: int | None = None,
        dtype: DTypeLike = np.float64,
        verbose: bool = False,
    ) -> None:
        self._construct(locals())

    def _draw_state(self) -> None:
        """The reference's random initial state (ALGORITHM.md 1), step -1 (a data start
        of q(W) replaces W1, W2 at the first fit)."""
        self._check_drawn_from(("X_shape", "num_pat", "random_state"))
        self._seed = resolve_seed(self.random_state)
        n_events, n_frequencies, n_times = (int(v) for v in self.X_shape)
        self.input_dims = (n_events, n_frequencies, n_times)
        self.N_eff = n_events
        self.dim = n_frequencies
        self.num_pat = int(self._num_pat_argument)
        prior = NMFPrior.default(n_frequencies, self.num_pat)
        self.h01, self.h02 = prior.h01, prior.h02
        self.a01, self.a02 = prior.a01, prior.a02
        self.w01, self.w02 = prior.w01, prior.w02
        strength = n_events / 1000
        rng = generator(self._seed, "nmf_init")
        self.W1 = strength * 100 * rng.gamma(10.0, 1 / 10, size=(n_frequencies, self.num_pat))
        self.W2 = np.full((n_frequencies, self.num_pat), strength * 100)
        self.A1 = np.full((1, self.num_pat), strength * 10)
        self.A2 = np.full((1, self.num_pat), strength * 10)
        self.step = -1
        self.initialised = self._init() == "random"
        self.elbo_: list[float] = []

    @staticmethod
    def default_init(compat: str) -> str:
        """What ``init=None`` means: "random" in both modes."""
        return "random"

    def _init(self) -> str:
        return self.default_init(self.compat) if self.init is None else self.init

    def init_sample(self, n_spectrograms: int) -> NDArray:
        """Indices of the spectrograms whose frames :meth:`start_from_frames` uses."""
        return init_sample(generator(self._seed, "nmf_init_sample"), n_spectrograms)

    def start_from_frames(self, frames: NDArray) -> None:
        """Start q(W) from spectrogram frames (n_frames_sampled, n_frequencies) of a data
        sample (:func:`~specufex_dask.inference.initialise.pattern_start`); q(a) keeps
        its symmetric start. Marks the model as initialised."""
        rng = generator(self._seed, "nmf_init_data")
        self.W1, self.W2 = pattern_start(frames, self.num_pat, int(self.N_eff), rng)
        self.initialised = True

    def _start_from_data(self, X: NDArray) -> None:
        if not self.initialised:
            self.start_from_frames(spectrogram_frames(X[self.init_sample(len(X))]))

    def _min_pattern_share(self) -> float | None:
        """``min_pattern_share`` with "auto" decided: None in compat mode, else 1e-2."""
        share = self.min_pattern_share
        if isinstance(share, str):
            return None if self.compat == "specufex" else MIN_PATTERN_SHARE
        return share

    def _saved_settings(self) -> dict[str, Any]:
        return {
            **super()._saved_settings(),
            "min_pattern_share": self._min_pattern_share(),
            "init": self._init(),
        }

    def _restored(self) -> None:
        super()._restored()
        self._num_pat_argument = self.num_pat
        self.X_shape = tuple(self.input_dims)

    # --- derived state -------------------------------------------------------------
    @property
    def prior(self) -> NMFPrior:
        """The Gamma hyperparameters."""
        return NMFPrior(self.h01, self.h02, self.a01, self.a02, self.w01, self.w02)

    @property
    def EW(self) -> NDArray:
        """E[W], (n_frequencies, num_pat)."""
        return self.W1 / self.W2

    @property
    def EA(self) -> NDArray:
        """E[a], (1, num_pat)."""
        return self.A1 / self.A2

    @property
    def ElnWA(self) -> NDArray:
        """E[ln W] + E[ln a], (n_frequencies, num_pat)."""
        return expected_log(self.W1, self.W2) + expected_log(self.A1, self.A2)

    @property
    def gain(self) -> PatternGain:
        """Pattern gains ``sum_d EW[d, k]``, (num_pat,), carrying ``n_events = N_eff``."""
        gain = self.EW.sum(axis=0).view(PatternGain)
        gain.n_events = int(self.N_eff)
        return gain

    # --- fitting -------------------------------------------------------------------
    def _check_state(self) -> None:
        # before the local step: afterwards a bad pattern has spread to all of them
        check_finite("NMF", self.step + 1, EW=self.EW, ElnWA=self.ElnWA)

    def step_parameters(self) -> steps.NMFStepParameters:
        """What the local step of the next SVI step needs (sent to workers)."""
        self._check_state()
        temperature = nmf_temperature(self.step, self.anneal)
        return steps.NMFStepParameters(
            log_basis=self.ElnWA,
            basis_weight=(self.EW * self.EA).sum(axis=0),
            h01=self.h01,
            h02=self.h02,
            temperature=temperature,
            n_inner=nmf_inner_iterations(temperature),
            dtype=self._dtype.name,
            threads=available_cores(),
        )

    def transform_parameters(self) -> steps.NMFStepParameters:
        """What the transform needs (sent to workers)."""
        self._check_state()
        return steps.NMFStepParameters(
            log_basis=self.ElnWA,
            basis_weight=(self.EW * self.EA).sum(axis=0),
            h01=self.h01,
            h02=self.h02,
            dtype=self._dtype.name,
            threads=available_cores(),
        )

    def apply_statistics(self, stats: NMFStatistics) -> float:
        """One global SVI update from a minibatch's statistics; returns the step's ELBO.

        The statistics are scaled by ``N_eff / n_columns`` (compat mode and
        ``likelihood_scale="frames"``, as the reference) or by ``N_eff / n_spectrograms``
        (``likelihood_scale="spectrograms"``: a full batch is then exact variational Bayes).
        """
        if stats.basis_counts.shape != self.W1.shape:
            raise ValueError(
                f"statistics of shape {stats.basis_counts.shape} for a model of shape "
                f"{self.W1.shape}"
            )
        check_finite(
            "NMF",
            self.step + 1,
            basis_counts=stats.basis_counts,
            activation_sum=stats.activation_sum[None],
        )
        by_frames = self.compat == "specufex" or self.likelihood_scale == "frames"
        units = stats.n_columns if by_frames else stats.n_spectrograms
        scale = self.N_eff / units
        temperature = nmf_temperature(self.step, self.anneal)
        rho = self.step_size or nmf_step_size(self.step, temperature)
        elbo = scale * stats.elbo - nmf_global_kl(self.W1, self.W2, self.A1, self.A2, self.prior)
        W1, W2, A1, A2 = nmf_global_update(
            self.W1,
            self.W2,
            self.A1,
            self.A2,
            stats.basis_counts,
            stats.activation_sum,
            scale=scale,
            step_size=rho,
            temperature=temperature,
            prior=self.prior,
        )
        check_finite("NMF", self.step + 1, W1=W1, W2=W2, A1=A1, A2=A2)
        # not while annealing: a hot step spreads counts over patterns the data do not use
        annealed = temperature - 1.0 < ANNEALED
        merged = np.ones(W1.shape[1], dtype=bool)
        if annealed and self.merge_cosine is not None:
            pairs = similar_pairs(W1 / W2, self.merge_cosine)
            W1, W2, A1, A2, merged = merge_patterns(W1, W2, A1, A2, pairs, self.prior)
            if pairs:
                self._log("NMF step %d: merged patterns %s", self.step + 1, pairs)
        share = self._min_pattern_share() if annealed else None
        keep = merged & prune_mask(A1, A2, min_share=share)
        if not keep.any():
            raise ValueError(f"NMF: every pattern was pruned at step {self.step + 1}")
        # C order after column selection: products round by memory layout, and a model
        # reloaded from a checkpoint (C order) must compute the same bits.
        self.W1, self.W2, self.A1, self.A2 = (
            np.ascontiguousarray(array[:, keep]) for array in (W1, W2, A1, A2)
        )
        if not keep.all():
            self._log("NMF step %d: pruned patterns %s", self.step + 1, np.flatnonzero(~keep))
        self.num_pat = int(keep.sum())
        self.step += 1
        self.elbo_.append(float(elbo))
        self._log(
            "NMF step %d: T=%.4f rho=%.4f ELBO=%.6e patterns=%d",
            self.step,
            temperature,
            rho,
            elbo,
            self.num_pat,
        )
        return float(elbo)

    def _statistics(self, X: NDArray) -> NMFStatistics:
        return fold(steps.nmf_leaves(X, self.step_parameters()))

    def _svi_update(self, stats: NMFStatistics, step: int, data: NDArray) -> StepResult:
        return self.svi_update(stats)

    def svi_update(self, stats: NMFStatistics) -> StepResult:
        """The global update of one SVI step, as :func:`~specufex_dask.inference.svi.run_svi`
        asks it: the step's ELBO, the live patterns, whether annealing is over."""
        elbo = self.apply_statistics(stats)
        return StepResult(elbo, self.num_pat, self._annealed())

    def _annealed(self) -> bool:
        return nmf_temperature(self.step, self.anneal) - 1.0 < ANNEALED

    def sort_patterns(self) -> None:
        """Order patterns by the frequency of their peak (done at the end of fit)."""
        order = pattern_order(self.EW, stable=self.compat != "specufex")
        self.W1, self.W2, self.A1, self.A2 = (
            np.ascontiguousarray(array[:, order]) for array in (self.W1, self.W2, self.A1, self.A2)
        )

    def _check_X(self, X: ArrayLike) -> NDArray:
        return check_stack(X, what="spectrograms", dtype=self._dtype, expected_rows=self.dim)

    def partial_fit(self, X: ArrayLike) -> BayesianNonparametricNMF:
        """One SVI step with all of ``X`` (n, D, M) as the minibatch (no sorting); in
        compat mode one step per spectrogram, in order."""
        self._check_parameters()
        X = self._check_X(X)
        self._start_from_data(X)
        self._run_svi(X, "in order" if self.compat == "specufex" else "all")
        return self

    def fit(self, X: ArrayLike) -> BayesianNonparametricNMF:
        """Continue training on spectrograms ``X`` of shape (n, D, M).

        In compat mode every spectrogram of ``X``, in order, is one step (the reference).
        Otherwise ``max_steps`` steps (default one pass over ``X``) with seeded
        minibatches of ``batch_size``, stopping early when ``tol`` is met. Patterns are
        sorted by peak frequency at the end.
        """
        self._check_parameters()
        X = self._check_X(X)
        self._start_from_data(X)
        self._run_svi(X, "in order" if self.compat == "specufex" else "seeded")
        self.sort_patterns()
        return self

    def transform(self, X: ArrayLike) -> NDArray:
        """Activations (n, num_pat, M) of spectrograms ``X`` (n, D, M) (the reference's ACM)."""
        return steps.nmf_activations(self._check_X(X), self.transform_parameters())

    def fit_transform(self, X: ArrayLike) -> NDArray:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(X).transform(X)


class BayesianHMM(_SVIModel):
    """Bayesian HMM of NMF activations fitted by SVI, and its fingerprints.

    Parameters
    ----------
    num_pat : int
        Number of NMF patterns K.
    gain : array_like of shape (num_pat,)
        NMF pattern gains: the HMM sees ``diag(gain) V``.
    num_state : int, default=15
        Number of states S.
    compat : {"default", "specufex"}, default="default"
    batch_size : int, default=1
        Sequences per SVI step.
    max_steps : int, optional
        Steps per call of :meth:`fit`; default one pass over the data given.
    tol : float, optional
        Relative ELBO tolerance for an early stop.
    step_size : float, optional
        Fixed step size; default ``(250/(1 + 5(n-1)) + step)**-0.51`` capped at 1.
    n_eff : int, optional
        Data size that scales the minibatch statistics. Default: the NMF's data size when
        ``gain`` is an NMF's ``gain``, else the number of sequences given to each
        :meth:`fit` call (the reference fixes 100000).
    init : {"data", "random"}, optional
        Start of q(B). ``"data"`` (the default mode's default): at the first fit, each
        state starts at the mean emission of a seeded k-means group of the frames of up
        to 256 of the sequences given (:mod:`specufex_dask.inference.initialise`). When
        the data size N is known (``n_eff``, or the NMF's that ``gain`` carries), fit
        calls that bring fewer than min(256, N) sequences, as the reference README's
        loop of one sequence per call does, are held until they bring that many (or the
        model is used), and their steps then run from that start. ``"random"``
        (always so in compat mode): the reference's random draw at construction, which
        on real records leaves every frame in one state. Set it when assigning
        ``B1, B2`` by hand, or the first fit replaces them.
    random_state : int, optional
    dtype : {float64, float32}, default=float64
    verbose : bool, default=False

    Attributes
    ----------
    B1, B2 : ndarray of shape (num_state, num_pat)
        Shape and rate of q(B).
    step : int
    EB, ElnB : ndarray of shape (num_state, num_pat)
    gain : ndarray of shape (num_pat,)
        The gains as float64 (``get_params()["gain"]`` stays the argument).
    elbo_ : list of float
    progress_ : SVIProgress
        The last step's :class:`~specufex_dask.inference.svi.SVIProgress` (after a fit).

    Notes
    -----
    The constructor stores its arguments unchanged and draws the reference's initial
    state from ``num_pat``, ``gain``, ``num_state`` and ``random_state``; the other
    arguments are checked when a fit starts.
    """

    _parameter_table = HMM_PARAMETERS
    _state_names = ("gain",)
    _state_inputs = frozenset(
        {"num_pat", "gain", "num_state", "compat", "n_eff", "init", "random_state"}
    )
    _reference_fixed = ("batch_size", "max_steps", "tol", "init")
    _batch_purpose = "hmm_batch"
    _stage = "hmm"
    num_pat: int
    num_state: int
    _gain_argument: ArrayLike
    n_eff: int | None
    Neff: int | None
    # what model files written before data starts (and the reference's) were
    init = "random"
    initialised = True
    # fit calls waiting for the data start, with their sequences (see _ready)
    _held: tuple[tuple[str, NDArray], ...] = ()

    def __init__(
        self,
        num_pat: int,
        gain: ArrayLike,
        num_state: int = 15,
        *,
        compat: str = "default",
        batch_size: int = 1,
        max_steps: int | None = None,
        tol: float | None = None,
        step_size: float | None = None,
        n_eff: int | None = None,
        init: str | None = None,
        random_state: int | None = None,
        dtype: DTypeLike = np.float64,
        verbose: bool = False,
    ) -> None:
        self._construct(locals())

    def _draw_state(self) -> None:
        """The reference's random initial state (ALGORITHM.md 2), step 0."""
        self._check_drawn_from(("num_pat", "num_state", "random_state"))
        num_pat, num_state = self.num_pat, self.num_state
        gain = np.asarray(self._gain_argument, dtype=np.float64).ravel()
        if gain.shape != (num_pat,) or not np.all(np.isfinite(gain)) or np.any(gain < 0):
            raise ValueError(
                f"gain must be {num_pat} finite nonnegative numbers, got shape {gain.shape}"
            )
        self._seed = resolve_seed(self.random_state)
        self.gain = gain
        self.Neff = reference.HMM_NEFF if self.compat == "specufex" else self._data_size()
        self.tau1 = 0.1
        self.tau2 = 0.1
        self.tauA = 0.1 / num_state
        self.tauPpi = 0.01 / num_state
        self._max_inner_ite = 20
        rng = generator(self._seed, "hmm_init")
        strength = reference.HMM_NEFF * 1000
        self.B1 = strength * rng.gamma(1.0, 1.0, size=(num_state, num_pat))
        self.B2 = np.full((num_state, num_pat), strength * 0.03)
        self.step = 0
        self.initialised = self._init() == "random"
        self.elbo_: list[float] = []
        self._held = ()

    @staticmethod
    def default_init(compat: str) -> str:
        """What ``init=None`` means: "random" in compat mode, else "data"."""
        return "random" if compat == "specufex" else "data"

    def _init(self) -> str:
        return self.default_init(self.compat) if self.init is None else self.init

    def _data_size(self) -> int | None:
        """``n_eff`` decided: the NMF's data size its ``gain`` carries when None (default
        mode; the reference's fixed ``Neff`` applies in compat mode)."""
        if self.n_eff is not None or self.compat == "specufex":
            return self.n_eff
        return getattr(self._gain_argument, "n_events", None)

    def _saved_settings(self) -> dict[str, Any]:
        return {**super()._saved_settings(), "n_eff": self._data_size(), "init": self._init()}

    def _restored(self) -> None:
        super()._restored()
        self._gain_argument = self.gain

    def start_from_frames(self, frames: NDArray, n_frames: float) -> None:
        """Start q(B) from emission frames (n_frames_sampled, num_pat) of a data sample.

        ``n_frames`` is the number of frames in the whole data set. Marks the model as
        initialised, so later fits go on from here.
        """
        rng = generator(self._seed, "hmm_init_data")
        self.B1, self.B2 = emission_start(
            frames, self.num_state, n_frames, rng, tau1=self.tau1, tau2=self.tau2
        )
        self.initialised = True

    def init_sample(self, n_sequences: int) -> NDArray:
        """Indices of the sequences whose frames :meth:`start_from_frames` uses."""
        return init_sample(generator(self._seed, "hmm_init_sample"), n_sequences)

    def _start_size(self) -> int:
        """Sequences a data start waits for: the init sample's size, or the data size
        when that is smaller; none (start at once) when the data size is unknown, as the
        sequences of each call are then the data."""
        data_size = self._data_size()
        return 0 if data_size is None else min(INIT_EVENTS, data_size)

    def _ready(self, V: NDArray, call: str) -> bool:
        """Whether the ``call`` ("fit" or "partial_fit") on ``V`` may step now.

        A data start from the frames of one sequence (the reference README's loop, one
        sequence per call) leaves q(B) far from the data (``bench_fidelity``'s rows
        "loop: q(B) from the first sequence" and "loop: q(B) from 64 sequences" against
        "loop default"). So
        until the model has started, calls are held with their sequences; once they
        hold :meth:`_start_size` sequences (256, or the data size N when smaller and
        known), q(B) starts from them and the held calls' steps run, in their order, as
        they would have run from that start. Fewer are started from when the model is
        used first (:meth:`step_parameters`, :meth:`transform`, :meth:`save`); until
        then ``B1``, ``B2``, ``step`` and ``elbo_`` are those of the draw.
        """
        if self.initialised:
            return True
        # a copy: the caller may reuse its array (the loop passes views of one array)
        self._held = (*self._held, (call, np.array(V, copy=True)))
        held = sum(len(sequences) for _, sequences in self._held)
        if held >= self._start_size():
            self._start_from_held()
        else:
            self._log(
                "HMM: %d of %d sequences held for the start of q(B)", held, self._start_size()
            )
        return False

    def save(self, filename: str | Path) -> None:
        """Write the model to an HDF5 file, after a held start (see :meth:`_ready`)."""
        self._start_from_held()
        super().save(filename)

    def _start_from_held(self) -> None:
        """Start q(B) from the held calls' sequences, then run their steps in order."""
        held, self._held = self._held, ()
        if self.initialised or not held:
            return
        sequences = [sequence for _, V in held for sequence in V]
        sample = self.init_sample(len(sequences))
        frames = np.concatenate(
            [emission_frames(sequences[index][None], self.gain)[0] for index in sample]
        )
        frames_per_sequence = np.mean([sequence.shape[1] for sequence in sequences])
        self.start_from_frames(frames, (self._data_size() or len(sequences)) * frames_per_sequence)
        for call, V in held:
            self._step_call(V, call)

    def _step_call(self, V: NDArray, call: str) -> None:
        """The steps of one default-mode ``fit`` or ``partial_fit`` call."""
        if call == "fit":
            self._run_svi(V, "seeded")
            self.sort_states()
        else:
            self._run_svi(V, "all")

    @property
    def EB(self) -> NDArray:
        """E[B], (num_state, num_pat)."""
        return self.B1 / self.B2

    @property
    def ElnB(self) -> NDArray:
        """E[ln B], (num_state, num_pat)."""
        return expected_log(self.B1, self.B2)

    def step_parameters(self) -> steps.HMMStepParameters:
        """What the local step needs (sent to workers); starts a held start first."""
        self._start_from_held()
        check_finite("HMM", self.step, EB=self.EB, ElnB=self.ElnB)
        return steps.HMMStepParameters(
            log_rate=self.ElnB,
            rate=self.EB,
            gain=self.gain,
            tau_initial=self.tauPpi,
            tau_transition=self.tauA,
            n_iter=self._max_inner_ite,
            compat=self.compat == "specufex",
            dtype=self._dtype.name,
            threads=available_cores(),
        )

    def apply_statistics(
        self,
        stats: HMMStatistics,
        *,
        scale: float | None = None,
        step_size: float | None = None,
        n_data: int | None = None,
    ) -> float:
        """One global SVI update from a minibatch's statistics; returns the step's ELBO.

        ``scale`` defaults to ``n_eff / n_sequences`` (``n_data`` stands in for an unset
        ``n_eff``); ``step_size`` to the model's schedule. The step counter advances by one.
        """
        if stats.emission_counts.shape != self.B1.shape:
            raise ValueError(
                f"statistics of shape {stats.emission_counts.shape} for a model of shape "
                f"{self.B1.shape}"
            )
        check_finite(
            "HMM",
            self.step,
            emission_counts=stats.emission_counts,
            state_counts=stats.state_counts[:, None],
        )
        if scale is None:
            size = self._data_size() or n_data or stats.n_sequences
            scale = size / stats.n_sequences
        rho = step_size or self.step_size or hmm_step_size(self.step, stats.n_sequences)
        elbo = scale * stats.elbo - hmm_global_kl(self.B1, self.B2, self.tau1, self.tau2)
        B1, B2 = hmm_global_update(
            self.B1,
            self.B2,
            stats.emission_counts,
            stats.state_counts,
            scale=scale,
            step_size=rho,
            tau1=self.tau1,
            tau2=self.tau2,
        )
        check_finite("HMM", self.step, B1=B1, B2=B2)
        self.B1, self.B2 = B1, B2
        self.elbo_.append(float(elbo))
        self._log("HMM step %d: rho=%.4f ELBO=%.6e", self.step, rho, elbo)
        self.step += 1
        return float(elbo)

    def _check_V(self, V: ArrayLike) -> NDArray:
        return check_stack(
            V, what="activations", dtype=self._dtype, expected_rows=self.num_pat,
            row_name="pattern",
        )  # fmt: skip

    def _statistics(self, V: NDArray) -> HMMStatistics:
        return fold(steps.hmm_leaves(V, self.step_parameters()))

    def _svi_update(self, stats: HMMStatistics, step: int, data: NDArray) -> StepResult:
        # in order (compat): the reference's counter grows by the index in the fit call
        return self.svi_update(stats, n_times=data.shape[2], n_data=len(data), index=step)

    def svi_update(
        self,
        stats: HMMStatistics,
        *,
        n_times: int,
        n_data: int | None = None,
        index: int = 0,
        count: Callable[[NDArray, int], int] = states_in_use,
    ) -> StepResult:
        """The global update of one SVI step, as :func:`~specufex_dask.inference.svi.run_svi`
        asks it: the step's ELBO and the states in use in its minibatch.

        In compat mode the reference's schedule
        (:func:`specufex_dask.inference.compat.hmm_schedule`) with ``index``, the
        sequence's index in the reference's ``fit`` call (0 for one sequence per call, as
        its README uses it); otherwise :meth:`apply_statistics` (``n_data`` stands in
        for an unset ``n_eff``). ``count(state_counts, n_frames)`` counts the states in
        use of the minibatch's ``n_frames``.
        """
        if self.compat == "specufex":
            step, n, rho = reference.hmm_schedule(self.step, index)
            self.step = step
            # compat mode's Neff is the reference's (or its file's), never unset
            assert self.Neff is not None
            elbo = self.apply_statistics(stats, scale=self.Neff / n, step_size=rho)
            self.step = step  # the reference's counter only moves by the index
        else:
            elbo = self.apply_statistics(stats, n_data=n_data)
        return StepResult(elbo, count(stats.state_counts, stats.n_sequences * n_times))

    def sort_states(self) -> None:
        """Order states by decreasing energy (done at the end of fit)."""
        order = state_order(self.EB, stable=self.compat != "specufex")
        self.B1, self.B2 = (
            np.ascontiguousarray(self.B1[order]),
            np.ascontiguousarray(self.B2[order]),
        )

    def partial_fit(self, V: ArrayLike) -> BayesianHMM:
        """One SVI step with all of ``V`` (n, num_pat, M) as the minibatch (no sorting)."""
        self._check_parameters()
        V = self._check_V(V)
        if self.compat == "specufex":
            self._run_svi(V, "in order")
        elif self._ready(V, "partial_fit"):
            self._step_call(V, "partial_fit")
        return self

    def fit(self, V: ArrayLike) -> BayesianHMM:
        """Continue training on activation sequences ``V`` of shape (n, num_pat, M).

        States are sorted by decreasing energy at the end.
        """
        self._check_parameters()
        V = self._check_V(V)
        if self.compat == "specufex":
            self._run_svi(V, "in order")
            self.sort_states()
        elif self._ready(V, "fit"):
            self._step_call(V, "fit")
        return self

    def transform(self, V: ArrayLike) -> tuple[NDArray, NDArray, NDArray]:
        """``(fingerprints, As, gams)`` of sequences ``V`` (n, num_pat, M).

        Returns
        -------
        fingerprints : ndarray of shape (n, num_state, num_state)
        As : ndarray of shape (n, num_state, num_state)
            Final transition Dirichlet parameters of every sequence.
        gams : ndarray of shape (n, num_state, M)
            State probabilities (the reference's STM).
        """
        return steps.hmm_outputs(self._check_V(V), self.step_parameters())

    def fit_transform(
        self, V: ArrayLike, EW: ArrayLike | None = None
    ) -> tuple[NDArray, NDArray, NDArray]:
        """:meth:`fit` then :meth:`transform` (``EW`` is accepted for the reference's
        signature and not used)."""
        return self.fit(V).transform(V)
