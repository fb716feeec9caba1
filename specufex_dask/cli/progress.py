"""Progress and status lines of the command line, on stderr (silenced by ``--quiet``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np

__all__ = ["Reporter", "format_progress"]


class Reporter:
    """Progress and status messages on stderr, silenced by ``--quiet``.

    Parameters
    ----------
    quiet : bool, default=False
        Print nothing.
    stream : file, optional
        Where to print; None means the ``sys.stderr`` of the moment of each message.
    debug : bool, default=False
        ``--debug``: everything the libraries log is shown, tracebacks included (the
        Dask workers' logs of failed tasks too, see :func:`specufex_dask.cli.base.dask_client`).
    """

    def __init__(
        self, quiet: bool = False, stream: TextIO | None = None, *, debug: bool = False
    ) -> None:
        self.quiet = quiet
        self.debug = debug
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
