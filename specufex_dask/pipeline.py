"""``SpecUFEx``: fit and transform spectrogram archives on a Dask cluster.

Example
-------
The fit and the transforms are skipped by the doctests (they need an archive, and the fit
starts a cluster):

>>> from specufex_dask import SpecUFEx
>>> model = SpecUFEx(num_pat=75, num_state=15, random_state=0)
>>> model = model.fit("events.zarr")                        # doctest: +SKIP
>>> model.transform_to_zarr("events.zarr")                  # doctest: +SKIP
>>> ds = model.transform("events.zarr")                     # doctest: +SKIP

``transform_to_zarr`` writes the outputs into the archive from the workers; ``transform``
gives them as a lazy xarray Dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from time import monotonic
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from specufex_dask.inference.convergence import (
    MIN_STOP_STEPS,
    StageMonitor,
    auto_steps,
    states_in_use,
    window_steps,
)
from specufex_dask.inference.params import (
    AUTO_BATCH_SIZE,
    HMM_PARAMETERS,
    NMF_PARAMETERS,
    PIPELINE_PARAMETERS,
    ParameterContract,
    ResumeMismatch,
    check_reference_mode,
    setting_differences,
    shaping_names,
)
from specufex_dask.inference.seeding import resolve_seed
from specufex_dask.inference.steps import HMMStepParameters, NMFStepParameters
from specufex_dask.inference.svi import SeededMinibatches, SVIProgress, run_svi
from specufex_dask.io.archive import FREQUENCY
from specufex_dask.io.lease import archive_lease
from specufex_dask.io.location import ArchivePath, as_location, zarr_group
from specufex_dask.io.modelgroup import (
    model_group_name,
    model_token,
    stored_model_token,
    write_model_dataset,
)
from specufex_dask.io.status import record_applied_model
from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
from specufex_dask.parallel.engine import (
    STEP_TASK_EVENTS,
    BackgroundCheckpoints,
    EventChunks,
    emission_frames,
    hmm_statistics,
    lazy_transform,
    model_group_dataset,
    naming_every_bad_event,
    nmf_statistics,
    read_model_group,
    require_writable,
    spectrogram_frames,
    transform_chunks,
)
from specufex_dask.parallel.executor import waiting_for_workers
from specufex_dask.parallel.runners import ActorExecutor, StepRunners
from specufex_dask.persistence import model_state

if TYPE_CHECKING:
    from specufex_dask.parallel.clusters import ClusterHandle

__all__ = ["SpecUFEx"]

logger = logging.getLogger("specufex_dask")

Progress = Callable[[str, dict], None]
STAGES = ("nmf", "hmm")
FIT_STAGES = ("all", "nmf", "hmm")
"""What :meth:`SpecUFEx.fit` fits: both stages, only the NMF, or the HMM on a stored NMF."""
AUTO_CHECKPOINT_STEPS = 10
AUTO_CHECKPOINT_SECONDS = 30.0
"""``checkpoint_every="auto"``: a checkpoint every 10 steps once 30 s have passed since
the last. At every 10 steps the checkpoint writer took 8-13 ms of the driver's CPU a
step on two cores (10k archive of 513 x 51, 12 patterns, ``bench_archive.py --profile``):
at 20-40 steps a second, two to four checkpoints a second, which a fit that stops
would not miss."""


class SpecUFEx(ParameterContract):
    """SpecUFEx (NMF then HMM) on spectrogram archives, computed on a Dask cluster.

    Parameters
    ----------
    num_pat : int, default=75
        Initial number of NMF patterns (pruned during the fit).
    num_state : int, default=15
        Number of HMM states.
    compat : {"default", "specufex"}, default="default"
        ``"specufex"``: one event per step, the reference's scale factors, HMM step
        schedule (as its README uses it) and forward-backward.
    nmf_steps, hmm_steps : int or None, default=None
        Most SVI steps of each stage; None: three passes over the events at
        ``batch_size``, and at least 1000 (:func:`specufex_dask.inference.convergence.auto_steps`).
    batch_size : int, None or "auto", default="auto"
        Events per SVI step; None is full-batch variational Bayes (every event in every
        step, step size 1); "auto" is 64, and 1 with ``compat="specufex"`` (which
        refuses any other value).
    tol : float or None, default=1e-4
        A stage stops before its budget once the mean ELBO of the last window of steps (a
        quarter of the steps run, at least one pass or 20 steps, at most 250) differs
        from the window's before by less than ``tol`` relative or by less than one
        standard error of the steps' noise, the NMF's live patterns did not change over
        the last window (the HMM's states in use, holding 1 % of a minibatch's frames,
        moved by less than 0.5 on average), and at least 200 steps ran (or the whole
        budget, if smaller) (:class:`specufex_dask.inference.convergence.StageMonitor`).
        None runs every step, and so does ``compat="specufex"``: the reference has no
        stopping rule, and its slow prune leaves the pattern count unchanged for
        hundreds of steps of one event while it is far from settled.
    random_state : int, default=0
        Seed of the initial states and of every minibatch.
    checkpoint_every : int or "auto", default="auto"
        Steps between checkpoints written to ``<archive>/model`` (when fitting a path);
        "auto" writes one every 10 steps once 30 s have passed since the last, so a fit
        that stops loses at most the steps of the last 30 s and 10 more
        (:data:`AUTO_CHECKPOINT_SECONDS`).
        The end of each stage is always checkpointed.
    client : distributed.Client, str, None or False
        A client, a scheduler address, None to start a local cluster on 127.0.0.1, or
        False to use dask's current scheduler without a distributed cluster.
    chunk_events : int, default=256
        Events per chunk for in-memory data (archives keep their own chunks).
    dtype : {"float64", "float32"}, default="float64"
        Precision of the kernels.
    progress : callable, optional
        ``progress(stage, info)`` after every step (stage "nmf" or "hmm"; info is
        :meth:`SVIProgress.info() <specufex_dask.inference.svi.SVIProgress.info>`:
        ``step``, ``total`` (the budget), ``elbo``, ``converged``, and ``n_patterns``
        for the NMF, ``n_states`` (states in use in the step's minibatch) for the HMM)
        and every transformed chunk (stage "transform"; ``chunk``, ``n_chunks``).
    no_worker_timeout : float or None, default=180
        Seconds a fit or a transform waits while the cluster has no worker (warning
        once) before it fails with :class:`~specufex_dask.parallel.executor.NoWorkersError`;
        resume it (``resume=True``) once workers are back. None waits for ever.

    Attributes
    ----------
    nmf_ : BayesianNonparametricNMF
    hmm_ : BayesianHMM
    frequency_ : ndarray or None
        The frequency axis of the data fitted (None when the data had none).
    progress_ : dict of str to SVIProgress
        The last step of each stage run (a resumed fit's earlier steps included).
    n_steps_ : dict
        Steps the fit ran per stage (``{"nmf": 130, "hmm": 64}``).
    converged_ : dict
        Per stage, whether it stopped on convergence before its budget.

    Notes
    -----
    The constructor stores its arguments unchanged (``get_params``, ``set_params``,
    ``sklearn.base.clone``); they are checked by
    :data:`~specufex_dask.inference.params.PIPELINE_PARAMETERS` when a fit or a
    transform starts. Both stages run :func:`~specufex_dask.inference.svi.run_svi`, the
    loop of the in-memory estimators, with the workers computing the statistics.
    """

    _parameter_table = PIPELINE_PARAMETERS
    # the constructor arguments, stored by _store_arguments
    num_pat: int
    num_state: int
    compat: str
    nmf_steps: int | None
    hmm_steps: int | None
    batch_size: int | str | None
    tol: float | None
    random_state: int | None
    checkpoint_every: int | str
    client: Any
    chunk_events: int
    dtype: str
    progress: Progress | None
    no_worker_timeout: float | None
    # a cluster this object started
    _handle: ClusterHandle | None
    nmf_: BayesianNonparametricNMF
    # None while a fit is in its NMF stage
    hmm_: BayesianHMM | None
    progress_: dict[str, SVIProgress]
    # where a loaded model came from (from_archive, from_estimators), named in messages
    source_: str | None

    def __init__(
        self,
        num_pat: int = 75,
        num_state: int = 15,
        *,
        compat: str = "default",
        nmf_steps: int | None = None,
        hmm_steps: int | None = None,
        batch_size: int | str | None = "auto",
        tol: float | None = 1e-4,
        random_state: int | None = 0,
        checkpoint_every: int | str = "auto",
        client: Any = None,
        chunk_events: int = 256,
        dtype: str = "float64",
        progress: Progress | None = None,
        no_worker_timeout: float | None = 180.0,
    ) -> None:
        self._store_arguments(locals())
        self._handle = None

    def _check_parameters(self) -> None:
        super()._check_parameters()
        check_reference_mode(self.compat, self.get_params(), ("batch_size",))

    def _batch_size(self) -> int | None:
        """``batch_size`` with "auto" decided."""
        if isinstance(self.batch_size, str):
            return 1 if self.compat == "specufex" else AUTO_BATCH_SIZE
        return self.batch_size

    @property
    def _dtype(self) -> str:
        return np.dtype(self.dtype).name

    # --- cluster -------------------------------------------------------------------
    def _client(self) -> Any:
        if self.client is False:
            return None
        if self.client is None or isinstance(self.client, str):
            if self._handle is None:
                from specufex_dask.parallel.clusters import connect

                self._handle = connect(self.client)
                logger.info("Dask dashboard: %s", self._handle.dashboard_link)
            return self._handle.client
        return self.client

    def close(self) -> None:
        """Close a cluster this object started."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> SpecUFEx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- fitting -------------------------------------------------------------------
    def _new_nmf(
        self, shape: tuple[int, int, int], seed: int | None = None
    ) -> BayesianNonparametricNMF:
        seed = resolve_seed(self.random_state) if seed is None else seed
        return BayesianNonparametricNMF(
            shape,
            self.num_pat,
            compat=self.compat,
            step_size=1.0 if self._batch_size() is None else None,
            init=BayesianNonparametricNMF.default_init(self.compat),
            random_state=seed,
            dtype=self._dtype,
        )

    def _new_hmm(self, n_events: int, seed: int | None = None) -> BayesianHMM:
        seed = self.nmf_._seed if seed is None else seed
        return BayesianHMM(
            self.nmf_.num_pat,
            self.nmf_.gain,
            self.num_state,
            compat=self.compat,
            n_eff=n_events,
            init=BayesianHMM.default_init(self.compat),
            step_size=1.0 if self._batch_size() is None else None,
            random_state=seed,
            dtype=self._dtype,
        )

    def fit(
        self,
        data: Any,
        *,
        resume: bool = False,
        stage: str = "all",
        storage_options: Mapping[str, Any] | None = None,
    ) -> SpecUFEx:
        """Fit the NMF, then the HMM, by distributed SVI.

        Parameters
        ----------
        data : str, ArchiveLocation, xarray.Dataset or xarray.DataArray
            An archive path or fsspec URL (the model and checkpoints are then written
            to its ``model`` group), or spectrograms with dims (event, frequency, time).
        resume : bool, default=False
            Continue from the archive's last checkpoint; the result equals an
            uninterrupted fit. Only the resumable settings (step budgets, ``tol``,
            checkpoints, the cluster, chunking, progress) may differ from the
            checkpoint's.
        stage : {"all", "nmf", "hmm"}, default="all"
            ``"nmf"`` fits and stores only the NMF (its checkpoint is at the start of
            the HMM stage, without an HMM: ``stage="hmm"`` or a resumed ``"all"`` goes
            on from it). ``"hmm"`` refits the HMM, with this object's HMM settings
            (``num_state``, ``hmm_steps``, ``tol``, ``batch_size``, ``random_state``),
            on the NMF stored in the archive, which stays bit-identical; ``num_pat``
            and ``nmf_steps`` are then unused, and ``compat`` and ``dtype`` must be
            the NMF's. With the NMF's settings, ``"nmf"`` then ``"hmm"`` gives the
            model of ``"all"``. With ``resume=True`` an interrupted refit goes on, its
            HMM settings compared with the refit's.
        storage_options : mapping, optional
            Options of the fsspec file system of an archive URL (``endpoint_url``,
            ``key``...); workers open the archive with them where they run.

        Raises
        ------
        ResumeMismatch
            With ``resume=True``, when the checkpoint was written with other settings
            that shape the fit (those of the parameter table that are not resumable,
            and the models' own, priors included); it lists every difference.
        ValueError
            For ``stage="hmm"`` without an archive whose NMF stage is finished, or with
            another ``compat`` or ``dtype`` than its NMF's. Before any work, when the
            model and a step's task need more memory than the
            smallest worker's limit (or, without a cluster, than is available).
        ArchiveError
            For a bad archive. Values are checked by the tasks that read them: when a
            minibatch draws an event with negative or non-finite values, one pass over
            all events names every such event (checkpoints written before stay
            resumable, and an event no minibatch draws is caught by the transform).
        ArchiveBusy
            When another process writes to the archive (holds its lease,
            :func:`specufex_dask.io.lease.archive_lease`); this fit then writes nothing.
        """
        self._check_parameters()
        if stage not in FIT_STAGES:
            raise ValueError(f"stage={stage!r}: expected one of {', '.join(FIT_STAGES)}")
        chunks = EventChunks.from_data(_located(data, storage_options), self.chunk_events)
        if stage == "hmm" and chunks.path is None:
            raise ValueError(
                "stage='hmm' refits the HMM on the NMF stored in an archive: give its path"
            )
        self.frequency_ = (
            np.array(chunks.frequency, dtype=float) if chunks.frequency_known else None
        )
        if chunks.path is not None:
            require_writable(chunks.path, "model and its checkpoints")
        with _leased(chunks.path, "fit"):
            return self._fit(chunks, resume, stage)

    def _fit(self, chunks: EventChunks, resume: bool, only: str = "all") -> SpecUFEx:
        """:meth:`fit` of checked data, holding the archive's lease; ``only`` is its
        ``stage``."""
        client = self._client()
        n_events = chunks.shape[0]
        batch_size = self._batch_size()
        batch = n_events if batch_size is None else min(batch_size, n_events)
        self._refuse_too_large(chunks.shape, batch, client)
        reads = (resume or only == "hmm") and chunks.path is not None
        state = read_model_group(chunks.path) if reads and chunks.path is not None else None
        if state is None:
            if only == "hmm":
                raise ValueError(
                    f"{chunks.path} holds no model to refit the HMM on; run fit with "
                    "stage 'nmf' (or 'all') first"
                )
            if resume:
                logger.info("no checkpoint in %s: fitting from the start", chunks.path)
            seed = resolve_seed(self.random_state)
            self.nmf_, self.hmm_ = self._new_nmf(chunks.shape, seed), None
            stage, self.progress_ = "nmf", {}
            self._fit_settings = self._shaping_settings(n_events, seed)
        else:
            self.nmf_, self.hmm_, saved = state
            # random_state=None: the checkpoint's seed, so the resumed draws are the same
            given = self.random_state
            seed = resolve_seed(self.nmf_._seed if given is None else given)
            if only == "hmm":
                stage = self._start_refit(chunks, saved, seed, resume)
            else:
                self._refuse_other_settings(chunks, saved, seed)
                stage, self.progress_ = _from_checkpoint(saved, self.nmf_, self.hmm_)
                self._fit_settings = self._shaping_settings(n_events, seed)
            if resume:
                logger.info("resuming %s at %s", chunks.path, saved)
        # No pass over the values first: every task checks the events it reads.
        window = window_steps(n_events, batch)
        budgets = {
            stage: auto_steps(n_events, batch) if steps is None else steps
            for stage, steps in (("nmf", self.nmf_steps), ("hmm", self.hmm_steps))
        }
        if state is not None and resume:
            self._warn_going_on(chunks, stage, budgets, window, refit=only == "hmm")
        self._checkpointed_at = monotonic()
        with (
            waiting_for_workers(self.no_worker_timeout),
            naming_every_bad_event(chunks, client),
            BackgroundCheckpoints(chunks.path) as checkpoints,
            _step_runners(client, chunks) as runners,
        ):
            lookahead = runners is not None
            if stage == "nmf":
                self._start_nmf_from_data(chunks, client, runners)
                arguments = self._nmf_stage(chunks, batch, client, runners, seed)
                self._run_stage("nmf", arguments, budgets["nmf"], window, checkpoints, lookahead)
                self.nmf_.sort_patterns()
                stage = "hmm"
                if only != "nmf":
                    self.hmm_ = self._new_hmm(n_events, seed)
                    # before the checkpoint: a resumed fit starts from the same q(B)
                    self._start_hmm_from_data(chunks, client, runners)
                # with only the NMF: an HMM stage without an HMM, which a later fit starts
                self._write_checkpoint(checkpoints, stage)
            if stage == "hmm" and only != "nmf":
                if self.hmm_ is None:
                    self.hmm_ = self._new_hmm(n_events, seed)
                self._start_hmm_from_data(chunks, client, runners)
                arguments = self._hmm_stage(chunks, batch, client, runners, seed)
                self._run_stage("hmm", arguments, budgets["hmm"], window, checkpoints, lookahead)
                self._started_hmm().sort_states()
                stage = "done"
                self._write_checkpoint(checkpoints, stage)
        self._record_steps()
        return self

    def _warn_going_on(
        self,
        chunks: EventChunks,
        stage: str,
        budgets: dict[str, int],
        window: int,
        refit: bool,
    ) -> None:
        """Log a warning when a resumed fit's settings (a larger budget, another ``tol``) would
        take a stage further that has finished: its patterns or states were sorted and
        the next stage built on it, so a resume leaves it as it is (a resumed refit of
        the HMM leaves the NMF as it is too). Not an error: resuming an interrupted
        transform with the default settings must go ahead."""
        finished = {"hmm": ("nmf",), "done": ("nmf", "hmm")}.get(stage, ())
        if refit:
            finished = tuple(name for name in finished if name == "hmm")
        going_on: dict[str, str] = {}
        for name in finished:
            record = self.progress_.get(name)
            model = self.nmf_ if name == "nmf" else self.hmm_
            if record is None or model is None:
                continue
            if record.converged:
                monitor = self._stage_monitor(name, model, record.counts, window, budgets[name])
                if monitor.holds():
                    continue
                why = f"converged after {record.step} steps under another tol"
            elif record.step < budgets[name]:
                why = f"ran its budget of {record.step} steps, and {budgets[name]} are asked"
            else:
                continue
            going_on[name] = f"the {name.upper()} {why}"
        if going_on:
            remedy = "fit again without resume"
            if "nmf" not in going_on:
                remedy = "refit the HMM with stage 'hmm' (--stage hmm), or " + remedy
            logger.warning(
                "%s: %s; a finished stage does not resume and stays as it is: to take it "
                "further, %s",
                chunks.path, "; ".join(going_on.values()), remedy,
            )  # fmt: skip

    def _stage_monitor(
        self,
        stage: str,
        model: BayesianNonparametricNMF | BayesianHMM,
        counts: Iterable[int],
        window: int,
        budget: int,
    ) -> StageMonitor:
        """The stopping rule of ``stage`` on the steps ``model`` has run and their
        ``counts``, for a budget of ``budget`` steps."""
        return StageMonitor(
            self.tol, window, model.elbo_, counts, self._min_stop_steps(budget),
            noisy_count=stage == "hmm",
        )  # fmt: skip

    def _min_stop_steps(self, budget: int) -> int:
        """Steps a stage runs at least before its rule may stop it. The reference has
        no stopping rule, and its prune (a share decaying to 1e-3) is too slow for the
        count test: 200 steps of one event kept all 75 patterns of the planted sets. Its
        mode runs the whole budget."""
        return budget if self.compat == "specufex" else min(MIN_STOP_STEPS, budget)

    def _checkpoint_due(self, step: int) -> bool:
        """Whether a checkpoint is written after ``step`` (see ``checkpoint_every``)."""
        every = self.checkpoint_every
        if not isinstance(every, str):  # the parameter's rule: a count, or "auto"
            return step % every == 0
        since = monotonic() - self._checkpointed_at
        return step % AUTO_CHECKPOINT_STEPS == 0 and since >= AUTO_CHECKPOINT_SECONDS

    def _write_checkpoint(self, checkpoints: BackgroundCheckpoints, stage: str) -> None:
        self._checkpointed_at = monotonic()
        checkpoints.write(
            self.nmf_,
            self.hmm_,
            _checkpoint(stage, self.progress_, self._fit_settings, self._stopping_settings()),
        )

    def _stopping_settings(self) -> dict[str, Any]:
        """The budgets and tolerance the fit ran with, as given (None: the defaults):
        resumable, so not compared on resume, but stored for :meth:`from_archive`."""
        return {name: _plain(getattr(self, name)) for name in STOPPING_SETTINGS}

    def _shaping_settings(self, n_events: int, seed: int) -> dict[str, Any]:
        """The settings that shape the fit (the table's rows that are not resumable) as
        the fit uses them: the seed drawn, the batch size decided and bounded by the
        events (a larger one draws the same minibatches)."""
        batch = self._batch_size()
        resolved = {
            "batch_size": batch if batch is None else min(batch, n_events),
            "random_state": seed,
            "dtype": self._dtype,
        }
        given = self.get_params()
        return {
            name: _plain(resolved.get(name, given[name]))
            for name in shaping_names(PIPELINE_PARAMETERS)
        }

    def _start_refit(self, chunks: EventChunks, saved: dict, seed: int, resume: bool) -> str:
        """Set up ``fit(stage="hmm")`` on the checkpoint ``saved`` (the NMF and HMM read
        into ``nmf_``, ``hmm_``): the stage to run from, "hmm" (or "done" for a resumed
        refit that had finished).

        The settings recorded keep the NMF's ``num_pat`` (those of the HMM are this
        fit's). A resumed refit with an HMM compares the settings but the NMF's; a new
        one drops the stored HMM and asks only for the NMF's ``compat`` and ``dtype``.
        """
        stage, progress = _from_checkpoint(saved, self.nmf_, self.hmm_)
        if stage == "nmf":
            step = progress["nmf"].step if "nmf" in progress else 0
            raise ValueError(
                f"{chunks.path}: its NMF stage stopped at step {step}; finish it (fit with "
                "stage 'nmf' and resume) before refitting the HMM"
            )
        settings = self._shaping_settings(chunks.shape[0], seed)
        settings["num_pat"] = saved.get("settings", {}).get("num_pat", self.nmf_.num_pat)
        self._fit_settings = settings
        if resume and self.hmm_ is not None:
            self._refuse_other_settings(chunks, saved, seed, refit=True)
            self.progress_ = progress
            return stage
        numerics = {"compat": self.nmf_.compat, "dtype": np.dtype(self.nmf_.dtype).name}
        differences = setting_differences(numerics, {"compat": self.compat, "dtype": self._dtype})
        if differences:
            raise ValueError(
                f"{chunks.path}: the HMM must be refitted with the stored NMF's compat and "
                f"dtype ({'; '.join(differences).replace('checkpoint', 'NMF')})"
            )
        self.hmm_ = None
        self.progress_ = {"nmf": progress["nmf"]} if "nmf" in progress else {}
        return "hmm"

    def _refuse_other_settings(
        self, chunks: EventChunks, saved: dict, seed: int, refit: bool = False
    ) -> None:
        """Raise :class:`ResumeMismatch` unless the checkpoint's fit had this fit's
        settings: those of the table, then (when they agree) those of the models it
        would start, priors included, against the checkpoint's models. ``refit``: a
        resumed refit of the HMM, whose NMF (``num_pat``, its model's settings) was
        not this fit's."""
        nmf, hmm = self.nmf_, self.hmm_
        stored = {**_settings_of_models(nmf, hmm), **saved.get("settings", {})}
        now = self._shaping_settings(chunks.shape[0], seed)
        if refit:
            stored.pop("num_pat", None)
            now.pop("num_pat")
        differences = setting_differences(stored, now)
        if not differences and not refit:
            now = _model_settings(self._new_nmf(chunks.shape, seed), "nmf", NMF_PARAMETERS)
            differences = setting_differences(_model_settings(nmf, "nmf", NMF_PARAMETERS), now)
        if not differences and hmm is not None:
            now = _model_settings(self._new_hmm(chunks.shape[0], seed), "hmm", HMM_PARAMETERS)
            differences = setting_differences(_model_settings(hmm, "hmm", HMM_PARAMETERS), now)
        if differences:
            raise ResumeMismatch(str(chunks.path), differences)

    def _refuse_too_large(self, shape: tuple[int, int, int], batch: int, client: Any) -> None:
        """Raise a ValueError with the numbers, before any work, when the model and a
        step's task would not fit in the smallest worker's memory limit (or, fitting in
        this process, in the memory available)."""
        driver, task = fit_memory(shape, self.num_pat, self.num_state, batch, self._dtype)
        what = (
            f"num_pat={self.num_pat} and num_state={self.num_state} on {shape[1]} "
            f"frequencies x {shape[2]} times, in steps of {batch} events ({self._dtype})"
        )
        advice = "lower num_pat or the batch size"
        workers = _worker_memory(client) if client is not None else []
        if client is None:
            driver += task
        available = available_memory()
        if driver > available:
            raise ValueError(
                f"{what} need at least {format_bytes(driver)} in this process (the model, "
                f"its updates and checkpoint copy), and {format_bytes(available)} are "
                f"available: {advice}"
            )
        for address, limit, threads in workers:
            if task * threads > limit:
                raise ValueError(
                    f"{what} need at least {format_bytes(task)} per task of a step, and "
                    f"worker {address} has a memory limit of {format_bytes(limit)} for "
                    f"{threads} thread{'s' * (threads != 1)}: {advice}, or give the workers "
                    "more memory (or fewer threads)"
                )

    def _record_steps(self) -> None:
        self.n_steps_ = {s: self.progress_[s].step if s in self.progress_ else 0 for s in STAGES}
        self.converged_ = {s: s in self.progress_ and self.progress_[s].converged for s in STAGES}

    def _started_hmm(self) -> BayesianHMM:
        """The HMM of a fit past its NMF stage, which sets it."""
        assert self.hmm_ is not None
        return self.hmm_

    def _start_nmf_from_data(
        self, chunks: EventChunks, client: Any, runners: StepRunners | None
    ) -> None:
        """Start q(W) from the frames of a seeded sample of events, read on the workers
        (:meth:`BayesianNonparametricNMF.start_from_frames`), unless it has started."""
        if not self.nmf_.initialised:
            index = self.nmf_.init_sample(chunks.shape[0])
            self.nmf_.start_from_frames(spectrogram_frames(chunks, index, client, runners))

    def _start_hmm_from_data(
        self, chunks: EventChunks, client: Any, runners: StepRunners | None
    ) -> None:
        """Start q(B) from the emission frames of a seeded sample of events, computed on
        the workers (:meth:`BayesianHMM.start_from_frames`), unless it has started."""
        hmm = self._started_hmm()
        if hmm.initialised:
            return
        n_events, _, n_times = chunks.shape
        frames = emission_frames(
            chunks, hmm.init_sample(n_events), self.nmf_.transform_parameters(),
            hmm.step_parameters(), client, runners=runners,
        )  # fmt: skip
        hmm.start_from_frames(frames, n_events * n_times)

    def _nmf_stage(
        self, chunks: EventChunks, batch: int, client: Any, runners: StepRunners | None,
        seed: int,
    ) -> dict[str, Any]:  # fmt: skip
        """The NMF's arguments of :func:`run_svi`: minibatches drawn by the model's step
        counter, statistics from the workers, the model's global update."""
        nmf = self.nmf_
        done = self.progress_["nmf"].step if "nmf" in self.progress_ else 0
        n_events = chunks.shape[0]

        def statistics(index: np.ndarray, following: np.ndarray | None):
            return nmf_statistics(
                chunks, index, nmf.step_parameters(), client, runners=runners,
                following=following,
            )  # fmt: skip

        return {
            # draw by the model's counter: -1 at the stage's first step
            "batches": SeededMinibatches(seed, "nmf_batch", n_events, batch, nmf.step - done),
            "statistics": statistics,
            "update": lambda stats, step: nmf.svi_update(stats),
        }

    def _hmm_stage(
        self, chunks: EventChunks, batch: int, client: Any, runners: StepRunners | None,
        seed: int,
    ) -> dict[str, Any]:  # fmt: skip
        """The HMM's arguments of :func:`run_svi`: minibatches drawn by the count of
        the stage's steps, activations and statistics from the workers, the model's
        update (in compat mode the reference used as its README shows: one sequence
        per fit call)."""
        hmm, nmf_params = self._started_hmm(), self.nmf_.transform_parameters()
        n_times = chunks.shape[2]

        def statistics(index: np.ndarray, following: np.ndarray | None):
            return hmm_statistics(
                chunks, index, nmf_params, hmm.step_parameters(), client, runners=runners,
                following=following,
            )  # fmt: skip

        def update(stats, step: int):
            return hmm.svi_update(stats, n_times=n_times, count=states_in_use)

        return {
            "batches": SeededMinibatches(seed, "hmm_batch", chunks.shape[0], batch),
            "statistics": statistics,
            "update": update,
        }

    def _run_stage(
        self,
        stage: str,
        arguments: dict[str, Any],
        budget: int,
        window: int,
        checkpoints: BackgroundCheckpoints,
        lookahead: bool,
    ) -> None:
        """Run a stage's SVI loop until it has ``budget`` steps or has converged
        (:class:`StageMonitor`), reporting each step and checkpointing every
        ``checkpoint_every``.

        A resumed stage goes on from its last :class:`SVIProgress`, whose window of
        counts went into the checkpoint: it stops where an uninterrupted one does.
        """
        model: BayesianNonparametricNMF | BayesianHMM = (
            self.nmf_ if stage == "nmf" else self._started_hmm()
        )
        last = self.progress_.get(stage)
        if last is None or not last.converged:
            monitor = self._stage_monitor(
                stage, model, last.counts if last else (), window, budget
            )
            records = run_svi(
                stage, **arguments, budget=budget, monitor=monitor,
                start=last.step if last else 0, lookahead=lookahead,
            )  # fmt: skip
            for record in records:
                self.progress_[stage] = last = record
                if self.progress is not None:
                    self.progress(stage, record.info())
                if self._checkpoint_due(record.step):
                    self._write_checkpoint(checkpoints, stage)
        if last is not None and last.converged:
            logger.info("%s converged after %d steps", stage, last.step)
        elif self.tol is not None:
            logger.info("%s: the budget of %d steps ran out before convergence", stage, budget)

    # --- transforming --------------------------------------------------------------
    def _fitted(self) -> tuple[BayesianNonparametricNMF, BayesianHMM]:
        nmf, hmm = getattr(self, "nmf_", None), getattr(self, "hmm_", None)
        if nmf is None or hmm is None:
            raise ValueError("SpecUFEx is not fitted: call fit() or from_archive() first")
        return nmf, hmm

    def model_token(self) -> str:
        """A digest of the fitted state: outputs written with another model are stale."""
        nmf, hmm = self._fitted()
        arrays = (nmf.W1, nmf.W2, nmf.A1, nmf.A2, hmm.B1, hmm.B2, hmm.gain)
        return model_token(arrays, self.compat, self._dtype)

    def _parameters(self) -> tuple[NMFStepParameters, HMMStepParameters]:
        nmf, hmm = self._fitted()
        nmf.dtype = hmm.dtype = np.dtype(self._dtype)
        return nmf.transform_parameters(), hmm.step_parameters()

    def transform(self, data: Any) -> xr.Dataset:
        """Lazy outputs: ``activation``, ``state_probability``, ``transition``, ``fingerprint``.

        Writing the result with ``to_zarr`` computes chunk by chunk on the cluster.
        """
        self._check_parameters()
        chunks = EventChunks.from_data(data, self.chunk_events)
        self._check_frequencies(chunks)
        return lazy_transform(chunks, *self._parameters())

    def transform_to_zarr(
        self,
        path: ArchivePath,
        *,
        resume: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Compute every event's outputs and write them into the archive at ``path``.

        Workers write their chunk's regions directly. With ``resume=True`` chunks already
        written with the same model are skipped (a chunk counts as written only after
        all four outputs are). An event with bad values stops the transform, which then
        stays marked incomplete, with an ``ArchiveError`` naming every such event.
        Holds the archive's lease (:func:`specufex_dask.io.lease.archive_lease`): while
        another process writes to the archive it raises ``ArchiveBusy``.

        A model other than the archive's own (:meth:`from_archive` of another archive,
        a model :meth:`save` wrote, :meth:`from_estimators`) is recorded with the
        outputs (:func:`specufex_dask.io.status.record_applied_model`): they then count
        as made by the matching model, and the archive's own model stays as it was.

        ``path`` may be an fsspec URL, with its ``storage_options``.
        """
        self._check_parameters()
        chunks = EventChunks.from_data(_located(path, storage_options), self.chunk_events)
        assert chunks.path is not None
        path = chunks.path
        self._check_frequencies(chunks)
        client = self._client()
        token = self.model_token()
        with (
            _leased(chunks.path, "transform"),
            waiting_for_workers(self.no_worker_timeout),
            naming_every_bad_event(chunks, client),
        ):
            # a model from elsewhere is recorded, so the outputs count as its own
            own = token == stored_model_token(path)
            record_applied_model(path, token, None if own else self._source())
            computed = transform_chunks(
                chunks, *self._parameters(), token, client,
                resume=resume, progress=self.progress,
            )  # fmt: skip
        logger.info("transformed %d chunks of %s", computed, path)

    def check_frequencies(self, data: Any) -> None:
        """Raise a one-line ValueError, before any work, when the frequency axis of
        ``data`` (an archive path or spectrograms) is not the fitted model's: another
        number of frequencies or other values, naming both axes."""
        self._check_frequencies(EventChunks.from_data(data, self.chunk_events))

    def _source(self) -> str:
        """Where the fitted model came from, as the outputs record it."""
        return getattr(self, "source_", None) or "a model given in Python"

    def _check_frequencies(self, chunks: EventChunks) -> None:
        """Refuse data whose frequency axis is not the model's: another number of
        frequencies, or other values (naming both axes)."""
        nmf, _ = self._fitted()
        fitted = self.frequency_
        where = chunks.path or "spectrograms"
        given = np.asarray(chunks.frequency, dtype=float) if chunks.frequency_known else None
        source = getattr(self, "source_", None)
        model = f"the model of {source}" if source else "the model"
        if chunks.shape[1] != nmf.dim:
            raise ValueError(
                f"{where}: {_axis_text(chunks.shape[1], given)}, {model} was fitted on "
                f"{_axis_text(nmf.dim, fitted)}; transform with a model of this frequency axis"
            )
        if (
            fitted is not None
            and given is not None
            and not np.allclose(given, fitted, rtol=1e-9, atol=0.0)
        ):
            raise ValueError(
                f"{where}: frequency axis {given[0]:g}..{given[-1]:g} Hz differs from the one "
                f"{model} was fitted on ({fitted[0]:g}..{fitted[-1]:g} Hz, {nmf.dim} "
                "frequencies each); transform with a model of this frequency axis"
            )

    def save(self, path: str) -> None:
        """Write the fitted model as a new Zarr store at ``path``, holding a ``model``
        group as an archive's (the model, the settings of its fit and the frequency
        axis): :meth:`from_archive` reads it, and ``transform --model`` applies it.

        Raises
        ------
        FileExistsError
            When ``path`` exists (a store is never overwritten).
        """
        import zarr

        nmf, hmm = self._fitted()
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; save the model to a new path")
        frequency = self.frequency_ if self.frequency_ is not None else np.arange(nmf.dim)
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        root.create_array(FREQUENCY, data=np.asarray(frequency, dtype=float))
        settings = getattr(self, "_fit_settings", None) or {
            name: _plain(self.get_params()[name]) for name in shaping_names(PIPELINE_PARAMETERS)
        }
        progress = _checkpoint("done", self.progress_, settings, self._stopping_settings())
        dataset = model_group_dataset(nmf, hmm, progress)
        write_model_dataset(str(path), dataset.assign_coords({FREQUENCY: frequency}))

    @classmethod
    def from_estimators(
        cls,
        nmf: BayesianNonparametricNMF,
        hmm: BayesianHMM,
        *,
        frequency: Any = None,
        client: Any = None,
        progress: Progress | None = None,
        source: str | None = None,
    ) -> SpecUFEx:
        """A fitted pipeline of an NMF and an HMM fitted on its activations (e.g. read
        by ``BayesianNonparametricNMF.load`` and ``BayesianHMM.load``).

        Raises
        ------
        ValueError
            Naming both, when the two do not make one model: another ``compat`` or
            ``dtype``, or an HMM of another number of patterns than the NMF's.
        """
        where = source or "the estimators"
        pair = {
            "compat": (nmf.compat, hmm.compat),
            "dtype": (np.dtype(nmf.dtype).name, np.dtype(hmm.dtype).name),
            "number of patterns": (nmf.num_pat, hmm.num_pat),
        }
        for what, (of_nmf, of_hmm) in pair.items():
            if of_nmf != of_hmm:
                raise ValueError(
                    f"{where}: the NMF's {what} is {of_nmf!r} and the HMM's {of_hmm!r}; "
                    "give an HMM fitted on this NMF"
                )
        settings = {"num_pat": nmf.num_pat, **_settings_of_models(nmf, hmm)}
        model = cls(**settings, client=client, progress=progress)
        model.nmf_, model.hmm_ = nmf, hmm
        model.frequency_ = None if frequency is None else np.asarray(frequency, dtype=float)
        model.progress_ = {}
        model.source_ = source
        model._record_steps()
        return model

    @classmethod
    def from_archive(
        cls,
        path: ArchivePath,
        *,
        client: Any = None,
        progress: Progress | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SpecUFEx:
        """The fitted model stored in ``<path>/model``, with the settings of its fit
        (those a checkpoint stores; for older ones, those its models tell, and the
        patterns kept as ``num_pat``). ``path`` may be an fsspec URL, with its
        ``storage_options``."""
        path = _located(path, storage_options)
        state = read_model_group(path)
        if state is None or state[1] is None or state[2].get("stage") != "done":
            raise ValueError(f"{path} holds no completely fitted model; run fit first")
        nmf, hmm, saved = state
        stored = {
            "num_pat": nmf.num_pat,
            **_settings_of_models(nmf, hmm),
            **saved.get("settings", {}),
            **saved.get("stopping", {}),
        }
        model = cls(**stored, client=client, progress=progress)
        model.nmf_, model.hmm_ = nmf, hmm
        model.frequency_ = _model_frequency(path)
        model.source_ = str(path)
        _, model.progress_ = _from_checkpoint(saved, nmf, hmm)
        model._record_steps()
        return model


# The resumable settings a stored model keeps for from_archive: how long its fit ran
STOPPING_SETTINGS = ("nmf_steps", "hmm_steps", "tol")

# K x D float64 arrays the driver holds at once, at least: q(W) (W1, W2), the two of its
# update, the folded statistics and the checkpoint's copy of q(W)
DRIVER_BASIS_ARRAYS = 7


def fit_memory(
    shape: tuple[int, int, int], num_pat: int, num_state: int, batch: int, dtype: str
) -> tuple[int, int]:
    """Bytes a fit needs at least: ``(driver, task)``.

    ``driver``: :data:`DRIVER_BASIS_ARRAYS` K x D arrays and the HMM's four S x K ones,
    in float64. ``task``: one task of an NMF step, over its least events (those of the
    step up to ``STEP_TASK_EVENTS``): the step's parameters (L in float64 and in
    ``dtype``, ``exp(L)`` and its transpose), each event's D x K counts, the folded
    float64 statistics, and the events' spectrograms and activations.
    """
    _, n_frequencies, n_times = (int(v) for v in shape)
    item = np.dtype(dtype).itemsize
    basis = n_frequencies * int(num_pat)
    events = min(int(batch), STEP_TASK_EVENTS)
    driver = 8 * (DRIVER_BASIS_ARRAYS * basis + 4 * int(num_state) * int(num_pat))
    per_event = item * (basis + (n_frequencies + int(num_pat)) * n_times)
    task = basis * (8 + 3 * item + 8) + events * per_event
    return driver, task


def available_memory() -> int:
    """Bytes of memory available to this process now (psutil, else ``os.sysconf``)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - distributed installs psutil
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def _worker_memory(client: Any) -> list[tuple[str, int, int]]:
    """``(address, memory limit, threads)`` of every worker with a memory limit, the
    smallest limit per thread first."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    limits = [
        (address, int(info["memory_limit"]), max(1, int(info.get("nthreads", 1))))
        for address, info in workers.items()
        if info.get("memory_limit")
    ]
    return sorted(limits, key=lambda worker: worker[1] / worker[2])


def format_bytes(n: int) -> str:
    """``n`` bytes as ``"1.49 GiB (1600000000 bytes)"``."""
    from dask.utils import format_bytes as short

    return f"{short(n)} ({n} bytes)"


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python one (JSON and comparisons with stored values)."""
    return value.item() if isinstance(value, np.generic) else value


# what a model's priors are (derived from its shape, stored with its state)
_PRIORS = {
    "nmf": ("h01", "h02", "a01", "a02", "w01", "w02"),
    "hmm": ("tau1", "tau2", "tauA", "tauPpi"),
}
# model parameters the pipeline's settings decide (compared as those) or the NMF's state
_PIPELINE_DECIDED = frozenset(PIPELINE_PARAMETERS) | {"gain"}


def _model_settings(model: Any, stage: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``model`` that shape a fit and the pipeline does not set itself,
    as its files store them (resolved), and its priors; named ``stage.name``."""
    _, scalars, settings = model_state(model)
    settings["X_shape"] = settings.get("input_dims")
    names = [n for n in shaping_names(table) if n not in _PIPELINE_DECIDED]
    values = {name: settings[name] for name in names if name in settings}
    values.update({name: scalars[name] for name in _PRIORS[stage]})
    return {f"{stage}.{name}": value for name, value in values.items()}


def _settings_of_models(nmf: BayesianNonparametricNMF, hmm: BayesianHMM | None) -> dict[str, Any]:
    """The pipeline's settings a checkpoint's models tell (checkpoints written before
    the settings were stored with them)."""
    settings = {"compat": nmf.compat, "random_state": nmf._seed, "dtype": np.dtype(nmf.dtype).name}
    if hmm is not None:
        settings["num_state"] = hmm.num_state
    return {name: _plain(value) for name, value in settings.items()}


def _checkpoint(
    stage: str,
    progress: dict[str, SVIProgress],
    settings: dict[str, Any],
    stopping: dict[str, Any],
) -> dict[str, Any]:
    """The ``progress`` a checkpoint stores: the stage the fit is in and, per stage, the
    steps done, whether it converged, the budget and the stopping rule's window of
    counts (the layout of the model group's ``progress`` attribute), the settings
    that shaped the fit (a resumed fit must have the same) and its ``stopping``
    settings (:data:`STOPPING_SETTINGS`, which a resume may change)."""
    saved: dict[str, Any] = {"stage": stage, "settings": settings, "stopping": stopping}
    saved.update({f"{s}_steps": progress[s].step if s in progress else 0 for s in STAGES})
    for s, record in progress.items():
        saved[f"{s}_converged"] = record.converged
        saved[f"{s}_counts"] = list(record.counts)
        saved[f"{s}_total"] = record.total
    return saved


def _from_checkpoint(
    saved: dict[str, Any], nmf: BayesianNonparametricNMF, hmm: BayesianHMM | None
) -> tuple[str, dict[str, SVIProgress]]:
    """The stage and the last :class:`SVIProgress` of each stage of a checkpoint's
    ``progress`` (its budget is the steps done when the checkpoint has none)."""
    progress = {}
    for stage, model in (("nmf", nmf), ("hmm", hmm)):
        steps = int(saved.get(f"{stage}_steps", 0))
        if steps == 0 and f"{stage}_converged" not in saved:
            continue
        counts = tuple(int(count) for count in saved.get(f"{stage}_counts", ()))
        progress[stage] = SVIProgress(
            stage,
            steps,
            int(saved.get(f"{stage}_total", steps)),
            model.elbo_[-1] if model is not None and model.elbo_ else float("nan"),
            counts[-1] if counts else 0,
            bool(saved.get(f"{stage}_converged")),
            counts,
        )
    return saved["stage"], progress


def _axis_text(n_frequencies: int, axis: np.ndarray | None) -> str:
    """``"30 frequencies (1..30 Hz)"``; without the range when the axis is unknown."""
    if axis is None or len(axis) != n_frequencies or n_frequencies == 0:
        return f"{n_frequencies} frequencies"
    return f"{n_frequencies} frequencies ({axis[0]:g}..{axis[-1]:g} Hz)"


def _leased(path: ArchivePath | None, command: str) -> AbstractContextManager:
    """The lease of the archive at ``path`` (:func:`archive_lease`): one writer at a
    time; nothing for spectrograms given in memory."""
    return nullcontext() if path is None else archive_lease(path, command)


def _step_runners(client: Any, chunks: EventChunks) -> AbstractContextManager:
    """The executor of a fit's steps on step runners (:class:`ActorExecutor`) for an
    archive on a cluster; None (as a context: steps run as tasks on ``client``) otherwise."""
    if client is None or not chunks.stored:
        return nullcontext()
    return ActorExecutor(client)


def _located(data: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """``data``, or the location of the archive URL ``data`` with ``storage_options``."""
    return data if storage_options is None else as_location(data, storage_options)


def _model_frequency(path: ArchivePath) -> np.ndarray | None:
    """The frequency axis stored with the model (None when the group has none)."""
    import zarr

    model = zarr_group(path, mode="r")[model_group_name(path) or "model"]
    axis = model.get(FREQUENCY) if isinstance(model, zarr.Group) else None
    return np.asarray(axis[:]) if isinstance(axis, zarr.Array) else None
