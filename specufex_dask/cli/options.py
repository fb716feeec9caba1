"""The command line's options that set configuration keys, each declared once.

Every option is one :class:`Flag`: its option strings, the configuration key it overrides,
its type and help; its default is that of the key in :class:`Config` (or in a command's
own settings, as for ``demo``) and is shown in the help. The tables below are grouped by
configuration section, and :data:`FIT_OPTIONS` and :data:`TRANSFORM_OPTIONS` say which
groups ``fit``, ``run`` and ``transform`` take. :func:`effective_config` layers the
defaults, ``--config`` and the flags given.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from specufex_dask.analysis.clustering import FEATURE_TRANSFORMS
from specufex_dask.cli.config import Config, load_config, merge_config
from specufex_dask.io.archive import DEFAULT_CHUNK_EVENTS

__all__ = [
    "CLUSTERING_FLAGS",
    "DASK_FLAGS",
    "FIT_FLAGS",
    "FIT_OPTIONS",
    "HMM_FLAGS",
    "NMF_FLAGS",
    "PLOT_FLAGS",
    "SPECTROGRAM_FLAGS",
    "TRANSFORM_OPTIONS",
    "Flag",
    "add_flags",
    "add_options",
    "effective_config",
    "flag_overrides",
]


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


def _keyword_or(
    convert: Callable[[str], Any], keywords: tuple[str, ...], keyword_value: Any, expected: str
) -> Callable[[str], Any]:
    """``convert``, with any of ``keywords`` (any case) standing for ``keyword_value``; a
    text that is neither is refused naming what was ``expected``."""

    def parse(text: str) -> Any:
        if text.strip().lower() in keywords:
            return keyword_value
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return parse


# A number, or "none" for no value.
_optional_float = _keyword_or(float, ("none", "null"), None, "a number or 'none'")
# A number of steps, or "auto" for the automatic budget.
_step_budget = _keyword_or(int, ("auto", "none", "null"), None, "an integer or 'auto'")
# A number of spectrograms, or "auto".
_batch_size = _keyword_or(int, ("auto",), "auto", "an integer or 'auto'")
# A number of steps between checkpoints, or "auto".
_checkpoint_every = _keyword_or(int, ("auto",), "auto", "an integer or 'auto'")


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert``, with "none" (or "null") for None: a flag whose key defaults to None
    can set it back to None over a ``--config`` file."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse's "invalid int value"
    return parse


AUTO_STEPS = "auto: 3 passes over the events, at least 1000"


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
        ("--detrend",),
        "spectrograms",
        "detrend",
        "detrend each waveform first (ObsPy Trace.detrend): linear, demean or simple",
        str,
        "KIND",
        default_text="off",
    ),
    Flag(
        ("--taper",),
        "spectrograms",
        "taper",
        "Hann taper of this fraction of each waveform at each end, in (0, 0.5]",
        float,
        "FRACTION",
        default_text="off",
    ),
    Flag(
        ("--bandpass-fmin",),
        "spectrograms",
        "bandpass_fmin",
        "lower corner of a Butterworth band-pass of each waveform, Hz (with --bandpass-fmax)",
        float,
        "HZ",
        default_text="off",
    ),
    Flag(
        ("--bandpass-fmax",),
        "spectrograms",
        "bandpass_fmax",
        "upper corner of the band-pass, Hz",
        float,
        "HZ",
        default_text="off",
    ),
    Flag(
        ("--bandpass-corners",),
        "spectrograms",
        "bandpass_corners",
        "corners of the band-pass",
        int,
        "N",
    ),
    Flag(
        ("--remove-response",),
        "spectrograms",
        "remove_response",
        "StationXML whose instrument responses are removed from each waveform",
        str,
        "STATIONXML",
        default_text="off",
    ),
    Flag(
        ("--response-output",),
        "spectrograms",
        "response_output",
        "ground motion after the response removal",
        str,
        "UNIT",
        choices=("VEL", "DISP", "ACC"),
    ),
    Flag(
        ("--events-per-chunk",),
        "spectrograms",
        "events_per_chunk",
        "events per ingest task and per Zarr chunk of imported outputs (new archives "
        "store the spectrograms in shards of 256 one-event chunks)",
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
    Flag(
        ("--batch-size",),
        "nmf",
        "batch_size",
        "spectrograms per SVI step, or 'auto'",
        _batch_size,
        "N",
    ),
    Flag(
        ("--tol",),
        "nmf",
        "tol",
        "stop a stage before its most steps once the window-mean ELBO changes by less than "
        "TOL relative or than its noise, and the live patterns (HMM: states in use, on "
        "average) held still over the window; 'none' runs every step",
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
        "SVI steps between checkpoints written into the archive, or 'auto' (every 10 "
        "steps once 30 s have passed since the last)",
        _checkpoint_every,
        "N",
    ),
)


def _cluster_counts(text: str) -> int | list[int]:
    """A number of clusters ("4") or a range to sweep ("2-10", both ends included)."""
    low, dash, high = text.strip().partition("-")
    try:
        if not dash:
            return int(low)
        counts = list(range(int(low), int(high) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of clusters or a range like 2-10, got {text!r}"
        ) from None
    if len(counts) < 2:
        raise argparse.ArgumentTypeError(f"the range {text!r} holds fewer than two values")
    return counts


CLUSTERING_FLAGS = (
    Flag(
        ("--n-clusters",),
        "clustering",
        "n_clusters",
        "number of clusters, or a range KMIN-KMAX to sweep: every K is fitted and the one "
        "with the largest mean silhouette over --silhouette-sample events is kept",
        _cluster_counts,
        "K|KMIN-KMAX",
    ),
    Flag(
        ("--method",),
        "clustering",
        "method",
        "spectral clustering of the events' nearest-neighbour graph (built on at most "
        "5000 seeded events, the others taking their neighbours' majority label), "
        "k-means, or Ward's hierarchical clustering (its tree built on at most 5000 "
        "seeded events, the others joining the nearest Ward centroid)",
        str,
        "{spectral,kmeans,ward}",
    ),
    Flag(
        ("--n-neighbors",),
        "clustering",
        "n_neighbors",
        "neighbours of each event in the graph of spectral clustering",
        int,
        "N",
    ),
    Flag(
        ("--pca-variance",),
        "clustering",
        "pca_variance",
        "cluster on the fewest principal components that explain this fraction of the "
        "variance (not with --pca-components)",
        float,
        "FRACTION",
        default_text="no PCA",
    ),
    Flag(
        ("--scale",),
        "clustering",
        "scale",
        "standardise every feature (mean 0, variance 1) before PCA and clustering",
        None,
    ),
    Flag(
        ("--silhouette-sample",),
        "clustering",
        "silhouette_sample",
        "events the mean silhouette of a sweep is computed on, and the reference events of "
        "the per-event silhouettes (exact up to this many events; with 5000 references the "
        "per-event error was 0.002 on average and at most 0.01 in the clustering benchmark)",
        int,
        "N",
    ),
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
        "seed of the PCA, the k-means initialisation, the spectral embedding and every sample",
        int,
        "N",
    ),
    Flag(("--n-init",), "clustering", "n_init", "k-means restarts; the best is kept", int, "N"),
    Flag(
        ("--transform",),
        "clustering",
        "transform",
        "transform of the fingerprints before PCA and k-means: 'idf' (the 'hellinger' rows "
        "with each transition weighted by its inverse event frequency, at unit length), "
        "'hellinger' (the square root of each event's joint distribution of consecutive "
        "states), 'sqrt' (of every entry) or 'none' (the raw fingerprints)",
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
        "dask",
        "scheduler",
        "address of a running Dask scheduler (tcp://host:8786); no cluster is started",
        str,
        "ADDRESS",
        default_text="start a cluster",
    ),
    Flag(
        ("--cluster",),
        "dask",
        "kind",
        "cluster to start when no --scheduler is given; slurm and pbs need dask-jobqueue "
        "and the 'dask: jobqueue:' settings of a --config file",
        str,
        None,
        ("local", "slurm", "pbs"),
    ),
    Flag(
        ("--workers",),
        "dask",
        "workers",
        "worker processes (local) or workers to request (slurm, pbs)",
        int,
        "N",
        default_text="chosen by Dask from the CPU count",
    ),
    Flag(
        ("--threads-per-worker",),
        "dask",
        "threads_per_worker",
        "threads in each local worker",
        int,
        "N",
        default_text="chosen by Dask",
    ),
    Flag(
        ("--memory-limit",),
        "dask",
        "memory_limit",
        "memory limit of each local worker, e.g. 4GB",
        str,
        "SIZE",
        default_text="Dask's share of the machine's memory",
    ),
    Flag(
        ("--dashboard-address",),
        "dask",
        "dashboard_address",
        "where a started scheduler serves its dashboard; a busy port falls back to a free one",
        str,
        "HOST:PORT",
    ),
    Flag(
        ("--no-worker-timeout",),
        "dask",
        "no_worker_timeout",
        "seconds a fit or transform waits while the cluster has no worker before it fails "
        "(go on with --resume); 'none' waits for ever",
        _optional_float,
        "S",
    ),
)


OptionGroups = tuple[tuple[str, Sequence[Flag]], ...]
"""Help-section titles, each with the flags listed under it."""

FIT_OPTIONS: OptionGroups = (
    ("NMF", NMF_FLAGS),
    ("HMM", HMM_FLAGS),
    ("fit", FIT_FLAGS),
    ("Dask cluster", DASK_FLAGS),
)
"""The configuration options of ``fit`` and ``run`` (``demo`` takes them too)."""

TRANSFORM_OPTIONS: OptionGroups = (("Dask cluster", DASK_FLAGS),)
"""The configuration options of ``transform``: the Dask cluster of ``FIT_OPTIONS``."""


def describe_default(value: Any) -> str:
    """A default value as the help shows it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)) and not value:
        return "none"
    return str(value)


def add_flags(
    parser: argparse.ArgumentParser, title: str, flags: Sequence[Flag], defaults: Config
) -> None:
    """Add ``flags`` to ``parser`` under the help section ``title``; the help gives each
    flag's default in ``defaults`` and its configuration key."""
    group = parser.add_argument_group(title)
    for flag in flags:
        default = getattr(getattr(defaults, flag.section), flag.key)
        described = describe_default(default)
        if default is None and flag.default_text is not None:
            described = flag.default_text
        convert, text = flag.type, flag.help
        if default is None and convert not in (None, _optional_float, _step_budget):
            convert, text = _none_or(convert), f"{text}; 'none' gives the default"
        help_text = f"{text} (default: {described}; config: {flag.dest})"
        help_text = help_text.replace("%", "%%")
        # A flag left out sets nothing (SUPPRESS), so that a value of None given on the
        # command line ("--tol none") reaches the configuration.
        if convert is None:  # no converter: an on/off switch
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
                type=convert,
                metavar=flag.metavar,
                choices=flag.choices,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def add_options(parser: argparse.ArgumentParser, groups: OptionGroups, defaults: Config) -> None:
    """Add every group of flags of ``groups`` (e.g. :data:`FIT_OPTIONS`) to ``parser``."""
    for title, flags in groups:
        add_flags(parser, title, flags, defaults)


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
    """Defaults, then the command's own defaults, then ``--config``, then flags.

    A renamed section of the ``--config`` file (``cluster``, now ``dask``) is still read;
    its DeprecationWarning is printed on stderr as ``specufex-dask: warning: ...``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings(
            "always", category=DeprecationWarning, module=re.escape(load_config.__module__)
        )
        config = Config()
        base = getattr(args, "base_settings", None)
        if base:
            config = merge_config(config, base, source=f"the {args.command} defaults")
        if args.config is not None:
            config = load_config(
                args.config, base=config, report=lambda line: print(line, file=sys.stderr)
            )
        config = merge_config(config, flag_overrides(args), source="command-line flags")
    for warning in caught:
        if issubclass(warning.category, DeprecationWarning):
            print(f"specufex-dask: warning: {warning.message}", file=sys.stderr)
        else:  # another warning: shown as it would have been
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return config
