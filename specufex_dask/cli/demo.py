"""``specufex-dask demo``: the whole pipeline on the bundled real data."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.analysis.datasets import KW1_PARAMETERS, KW1_STEP_S, KW1_WINDOW_S
from specufex_dask.cli.archive import open_archive, open_model, record_configuration
from specufex_dask.cli.base import (
    CommandError,
    Commands,
    chunk_events,
    dask_client,
    plural,
    spectrogram_parameters,
)
from specufex_dask.cli.cluster import run_clustering
from specufex_dask.cli.config import Config, merge_config
from specufex_dask.cli.fit import fit_archive, fitted_summary, transform_archive
from specufex_dask.cli.ingest import report_ingest
from specufex_dask.cli.options import CLUSTERING_FLAGS, FIT_OPTIONS, add_options
from specufex_dask.cli.plot import make_figures
from specufex_dask.cli.progress import Reporter

__all__ = [
    "DEMO_SETTINGS",
    "cmd_demo",
    "demo_continuous_file",
    "demo_data_dir",
    "demo_events",
    "demo_summary",
    "register",
]

DEMO_ARCHIVE = "demo.zarr"
DEMO_FIGURES = "figures"


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
    "clustering": {"n_clusters": 5, "pca_components": None, "transform": "idf"},
}


def register(commands: Commands) -> None:
    """Add the ``demo`` command: the options of ``fit`` and ``clustering`` (but its
    seed: the fit's ``--seed`` is the demo's), with the demo's settings as defaults."""
    demo_defaults = merge_config(commands.defaults, DEMO_SETTINGS, source="the demo settings")
    spectrograms_demo = DEMO_SETTINGS["spectrograms"]
    demo = commands.add(
        "demo",
        "the whole pipeline on bundled real data",
        "Run everything on data that ship with specufex-dask, on a local Dask cluster, "
        "without network: the 10 earthquakes of NCSN station BAV (1984, 20 s each) and "
        "40 minutes of the continuous record of BW.KW1..EHZ (2011, from ObsPy's test data) "
        f"cut into {DEMO_WINDOW_S:g} s windows every {DEMO_STEP_S:g} s, in one archive. "
        f"Spectrograms ({spectrograms_demo['fs']:g} Hz, {spectrograms_demo['window_s']:g} s "
        f"segments, overlap {spectrograms_demo['overlap']:g}, nfft "
        f"{spectrograms_demo['nfft']}, {spectrograms_demo['fmin']:g}-"
        f"{spectrograms_demo['fmax']:g} Hz), fit, transform, clusters and figures; "
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
    *fit_groups, dask_group = FIT_OPTIONS
    clustering = [flag for flag in CLUSTERING_FLAGS if flag.key != "random_state"]
    add_options(demo, (*fit_groups, ("clustering", clustering), dask_group), demo_defaults)


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
        params = spectrogram_parameters(config)
        reporter.say(f"ingesting the BAV events of {data}")
        report = ingest_catalog(
            data / "catalog.csv",
            archive,
            params,
            waveform_dir=data / "waveforms",
            client=client,
            overwrite=args.overwrite,
            **chunk_events(config),
        )
        report_ingest(report, reporter)
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
            **chunk_events(config),
        )
        report_ingest(report, reporter)
        record_configuration(archive, config, ["spectrograms"], "spectrograms")
        model = fit_archive(archive, config, reporter, client, False)
        print(fitted_summary(model))
        transform_archive(archive, model, reporter, config, False)
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

    dataset = open_archive(archive)
    model = open_model(archive)
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
        f"clusters ({config.clustering.method} on the {config.clustering.transform} "
        "fingerprints):",
        *(
            f"  cluster {cluster}: {plural(size, 'event')} ({by_station(labels == cluster)})"
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
