"""The ``specufex-dask`` command line.

A thin layer over the package: it parses flags, layers them over a YAML configuration
(:mod:`specufex_dask.cli.config`), connects to a Dask cluster
(:mod:`specufex_dask.parallel.clusters`) and calls ingest, h5import, the pipeline,
clustering and plot. Results go to stdout, progress and the dashboard address to stderr
(silenced by ``--quiet``), and every error becomes one line ``specufex-dask: error: ...``
with a non-zero exit code (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from specufex_dask.analysis.clustering import FEATURE_TRANSFORMS
from specufex_dask.analysis.datasets import KW1_PARAMETERS, KW1_STEP_S, KW1_WINDOW_S
from specufex_dask.cli.config import Config, ConfigError, config_to_json, load_config, merge_config
from specufex_dask.common import __version__, ignore_zarr_warnings, quiet_zarr
from specufex_dask.io.archive import DEFAULT_CHUNK_EVENTS, MODEL_GROUP, consolidate

__all__ = ["build_parser", "main"]

PROG = "specufex-dask"
CONFIG_ATTR = "specufex_dask_config"
DEMO_ARCHIVE = "demo.zarr"
DEMO_FIGURES = "figures"

logger = logging.getLogger(__name__)

# `specufex-dask demo`: the ten bundled BAV earthquakes (20 s each) and 40 minutes of the
# continuous BW.KW1..EHZ record cut into 20 s windows every 10 s, in one archive, all with
# one spectrogram setting: that of the KW1 windows of specufex_dask.analysis.datasets (1 s
# segments, half overlapping, nfft 256, 1-45 Hz: 113 frequencies x 39 times), which also
# suits the 100 Hz BAV events. The step budgets keep the demo under a minute on two cores
# while leaving the NMF time to prune (pruning starts once the annealing is over, about
# step 35); the pipeline's default convergence stop (tol) applies as in any fit. The demo
# draws the events it picks (demo_events), so it has no plot settings of its own.
DEMO_WINDOW_S = KW1_WINDOW_S
DEMO_STEP_S = KW1_STEP_S
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "spectrograms": {
        **{
            name: getattr(KW1_PARAMETERS, name)
            for name in ("fs", "window_s", "overlap", "nfft", "fmin", "fmax")
        },
        "n_samples": 2000,
        "normalize_waveform": True,
        "events_per_chunk": 8,
    },
    "nmf": {"num_pat": 75, "steps": 150, "batch_size": 32},
    "hmm": {"num_state": 15, "steps": 100},
    "clustering": {"n_clusters": 5, "pca_components": None, "transform": "hellinger"},
}


class CommandError(Exception):
    """A user-facing failure of a command (printed as one line, no traceback)."""


# ----------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one configuration key.

    Attributes
    ----------
    names : tuple of str
        Option strings, e.g. ("--num-pat",).
    section, key : str
        The configuration key the flag overrides (``nmf.num_pat``).
    help : str
        Help text; the default value and the key are appended.
    type : callable or None
        Converts the string; None makes an on/off pair (``--x`` / ``--no-x``).
    metavar : str, optional
    choices : tuple of str, optional
    default_text : str, optional
        How to describe the default when its value (None) says little.
    """

    names: tuple[str, ...]
    section: str
    key: str
    help: str
    type: Callable[[str], Any] | None = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    default_text: str | None = None

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.key}"


def _optional_float(text: str) -> float | None:
    """A number, or "none" for no value."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _step_budget(text: str) -> int | None:
    """A number of steps, or "auto" for the automatic budget."""
    if text.strip().lower() in ("auto", "none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


AUTO_STEPS = "auto: 3 passes over the events, at least 200"


SPECTROGRAM_FLAGS = (
    Flag(
        ("--fs",),
        "spectrograms",
        "fs",
        "sampling rate the waveforms must have, Hz",
        float,
        "HZ",
        default_text="that of the first readable waveform",
    ),
    Flag(("--window-s",), "spectrograms", "window_s", "spectrogram window length, s", float, "S"),
    Flag(
        ("--overlap",),
        "spectrograms",
        "overlap",
        "overlap of consecutive windows, a fraction in [0, 1)",
        float,
        "FRACTION",
    ),
    Flag(
        ("--nfft",),
        "spectrograms",
        "nfft",
        "FFT length in samples",
        int,
        "N",
        default_text="the window length",
    ),
    Flag(
        ("--fmin",),
        "spectrograms",
        "fmin",
        "lowest frequency kept, Hz",
        float,
        "HZ",
        default_text="0",
    ),
    Flag(
        ("--fmax",),
        "spectrograms",
        "fmax",
        "highest frequency kept, Hz",
        float,
        "HZ",
        default_text="the Nyquist frequency",
    ),
    Flag(
        ("--normalize-waveform",),
        "spectrograms",
        "normalize_waveform",
        "divide each demeaned waveform by its largest absolute sample",
        None,
    ),
    Flag(
        ("--n-samples",),
        "spectrograms",
        "n_samples",
        "samples taken from the start of each waveform; shorter ones are rejected",
        int,
        "N",
        default_text="all, and every waveform must have the same length",
    ),
    Flag(
        ("--events-per-chunk",),
        "spectrograms",
        "events_per_chunk",
        "events per Zarr chunk of the archive",
        int,
        "N",
        default_text=str(DEFAULT_CHUNK_EVENTS),
    ),
)
NMF_FLAGS = (
    Flag(
        ("--num-pat",),
        "nmf",
        "num_pat",
        "NMF patterns to start with; those the data do not use are pruned",
        int,
        "K",
    ),
    Flag(
        ("--nmf-steps",),
        "nmf",
        "steps",
        "most NMF SVI steps, or 'auto'",
        _step_budget,
        "N",
        default_text=AUTO_STEPS,
    ),
    Flag(("--batch-size",), "nmf", "batch_size", "spectrograms per SVI step", int, "N"),
    Flag(
        ("--tol",),
        "nmf",
        "tol",
        "stop a stage before its most steps once the window-mean ELBO changes by less than "
        "TOL relative and the live patterns (HMM: states in use) held still over the window; "
        "'none' runs every step",
        _optional_float,
        "TOL",
    ),
)
HMM_FLAGS = (
    Flag(("--num-state",), "hmm", "num_state", "HMM states", int, "S"),
    Flag(
        ("--hmm-steps",),
        "hmm",
        "steps",
        "most HMM SVI steps, or 'auto'",
        _step_budget,
        "N",
        default_text=AUTO_STEPS,
    ),
)
FIT_FLAGS = (
    Flag(
        ("--compat",),
        "fit",
        "compat",
        "numerics: 'specufex' reproduces the reference implementation",
        str,
        None,
        ("default", "specufex"),
    ),
    Flag(("--seed",), "fit", "random_state", "seed of every random choice of the fit", int, "N"),
    Flag(
        ("--checkpoint-every",),
        "fit",
        "checkpoint_every",
        "SVI steps between checkpoints written into the archive",
        int,
        "N",
    ),
)
CLUSTERING_FLAGS = (
    Flag(("--n-clusters",), "clustering", "n_clusters", "number of k-means clusters", int, "K"),
    Flag(
        ("--pca-components",),
        "clustering",
        "pca_components",
        "run k-means on this many principal components of the fingerprints",
        int,
        "N",
        default_text="no PCA: k-means on the fingerprints",
    ),
    Flag(
        ("--seed",),
        "clustering",
        "random_state",
        "seed of the PCA and of the k-means initialisation",
        int,
        "N",
    ),
    Flag(("--n-init",), "clustering", "n_init", "k-means restarts; the best is kept", int, "N"),
    Flag(
        ("--transform",),
        "clustering",
        "transform",
        "transform of the fingerprints before PCA and k-means: 'hellinger' (the square root "
        "of each event's joint distribution of consecutive states), 'sqrt' (of every entry) "
        "or 'none' (the raw fingerprints)",
        str,
        "{" + ",".join(FEATURE_TRANSFORMS) + "}",
    ),
)
PLOT_FLAGS = (
    Flag(
        ("--events",),
        "plot",
        "events",
        "comma-separated event ids to draw one by one",
        str,
        "ID,ID,...",
        default_text="the first --n-events events",
    ),
    Flag(("--n-events",), "plot", "n_events", "events drawn when --events is not given", int, "N"),
    Flag(("--dpi",), "plot", "dpi", "resolution of the PNG files", int, "DPI"),
)
DASK_FLAGS = (
    Flag(
        ("--scheduler",),
        "cluster",
        "scheduler",
        "address of a running Dask scheduler (tcp://host:8786); no cluster is started",
        str,
        "ADDRESS",
        default_text="start a cluster",
    ),
    Flag(
        ("--cluster",),
        "cluster",
        "kind",
        "cluster to start when no --scheduler is given; slurm and pbs need dask-jobqueue "
        "and the 'cluster: jobqueue:' settings of a --config file",
        str,
        None,
        ("local", "slurm", "pbs"),
    ),
    Flag(
        ("--workers",),
        "cluster",
        "workers",
        "worker processes (local) or workers to request (slurm, pbs)",
        int,
        "N",
        default_text="chosen by Dask from the CPU count",
    ),
    Flag(
        ("--threads-per-worker",),
        "cluster",
        "threads_per_worker",
        "threads in each local worker",
        int,
        "N",
        default_text="chosen by Dask",
    ),
    Flag(
        ("--memory-limit",),
        "cluster",
        "memory_limit",
        "memory limit of each local worker, e.g. 4GB",
        str,
        "SIZE",
        default_text="Dask's share of the machine's memory",
    ),
    Flag(
        ("--dashboard-address",),
        "cluster",
        "dashboard_address",
        "where a started scheduler serves its dashboard; a busy port falls back to a free one",
        str,
        "HOST:PORT",
    ),
)


def _describe_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)) and not value:
        return "none"
    return str(value)


def _add_flags(
    parser: argparse.ArgumentParser,
    title: str,
    flags: Sequence[Flag],
    defaults: Config,
    description: str | None = None,
) -> None:
    group = parser.add_argument_group(title, description)
    for flag in flags:
        default = getattr(getattr(defaults, flag.section), flag.key)
        described = _describe_default(default)
        if default is None and flag.default_text is not None:
            described = flag.default_text
        help_text = f"{flag.help} (default: {described}; config: {flag.dest})"
        help_text = help_text.replace("%", "%%")
        # A flag left out sets nothing (SUPPRESS), so that a value of None given on the
        # command line ("--tol none") reaches the configuration.
        if flag.type is None:
            group.add_argument(
                *flag.names,
                dest=flag.dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                *flag.names,
                dest=flag.dest,
                type=flag.type,
                metavar=flag.metavar,
                choices=flag.choices,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Configuration overrides given on the command line (flags left out are absent;
    a flag given as none is None)."""
    overrides: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." not in dest:
            continue
        section, key = dest.split(".", 1)
        overrides.setdefault(section, {})[key] = value
    return overrides


def effective_config(args: argparse.Namespace) -> Config:
    """Defaults, then the command's own defaults, then ``--config``, then flags."""
    config = Config()
    base = getattr(args, "base_settings", None)
    if base:
        config = merge_config(config, base, source=f"the {args.command} defaults")
    if args.config is not None:
        config = load_config(args.config, base=config)
    return merge_config(config, flag_overrides(args), source="command-line flags")


# ----------------------------------------------------------------------------- output


class Reporter:
    """Progress and status messages on stderr, silenced by ``--quiet``.

    Parameters
    ----------
    quiet : bool
        Print nothing.
    stream : file, default=sys.stderr
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream
        self.totals: dict[str, int] = {}

    def say(self, message: str) -> None:
        """Print one status line."""
        if not self.quiet:
            print(message, file=self.stream or sys.stderr, flush=True)

    def progress(self, stage: str, info: Mapping[str, Any]) -> None:
        """The pipeline's ``progress`` callback: one line per SVI step or chunk.

        Long fits print about 50 lines: every step when there are few, else every n-th
        and the last (also a converged stage's last).
        """
        if self.quiet:
            return
        step = info.get("step")
        total = info.get("total", info.get("n_steps", self.totals.get(stage)))
        if isinstance(step, int) and isinstance(total, int) and total > 50:
            stride = math.ceil(total / 50)
            if step % stride and step != total and not info.get("converged"):
                return
        self.say(format_progress(stage, info, total))


def format_progress(stage: str, info: Mapping[str, Any], total: int | None = None) -> str:
    """One readable progress line, e.g. ``nmf step 3/40: ELBO -1.2345e+05, 31 patterns``
    or ``hmm step 9/200: ELBO 2.5e+06, 12 states in use, converged``."""
    parts = []
    shown = set()
    if "step" in info:
        parts.append(f"step {info['step']}" + (f"/{total}" if total else ""))
        shown |= {"step", "total", "n_steps"}
    if "chunk" in info:
        n_chunks = info.get("n_chunks")
        parts.append(f"chunk {info['chunk']}" + (f"/{n_chunks}" if n_chunks else ""))
        shown |= {"chunk", "n_chunks"}
    head = f"{stage} " + " ".join(parts) if parts else stage
    details = []
    if "elbo" in info:
        details.append(f"ELBO {float(info['elbo']):.6g}")
        shown.add("elbo")
    if "n_patterns" in info:
        details.append(f"{info['n_patterns']} patterns")
        shown.add("n_patterns")
    if "n_states" in info:
        details.append(f"{info['n_states']} states in use")
        shown.add("n_states")
    if "converged" in info:
        details += ["converged"] if info["converged"] else []
        shown.add("converged")
    for key, value in info.items():
        if key in shown:
            continue
        if isinstance(value, float):
            details.append(f"{key} {value:.4g}")
        elif isinstance(value, (int, str, bool, np.integer)):
            details.append(f"{key} {value}")
    return head + (": " + ", ".join(details) if details else "")


# ----------------------------------------------------------------------------- archive


def _open_archive(path: str | Path):
    from specufex_dask.io.archive import open_archive

    return open_archive(path)


def _open_model(path: str | Path):
    """The ``model`` group as a Dataset, or None when the archive holds no model."""
    import xarray as xr

    if not (Path(path) / MODEL_GROUP).exists():
        return None
    with quiet_zarr():
        return xr.open_zarr(str(path), group=MODEL_GROUP, chunks=None)


def record_configuration(
    path: str | Path, config: Config, sections: Sequence[str], command: str
) -> None:
    """Add the sections a command used to the archive attribute ``specufex_dask_config``.

    The attribute is a JSON object: one entry per section (the last value used) and
    ``history``, the list of commands that wrote to the archive with their sections.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    raw = group.attrs.get(CONFIG_ATTR)
    record = json.loads(raw) if isinstance(raw, str) else {}
    record.update(json.loads(config_to_json(config, list(sections))))
    record.setdefault("history", []).append(
        {"command": command, "sections": list(sections), "version": __version__}
    )
    group.attrs.update({CONFIG_ATTR: json.dumps(record, sort_keys=True)})
    consolidate(path)


def write_event_variable(path: str | Path, variable) -> None:
    """Add (or replace) one per-event variable of the archive, keeping the archive's
    attributes; a replaced variable gets the new one's attributes (xarray's append mode
    would keep the old ones: the settings of an earlier clustering)."""
    import xarray as xr
    import zarr

    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    attrs = dict(group.attrs)
    if variable.name in group:
        del group[variable.name]
    bare = variable.drop_vars(list(variable.coords))
    dataset = xr.Dataset({variable.name: bare}, attrs=attrs)
    dataset.to_zarr(str(path), mode="a", consolidated=True)


# ----------------------------------------------------------------------------- dask


@contextlib.contextmanager
def dask_client(config: Config, reporter: Reporter) -> Iterator[Any]:
    """Connect to (or start) the Dask cluster of ``config.cluster``; yield the client."""
    from specufex_dask.parallel.clusters import connect, connect_options_from_config

    settings = dataclasses.asdict(config.cluster)
    # Empty mappings mean "not set"; connect() would read an empty security as TLS on.
    settings = {k: v for k, v in settings.items() if v not in ({}, None)}
    options = connect_options_from_config(settings)
    with connect(**options) as handle:
        where = options.get("scheduler") or f"a new {options.get('cluster', 'local')} cluster"
        reporter.say(f"Dask: {where}; dashboard {handle.dashboard_link}")
        yield handle.client


# ----------------------------------------------------------------------------- commands


def cmd_info(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Print what an archive holds."""
    dataset = _open_archive(args.archive)
    model = _open_model(args.archive)
    if args.json:
        print(json.dumps(archive_summary(args.archive, dataset, model), indent=2, default=str))
    else:
        print("\n".join(describe_archive(args.archive, dataset, model)))
    return 0


OUTPUT_VARIABLES = ("activation", "state_probability", "transition", "fingerprint", "cluster")


def _chunk_summary(variable) -> list[int] | None:
    chunks = variable.encoding.get("chunks") or variable.encoding.get("preferred_chunks")
    if isinstance(chunks, dict):
        chunks = [chunks[d] for d in variable.dims]
    if chunks is None and variable.chunks is not None:
        chunks = [max(c) for c in variable.chunks]
    return None if chunks is None else [int(c) for c in chunks]


def archive_summary(path: str | Path, dataset, model) -> dict[str, Any]:
    """Everything ``info`` reports, as plain data."""
    from specufex_dask.io.archive import read_rejected, spectrogram_parameters

    spectrogram = dataset["spectrogram"]
    chunks = _chunk_summary(spectrogram)
    n_events = int(dataset.sizes["event"])
    summary: dict[str, Any] = {
        "path": str(path),
        "archive_version": dataset.attrs.get("specufex_dask_archive_version"),
        "created_with": dataset.attrs.get("created_with"),
        "n_events": n_events,
        "n_frequencies": int(dataset.sizes["frequency"]),
        "n_times": int(dataset.sizes["time"]),
        "frequency_range_hz": [
            float(dataset["frequency"].min()),
            float(dataset["frequency"].max()),
        ],
        "time_range_s": [float(dataset["time"].min()), float(dataset["time"].max())],
        "dtype": str(spectrogram.dtype),
        "chunks": chunks,
        "n_chunks": None if not chunks else math.ceil(n_events / chunks[0]),
        "spectrogram_parameters": spectrogram_parameters(dataset),
        "outputs": {
            name: (
                {"dims": list(dataset[name].dims), "shape": list(dataset[name].shape)}
                if name in dataset.variables
                else None
            )
            for name in OUTPUT_VARIABLES
        },
        "rejected": [r._asdict() for r in read_rejected(dataset)],
        "model": None,
        "configuration": json.loads(dataset.attrs[CONFIG_ATTR])
        if CONFIG_ATTR in dataset.attrs
        else None,
    }
    if "cluster" in dataset.variables:
        labels, counts = np.unique(np.asarray(dataset["cluster"].values), return_counts=True)
        summary["cluster_sizes"] = {int(k): int(v) for k, v in zip(labels, counts, strict=True)}
    if model is not None:
        summary["model"] = {
            "variables": {
                str(name): list(model[name].shape) for name in sorted(map(str, model.data_vars))
            },
            "n_patterns": int(model.sizes["pattern"]) if "pattern" in model.sizes else None,
            "n_states": int(model.sizes["state"]) if "state" in model.sizes else None,
            "attributes": {str(k): v for k, v in model.attrs.items()},
        }
    return summary


def describe_archive(path: str | Path, dataset, model) -> list[str]:
    """Human-readable lines of :func:`archive_summary`."""
    s = archive_summary(path, dataset, model)
    lines = [
        f"archive: {s['path']}",
        f"  format version {s['archive_version']}, created with {s['created_with']}",
        f"events: {s['n_events']}",
        f"spectrogram: {s['n_events']} events x {s['n_frequencies']} frequencies "
        f"({s['frequency_range_hz'][0]:g}-{s['frequency_range_hz'][1]:g} Hz) x "
        f"{s['n_times']} times ({s['time_range_s'][0]:g}-{s['time_range_s'][1]:g} s), "
        f"{s['dtype']}",
    ]
    if s["chunks"]:
        lines.append(
            f"chunks: {s['chunks'][0]} events per chunk ({_plural(s['n_chunks'], 'chunk')}), "
            f"chunk shape {tuple(s['chunks'])}"
        )
    if s["spectrogram_parameters"]:
        parameters = ", ".join(f"{k}={v}" for k, v in sorted(s["spectrogram_parameters"].items()))
        lines.append(f"preprocessing: {parameters}")
    lines.append("outputs:")
    for name, output in s["outputs"].items():
        if output is None:
            lines.append(f"  {name}: missing")
        else:
            dims = " x ".join(
                f"{n} {d}" for n, d in zip(output["shape"], output["dims"], strict=True)
            )
            lines.append(f"  {name}: {dims}")
    if "cluster_sizes" in s:
        sizes = ", ".join(f"{k}: {v}" for k, v in s["cluster_sizes"].items())
        lines.append(f"  cluster sizes: {sizes}")
    if s["model"] is None:
        lines.append("model: none (run `specufex-dask fit`)")
    else:
        m = s["model"]
        lines.append(f"model: {m['n_patterns']} patterns, {m['n_states']} states")
        for key, value in sorted(m["attributes"].items()):
            text = str(value)
            lines.append(f"  {key}: {text if len(text) <= 100 else text[:97] + '...'}")
    lines.append(f"rejected inputs: {len(s['rejected'])}")
    for row in s["rejected"][:20]:
        event = f" (event {row['event']})" if row["event"] else ""
        lines.append(f"  {row['source']}{event}: {row['reason']}")
    if len(s["rejected"]) > 20:
        lines.append(f"  ... and {len(s['rejected']) - 20} more")
    if s["configuration"] is not None:
        commands = [entry["command"] for entry in s["configuration"].get("history", [])]
        lines.append(f"configuration stored in {CONFIG_ATTR!r}; commands: {', '.join(commands)}")
    return lines


def cmd_cluster(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """k-means on the fingerprints; store the labels as ``cluster``."""
    result = run_clustering(args.archive, config, reporter)
    labels = np.asarray(result.labels.values)
    clusters, counts = np.unique(labels, return_counts=True)
    transform = result.labels.attrs["transform"]
    print(
        f"{labels.size} events in {clusters.size} clusters ({transform} fingerprints, "
        f"inertia {result.inertia:.6g})"
    )
    for cluster, count in zip(clusters, counts, strict=True):
        print(f"  cluster {cluster}: {_plural(count, 'event')}")
    return 0


def run_clustering(archive: str | Path, config: Config, reporter: Reporter):
    from specufex_dask.analysis.clustering import cluster_fingerprints

    dataset = _open_archive(archive)
    if "fingerprint" not in dataset.variables:
        raise CommandError(
            f"{archive} has no fingerprints yet; run `specufex-dask transform {archive}` first"
        )
    settings = config.clustering
    reporter.say(
        f"k-means: {settings.n_clusters} clusters on the {settings.transform} fingerprints"
        + (f" ({settings.pca_components} principal components)" if settings.pca_components else "")
        + f", seed {settings.random_state}"
    )
    result = cluster_fingerprints(
        dataset["fingerprint"],
        settings.n_clusters,
        pca_components=settings.pca_components,
        transform=settings.transform,
        random_state=settings.random_state,
        n_init=settings.n_init,
    )
    dataset.close()
    write_event_variable(archive, result.labels)
    record_configuration(archive, config, ["clustering"], "cluster")
    return result


def cmd_plot(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Write the figures of an archive as PNG files."""
    for path in make_figures(args.archive, args.outdir, config, reporter):
        print(path)
    return 0


def make_figures(
    archive: str | Path, outdir: str | Path, config: Config, reporter: Reporter
) -> list[Path]:
    """Draw every figure the archive's contents allow; return the files written."""
    from specufex_dask.analysis import plot

    dataset = _open_archive(archive)
    model = _open_model(archive)
    events = plot.select_events(dataset, config.plot.events, config.plot.n_events)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Callable[[], Any]]] = []
    fitted = json.loads(dataset.attrs.get(CONFIG_ATTR, "{}")).get("nmf", {})
    if model is not None and {"EW", "EA"} <= set(model.data_vars):
        figures.append(
            (
                "nmf_dictionary",
                lambda: plot.plot_dictionary(
                    model, dataset["frequency"], initial_patterns=fitted.get("num_pat")
                ),
            )
        )
    if model is not None and "EB" in model.data_vars:
        occupancy = None
        if "state_probability" in dataset.variables:
            from specufex_dask.inference.diagnostics import state_occupancy

            occupancy = state_occupancy(dataset["state_probability"].values)
        figures.append(("hmm_emission", lambda: plot.plot_emission(model, occupancy)))
    for event in events:
        figures.append((f"event_{_safe_name(event)}", lambda e=event: plot.plot_event(dataset, e)))
    if "fingerprint" in dataset.variables:
        fingerprint = dataset["fingerprint"]
        if "cluster" in dataset.variables:
            fingerprint = fingerprint.assign_coords(cluster=dataset["cluster"])
        figures.append(("fingerprints", lambda: plot.plot_fingerprints(fingerprint, events)))
    if {"cluster", "fingerprint"} <= set(dataset.variables):
        figures.append(("clusters", lambda: plot.plot_cluster_summary(dataset)))
    if "cluster" in dataset.variables and plot.continuous_windows(dataset):
        figures.append(("cluster_timeline", lambda: plot.plot_cluster_timeline(dataset)))
    written = []
    for name, draw in figures:
        path = outdir / f"{name}.png"
        figure = draw()
        figure.savefig(path, dpi=config.plot.dpi)
        written.append(path)
        reporter.say(f"wrote {path}")
    missing = [
        what
        for what, present in (
            ("model (run fit)", model is not None),
            ("fingerprints (run transform)", "fingerprint" in dataset.variables),
            ("cluster labels (run cluster)", "cluster" in dataset.variables),
        )
        if not present
    ]
    if missing:
        reporter.say(f"not drawn, the archive has no {', no '.join(missing)}")
    return written


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _safe_name(event: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in event)


def _spectrogram_parameters(config: Config):
    from specufex_dask.ingest.preprocessing import SpectrogramParameters

    return SpectrogramParameters(**config.spectrograms.parameters())


def _chunk_events(config: Config) -> dict[str, int]:
    chunk = config.spectrograms.events_per_chunk
    return {} if chunk is None else {"chunk_events": chunk}


def _ingest_from_args(args: argparse.Namespace, config: Config, reporter: Reporter, client: Any):
    """Run the ingest that ``spectrograms`` asks for; return its IngestReport."""
    import specufex_dask.ingest as ingest_module

    options: dict[str, Any] = {
        "client": client,
        "append": args.append,
        "overwrite": args.overwrite,
        "format": args.format,
        "dtype": np.dtype(args.dtype),
        **_chunk_events(config),
    }
    select = {key: getattr(args, key) for key in ("station", "channel") if getattr(args, key)}
    if select:
        options["select"] = select
    params = _spectrogram_parameters(config)
    if args.catalog is not None:
        if args.sources:
            raise CommandError(
                "give waveform SOURCES or --catalog, not both (with --catalog, use "
                "--waveform-dir for the folder of the files it names)"
            )
        reporter.say(f"ingesting the events of catalog {args.catalog}")
        return ingest_module.ingest_catalog(
            args.catalog,
            args.output,
            params,
            waveform_dir=args.waveform_dir,
            event_column=args.event_column,
            file_column=args.file_column,
            starttime_column=args.starttime_column,
            **options,
        )
    if not args.sources:
        raise CommandError("no waveforms given: name files, folders or globs, or use --catalog")
    if args.waveform_dir is not None:
        raise CommandError("--waveform-dir is used with --catalog only")
    files = ingest_module.expand_sources(args.sources)
    reporter.say(f"ingesting {len(files)} waveform files")
    return ingest_module.ingest_waveforms(files, args.output, params, **options)


def _report_ingest(report, reporter: Reporter) -> None:
    print(report.summary())
    for row in report.rejected[:20]:
        event = f" (event {row.event})" if row.event else ""
        reporter.say(f"  rejected {row.source}{event}: {row.reason}")
    if report.n_rejected > 20:
        reporter.say(f"  ... {report.n_rejected - 20} more; see `specufex-dask info`")


def cmd_spectrograms(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Waveform files to a spectrogram archive."""
    with dask_client(config, reporter) as client:
        report = _ingest_from_args(args, config, reporter, client)
    record_configuration(report.path, config, ["spectrograms"], "spectrograms")
    _report_ingest(report, reporter)
    return 0


def cmd_import_h5(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """SpecUFEx workflow HDF5 file to an archive."""
    from specufex_dask.io.h5import import import_specufex_h5

    path = import_specufex_h5(
        args.h5file,
        args.archive,
        overwrite=args.overwrite,
        include_outputs=not args.spectrograms_only,
        **_chunk_events(config),
    )
    record_configuration(path, config, ["spectrograms"], "import-h5")
    dataset = _open_archive(path)
    outputs = [name for name in OUTPUT_VARIABLES if name in dataset.variables]
    print(
        f"imported {dataset.sizes['event']} events from {args.h5file} into {path}"
        + (f" with {', '.join(outputs)}" if outputs else "")
    )
    return 0


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
    )


def _fit(archive: str | Path, config: Config, reporter: Reporter, client: Any, resume: bool):
    model = make_pipeline(config, client, reporter)

    def most(steps: int | None) -> str:
        return "steps auto" if steps is None else f"at most {steps} steps"

    tol = "no early stop" if config.nmf.tol is None else f"tol {config.nmf.tol:g}"
    reporter.say(
        f"fitting NMF ({config.nmf.num_pat} patterns, {most(config.nmf.steps)}) and HMM "
        f"({config.hmm.num_state} states, {most(config.hmm.steps)}), {tol}, on {archive}"
    )
    model.fit(str(archive), resume=resume)
    record_configuration(archive, config, ["nmf", "hmm", "fit", "cluster"], "fit")
    return model


def _transform(
    archive: str | Path, model: Any, reporter: Reporter, config: Config, resume: bool
) -> None:
    reporter.say(f"transforming every event of {archive}")
    model.transform_to_zarr(str(archive), resume=resume)
    record_configuration(archive, config, ["cluster"], "transform")


def _fitted_summary(model: Any) -> str:
    nmf, hmm = getattr(model, "nmf_", None), getattr(model, "hmm_", None)
    n_steps, converged = getattr(model, "n_steps_", {}), getattr(model, "converged_", {})

    def steps(stage: str) -> str:
        if stage not in n_steps:
            return ""
        stopped = ", converged" if converged.get(stage) else ""
        return f" ({_plural(n_steps[stage], 'step')}{stopped})"

    parts = []
    if nmf is not None:
        parts.append(f"NMF dictionary of {_plural(nmf.num_pat, 'pattern')}{steps('nmf')}")
    if hmm is not None:
        parts.append(f"HMM of {_plural(hmm.num_state, 'state')}{steps('hmm')}")
    return "; ".join(parts)


def cmd_fit(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Fit the NMF dictionary and the HMM; store the model in the archive."""
    _open_archive(args.archive).close()
    with dask_client(config, reporter) as client:
        model = _fit(args.archive, config, reporter, client, args.resume)
    print(f"fitted {args.archive}: {_fitted_summary(model)}")
    return 0


def cmd_transform(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Write activations, state probabilities, transitions and fingerprints."""
    from specufex_dask.pipeline import SpecUFEx

    _open_archive(args.archive).close()
    if _open_model(args.archive) is None:
        raise CommandError(
            f"{args.archive} holds no fitted model; run `specufex-dask fit {args.archive}` first"
        )
    with dask_client(config, reporter) as client:
        model = SpecUFEx.from_archive(str(args.archive))
        model.client = client
        model.progress = reporter.progress
        _transform(args.archive, model, reporter, config, args.resume)
    print(f"transformed {args.archive}")
    return 0


def cmd_run(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Fit, then transform."""
    _open_archive(args.archive).close()
    with dask_client(config, reporter) as client:
        model = _fit(args.archive, config, reporter, client, args.resume)
        _transform(args.archive, model, reporter, config, False)
    print(f"fitted and transformed {args.archive}: {_fitted_summary(model)}")
    return 0


def demo_data_dir() -> Path:
    """The bundled BAV events (miniSEED files and catalog.csv)."""
    from importlib.resources import files

    return Path(str(files("specufex_dask") / "data" / "bav_ncsn_1984"))


def demo_continuous_file() -> Path:
    """The bundled 40 minutes of BW.KW1..EHZ (miniSEED; see its folder's README.md)."""
    from importlib.resources import files

    folder = files("specufex_dask") / "data" / "kw1_obspy"
    return Path(str(folder / "BW.KW1..EHZ.D.2011.090.002800.mseed"))


def cmd_demo(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """The whole pipeline on the bundled BAV events and KW1 windows."""
    outdir = Path(args.outdir)
    archive = outdir / DEMO_ARCHIVE
    if archive.exists() and not args.overwrite:
        raise CommandError(f"{archive} already exists; pass --overwrite to replace it")
    outdir.mkdir(parents=True, exist_ok=True)
    with dask_client(config, reporter) as client:
        from specufex_dask.ingest.driver import ingest_catalog, ingest_continuous

        data, record = demo_data_dir(), demo_continuous_file()
        params = _spectrogram_parameters(config)
        reporter.say(f"ingesting the BAV events of {data}")
        report = ingest_catalog(
            data / "catalog.csv",
            archive,
            params,
            waveform_dir=data / "waveforms",
            client=client,
            overwrite=args.overwrite,
            **_chunk_events(config),
        )
        _report_ingest(report, reporter)
        reporter.say(
            f"ingesting {record.name} in {DEMO_WINDOW_S:g} s windows every {DEMO_STEP_S:g} s"
        )
        report = ingest_continuous(
            record,
            archive,
            DEMO_WINDOW_S,
            DEMO_STEP_S,
            params,
            client=client,
            append=True,
            **_chunk_events(config),
        )
        _report_ingest(report, reporter)
        record_configuration(archive, config, ["spectrograms"], "spectrograms")
        model = _fit(archive, config, reporter, client, False)
        print(_fitted_summary(model))
        _transform(archive, model, reporter, config, False)
    run_clustering(archive, config, reporter)
    summary = demo_summary(archive, config)
    for line in summary["lines"]:
        print(line)
    # Event figures (and fingerprints side by side): each cluster's most typical member
    # and a BAV earthquake (demo_events), unless events were named.
    if config.plot.events is None:
        plot_settings = dataclasses.replace(config.plot, events=summary["representatives"])
        config = dataclasses.replace(config, plot=plot_settings)
    figures = make_figures(archive, outdir / DEMO_FIGURES, config, reporter)
    print(f"archive: {archive}")
    print(f"figures: {len(figures)} PNG files in {outdir / DEMO_FIGURES}")
    print(f"next: specufex-dask info {archive}")
    return 0


def demo_events(dataset) -> list[str]:
    """The events the demo draws: each cluster's most typical member, and, for a station
    none of these is from, its most typical member in the cluster holding most of its
    events (the BAV earthquakes, should they share a cluster with more KW1 windows)."""
    from specufex_dask.analysis.clustering import representatives

    stations = np.array([str(station) for station in dataset["station"].values])
    labels = np.asarray(dataset["cluster"].values)
    clusters = list(np.unique(labels))
    per_cluster = representatives(
        dataset["fingerprint"],
        labels,
        dataset["cluster"].attrs.get("transform", "none"),
        count=len(set(stations.tolist())),
        groups=stations,
    )
    station_of = dict(zip(map(str, dataset["event"].values), stations, strict=True))
    shown = [[events[0]] for events in per_cluster]
    for station in sorted(set(stations.tolist())):
        if any(station_of[events[0]] == station for events in per_cluster):
            continue
        home = clusters.index(np.bincount(labels[stations == station]).argmax())
        shown[home] += [e for e in per_cluster[home] if station_of[e] == station][:1]
    return [event for events in shown for event in events]


def demo_summary(archive: str | Path, config: Config) -> dict[str, Any]:
    """The numbers the demo reports: events per station, patterns kept of K0, states in
    use, distinct fingerprints, clusters (sizes, stations, how far apart their mean
    fingerprints are) and each cluster's most typical member.

    Returns
    -------
    dict
        ``lines`` (the printed summary), ``representatives`` (the event ids of
        :func:`demo_events`) and the numbers themselves.
    """
    from specufex_dask.analysis.clustering import cluster_separation, shuffled_separation
    from specufex_dask.inference.diagnostics import distinct_fraction, states_in_use

    dataset = _open_archive(archive)
    model = _open_model(archive)
    stations = np.array([str(station) for station in dataset["station"].values])
    labels = np.asarray(dataset["cluster"].values)
    fingerprint = np.asarray(dataset["fingerprint"].values)
    n_events = labels.size
    n_patterns = int(model.sizes["pattern"])
    n_states = int(dataset.sizes["state"])
    in_use = states_in_use(dataset["state_probability"].values)
    n_distinct = round(distinct_fraction(fingerprint) * n_events)
    pairs = np.triu_indices(len(np.unique(labels)), 1)
    separation = cluster_separation(fingerprint, labels)[pairs]
    baseline = shuffled_separation(fingerprint, labels)
    representatives = demo_events(dataset)
    dataset.close()

    def by_station(mask: np.ndarray) -> str:
        names, counts = np.unique(stations[mask], return_counts=True)
        return ", ".join(f"{count} {name}" for name, count in zip(names, counts, strict=True))

    clusters, sizes = np.unique(labels, return_counts=True)
    lines = [
        f"events: {n_events} ({by_station(np.ones(n_events, bool))}; KW1: "
        f"{DEMO_WINDOW_S:g} s windows every {DEMO_STEP_S:g} s)",
        f"NMF patterns kept: {n_patterns} of {config.nmf.num_pat}",
        f"HMM states in use (>= 1 % of all frames): {in_use} of {n_states}",
        f"distinct fingerprints: {n_distinct} of {n_events}",
        f"clusters (k-means on the {config.clustering.transform} fingerprints):",
        *(
            f"  cluster {cluster}: {_plural(size, 'event')} ({by_station(labels == cluster)})"
            for cluster, size in zip(clusters, sizes, strict=True)
        ),
        "clusters' mean fingerprints differ: Hellinger distance between their transition "
        f"distributions {separation.min():.2f} to {separation.max():.2f} (0 = equal, "
        "1 = disjoint; the closest two of shuffled clusters of the same sizes: "
        f"<= {baseline:.2f})",
    ]
    return {
        "lines": lines,
        "n_events": n_events,
        "n_patterns": n_patterns,
        "n_states_in_use": in_use,
        "n_distinct": n_distinct,
        "cluster_sizes": dict(zip(clusters.tolist(), sizes.tolist(), strict=True)),
        "separation": separation,
        "shuffled_separation": baseline,
        "representatives": representatives,
    }


# ----------------------------------------------------------------------------- parser


def _wrap(text: str, width: int = 88) -> str:
    """Fill each paragraph of ``text``; paragraphs starting with "examples:" stay as written."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        paragraph if paragraph.startswith("examples:") else textwrap.fill(paragraph, width)
        for paragraph in paragraphs
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``specufex-dask`` with all its subcommands."""
    defaults = Config()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_wrap(
            "SpecUFEx on Dask: unsupervised fingerprints of seismic spectrograms "
            "(Bayesian NMF + HMM) stored in a Zarr archive. Run `specufex-dask COMMAND "
            "--help` for the options of each command."
        ),
        epilog="first try: specufex-dask demo demo-output",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    general = common.add_argument_group("general options")
    general.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with sections spectrograms, nmf, hmm, fit, clustering, plot, "
        "cluster; flags override it",
    )
    general.add_argument("--quiet", action="store_true", help="print no progress")
    general.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, summary: str, description: str, handler) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(
            name,
            parents=[common],
            help=summary,
            description=_wrap(description),
            formatter_class=formatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    spectrograms = add(
        "spectrograms",
        "waveform files -> spectrogram archive",
        "Compute the spectrogram of every waveform file (one event per file) and write "
        "them into a new archive, in parallel on Dask. Each waveform is demeaned, "
        "optionally divided by its peak, cut to --n-samples, turned into a magnitude "
        "spectrogram, cut to [--fmin, --fmax], divided by its median and converted to dB "
        "(clipped at 0). Files that cannot be read or processed are left out and listed in "
        "the archive (see `specufex-dask info`). Needs ObsPy: "
        'pip install "specufex-dask[obspy]".\n\n'
        "examples:\n"
        "  specufex-dask spectrograms waveforms/ -o events.zarr --fs 100 --nfft 2000 "
        "--fmin 8 --fmax 20\n"
        "  specufex-dask spectrograms --catalog catalog.csv -o events.zarr --config run.yaml",
        cmd_spectrograms,
    )
    spectrograms.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="waveform files, folders (their files) or quoted glob patterns",
    )
    spectrograms.add_argument(
        "-o", "--output", required=True, metavar="ARCHIVE", help="archive to write"
    )
    inputs = spectrograms.add_argument_group("inputs")
    inputs.add_argument(
        "--catalog",
        metavar="CSV",
        help="CSV table of events (columns event/ev_ID and file/filename), in place of SOURCE",
    )
    inputs.add_argument(
        "--waveform-dir",
        metavar="DIR",
        help="folder of the catalog's file names (default: the catalog's folder)",
    )
    inputs.add_argument("--event-column", metavar="NAME", help="catalog column of event ids")
    inputs.add_argument("--file-column", metavar="NAME", help="catalog column of file names")
    inputs.add_argument(
        "--starttime-column",
        metavar="NAME",
        help="catalog column of start times (ISO 8601) where each waveform is cut",
    )
    inputs.add_argument("--station", metavar="CODE", help="read only this station's traces")
    inputs.add_argument("--channel", metavar="CODE", help="read only this channel (e.g. EHZ)")
    inputs.add_argument("--format", metavar="FORMAT", help="ObsPy format (default: detected)")
    output = spectrograms.add_argument_group("archive")
    output.add_argument(
        "--append", action="store_true", help="add the events to an existing archive"
    )
    output.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    output.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the stored spectrograms (default: float64)",
    )
    _add_flags(spectrograms, "spectrogram settings", SPECTROGRAM_FLAGS, defaults)
    _add_flags(spectrograms, "Dask cluster", DASK_FLAGS, defaults)

    import_h5 = add(
        "import-h5",
        "SpecUFEx HDF5 file -> archive",
        "Convert a SpecUFEx workflow HDF5 file (spectrograms/transformed_spectrograms, "
        "fSTFT, tSTFT and, when present, ACM, STM, As and fingerprints) into an archive. "
        "Values are copied unchanged.",
        cmd_import_h5,
    )
    import_h5.add_argument("h5file", metavar="H5FILE", help="SpecUFEx workflow HDF5 file")
    import_h5.add_argument("archive", metavar="ARCHIVE", help="archive to write")
    import_h5.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    import_h5.add_argument(
        "--spectrograms-only",
        action="store_true",
        help="leave out the ACM, STM, As and fingerprint outputs of the file",
    )
    _add_flags(
        import_h5,
        "archive",
        [f for f in SPECTROGRAM_FLAGS if f.key == "events_per_chunk"],
        defaults,
    )

    fit_help = (
        "The archive's spectrograms are read chunk by chunk on the Dask cluster; the "
        "model (NMF dictionary EW, pattern weights EA, HMM emissions EB and the variational "
        "parameters) and checkpoints are written into ARCHIVE/model."
    )
    fit = add(
        "fit",
        "fit the NMF dictionary and the HMM",
        "Fit the Bayesian nonparametric NMF (patterns unused by the data are pruned) and "
        "then the Bayesian HMM on its activations, by stochastic variational inference. "
        + fit_help,
        cmd_fit,
    )
    fit.add_argument("archive", metavar="ARCHIVE", help="archive with spectrograms")
    fit.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in ARCHIVE"
    )
    _add_flags(fit, "NMF", NMF_FLAGS, defaults)
    _add_flags(fit, "HMM", HMM_FLAGS, defaults)
    _add_flags(fit, "fit", FIT_FLAGS, defaults)
    _add_flags(fit, "Dask cluster", DASK_FLAGS, defaults)

    transform = add(
        "transform",
        "activations, state probabilities, fingerprints",
        "With the fitted model of ARCHIVE, compute for every event the NMF activations "
        "(activation), the HMM state probabilities (state_probability), the expected "
        "transition matrix (transition) and the fingerprint (fingerprint), and write them "
        "into ARCHIVE, chunk by chunk.",
        cmd_transform,
    )
    transform.add_argument("archive", metavar="ARCHIVE", help="archive with a fitted model")
    transform.add_argument(
        "--resume", action="store_true", help="skip chunks an interrupted run already wrote"
    )
    _add_flags(transform, "Dask cluster", DASK_FLAGS, defaults)

    run = add(
        "run",
        "fit, then transform",
        "Fit the model (as `fit`), then transform every event (as `transform`). " + fit_help,
        cmd_run,
    )
    run.add_argument("archive", metavar="ARCHIVE", help="archive with spectrograms")
    run.add_argument(
        "--resume", action="store_true", help="continue the fit from the last checkpoint"
    )
    _add_flags(run, "NMF", NMF_FLAGS, defaults)
    _add_flags(run, "HMM", HMM_FLAGS, defaults)
    _add_flags(run, "fit", FIT_FLAGS, defaults)
    _add_flags(run, "Dask cluster", DASK_FLAGS, defaults)

    info = add(
        "info",
        "what an archive holds",
        "Print the size and chunking of an archive, the preprocessing parameters, which "
        "outputs exist, the model summary, the rejected inputs and the stored "
        "configuration.",
        cmd_info,
    )
    info.add_argument("archive", metavar="ARCHIVE", help="archive (Zarr directory)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    cluster = add(
        "cluster",
        "k-means on the fingerprints",
        "Group the events by k-means on their fingerprints (transformed, optionally after "
        "PCA) and store the labels in the archive as the variable `cluster` (event), with "
        "the settings, the transform included, in its attributes. The default transform, "
        "hellinger (F[i,j] / sqrt(|F[i,:]|), the square root of the joint distribution of "
        "consecutive states), is the one that separated planted waveform classes best in "
        "the fidelity benchmark: k-means adjusted Rand index 0.93 against 0.55 for the raw "
        "fingerprints (--transform none) at the easy level, 0.52-0.73 against 0.36 at "
        'medium. Needs scikit-learn: pip install "specufex-dask[cluster]".',
        cmd_cluster,
    )
    cluster.add_argument("archive", metavar="ARCHIVE", help="archive with fingerprints")
    _add_flags(cluster, "clustering", CLUSTERING_FLAGS, defaults)

    plot = add(
        "plot",
        "PNG figures of an archive",
        "Write PNG figures into OUTDIR: the NMF dictionary EW against frequency with the "
        "pattern weights EA, the HMM emission matrix EB, for each chosen event its "
        "spectrogram, activations and state sequence over time, fingerprint matrices, and "
        "a cluster summary. Figures whose data the archive lacks are skipped. Needs "
        'matplotlib: pip install "specufex-dask[plot]".',
        cmd_plot,
    )
    plot.add_argument("archive", metavar="ARCHIVE", help="archive (Zarr directory)")
    plot.add_argument("outdir", metavar="OUTDIR", help="folder for the PNG files (created)")
    _add_flags(plot, "figures", PLOT_FLAGS, defaults)

    demo_defaults = merge_config(defaults, DEMO_SETTINGS, source="the demo settings")
    spectrograms_demo = DEMO_SETTINGS["spectrograms"]
    demo = add(
        "demo",
        "the whole pipeline on bundled real data",
        "Run everything on data that ship with specufex-dask, on a local Dask cluster, "
        "without network: the 10 earthquakes of NCSN station BAV (1984, 20 s each) and "
        "40 minutes of the continuous record of BW.KW1..EHZ (2011, from ObsPy's test data) "
        f"cut into {DEMO_WINDOW_S:g} s windows every {DEMO_STEP_S:g} s, in one archive. "
        f"Spectrograms ({spectrograms_demo['fs']:g} Hz, {spectrograms_demo['window_s']:g} s "
        f"segments, overlap {spectrograms_demo['overlap']:g}, nfft "
        f"{spectrograms_demo['nfft']}, {spectrograms_demo['fmin']:g}-"
        f"{spectrograms_demo['fmax']:g} Hz), fit, transform, k-means clusters and figures; "
        "the summary gives the patterns kept, the states in use and the cluster sizes. "
        f"Writes OUTDIR/{DEMO_ARCHIVE} and OUTDIR/{DEMO_FIGURES}/*.png. Defaults below are "
        "the demo's own; --config and flags override them. Needs the obspy, plot and "
        "cluster extras.",
        cmd_demo,
    )
    demo.set_defaults(base_settings=DEMO_SETTINGS)
    demo.add_argument("outdir", metavar="OUTDIR", help="folder for the archive and figures")
    demo.add_argument(
        "--overwrite", action="store_true", help=f"replace an existing OUTDIR/{DEMO_ARCHIVE}"
    )
    _add_flags(demo, "NMF", NMF_FLAGS, demo_defaults)
    _add_flags(demo, "HMM", HMM_FLAGS, demo_defaults)
    _add_flags(demo, "fit", FIT_FLAGS, demo_defaults)
    _add_flags(
        demo, "clustering", [f for f in CLUSTERING_FLAGS if f.key != "random_state"], demo_defaults
    )
    _add_flags(demo, "Dask cluster", DASK_FLAGS, demo_defaults)
    return parser


# ----------------------------------------------------------------------------- main


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, (KeyError,)) and text.startswith("'"):
        text = f"missing {text}"
    return " ".join(text.split())


def _configure_logging(debug: bool, quiet: bool) -> None:
    """Warnings and errors on stderr (errors only with --quiet; everything with --debug)."""
    threshold = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s"))
    # distributed sets its loggers to INFO when imported (after this runs), so the level
    # is enforced by the handler, not by the loggers.
    handler.addFilter(lambda record: record.levelno >= threshold)
    handler.set_name(f"{PROG} stderr")
    root = logging.getLogger()
    # main() may run several times in one process (tests, notebooks): one handler only.
    for old in [h for h in root.handlers if h.get_name() == handler.get_name()]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        ignore_zarr_warnings()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 success, 1 error, 2 usage, 130 ^C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug, args.quiet)
    reporter = Reporter(quiet=args.quiet)
    try:
        config = effective_config(args)
        return int(args.handler(args, config, reporter) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, CommandError, Exception) as error:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 1
