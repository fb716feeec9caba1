"""``SpecUFEx``: fit and transform spectrogram archives on a Dask cluster.

Example
-------
>>> from specufex_dask import SpecUFEx                      # doctest: +SKIP
>>> model = SpecUFEx(num_pat=75, num_state=15, random_state=0).fit("events.zarr")
>>> model.transform_to_zarr("events.zarr")                  # outputs written by workers
>>> ds = model.transform("events.zarr")                     # or a lazy xarray Dataset
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import xarray as xr

from specufex_dask.inference import compat as reference
from specufex_dask.inference.convergence import (
    MIN_STOP_STEPS,
    StageMonitor,
    auto_steps,
    states_in_use,
    window_steps,
)
from specufex_dask.inference.seeding import minibatch, resolve_seed
from specufex_dask.io.archive import FREQUENCY, MODEL_GROUP
from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF, _check_compat
from specufex_dask.parallel.engine import (
    BackgroundCheckpoints,
    EventChunks,
    emission_frames,
    hmm_statistics,
    lazy_transform,
    naming_every_bad_event,
    nmf_statistics,
    read_model_group,
    require_writable,
    transform_chunks,
)
from specufex_dask.parallel.runners import ActorExecutor, StepRunners

__all__ = ["SpecUFEx"]

logger = logging.getLogger("specufex_dask")

Progress = Callable[[str, dict], None]
# An SVI step of the fit: its ELBO, whether convergence may be tested, more to report
# (with the stage's count under COUNTS[stage]).
Step = Callable[[], tuple[float, bool, dict]]
# What must hold still over a window for a stage to stop: live patterns, states in use.
COUNTS = {"nmf": "n_patterns", "hmm": "n_states"}


class SpecUFEx:
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
        ``batch_size``, and at least 200 (:func:`specufex_dask.inference.convergence.auto_steps`).
    batch_size : int or None, default=64
        Events per SVI step; None is full-batch variational Bayes (every event in every
        step, step size 1).
    tol : float or None, default=1e-4
        A stage stops before its budget once the mean ELBO of the last window of steps
        (one pass, at most 20 steps) differs from the window's before by less than
        ``tol`` relative, and the NMF's live patterns (the HMM's states in use: holding
        1 % of a minibatch's frames) did not change over the last window, and at least
        200 steps ran (or the whole budget, if smaller)
        (:class:`specufex_dask.inference.convergence.StageMonitor`). None runs every step.
    random_state : int, default=0
        Seed of the initial states and of every minibatch.
    checkpoint_every : int, default=10
        Steps between checkpoints written to ``<archive>/model`` (when fitting a path).
    client : distributed.Client, str, None or False
        A client, a scheduler address, None to start a local cluster on 127.0.0.1, or
        False to use dask's current scheduler without a distributed cluster.
    chunk_events : int, default=256
        Events per chunk for in-memory data (archives keep their own chunks).
    dtype : {"float64", "float32"}, default="float64"
        Precision of the kernels.
    progress : callable, optional
        ``progress(stage, info)`` after every step (stage "nmf" or "hmm"; info has
        ``step``, ``total`` (the budget), ``elbo``, ``converged``, and ``n_patterns``
        for the NMF, ``n_states`` (states in use in the step's minibatch) for the HMM)
        and every transformed chunk (stage "transform"; ``chunk``, ``n_chunks``).

    Attributes
    ----------
    nmf_ : BayesianNonparametricNMF
    hmm_ : BayesianHMM
    n_steps_ : dict
        Steps the fit ran per stage (``{"nmf": 130, "hmm": 64}``).
    converged_ : dict
        Per stage, whether it stopped on convergence before its budget.
    """

    def __init__(
        self,
        num_pat: int = 75,
        num_state: int = 15,
        *,
        compat: str = "default",
        nmf_steps: int | None = None,
        hmm_steps: int | None = None,
        batch_size: int | None = 64,
        tol: float | None = 1e-4,
        random_state: int | None = 0,
        checkpoint_every: int = 10,
        client: Any = None,
        chunk_events: int = 256,
        dtype: str = "float64",
        progress: Progress | None = None,
    ) -> None:
        self.num_pat = num_pat
        self.num_state = num_state
        self.compat = _check_compat(compat)
        if compat == "specufex" and batch_size != 1:
            batch_size = 1  # the reference takes one event per step
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        for name, value in (("nmf_steps", nmf_steps), ("hmm_steps", hmm_steps)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if tol is not None and not tol >= 0:
            raise ValueError(f"tol must be >= 0 or None, got {tol!r}")
        self.nmf_steps = None if nmf_steps is None else int(nmf_steps)
        self.hmm_steps = None if hmm_steps is None else int(hmm_steps)
        self.batch_size = batch_size
        self.tol = tol
        self.random_state = resolve_seed(random_state)
        self.checkpoint_every = int(checkpoint_every)
        self.client = client
        self.chunk_events = chunk_events
        self.dtype = np.dtype(dtype).name
        self.progress = progress
        self._handle = None
        self.nmf_: BayesianNonparametricNMF | None = None
        self.hmm_: BayesianHMM | None = None
        self.frequency_: np.ndarray | None = None
        self.n_steps_: dict[str, int] = {}
        self.converged_: dict[str, bool] = {}

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

    def _report(self, stage: str, info: dict) -> None:
        if self.progress is not None:
            self.progress(stage, info)

    # --- fitting -------------------------------------------------------------------
    def _new_nmf(self, shape: tuple[int, int, int]) -> BayesianNonparametricNMF:
        return BayesianNonparametricNMF(
            shape,
            self.num_pat,
            compat=self.compat,
            step_size=1.0 if self.batch_size is None else None,
            random_state=self.random_state,
            dtype=self.dtype,
        )

    def _new_hmm(self, n_events: int) -> BayesianHMM:
        return BayesianHMM(
            self.nmf_.num_pat,
            self.nmf_.gain,
            self.num_state,
            compat=self.compat,
            n_eff=n_events,
            step_size=1.0 if self.batch_size is None else None,
            random_state=self.random_state,
            dtype=self.dtype,
        )

    def fit(self, data: Any, *, resume: bool = False) -> SpecUFEx:
        """Fit the NMF, then the HMM, by distributed SVI.

        Parameters
        ----------
        data : str, xarray.Dataset or xarray.DataArray
            An archive path (the model and checkpoints are then written to its
            ``model`` group), or spectrograms with dims (event, frequency, time).
        resume : bool, default=False
            Continue from the archive's last checkpoint; the result equals an
            uninterrupted fit.

        Raises
        ------
        ArchiveError
            For a bad archive. Values are checked by the tasks that read them: when a
            minibatch draws an event with negative or non-finite values, one pass over
            all events names every such event (checkpoints written before stay
            resumable, and an event no minibatch draws is caught by the transform).
        """
        chunks = EventChunks.from_data(data, self.chunk_events)
        self.frequency_ = (
            np.array(chunks.frequency, dtype=float) if chunks.frequency_known else None
        )
        if chunks.path is not None:
            require_writable(chunks.path, "model and its checkpoints")
        client = self._client()
        n_events = chunks.shape[0]
        batch = n_events if self.batch_size is None else min(self.batch_size, n_events)
        state = read_model_group(chunks.path) if resume and chunks.path else None
        if state is None:
            if resume:
                logger.info("no checkpoint in %s: fitting from the start", chunks.path)
            self.nmf_, self.hmm_ = self._new_nmf(chunks.shape), None
            done = {"stage": "nmf", "nmf_steps": 0, "hmm_steps": 0}
        else:
            self.nmf_, self.hmm_, done = state
            logger.info("resuming %s at %s", chunks.path, done)
        # No pass over the values first: every task checks the events it reads.
        window = window_steps(n_events, batch)
        budgets = {
            stage: auto_steps(n_events, batch) if steps is None else steps
            for stage, steps in (("nmf", self.nmf_steps), ("hmm", self.hmm_steps))
        }
        with (
            naming_every_bad_event(chunks, client),
            BackgroundCheckpoints(chunks.path) as checkpoints,
            _step_runners(client, chunks) as runners,
        ):
            if done["stage"] == "nmf":
                step = self._nmf_step(chunks, batch, client, runners)
                self._run_steps("nmf", step, budgets["nmf"], window, done, checkpoints)
                self.nmf_.sort_patterns()
                done["stage"] = "hmm"
                self.hmm_ = self._new_hmm(n_events)
                # before the checkpoint: a resumed fit starts from the same q(B)
                self._start_hmm_from_data(chunks, client, runners)
                checkpoints.write(self.nmf_, self.hmm_, done)
            if done["stage"] == "hmm":
                self._start_hmm_from_data(chunks, client, runners)
                step = self._hmm_step(chunks, batch, client, runners, done)
                self._run_steps("hmm", step, budgets["hmm"], window, done, checkpoints)
                self.hmm_.sort_states()
                done["stage"] = "done"
                checkpoints.write(self.nmf_, self.hmm_, done)
        self._record_steps(done)
        return self

    def _record_steps(self, done: dict) -> None:
        self.n_steps_ = {stage: int(done.get(f"{stage}_steps", 0)) for stage in COUNTS}
        self.converged_ = {stage: bool(done.get(f"{stage}_converged")) for stage in COUNTS}

    def _start_hmm_from_data(
        self, chunks: EventChunks, client: Any, runners: StepRunners | None
    ) -> None:
        """Start q(B) from the emission frames of a seeded sample of events, computed on
        the workers (:meth:`BayesianHMM.start_from_frames`), unless it has started."""
        hmm = self.hmm_
        if hmm.initialised:
            return
        n_events, _, n_times = chunks.shape
        frames = emission_frames(
            chunks, hmm.init_sample(n_events), self.nmf_.transform_parameters(),
            hmm.step_parameters(), client, runners=runners,
        )  # fmt: skip
        hmm.start_from_frames(frames, n_events * n_times)

    def _nmf_step(
        self, chunks: EventChunks, batch: int, client: Any, runners: StepRunners | None
    ) -> Step:
        """One NMF step on a seeded minibatch, as :meth:`_run_steps` calls it."""
        nmf = self.nmf_

        def draw(number: int) -> np.ndarray:
            return minibatch(self.random_state, "nmf_batch", number, chunks.shape[0], batch)

        def step() -> tuple[float, bool, dict]:
            stats = nmf_statistics(
                chunks, draw(nmf.step), nmf.step_parameters(), client,
                runners=runners, following=draw(nmf.step + 1) if runners is not None else None,
            )  # fmt: skip
            elbo = nmf.apply_statistics(stats)
            return elbo, nmf._annealed(), {"n_patterns": nmf.num_pat}

        return step

    def _hmm_step(
        self, chunks: EventChunks, batch: int, client: Any, runners: StepRunners | None,
        done: dict,
    ) -> Step:  # fmt: skip
        """One HMM step on a seeded minibatch (drawn by the count of steps ``done``)."""
        hmm, nmf_params = self.hmm_, self.nmf_.transform_parameters()
        n_times = chunks.shape[2]

        def draw(number: int) -> np.ndarray:
            return minibatch(self.random_state, "hmm_batch", number, chunks.shape[0], batch)

        def step() -> tuple[float, bool, dict]:
            number = done["hmm_steps"]
            stats = hmm_statistics(
                chunks, draw(number), nmf_params, hmm.step_parameters(), client,
                runners=runners, following=draw(number + 1) if runners is not None else None,
            )  # fmt: skip
            in_use = {"n_states": states_in_use(stats.state_counts, stats.n_sequences * n_times)}
            if self.compat != "specufex":
                return hmm.apply_statistics(stats), True, in_use
            # the reference used as its README shows: one sequence per fit call
            next_step, n, rho = reference.hmm_schedule(hmm.step, 0)
            elbo = hmm.apply_statistics(stats, scale=hmm.Neff / n, step_size=rho)
            hmm.step = next_step
            return elbo, True, in_use

        return step

    def _run_steps(
        self,
        stage: str,
        step: Step,
        budget: int,
        window: int,
        done: dict,
        checkpoints: BackgroundCheckpoints,
    ) -> None:
        """Call ``step`` until ``done`` counts ``budget`` steps of the stage or it has
        converged (:class:`StageMonitor`), reporting each and checkpointing every
        ``checkpoint_every``.

        ``step`` returns the step's ELBO, whether convergence may be tested yet (not
        while the NMF anneals) and more to report, with the stage's count. The last
        ``window + 1`` counts go into ``done`` (so into checkpoints): a resumed fit
        stops where an uninterrupted one does.
        """
        model = self.nmf_ if stage == "nmf" else self.hmm_
        steps, converged, counts = f"{stage}_steps", f"{stage}_converged", f"{stage}_counts"
        monitor = StageMonitor(
            self.tol, window, model.elbo_, done.get(counts, ()), min(MIN_STOP_STEPS, budget)
        )
        while done[steps] < budget and not done.get(converged):
            elbo, ready, extra = step()
            done[steps] += 1
            done[converged] = monitor.report(elbo, extra[COUNTS[stage]], ready)
            done[counts] = list(monitor.counts)
            self._report(stage, {
                "step": done[steps], "total": budget, "elbo": elbo,
                "converged": done[converged], **extra,
            })  # fmt: skip
            if done[steps] % self.checkpoint_every == 0:
                checkpoints.write(self.nmf_, self.hmm_, done)
        if done.get(converged):
            logger.info("%s converged after %d steps", stage, done[steps])
        elif self.tol is not None:
            logger.info("%s: the budget of %d steps ran out before convergence", stage, budget)

    # --- transforming --------------------------------------------------------------
    def _fitted(self) -> tuple[BayesianNonparametricNMF, BayesianHMM]:
        if self.nmf_ is None or self.hmm_ is None:
            raise ValueError("SpecUFEx is not fitted: call fit() or from_archive() first")
        return self.nmf_, self.hmm_

    def model_token(self) -> str:
        """A digest of the fitted state: outputs written with another model are stale."""
        nmf, hmm = self._fitted()
        digest = hashlib.sha256()
        for array in (nmf.W1, nmf.W2, nmf.A1, nmf.A2, hmm.B1, hmm.B2, hmm.gain):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        digest.update(f"{self.compat}{self.dtype}".encode())
        return digest.hexdigest()

    def _parameters(self):
        nmf, hmm = self._fitted()
        nmf.dtype = hmm.dtype = np.dtype(self.dtype)
        return nmf.transform_parameters(), hmm.step_parameters()

    def transform(self, data: Any) -> xr.Dataset:
        """Lazy outputs: ``activation``, ``state_probability``, ``transition``, ``fingerprint``.

        Writing the result with ``to_zarr`` computes chunk by chunk on the cluster.
        """
        chunks = EventChunks.from_data(data, self.chunk_events)
        self._check_frequencies(chunks)
        return lazy_transform(chunks, *self._parameters())

    def transform_to_zarr(self, path: str, *, resume: bool = False) -> None:
        """Compute every event's outputs and write them into the archive at ``path``.

        Workers write their chunk's regions directly. With ``resume=True`` chunks already
        written with the same model are skipped (a chunk counts as written only after
        all four outputs are). An event with bad values stops the transform, which then
        stays marked incomplete, with an ``ArchiveError`` naming every such event.
        """
        chunks = EventChunks.from_data(path, self.chunk_events)
        self._check_frequencies(chunks)
        client = self._client()
        with naming_every_bad_event(chunks, client):
            computed = transform_chunks(
                chunks, *self._parameters(), self.model_token(), client,
                resume=resume, progress=self.progress,
            )  # fmt: skip
        logger.info("transformed %d chunks of %s", computed, path)

    def _check_frequencies(self, chunks: EventChunks) -> None:
        nmf, _ = self._fitted()
        if chunks.shape[1] != nmf.dim:
            raise ValueError(
                f"{chunks.path or 'spectrograms'}: {chunks.shape[1]} frequencies, the model "
                f"was fitted with {nmf.dim}"
            )
        fitted = self.frequency_
        if (
            fitted is not None
            and chunks.frequency_known
            and not np.allclose(chunks.frequency, fitted, rtol=1e-9, atol=0.0)
        ):
            given = chunks.frequency
            raise ValueError(
                f"{chunks.path or 'spectrograms'}: frequency axis {given[0]:g}..{given[-1]:g} Hz "
                f"differs from the one the model was fitted on ({fitted[0]:g}..{fitted[-1]:g} Hz)"
            )

    @classmethod
    def from_archive(
        cls, path: str, *, client: Any = None, progress: Progress | None = None
    ) -> SpecUFEx:
        """The fitted model stored in ``<path>/model``."""
        state = read_model_group(str(path))
        if state is None or state[1] is None or state[2].get("stage") != "done":
            raise ValueError(f"{path} holds no completely fitted model; run fit first")
        nmf, hmm, done = state
        model = cls(
            nmf.num_pat,
            hmm.num_state,
            compat=nmf.compat,
            random_state=nmf.random_state,
            client=client,
            dtype=nmf.dtype.name,
            progress=progress,
        )
        model.nmf_, model.hmm_ = nmf, hmm
        model.frequency_ = _model_frequency(str(path))
        model._record_steps(done)
        return model


def _step_runners(client: Any, chunks: EventChunks) -> AbstractContextManager:
    """The executor of a fit's steps on step runners (:class:`ActorExecutor`) for an
    archive on a cluster; None (as a context: steps run as tasks on ``client``) otherwise."""
    if client is None or not chunks.stored:
        return nullcontext()
    return ActorExecutor(client)


def _model_frequency(path: str) -> np.ndarray | None:
    """The frequency axis stored with the model (None when the group has none)."""
    import zarr

    group = zarr.open_group(path, mode="r", use_consolidated=False)
    model = group[MODEL_GROUP]
    return model[FREQUENCY][:] if FREQUENCY in model else None
