"""What the commands share: the program name, user-facing errors, the way a command is
added to the parser, and the Dask client a command runs on."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

from specufex_dask.cli.config import Config
from specufex_dask.cli.progress import Reporter

__all__ = [
    "PROG",
    "CommandError",
    "Commands",
    "Handler",
    "chunk_events",
    "dask_client",
    "plural",
    "spectrogram_parameters",
    "wrap",
]

PROG = "specufex-dask"

Handler = Callable[[argparse.Namespace, Config, Reporter], int]
"""A command: its parsed arguments, the effective configuration, the reporter; returns
the exit code."""


class CommandError(Exception):
    """A user-facing failure of a command (printed as one line, no traceback)."""


def wrap(text: str, width: int = 88) -> str:
    """Fill each paragraph of ``text``; paragraphs starting with "examples:" stay as written."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        paragraph if paragraph.startswith("examples:") else textwrap.fill(paragraph, width)
        for paragraph in paragraphs
    )


@dataclass(frozen=True)
class Commands:
    """Adds the subcommands of ``specufex-dask``.

    Attributes
    ----------
    subparsers : argparse subparsers action
    common : argparse.ArgumentParser
        The general options (``--config``, ``--quiet``, ``--debug``) every command takes.
    defaults : Config
        The defaults the help of the configuration flags shows.
    """

    subparsers: Any
    common: argparse.ArgumentParser
    defaults: Config

    def add(
        self, name: str, summary: str, description: str, handler: Handler, archive: str = ""
    ) -> argparse.ArgumentParser:
        """A new subcommand ``name`` that runs ``handler``; with ``archive``, the help of
        its first positional argument ARCHIVE."""
        sub = self.subparsers.add_parser(
            name,
            parents=[self.common],
            help=summary,
            description=wrap(description),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        if archive:
            sub.add_argument("archive", metavar="ARCHIVE", help=archive)
        return sub


def plural(count: int, noun: str) -> str:
    """``1 event``, ``2 events``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def spectrogram_parameters(config: Config):
    """The ``SpectrogramParameters`` of ``config.spectrograms``."""
    from specufex_dask.ingest.preprocessing import SpectrogramParameters

    return SpectrogramParameters(**config.spectrograms.parameters())


class ChunkEvents(TypedDict, total=False):
    """Keywords of the archive writers that the configuration may set."""

    chunk_events: int


def chunk_events(config: Config) -> ChunkEvents:
    """The ``chunk_events`` keyword of the archive writers, when the configuration sets it."""
    chunk = config.spectrograms.events_per_chunk
    return {} if chunk is None else {"chunk_events": chunk}


@contextlib.contextmanager
def dask_client(config: Config, reporter: Reporter) -> Iterator[Any]:
    """Connect to (or start) the Dask cluster of ``config.dask``; yield the client.

    Unless ``reporter.debug``, the workers log no report of a failed task while the
    command runs: a local cluster's workers would print it, traceback and all, ahead of
    the command's one-line error. Every pass of the command waits
    ``config.dask.no_worker_timeout`` without workers before failing.
    """
    from specufex_dask.parallel.clusters import connect, connect_options_from_config
    from specufex_dask.parallel.executor import waiting_for_workers
    from specufex_dask.parallel.workersetup import quiet_task_failures

    settings = dataclasses.asdict(config.dask)
    # Empty mappings mean "not set"; connect() would read an empty security as TLS on.
    settings = {k: v for k, v in settings.items() if v not in ({}, None)}
    options = connect_options_from_config(settings)
    with connect(**options) as handle:
        where = options.get("scheduler") or f"a new {options.get('cluster', 'local')} cluster"
        reporter.say(f"Dask: {where}; dashboard {handle.dashboard_link}")
        quiet = contextlib.nullcontext() if reporter.debug else quiet_task_failures(handle.client)
        with quiet, waiting_for_workers(config.dask.no_worker_timeout):
            yield handle.client
