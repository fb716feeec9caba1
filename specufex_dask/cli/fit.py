"""``specufex-dask fit``, ``transform`` and ``run`` (fit, then transform).

The three commands are declared in one table, :data:`COMMANDS`: ``fit`` and ``run`` take
the options of :data:`specufex_dask.cli.options.FIT_OPTIONS`, ``transform`` those of
:data:`specufex_dask.cli.options.TRANSFORM_OPTIONS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specufex_dask.cli.archive import open_archive, open_model, record_configuration
from specufex_dask.cli.base import PROG, CommandError, Commands, Handler, dask_client, plural
from specufex_dask.cli.config import FIT_KEYS, Config
from specufex_dask.cli.options import FIT_OPTIONS, TRANSFORM_OPTIONS, OptionGroups, add_options
from specufex_dask.cli.progress import Reporter
from specufex_dask.inference.params import ResumeMismatch
from specufex_dask.io.location import ArchiveLocation, is_local

__all__ = [
    "COMMANDS",
    "cmd_fit",
    "cmd_run",
    "applied_model",
    "cmd_transform",
    "fit_archive",
    "fitted_summary",
    "make_pipeline",
    "register",
    "resume_refusal",
    "transform_archive",
]

FIT_SECTIONS = ["nmf", "hmm", "fit", "dask"]
"""The configuration sections a fit records in the archive."""


def make_pipeline(config: Config, client: Any, reporter: Reporter):
    """A :class:`specufex_dask.pipeline.SpecUFEx` configured from ``config``."""
    from specufex_dask.pipeline import SpecUFEx

    return SpecUFEx(
        num_pat=config.nmf.num_pat,
        num_state=config.hmm.num_state,
        compat=config.fit.compat,
        nmf_steps=config.nmf.steps,
        hmm_steps=config.hmm.steps,
        batch_size=config.nmf.batch_size,
        tol=config.nmf.tol,
        random_state=config.fit.random_state,
        checkpoint_every=config.fit.checkpoint_every,
        client=client,
        progress=reporter.progress,
        no_worker_timeout=config.dask.no_worker_timeout,
    )


def fit_archive(
    archive: str | Path,
    config: Config,
    reporter: Reporter,
    client: Any,
    resume: bool,
    stage: str = "all",
):
    """Fit the pipeline of ``config`` on ``archive`` (only the NMF, or only the HMM on the
    stored NMF, by ``stage``); record the settings; return it."""
    model = make_pipeline(config, client, reporter)

    def most(steps: int | None) -> str:
        return "steps auto" if steps is None else f"at most {steps} steps"

    tol = "no early stop" if config.nmf.tol is None else f"tol {config.nmf.tol:g}"
    nmf = f"NMF ({config.nmf.num_pat} patterns, {most(config.nmf.steps)})"
    hmm = f"HMM ({config.hmm.num_state} states, {most(config.hmm.steps)})"
    what = {"all": f"fitting {nmf} and {hmm}", "nmf": f"fitting only the {nmf}"}
    refit = f"refitting the {hmm} on the stored NMF"
    reporter.say(f"{what.get(stage, refit)}, {tol}, on {archive}")
    model.fit(archive, resume=resume, stage=stage)
    # a refit leaves the NMF, and the record of the settings it was fitted with
    sections = [s for s in FIT_SECTIONS if not (stage == "hmm" and s == "nmf")]
    record_configuration(archive, config, sections, "fit" if stage == "all" else f"fit {stage}")
    return model


def transform_archive(
    archive: str | Path, model: Any, reporter: Reporter, config: Config, resume: bool
) -> None:
    """Write the outputs of every event of ``archive`` with the fitted ``model``."""
    source = getattr(model, "source_", None)
    other = f" with the model of {source}" if source and source != str(archive) else ""
    reporter.say(f"transforming every event of {archive}{other}")
    model.transform_to_zarr(archive, resume=resume)
    record_configuration(archive, config, ["dask"], "transform")


def fitted_summary(model: Any) -> str:
    """What a fit kept, e.g. ``NMF dictionary of 31 patterns (130 steps, converged); ...``."""
    nmf, hmm = getattr(model, "nmf_", None), getattr(model, "hmm_", None)
    n_steps, converged = getattr(model, "n_steps_", {}), getattr(model, "converged_", {})

    def steps(stage: str) -> str:
        if stage not in n_steps:
            return ""
        stopped = ", converged" if converged.get(stage) else ""
        return f" ({plural(n_steps[stage], 'step')}{stopped})"

    parts = []
    if nmf is not None:
        parts.append(f"NMF dictionary of {plural(nmf.num_pat, 'pattern')}{steps('nmf')}")
    if hmm is not None:
        parts.append(f"HMM of {plural(hmm.num_state, 'state')}{steps('hmm')}")
    return "; ".join(parts)


def _lease(archive: str | Path, command: str):
    """The archive's lease for the whole command: the fit or transform and the record of
    the configuration after it (a ``run``'s fit and transform take it again inside)."""
    from specufex_dask.io.lease import archive_lease

    return archive_lease(archive, command)


def resume_refusal(error: ResumeMismatch) -> str:
    """The lines of a refused ``--resume``: what differs, with the flag of each
    setting, and how to go on."""
    flags = {
        FIT_KEYS[flag.dest]: flag.names[0]
        for _, group in FIT_OPTIONS
        for flag in group
        if flag.dest in FIT_KEYS
    }
    lines = [error.headline]
    for line in error.differences:
        flag = flags.get(line.split(":", 1)[0])
        lines.append(f"  {line}" + (f" ({flag})" if flag else ""))
    lines.append(
        "  to resume, drop those flags or give them the checkpoint's values; to start "
        "afresh, run without --resume"
    )
    return "\n".join(lines)


def _refuse_resume(args: argparse.Namespace, error: ResumeMismatch) -> int:
    """Print the refusal (one error line, then one line per difference); exit code 1."""
    if args.debug:
        raise error
    print(f"{PROG}: error: {resume_refusal(error)}", file=sys.stderr)
    return 1


def _fit_and_maybe_transform(
    args: argparse.Namespace, config: Config, reporter: Reporter, command: str
) -> int:
    """``fit``, or with ``command`` "run" also the transform, under one lease and one
    cluster; a resume that does not match the checkpoint is refused."""
    open_archive(args.archive, check_only=True).close()
    try:
        with _lease(args.archive, command), dask_client(config, reporter) as client:
            model = fit_archive(args.archive, config, reporter, client, args.resume, args.stage)
            if command == "run":
                transform_archive(args.archive, model, reporter, config, False)
    except ResumeMismatch as error:
        return _refuse_resume(args, error)
    done = "fitted and transformed" if command == "run" else "fitted"
    print(f"{done} {args.archive}: {fitted_summary(model)}")
    return 0


def cmd_fit(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Fit the NMF dictionary and the HMM; store the model in the archive."""
    return _fit_and_maybe_transform(args, config, reporter, "fit")


def with_run_settings(model: Any, config: Config, reporter: Reporter, client: Any) -> Any:
    """A stored model set to run this command: on ``client``, reporting progress, with
    the configuration's wait for workers."""
    model.client = client
    model.progress = reporter.progress
    model.no_worker_timeout = config.dask.no_worker_timeout
    return model


def applied_model(
    archive: str | Path | ArchiveLocation,
    sources: list[str] | None,
    storage_options: Mapping[str, Any] | None = None,
):
    """The fitted :class:`~specufex_dask.pipeline.SpecUFEx` that ``transform`` applies:
    the archive's own, or that of ``--model`` (another archive, a model saved by
    ``SpecUFEx.save``, or an NMF file and an HMM file saved by the estimators). Another
    archive at a URL is opened with ``storage_options``."""
    from specufex_dask.models import BayesianHMM, BayesianNonparametricNMF
    from specufex_dask.pipeline import SpecUFEx

    if not sources:
        if open_model(archive) is None:
            raise CommandError(
                f"{archive} holds no fitted model; run `specufex-dask fit {archive}` first, "
                "or give one with --model"
            )
        return SpecUFEx.from_archive(archive)
    if len(sources) == 2:
        nmf = BayesianNonparametricNMF.load(sources[0])
        hmm = BayesianHMM.load(sources[1])
        return SpecUFEx.from_estimators(nmf, hmm, source=" and ".join(sources))
    (source,) = sources
    model_source: str | ArchiveLocation = source
    if is_local(source):
        found = Path(source).is_dir()
    else:
        model_source = ArchiveLocation(source, storage_options or {})
        found = model_source.exists()
    if not found:
        raise CommandError(
            f"--model {source}: not an archive or a model saved by SpecUFEx.save; for the "
            "estimators' files give two, the NMF's then the HMM's"
        )
    if open_model(model_source) is None:
        raise CommandError(
            f"--model {source} holds no fitted model; run `specufex-dask fit {source}` first"
        )
    return SpecUFEx.from_archive(model_source)


def cmd_transform(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Write activations, state probabilities, transitions and fingerprints."""
    open_archive(args.archive, check_only=True).close()
    # a model at a URL is read with the archive's storage options (the configuration's
    # when the archive is a local path)
    options: Mapping[str, Any] = config.storage_options.options
    if isinstance(args.archive, ArchiveLocation):
        options = args.archive.storage_options
    model = applied_model(args.archive, args.model, options)
    model.check_frequencies(args.archive)  # before a cluster starts
    with _lease(args.archive, "transform"), dask_client(config, reporter) as client:
        model = with_run_settings(model, config, reporter, client)
        transform_archive(args.archive, model, reporter, config, args.resume)
    other = f" with the model of {model.source_}" if args.model else ""
    print(f"transformed {args.archive}{other}")
    return 0


def cmd_run(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Fit, then transform."""
    return _fit_and_maybe_transform(args, config, reporter, "run")


@dataclass(frozen=True)
class FitCommand:
    """One of ``fit``, ``transform`` and ``run``: what its help says and which options
    it takes."""

    name: str
    summary: str
    description: str
    archive: str
    resume: str
    options: OptionGroups
    handler: Handler
    stages: tuple[str, ...] = ()
    """The choices of ``--stage`` (none: the command takes ``--model`` instead)."""


_WHERE = (
    "The archive's spectrograms are read chunk by chunk on the Dask cluster; the "
    "model (NMF dictionary EW, pattern weights EA, HMM emissions EB and the variational "
    "parameters) and checkpoints are written into ARCHIVE/model."
)

COMMANDS = (
    FitCommand(
        "fit",
        "fit the NMF dictionary and the HMM",
        "Fit the Bayesian nonparametric NMF (patterns unused by the data are pruned) and "
        "then the Bayesian HMM on its activations, by stochastic variational inference. " + _WHERE,
        "archive with spectrograms",
        "continue from the last checkpoint in ARCHIVE",
        FIT_OPTIONS,
        cmd_fit,
        ("all", "nmf", "hmm"),
    ),
    FitCommand(
        "transform",
        "activations, state probabilities, fingerprints",
        "With the fitted model of ARCHIVE, compute for every event the NMF activations "
        "(activation), the HMM state probabilities (state_probability), the expected "
        "transition matrix (transition) and the fingerprint (fingerprint), and write them "
        "into ARCHIVE, chunk by chunk.",
        "archive with a fitted model",
        "skip chunks an interrupted run already wrote",
        TRANSFORM_OPTIONS,
        cmd_transform,
    ),
    FitCommand(
        "run",
        "fit, then transform",
        "Fit the model (as `fit`), then transform every event (as `transform`). " + _WHERE,
        "archive with spectrograms",
        "continue the fit from the last checkpoint",
        FIT_OPTIONS,
        cmd_run,
        ("all", "hmm"),  # a transform needs the HMM
    ),
)


def register(commands: Commands) -> None:
    """Add the ``fit``, ``transform`` and ``run`` commands."""
    for command in COMMANDS:
        sub = commands.add(command.name, command.summary, command.description, command.handler)
        sub.add_argument("archive", metavar="ARCHIVE", help=command.archive)
        sub.add_argument("--resume", action="store_true", help=command.resume)
        if command.stages:
            sub.add_argument(
                "--stage", choices=command.stages, default="all",
                help="what to fit: both stages (all), only the NMF (nmf), or the HMM anew, "
                "with the HMM flags given, on the NMF stored in ARCHIVE (hmm), which stays "
                "as it is (default: all)",
            )  # fmt: skip
        else:
            sub.add_argument(
                "--model", nargs="+", metavar="OTHER",
                help="apply the model of OTHER instead of ARCHIVE's own: another archive, a "
                "model saved by SpecUFEx.save, or an NMF file and an HMM file saved by the "
                "estimators; its frequency axis must be ARCHIVE's",
            )  # fmt: skip
        add_options(sub, command.options, commands.defaults)
