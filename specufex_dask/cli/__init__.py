"""The ``specufex-dask`` command line.

A thin layer over the package: it parses flags, layers them over a YAML configuration
(:mod:`specufex_dask.cli.config`), connects to a Dask cluster
(:mod:`specufex_dask.parallel.clusters`) and calls ingest, h5import, the pipeline,
clustering and plot. Results go to stdout, progress and the dashboard address to stderr
(silenced by ``--quiet``), and every error becomes one line ``specufex-dask: error: ...``
with a non-zero exit code (``--debug`` shows the traceback instead).

Modules: ``main`` (parsing and dispatch), ``options`` (the flags that set configuration
keys, declared once), ``progress`` (the progress printer), ``base`` (what the commands
share), ``archive`` (the archive as the commands read and write it), and one module per
command or family of commands: ``ingest`` (spectrograms), ``import_h5``, ``fit`` (fit,
transform, run), ``info``, ``cluster`` (spectral, k-means or Ward), ``plot``, ``demo``.
The names below are also importable from here, as before the split.
"""

from __future__ import annotations

from specufex_dask.cli.base import CommandError
from specufex_dask.cli.demo import demo_data_dir, demo_events, demo_summary
from specufex_dask.cli.fit import fitted_summary, make_pipeline
from specufex_dask.cli.main import build_parser, main, parse_args
from specufex_dask.cli.options import effective_config, flag_overrides
from specufex_dask.cli.progress import Reporter, format_progress

_fitted_summary = fitted_summary  # its name before the split

__all__ = [
    "CommandError",
    "Reporter",
    "build_parser",
    "demo_data_dir",
    "demo_events",
    "demo_summary",
    "effective_config",
    "flag_overrides",
    "format_progress",
    "main",
    "make_pipeline",
    "parse_args",
]
