"""``specufex-dask spectrograms``: waveform files to a spectrogram archive."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.cli.archive import record_configuration
from specufex_dask.cli.base import (
    CommandError,
    Commands,
    chunk_events,
    dask_client,
    spectrogram_parameters,
)
from specufex_dask.cli.config import Config
from specufex_dask.cli.options import DASK_FLAGS, SPECTROGRAM_FLAGS, add_flags
from specufex_dask.cli.progress import Reporter

__all__ = ["cmd_spectrograms", "register", "report_ingest", "resolve_archive"]


def register(commands: Commands) -> None:
    """Add the ``spectrograms`` command."""
    spectrograms = commands.add(
        "spectrograms",
        "waveform files -> spectrogram archive",
        "Compute the spectrogram of every waveform file (one event per file) and write "
        "them into a new archive, in parallel on Dask. Each waveform is demeaned, "
        "optionally divided by its peak, cut to --n-samples, turned into a magnitude "
        "spectrogram, cut to [--fmin, --fmax], divided by its median and converted to dB "
        "(clipped at 0). Files that cannot be read or processed are left out and listed in "
        "the archive (see `specufex-dask info`). Event windows can also be cut from an SDS "
        "archive or day-long files around the origin times of a QuakeML or CSV catalog (or "
        "the P picks of a QuakeML), one row per event and station, and continuous files "
        "into fixed windows. Needs ObsPy: "
        'pip install "specufex-dask[obspy]".\n\n'
        "examples:\n"
        "  specufex-dask spectrograms waveforms/ events.zarr --fs 100 --nfft 2000 "
        "--fmin 8 --fmax 20\n"
        "  specufex-dask spectrograms --catalog catalog.csv events.zarr --config run.yaml\n"
        "  specufex-dask spectrograms --quakeml events.xml --sds /data/sds "
        "--stations NC.BAV..EHZ,NC.BBG..EHZ --window 5,30 --relative-to P events.zarr\n"
        "  specufex-dask spectrograms --continuous day.mseed --window-length 20 --step 10 "
        "windows.zarr",
        cmd_spectrograms,
    )
    spectrograms.set_defaults(prepare=lambda args: resolve_archive(args, spectrograms))
    spectrograms.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="waveform files, folders (their files) or quoted glob patterns",
    )
    spectrograms.add_argument(
        "archive", nargs="?", metavar="ARCHIVE", help="archive to write (the last path given)"
    )
    spectrograms.add_argument(
        "-o",
        "--output",
        metavar="ARCHIVE",
        help="archive to write, as an option: every path given is then a SOURCE",
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
    inputs.add_argument(
        "--quakeml",
        metavar="FILE",
        help="QuakeML catalog (obspy.read_events): one window per event and --stations, "
        "from --sds or the day-long files given as SOURCE",
    )
    inputs.add_argument(
        "--sds",
        metavar="ROOT",
        help="SDS archive (ROOT/YEAR/NET/STA/CHA.D/...) the windows of --quakeml or "
        "--catalog are read from",
    )
    inputs.add_argument(
        "--stations",
        metavar="NET.STA.LOC.CHA,...",
        help="full SEED ids of the stations of the windows, comma-separated",
    )
    inputs.add_argument(
        "--window",
        metavar="PRE,POST",
        type=_window,
        help="seconds before and after each event's reference time",
    )
    inputs.add_argument(
        "--relative-to",
        choices=("origin", "P"),
        default="origin",
        help="windows around the origin time or the station's P pick (--quakeml only; "
        "default: origin)",
    )
    inputs.add_argument(
        "--continuous",
        action="store_true",
        help="cut the SOURCE files, continuous data, into windows of --window-length "
        "every --step seconds, each an event",
    )
    inputs.add_argument("--window-length", metavar="S", type=float, help="with --continuous")
    inputs.add_argument("--step", metavar="S", type=float, help="with --continuous")
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
    add_flags(spectrograms, "spectrogram settings", SPECTROGRAM_FLAGS, commands.defaults)
    add_flags(spectrograms, "Dask cluster", DASK_FLAGS, commands.defaults)


def _window(text: str) -> tuple[float, float]:
    """``PRE,POST`` seconds."""
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected PRE,POST seconds (e.g. 5,30), got {text!r}")


def resolve_archive(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Set ``args.archive`` and ``args.sources`` from the paths given: the archive is
    ``-o``/``--output`` when given (every path is then a source), else the last path."""
    paths = [*args.sources, *([args.archive] if args.archive is not None else [])]
    if args.output is not None:
        args.sources, args.archive = paths, args.output
    elif paths:
        args.sources, args.archive = paths[:-1], paths[-1]
    else:
        parser.error("no archive given: name the ARCHIVE to write after the sources")
    if Path(args.archive).is_file():
        parser.error(
            f"{args.archive} is a file, not an archive: name the ARCHIVE to write last "
            "(or with -o ARCHIVE)"
        )


def _ingest_from_args(args: argparse.Namespace, config: Config, reporter: Reporter, client: Any):
    """Run the ingest that ``spectrograms`` asks for; return its IngestReport."""
    import specufex_dask.ingest as ingest_module

    options: dict[str, Any] = {
        "client": client,
        "append": args.append,
        "overwrite": args.overwrite,
        "format": args.format,
        "dtype": np.dtype(args.dtype),
        **chunk_events(config),
    }
    select = {key: getattr(args, key) for key in ("station", "channel") if getattr(args, key)}
    if select:
        options["select"] = select
    params = spectrogram_parameters(config)
    if args.continuous:
        files = ingest_module.expand_sources(args.sources)
        reporter.say(f"cutting {len(files)} continuous files into windows")
        return ingest_module.ingest_continuous(
            files, args.archive, args.window_length, args.step, params, **options
        )
    if args.quakeml is not None or (args.catalog is not None and args.sds is not None):
        return _ingest_windows(args, params, options, reporter)
    if args.catalog is not None:
        if args.sources:
            raise CommandError(
                "give waveform SOURCES or --catalog, not both (with --catalog, use "
                "--waveform-dir for the folder of the files it names)"
            )
        reporter.say(f"ingesting the events of catalog {args.catalog}")
        return ingest_module.ingest_catalog(
            args.catalog,
            args.archive,
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
    return ingest_module.ingest_waveforms(files, args.archive, params, **options)


_WINDOW_OPTIONS = ("sds", "stations", "window")


def _check_combination(args: argparse.Namespace) -> None:
    """Refuse options that do not go together, naming them."""
    given = [f"--{name}" for name in _WINDOW_OPTIONS if getattr(args, name) is not None]
    if args.continuous:
        if args.window_length is None or args.step is None:
            raise CommandError("--continuous needs --window-length S and --step S")
        if args.quakeml is not None or args.catalog is not None or given:
            raise CommandError("--continuous cuts SOURCE files: no --quakeml, --catalog, --sds")
        if not args.sources:
            raise CommandError("--continuous needs the continuous files as SOURCE")
        return
    if args.window_length is not None or args.step is not None:
        raise CommandError("--window-length and --step are used with --continuous only")
    if args.quakeml is not None and args.catalog is not None:
        raise CommandError("give --quakeml or --catalog, not both")
    if args.quakeml is None and args.sds is None:
        if given or args.relative_to != "origin":
            raise CommandError(f"{', '.join(given) or '--relative-to'} needs --quakeml or --sds")
        return
    for name in ("stations", "window"):
        if getattr(args, name) is None:
            raise CommandError(f"windows from a catalog need --{name}")
    if args.station is not None or args.channel is not None:
        raise CommandError("windows take their channels from --stations, not --station/--channel")
    if args.sds is None and not args.sources:
        raise CommandError("windows need --sds ROOT or the day-long files as SOURCE")
    if args.sds is not None and args.sources:
        raise CommandError("give --sds ROOT or day-long files as SOURCE, not both")
    if args.catalog is not None and args.relative_to != "origin":
        raise CommandError("a CSV catalog has no picks: --relative-to P needs --quakeml")


def _ingest_windows(
    args: argparse.Namespace, params: Any, options: dict[str, Any], reporter: Reporter
):
    """The windows of a QuakeML or CSV catalog, from an SDS archive or day-long files."""
    import specufex_dask.ingest as ingest_module

    windows = {
        "waveforms": args.sds if args.sds is not None else args.sources,
        "stations": args.stations,
        "window": args.window,
    }
    if args.quakeml is not None:
        reporter.say(f"cutting the windows of the events of {args.quakeml}")
        return ingest_module.ingest_quakeml(
            args.quakeml, args.archive, params, relative_to=args.relative_to, **windows,
            **options,
        )  # fmt: skip
    reporter.say(f"cutting the windows of the events of catalog {args.catalog}")
    return ingest_module.ingest_catalog(
        args.catalog, args.archive, params, event_column=args.event_column, **windows,
        **options,
    )  # fmt: skip


def report_ingest(report, reporter: Reporter) -> None:
    """Print an ingest's summary (stdout) and its first rejected inputs (stderr)."""
    print(report.summary())
    for row in report.rejected[:20]:
        event = f" (event {row.event})" if row.event else ""
        reporter.say(f"  rejected {row.source}{event}: {row.reason}")
    if report.n_rejected > 20:
        reporter.say(f"  ... {report.n_rejected - 20} more; see `specufex-dask info`")


def cmd_spectrograms(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Waveform files to a spectrogram archive."""
    _check_combination(args)  # before starting a cluster
    with dask_client(config, reporter) as client:
        report = _ingest_from_args(args, config, reporter, client)
    record_configuration(report.path, config, ["spectrograms"], "spectrograms")
    report_ingest(report, reporter)
    return 0
