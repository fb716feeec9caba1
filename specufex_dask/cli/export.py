"""``specufex-dask export``: labelled catalogs (CSV, QuakeML) and the workflow HDF5 file."""

from __future__ import annotations

import argparse
from pathlib import Path

from specufex_dask.cli.base import CommandError, Commands
from specufex_dask.cli.config import Config
from specufex_dask.cli.progress import Reporter

__all__ = ["EXPORT_FORMATS", "cmd_export", "register"]

EXPORT_FORMATS = ("csv", "quakeml", "h5")
"""What ``export`` can write: ``catalog.csv``, ``catalog.xml`` and ``SpecUFEx_<name>.h5``."""


def register(commands: Commands) -> None:
    """Add the ``export`` command."""
    export = commands.add(
        "export",
        "labelled catalogs and the workflow HDF5 file",
        "Write into OUTDIR: catalog.csv (one row per event: its id, every per-event "
        "coordinate of the archive, the cluster label, silhouette and distance to the "
        "centroid, and the states it spends most time in), catalog.xml (QuakeML with each "
        "event's cluster in a comment, when the events have origin times) and "
        "SpecUFEx_<archive>.h5 (the SpecUFEx workflow layout: fingerprints/<id>, ACM/<id>, "
        "STM/<id>, SpecUFEx_output/As/<id>, the spectrograms with fSTFT and tSTFT, and "
        "the model's parameters; `import-h5` reads it back).",
        cmd_export,
    )
    export.add_argument("archive", metavar="ARCHIVE", help="archive to export")
    export.add_argument("outdir", metavar="OUTDIR", help="folder for the files (created)")
    export.add_argument(
        "--formats",
        default=",".join(EXPORT_FORMATS),
        metavar="LIST",
        help="comma-separated subset of " + ", ".join(EXPORT_FORMATS) + " (default: all; "
        "QuakeML is then left out, with a note, when the events have no origin times)",
    )


def _formats(text: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in EXPORT_FORMATS]
    if unknown or not chosen:
        raise CommandError(
            f"--formats: unknown format(s) {', '.join(unknown) or '(none given)'}; choose "
            f"from {', '.join(EXPORT_FORMATS)}"
        )
    return chosen


def cmd_export(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Write the chosen formats of an archive into OUTDIR."""
    from specufex_dask.analysis import export
    from specufex_dask.io.archive import open_archive
    from specufex_dask.io.status import OUTPUTS, cluster_problem, output_problem

    formats = _formats(args.formats)
    outdir = Path(args.outdir)
    dataset = open_archive(args.archive)
    has_origins = export.ORIGIN_TIME in dataset.coords
    # A catalog mixing outputs of two models, or with events not transformed, would
    # hand on labels that mean nothing: refuse, as cluster and plot do.
    problems = [
        output_problem(dataset, name, str(args.archive))
        for name in OUTPUTS
        if name in dataset.variables
    ]
    problems.append(cluster_problem(dataset, str(args.archive)))
    dataset.close()
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise CommandError(problem)
    written = []
    if "csv" in formats:
        written.append(export.write_catalog_csv(args.archive, outdir / "catalog.csv"))
    if "quakeml" in formats:
        if has_origins or args.formats != ",".join(EXPORT_FORMATS):
            written.append(export.write_quakeml(args.archive, outdir / "catalog.xml"))
        else:
            reporter.say("no QuakeML: the events have no origin times (source_origin_time)")
    if "h5" in formats:
        name = f"SpecUFEx_{Path(str(args.archive)).stem}.h5"
        written.append(export.write_workflow_h5(args.archive, outdir / name))
    for path in written:
        print(path)
    return 0
