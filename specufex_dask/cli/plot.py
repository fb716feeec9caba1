"""``specufex-dask plot``: the PNG figures an archive's contents allow."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.cli.archive import CONFIG_ATTR, open_archive, open_model
from specufex_dask.cli.base import CommandError, Commands
from specufex_dask.cli.config import Config
from specufex_dask.cli.options import PLOT_FLAGS, add_flags
from specufex_dask.cli.progress import Reporter

__all__ = ["cmd_plot", "make_figures", "register"]


def register(commands: Commands) -> None:
    """Add the ``plot`` command."""
    plot = commands.add(
        "plot",
        "PNG figures of an archive",
        "Write PNG figures into OUTDIR: the NMF dictionary EW against frequency with the "
        "pattern weights EA, the HMM emission matrix EB, for each chosen event its "
        "spectrogram, activations and state sequence over time, fingerprint matrices, "
        "a cluster summary, cluster occurrence over time (lines and a heat map of clusters "
        "x time, the bin chosen from the span), a map and depth section of the events "
        "coloured by cluster (when they have coordinates), and each cluster's events with "
        "the largest silhouettes (spectrogram and waveform, re-read and band-passed to the "
        "spectrogram band when the input file is still there). Figures whose data the "
        "archive lacks are skipped. Needs "
        'matplotlib: pip install "specufex-dask[plot]".',
        cmd_plot,
        archive="archive (Zarr directory)",
    )
    plot.add_argument("outdir", metavar="OUTDIR", help="folder for the PNG files (created)")
    add_flags(plot, "figures", PLOT_FLAGS, commands.defaults)


def _time_and_space_figures(dataset: Any, windows: bool) -> list[tuple[str, Callable[[], Any]]]:
    """Clusters over time, on a map and by example, as far as the archive allows;
    ``windows``: whether it holds windows of continuous records."""
    from specufex_dask.analysis import timespace

    if "cluster" not in dataset.variables:
        return []
    figures: list[tuple[str, Callable[[], Any]]] = []
    # Windows of continuous records have their own timeline; occurrence counts are for
    # catalogs of events (with origin times, or one waveform file each).
    origins = timespace.ORIGIN_TIME in dataset.coords
    mostly_dated = origins and np.mean(~np.isnat(dataset[timespace.ORIGIN_TIME].values)) >= 0.5
    by_event = mostly_dated or not windows
    if by_event and timespace.event_times(dataset) is not None:
        figures.append(("cluster_occurrence", lambda: timespace.plot_cluster_occurrence(dataset)))
    if timespace.has_locations(dataset):
        figures.append(("cluster_map", lambda: timespace.plot_cluster_map(dataset)))
    if "silhouette" in dataset.variables:
        figures.append(("cluster_examples", lambda: timespace.plot_cluster_examples(dataset)))
    return figures


def _safe_name(event: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in event)


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
    from specufex_dask.io.status import OUTPUTS, cluster_problem, output_problem

    dataset = open_archive(archive)
    for name in OUTPUTS:
        problem = output_problem(dataset, name, str(archive)) if name in dataset else None
        if problem is not None:
            raise CommandError(problem)
    problem = cluster_problem(dataset, str(archive))
    if problem is not None:
        raise CommandError(problem)
    model = open_model(archive)
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
        figures.append((f"event_{_safe_name(event)}", partial(plot.plot_event, dataset, event)))
    if "fingerprint" in dataset.variables:
        fingerprint = dataset["fingerprint"]
        if "cluster" in dataset.variables:
            fingerprint = fingerprint.assign_coords(cluster=dataset["cluster"])
        figures.append(("fingerprints", lambda: plot.plot_fingerprints(fingerprint, events)))
    if {"cluster", "fingerprint"} <= set(dataset.variables):
        figures.append(("clusters", lambda: plot.plot_cluster_summary(dataset)))
    windows = "cluster" in dataset.variables and bool(plot.continuous_windows(dataset))
    if windows:
        figures.append(("cluster_timeline", lambda: plot.plot_cluster_timeline(dataset)))
    figures.extend(_time_and_space_figures(dataset, windows))
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
