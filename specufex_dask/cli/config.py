"""Configuration of the ``specufex-dask`` command line.

A configuration is a tree of frozen dataclasses whose sections mirror the SpecUFEx
workflows: ``spectrograms`` (waveform preprocessing), ``nmf`` and ``hmm`` (the two fits),
``fit`` (settings shared by both fits), ``clustering`` (clusters of fingerprints),
``plot`` (figures) and ``dask`` (the Dask cluster that does the work; still read under its
old name ``cluster``, with a DeprecationWarning).

Values come from the dataclass defaults, then a YAML file, then command-line flags; each
layer overrides the one before. Every layer is checked the same way: an unknown section or
key, or a value of the wrong type or out of range, raises one :class:`ConfigError` naming
the key (``nmf.num_pat``) and where it came from.

Examples
--------
>>> config = merge_config(Config(), {"nmf": {"num_pat": 30}}, source="flags")
>>> config.nmf.num_pat
30
>>> merge_config(config, {"nmf": {"num_pattern": 30}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
specufex_dask.cli.config.ConfigError: unknown key 'nmf.num_pattern' in overrides; ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from specufex_dask.cli.workflow_config import is_workflow_config, translate
from specufex_dask.inference.params import PIPELINE_PARAMETERS, check_reference_mode
from specufex_dask.ingest.preprocessing import SpectrogramParameters, SpectrogramSettings

__all__ = [
    "ClusterConfig",
    "ClusteringConfig",
    "Config",
    "ConfigError",
    "FitConfig",
    "HMMConfig",
    "NMFConfig",
    "PlotConfig",
    "SpectrogramConfig",
    "config_from_mapping",
    "config_to_json",
    "load_config",
    "merge_config",
]


class ConfigError(ValueError):
    """A configuration file or flag names an unknown key or holds an invalid value."""


# The fit's keys are SpecUFEx's parameters: defaults and rules come from its table.
_FIT = PIPELINE_PARAMETERS
FIT_KEYS = {
    "nmf.num_pat": "num_pat",
    "nmf.steps": "nmf_steps",
    "nmf.batch_size": "batch_size",
    "nmf.tol": "tol",
    "hmm.num_state": "num_state",
    "hmm.steps": "hmm_steps",
    "fit.compat": "compat",
    "fit.random_state": "random_state",
    "fit.checkpoint_every": "checkpoint_every",
    "dask.no_worker_timeout": "no_worker_timeout",
}
"""Configuration keys that are :class:`~specufex_dask.pipeline.SpecUFEx` parameters."""


def _check_fit_keys(section: Any, name: str) -> None:
    """Check the keys of a section that are SpecUFEx parameters by its table's rules."""
    for key, parameter in FIT_KEYS.items():
        section_name, field_name = key.split(".")
        if section_name == name:
            try:
                _FIT[parameter].check(getattr(section, field_name))
            except ValueError as error:
                raise ConfigError(f"invalid value for '{name}.{field_name}': {error}") from None


def _check_fit_value(key: str, value: Any, source: str) -> None:
    """Check a value of a SpecUFEx parameter's key by its table's rule, before its YAML
    type: the same value is refused with the same message as by ``SpecUFEx``."""
    if key not in FIT_KEYS:
        return
    try:
        _FIT[FIT_KEYS[key]].check(value)
    except ValueError as error:
        raise ConfigError(f"invalid value for '{key}': {error} (in {source})") from None


@dataclass(frozen=True)
class SpectrogramConfig(SpectrogramSettings):
    """Waveform preprocessing (ALGORITHM.md section 4).

    The keys are those of :class:`specufex_dask.ingest.preprocessing.SpectrogramParameters`,
    which also checks them, plus ``events_per_chunk`` for the archive layout.

    Attributes
    ----------
    fs : float or None, default=None
        Sampling rate the waveforms must have, in Hz; None takes it from the first good
        waveform and requires the others to match.
    window_s : float, default=1.0
        Length of one spectrogram window, in seconds.
    overlap : float, default=0.25
        Overlap of consecutive windows as a fraction of the window, in [0, 1).
    nfft : int or None, default=None
        FFT length (zero padding beyond the window); None uses the window length.
    fmin, fmax : float or None, default=None
        Frequency band kept, in Hz; None means 0 and the Nyquist frequency.
    normalize_waveform : bool, default=True
        Divide each demeaned waveform by its largest absolute sample.
    n_samples : int or None, default=None
        Samples taken from the start of each waveform (shorter ones are rejected); None
        keeps every sample (all waveforms must then have the same length).
    detrend : {"linear", "demean", "simple"} or None, default=None
        ObsPy detrend of each waveform, first; None: off.
    taper : float or None, default=None
        Hann taper of this fraction of each waveform at each end; None: off.
    bandpass_fmin, bandpass_fmax : float or None, default=None
        Butterworth filter corners, Hz (one alone: a high- or low-pass); None: off.
    bandpass_corners : int, default=4
        Order of that filter.
    remove_response : str or None, default=None
        StationXML whose responses are removed from each waveform; None: off.
    response_output : {"VEL", "DISP", "ACC"}, default="VEL"
        Ground motion after the response removal.
    events_per_chunk : int or None, default=None
        Events per Zarr chunk of the archive; None lets the ingest choose.
    """

    events_per_chunk: int | None = None

    def _check(self, name: str) -> None:
        try:
            SpectrogramParameters(**self.parameters())
        except ValueError as error:
            raise ConfigError(f"invalid '{name}' settings: {error}") from None
        if self.events_per_chunk is not None:
            _require(
                self.events_per_chunk >= 1,
                f"{name}.events_per_chunk",
                self.events_per_chunk,
                ">= 1",
            )

    def parameters(self) -> dict[str, Any]:
        """Keyword arguments of ``SpectrogramParameters`` (everything but the chunking)."""
        values = dataclasses.asdict(self)
        del values["events_per_chunk"]
        return values


@dataclass(frozen=True)
class NMFConfig:
    """Bayesian nonparametric NMF fit (the SpecUFEx dictionary).

    Attributes
    ----------
    num_pat : int, default=75
        Number of patterns the fit starts with; unused patterns are pruned.
    steps : int or None, default=None
        Most stochastic variational inference (SVI) steps; None: three passes over the
        events at ``batch_size``, and at least 1000 (stopped earlier by ``tol``).
    batch_size : int or "auto", default="auto"
        Spectrograms per SVI step; "auto" is 64, and 1 with ``fit.compat: specufex``
        (which refuses any other value).
    tol : float or None, default=1e-4
        Stop a fit (NMF and HMM) before its step budget once the change of the
        window-mean ELBO falls below this relative (or within its noise) and the patterns
        (states in use, on average) held still over the window
        (:class:`specufex_dask.inference.convergence.StageMonitor`); None runs every step.
    """

    num_pat: int = _FIT["num_pat"].default
    steps: int | None = _FIT["nmf_steps"].default
    batch_size: int | Literal["auto"] = _FIT["batch_size"].default
    tol: float | None = _FIT["tol"].default

    def _check(self, name: str) -> None:
        _check_fit_keys(self, name)


@dataclass(frozen=True)
class HMMConfig:
    """Bayesian HMM fit on the NMF activations (the SpecUFEx fingerprints).

    Attributes
    ----------
    num_state : int, default=15
        Number of hidden states.
    steps : int or None, default=None
        Most SVI steps (stopped earlier by ``nmf.tol``); None as for ``nmf.steps``.
    """

    num_state: int = _FIT["num_state"].default
    steps: int | None = _FIT["hmm_steps"].default

    def _check(self, name: str) -> None:
        _check_fit_keys(self, name)


@dataclass(frozen=True)
class FitConfig:
    """Settings shared by the NMF and HMM fits.

    Attributes
    ----------
    compat : {"default", "specufex"}, default="default"
        "specufex" reproduces the reference implementation's numerics.
    random_state : int, default=0
        Seed of every random choice of the fit.
    checkpoint_every : int or "auto", default="auto"
        SVI steps between checkpoints written into the archive; "auto" writes one every
        10 steps once 30 s have passed since the last.
    """

    compat: Literal["default", "specufex"] = _FIT["compat"].default
    random_state: int = _FIT["random_state"].default
    checkpoint_every: int | Literal["auto"] = _FIT["checkpoint_every"].default

    def _check(self, name: str) -> None:
        _check_fit_keys(self, name)


@dataclass(frozen=True)
class ClusteringConfig:
    """Clustering of the fingerprints (spectral, k-means or Ward), optionally after PCA.

    Attributes
    ----------
    n_clusters : int or list of int, default=3
        Number of clusters, or the numbers to sweep: each is fitted and the one with the
        largest mean silhouette over ``silhouette_sample`` seeded events is kept.
    pca_components : int or None, default=None
        Principal components kept before clustering; None clusters the features.
    random_state : int, default=0
        Seed of the PCA solver, the k-means initialisation, the spectral embedding and
        every sample.
    n_init : int, default=30
        k-means restarts; the best one (lowest inertia) is kept. With 10, the best of
        them still moved the ARI of planted classes between 0.42 and 0.76 from one
        k-means seed to the next on the same fingerprints; with 30, between 0.73 and
        0.76.
    transform : {"idf", "hellinger", "sqrt", "none"}, default="idf"
        Transform of the fingerprints before PCA and k-means
        (:data:`specufex_dask.analysis.clustering.FEATURE_TRANSFORMS`). "idf", the square
        root of each event's joint distribution of consecutive states with every
        transition weighted by its inverse event frequency, separated planted waveform
        classes best in the fidelity benchmark (adjusted Rand index with spectral
        clustering 0.97 / 0.86 / 0.65 at the easy / medium / hard levels, against 0.96 /
        0.84 / 0.47 for "hellinger"; with k-means 0.96 / 0.81 / 0.53 against 0.82 / 0.55 /
        0.29 for "hellinger" and 0.47 / 0.39 / 0.24 for the raw fingerprints, "none").
    method : {"spectral", "kmeans", "ward"}, default="spectral"
        Spectral clustering of the events' nearest-neighbour graph (built on at most 5000
        seeded events, the others taking their neighbours' majority label), k-means, or
        Ward's hierarchical clustering (tree on at most 5000 seeded events, the others
        joining the nearest Ward centroid). Spectral clustering separated planted
        waveform classes best in the fidelity benchmark (above, and its standard
        deviation over fit seeds was 0.012 / 0.037 / 0.017 against k-means' 0.007 /
        0.070 / 0.027): k-means assumes round clusters of similar spread, which the
        fingerprints of one class need not form.
    n_neighbors : int, default=20
        Neighbours of each event in the graph of spectral clustering, itself included
        (at least 2).
    pca_variance : float or None, default=None
        Keep the fewest principal components that explain this fraction of the variance.
    scale : bool, default=False
        Standardise every feature before PCA and clustering.
    silhouette_sample : int, default=5000
        Events a sweep's mean silhouettes are computed on, and the reference events of the
        per-event silhouettes (exact up to this many events).
    """

    n_clusters: int | list[int] = 3
    pca_components: int | None = None
    random_state: int = 0
    n_init: int = 30
    transform: str = "idf"
    method: str = "spectral"
    n_neighbors: int = 20
    pca_variance: float | None = None
    scale: bool = False
    silhouette_sample: int = 5000

    def _check(self, name: str) -> None:
        from specufex_dask.analysis.clustering import FEATURE_TRANSFORMS

        _require(
            self.transform in FEATURE_TRANSFORMS,
            f"{name}.transform",
            self.transform,
            "one of " + ", ".join(repr(t) for t in FEATURE_TRANSFORMS),
        )
        from specufex_dask.analysis.clustering import CLUSTER_METHODS

        counts = self.n_clusters if isinstance(self.n_clusters, list) else [self.n_clusters]
        _require(bool(counts), f"{name}.n_clusters", self.n_clusters, "a number or a list")
        if len(counts) == 1:
            _require(counts[0] >= 1, f"{name}.n_clusters", self.n_clusters, ">= 1")
        else:
            _require(min(counts) >= 2, f"{name}.n_clusters", self.n_clusters, "all >= 2")
        _require(
            self.method in CLUSTER_METHODS,
            f"{name}.method",
            self.method,
            "one of " + ", ".join(repr(m) for m in CLUSTER_METHODS),
        )
        if self.pca_variance is not None:
            _require(
                0 < self.pca_variance < 1,
                f"{name}.pca_variance",
                self.pca_variance,
                "a fraction between 0 and 1",
            )
            _require(
                self.pca_components is None,
                f"{name}.pca_variance",
                self.pca_variance,
                "not given with pca_components",
            )
        _require(
            self.silhouette_sample >= 2,
            f"{name}.silhouette_sample",
            self.silhouette_sample,
            ">= 2",
        )
        if self.pca_components is not None:
            _require(
                self.pca_components >= 1, f"{name}.pca_components", self.pca_components, ">= 1"
            )
        _require(self.random_state >= 0, f"{name}.random_state", self.random_state, ">= 0")
        _require(self.n_init >= 1, f"{name}.n_init", self.n_init, ">= 1")
        _require(self.n_neighbors >= 2, f"{name}.n_neighbors", self.n_neighbors, ">= 2")


@dataclass(frozen=True)
class PlotConfig:
    """Figures written by ``specufex-dask plot``.

    Attributes
    ----------
    events : list of str or None, default=None
        Event ids drawn one by one; None takes the first ``n_events``.
    n_events : int, default=3
        Number of events drawn when ``events`` is None.
    dpi : int, default=120
        Resolution of the PNG files.
    """

    events: list[str] | None = None
    n_events: int = 3
    dpi: int = 120

    def _check(self, name: str) -> None:
        _require(self.n_events >= 1, f"{name}.n_events", self.n_events, ">= 1")
        _require(self.dpi >= 10, f"{name}.dpi", self.dpi, ">= 10")
        if self.events is not None:
            _require(len(self.events) >= 1, f"{name}.events", self.events, "not empty")


@dataclass(frozen=True)
class ClusterConfig:
    """The Dask cluster that runs the work.

    Attributes
    ----------
    scheduler : str or None, default=None
        Address of an existing Dask scheduler (``tcp://host:8786``); when set, no
        cluster is started and ``kind``, ``workers``... are not used.
    kind : {"local", "slurm", "pbs"}, default="local"
        Cluster started when no scheduler is given.
    workers : int or None, default=None
        Number of Dask workers (local cluster, or scaled through the job queue); the number
        of batch jobs goes in ``jobqueue.jobs``. None lets Dask choose.
    threads_per_worker : int or None, default=None
        Threads per worker.
    memory_limit : str or None, default=None
        Memory per worker, e.g. "4GB".
    jobqueue : dict, default={}
        Keyword arguments for the dask-jobqueue cluster (queue, account, walltime, ...).
    security : dict, default={}
        TLS settings for ``distributed.security.Security`` (tls_ca_file, tls_client_cert,
        tls_client_key, ...).
    dashboard_address : str, default="127.0.0.1:8787"
        Where a started scheduler serves its dashboard (a busy port falls back to a free
        one).
    timeout : float or None, default=None
        Seconds to wait for an existing scheduler to answer.
    no_worker_timeout : float or None, default=180
        Seconds a fit or transform waits while the cluster has no worker before it
        fails (resume it with ``--resume``); None waits for ever.
    """

    scheduler: str | None = None
    kind: Literal["local", "slurm", "pbs"] = "local"
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    jobqueue: dict[str, Any] = field(default_factory=dict)
    security: dict[str, Any] = field(default_factory=dict)
    dashboard_address: str = "127.0.0.1:8787"
    timeout: float | None = None
    no_worker_timeout: float | None = _FIT["no_worker_timeout"].default

    def _check(self, name: str) -> None:
        _check_fit_keys(self, "dask")  # also when read under its old name
        if self.workers is not None:
            _require(self.workers >= 1, f"{name}.workers", self.workers, ">= 1")
        if self.threads_per_worker is not None:
            _require(
                self.threads_per_worker >= 1,
                f"{name}.threads_per_worker",
                self.threads_per_worker,
                ">= 1",
            )


@dataclass(frozen=True)
class StorageOptionsConfig:
    """The ``storage_options`` section: keywords of the fsspec file system of an archive
    given as a URL (``endpoint_url``, ``key``, ``secret``, ``anon``...), any keys.

    They reach the workers with the archive's location; they are never recorded in the
    archive, and secret-looking ones are masked when the configuration is shown.

    Attributes
    ----------
    options : dict, default={}
        The keywords; ``--storage-option key=value`` flags are added on top.
    """

    options: dict[str, Any] = field(default_factory=dict)

    def _check(self, name: str) -> None:
        return None


@dataclass(frozen=True)
class Config:
    """The whole configuration: one attribute per section of the YAML file."""

    spectrograms: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    nmf: NMFConfig = field(default_factory=NMFConfig)
    hmm: HMMConfig = field(default_factory=HMMConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    dask: ClusterConfig = field(default_factory=ClusterConfig)
    storage_options: StorageOptionsConfig = field(default_factory=StorageOptionsConfig)

    @property
    def cluster(self) -> ClusterConfig:
        """The ``dask`` section under its old name."""
        return self.dask

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of every section (JSON and YAML serialisable); the storage
        options as one mapping, their secrets masked."""
        from specufex_dask.io.location import mask_options

        everything = dataclasses.asdict(self)
        everything["storage_options"] = mask_options(self.storage_options.options)
        return everything


def _require(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"invalid value {value!r} for '{key}': expected {expected}")


RENAMED_SECTIONS = {"cluster": "dask"}
"""Old section names that are still read (with a DeprecationWarning) and their new names."""


def _section_name(name: str, overrides: Mapping[str, Any], source: str) -> str:
    """The current name of section ``name``; an old name warns (and clashes with the new)."""
    new = RENAMED_SECTIONS.get(name)
    if new is None:
        return name
    if new in overrides:
        raise ConfigError(
            f"sections '{name}' and '{new}' both in {source}: '{name}' is the old name "
            f"of '{new}'; keep one"
        )
    warnings.warn(
        f"configuration section '{name}' in {source} is now called '{new}' (the Dask "
        f"cluster; the clustering's settings are in 'clustering'): rename it",
        DeprecationWarning,
        stacklevel=3,
    )
    return new


def section_types() -> dict[str, type]:
    """Map each section name of :class:`Config` to its dataclass."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for candidate in candidates:
            try:
                return _coerce(value, candidate, key, source)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(
            f"invalid value {value!r} for '{key}' in {source}: expected one of {choices}"
        )
    expected = _type_name(annotation)
    # bool is an int subclass; YAML's "yes"/"true" must not become a count of 1.
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            expected = "a finite number"
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item_type,) = args
        if isinstance(value, str) and item_type is str:
            # A comma-separated string is the natural flag form of a list of ids.
            value = [item for item in value.split(",") if item]
        if isinstance(value, (list, tuple)):
            return [
                _coerce(item, item_type, f"{key}[{i}]", source) for i, item in enumerate(value)
            ]
    elif origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
    else:  # pragma: no cover - only reached if a new field type is added without support
        raise TypeError(f"unsupported configuration type {annotation!r} for {key}")
    raise ConfigError(
        f"wrong type for '{key}' in {source}: expected {expected}, got "
        f"{type(value).__name__} {value!r}"
    )


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, str(annotation)
    )


def _updated_section(section: Any, name: str, values: Mapping[str, Any], source: str) -> Any:
    """Return a copy of one section dataclass with ``values`` applied and checked."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"section '{name}' in {source} must be a mapping of keys to values, got "
            f"{type(values).__name__} {values!r}"
        )
    if isinstance(section, StorageOptionsConfig):  # free keys: the file system's own
        return StorageOptionsConfig({**section.options, **dict(values)})
    hints = typing.get_type_hints(type(section))
    known = sorted(hints)
    changes = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"unknown key '{name}.{key}' in {source}; known keys of '{name}': "
                f"{', '.join(known)}"
            )
        _check_fit_value(f"{name}.{key}", value, source)
        changes[key] = _coerce(value, hints[key], f"{name}.{key}", source)
    updated = dataclasses.replace(section, **changes)
    try:
        updated._check(name)
    except ConfigError as error:
        raise ConfigError(f"{error} (in {source})") from None
    return updated


def merge_config(
    config: Config, overrides: Mapping[str, Mapping[str, Any]], *, source: str = "overrides"
) -> Config:
    """Return ``config`` with ``overrides`` applied on top.

    Parameters
    ----------
    config : Config
        The configuration to start from.
    overrides : mapping of section name to mapping of key to value
        New values; a key absent from its section keeps the value of ``config``.
    source : str, default="overrides"
        Where the overrides come from (a file name, "flags"); quoted in error messages.

    Returns
    -------
    Config
        A new, validated configuration.

    Raises
    ------
    ConfigError
        For an unknown section or key, a value of the wrong type, or a value out of range.
    """
    sections = section_types()
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"{source} must be a mapping of sections ({', '.join(sections)}), got "
            f"{type(overrides).__name__}"
        )
    changes = {}
    for name, values in overrides.items():
        section = _section_name(name, overrides, source)
        if section not in sections:
            raise ConfigError(
                f"unknown section '{name}' in {source}; known sections: {', '.join(sections)}"
            )
        changes[section] = _updated_section(getattr(config, section), name, values, source)
    merged = dataclasses.replace(config, **changes)
    _check_across_sections(merged, source)
    return merged


def _check_across_sections(config: Config, source: str) -> None:
    try:
        check_reference_mode(
            config.fit.compat, {"batch_size": config.nmf.batch_size}, ["batch_size"]
        )
    except ValueError as error:
        raise ConfigError(f"'fit.compat' and 'nmf.batch_size' in {source}: {error}") from None
    if config.dask.scheduler is not None and config.dask.kind != "local":
        raise ConfigError(
            f"'dask.scheduler' ({config.dask.scheduler!r}) and 'dask.kind' "
            f"({config.dask.kind!r}) both set in {source}: give one of them"
        )


def config_from_mapping(mapping: Mapping[str, Any] | None, *, source: str = "mapping") -> Config:
    """Build a validated :class:`Config` from nested mappings (a parsed YAML document).

    ``None`` (an empty YAML file) gives the defaults.
    """
    if mapping is None:
        return Config()
    return merge_config(Config(), mapping, source=source)


def load_config(
    path: str | Path, base: Config | None = None, report: Callable[[str], None] | None = None
) -> Config:
    """Read a YAML configuration file.

    Parameters
    ----------
    path : str or Path
        YAML file whose top-level keys are sections of :class:`Config`, or a SpecUFEx
        workflow configuration (sections ``dataParams``, ``sgramParams``,
        ``specufexParams``, ``clusterParams``...), translated by
        :func:`specufex_dask.cli.workflow_config.translate`.
    base : Config, optional
        Values for the keys the file does not set; default the built-in defaults.
    report : callable, optional
        Called with each line saying how a workflow file's key was mapped, or why not.

    Returns
    -------
    Config
        ``base`` overridden by the file, validated.

    Raises
    ------
    ConfigError
        When the file is missing, is not valid YAML, or holds an unknown key or bad value.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"configuration file {path} is not valid YAML: {error}") from None
    base = Config() if base is None else base
    if document is None:
        return base
    if is_workflow_config(document):
        try:
            document, lines = translate(document)
        except ValueError as error:
            raise ConfigError(f"workflow configuration {path}: {error}") from None
        for line in lines:
            if report is not None:
                report(f"{path}: {line}")
    return merge_config(base, document, source=str(path))


def config_to_json(config: Config, sections: list[str] | None = None) -> str:
    """Serialise ``config`` (or only ``sections`` of it) as a JSON string, keys sorted."""
    everything = config.to_dict()
    if sections is not None:
        everything = {name: everything[name] for name in sections}
    return json.dumps(everything, sort_keys=True)


def config_to_yaml(config: Config) -> str:
    """Serialise ``config`` as a YAML document that :func:`load_config` reads back."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
