"""Parsing and dispatch of ``specufex-dask``: the top-level parser, the general options,
the commands of each module, logging, and one error line per failure."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from specufex_dask.cli import cluster, demo, export, fit, import_h5, info, ingest, plot
from specufex_dask.cli.archive import damage_behind
from specufex_dask.cli.base import PROG, CommandError, Commands, wrap
from specufex_dask.cli.config import Config, ConfigError, section_types
from specufex_dask.cli.options import effective_config
from specufex_dask.cli.progress import Reporter
from specufex_dask.common import __version__, ignore_zarr_warnings
from specufex_dask.io.location import ArchiveLocation, is_local, parse_storage_option

# distributed's report of a failed task (see specufex_dask.parallel.workersetup): not
# imported from there, which loads distributed
TASK_FAILURE_START = "Compute Failed"

__all__ = ["build_parser", "main", "parse_args"]

COMMAND_MODULES = (ingest, import_h5, fit, info, cluster, export, plot, demo)
"""The modules whose ``register`` adds the commands, in the order of the help."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``specufex-dask`` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=wrap(
            "SpecUFEx on Dask: unsupervised fingerprints of seismic spectrograms "
            "(Bayesian NMF + HMM) stored in a Zarr archive. Run `specufex-dask COMMAND "
            "--help` for the options of each command."
        ),
        epilog="first try: specufex-dask demo demo-output",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    general = common.add_argument_group("general options")
    general.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML file with sections {', '.join(section_types())}; flags override it",
    )
    general.add_argument("--quiet", action="store_true", help="print no progress")
    general.add_argument(
        "--storage-option",
        dest="storage_options",
        metavar="KEY=VALUE",
        action="append",
        type=_storage_option,
        default=[],
        help="option of the fsspec file system of an ARCHIVE given as a URL (s3://, gs://, "
        "memory://), e.g. endpoint_url=http://127.0.0.1:9000; repeatable; the value is "
        "read as JSON when it parses (true, 3), else as text; adds to the configuration "
        "section storage_options",
    )
    general.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(subparsers, common, Config())
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with what a command derives from it (``spectrograms``:
    which path is the archive); a usage error exits with code 2."""
    args = build_parser().parse_args(argv)
    prepare = getattr(args, "prepare", None)
    if prepare is not None:
        prepare(args)
    return args


def _storage_option(text: str) -> tuple[str, Any]:
    try:
        return parse_storage_option(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _located_archive(args: argparse.Namespace, config: Config) -> None:
    """Make ``args.archive`` a URL's location, with the storage options of the
    configuration and the flags; a local path stays as given (the configuration's
    options are for URLs; flags with a local path are refused)."""
    archive = getattr(args, "archive", None)
    flags = dict(args.storage_options)
    if archive is None or isinstance(archive, ArchiveLocation):
        return
    if is_local(archive):
        if flags:
            raise CommandError(
                f"--storage-option is only for an ARCHIVE given as a URL, not {archive}"
            )
        return
    args.archive = ArchiveLocation(archive, {**config.storage_options.options, **flags})


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, (KeyError,)) and text.startswith("'"):
        text = f"missing {text}"
    return " ".join(text.split())


class _OneLineFormatter(logging.Formatter):
    """A record's first line only: no traceback, no stack, no multi-line report."""

    def format(self, record: logging.LogRecord) -> str:
        first = record.getMessage().strip().partition("\n")[0]
        return f"{PROG}: {record.levelname}: {record.name}: {first}"


def _shown(record: logging.LogRecord, threshold: int, debug: bool) -> bool:
    """Whether stderr shows ``record``: at or above ``threshold``; without --debug, no
    report of a failed Dask task (the error itself ends the command in one line)."""
    if record.levelno < threshold:
        return False
    return debug or not str(record.msg).startswith(TASK_FAILURE_START)


def _configure_logging(debug: bool, quiet: bool) -> None:
    """Warnings and errors on stderr (errors only with --quiet; everything with --debug).

    Without --debug every record is one line, so no traceback reaches the user (the
    error that ends the command is printed as one line by :func:`main`).
    """
    threshold = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    full = logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s")
    handler.setFormatter(full if debug else _OneLineFormatter())
    # distributed sets its loggers to INFO when imported (after this runs), so the level
    # is enforced by the handler, not by the loggers.
    handler.addFilter(lambda record: _shown(record, threshold, debug))
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
    args = parse_args(argv)
    _configure_logging(args.debug, args.quiet)
    reporter = Reporter(quiet=args.quiet, debug=args.debug)
    try:
        config = effective_config(args)
        _located_archive(args, config)
        return int(args.handler(args, config, reporter) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, CommandError, Exception) as error:
        if args.debug:
            raise
        message = damage_behind(getattr(args, "archive", None), error) or _one_line(error)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
