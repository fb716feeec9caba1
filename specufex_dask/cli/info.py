"""``specufex-dask info``: what an archive holds, as text or JSON."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.cli.archive import CONFIG_ATTR, OUTPUT_VARIABLES, open_archive, open_model
from specufex_dask.cli.base import Commands, plural
from specufex_dask.cli.config import Config
from specufex_dask.cli.progress import Reporter

__all__ = ["archive_summary", "cmd_info", "describe_archive", "register"]


def register(commands: Commands) -> None:
    """Add the ``info`` command."""
    info = commands.add(
        "info",
        "what an archive holds",
        "Print the size and chunking of an archive, the preprocessing parameters, which "
        "outputs exist, the model summary, the rejected inputs and the stored "
        "configuration.",
        cmd_info,
        archive="archive (Zarr directory)",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument(
        "--check",
        action="store_true",
        help="also read every chunk file of the spectrograms and of the transformed outputs "
        "and list those damaged or missing (a full pass over the archive); exit 1 if any",
    )


def cmd_info(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """Print what an archive holds."""
    from specufex_dask.io.chunkread import damaged_chunks

    dataset = open_archive(args.archive)
    model = open_model(args.archive)
    problems = damaged_chunks(args.archive, limit=1000) if args.check else None
    if args.json:
        summary = archive_summary(args.archive, dataset, model)
        if problems is not None:
            summary["damaged_chunks"] = problems
        print(json.dumps(summary, indent=2, default=str))
    else:
        lines = describe_archive(args.archive, dataset, model)
        if problems is not None:
            lines.append(f"chunk files checked: {len(problems)} damaged or missing")
            lines.extend(f"  {problem}" for problem in problems)
        print("\n".join(lines))
    return 1 if problems else 0


def _chunk_summary(variable) -> list[int] | None:
    chunks = variable.encoding.get("chunks") or variable.encoding.get("preferred_chunks")
    if isinstance(chunks, dict):
        chunks = [chunks[d] for d in variable.dims]
    if chunks is None and variable.chunks is not None:
        chunks = [max(c) for c in variable.chunks]
    return None if chunks is None else [int(c) for c in chunks]


def _output_summary(variable, applied_model: str | None = None) -> dict[str, Any]:
    """Dims and shape of an output; for the transform's outputs also how many events are
    done, whether the transform is complete, whether the stored model made them, and
    where the model a ``transform --model`` applied came from (``applied_model``)."""
    from specufex_dask.io.status import OUTPUTS, STATUS_ATTRS

    summary: dict[str, Any] = {"dims": list(variable.dims), "shape": list(variable.shape)}
    if variable.name in OUTPUTS:
        summary.update({key: variable.attrs.get(key) for key in STATUS_ATTRS})
        summary["applied_model"] = applied_model
    return summary


def _applied_model(path: str | Path, dataset) -> str | None:
    """Where the model that a ``transform --model`` applied came from, or None."""
    from specufex_dask.io.status import applied_model

    record = applied_model(dataset.attrs, str(path))
    return None if record is None else record.get("source")


def _lease_summary(path: str | Path) -> dict[str, Any] | None:
    """Who holds the archive's lease (a writer at work, or one that died), or None."""
    import time

    from specufex_dask.io.lease import lease_file, read_lease

    holder = read_lease(path)
    if holder is None:
        return None
    return {
        "command": holder.command,
        "pid": holder.pid,
        "host": holder.host,
        "owner": holder.owner,
        "started": holder.started,
        "heartbeat_age_s": round(time.time() - holder.heartbeat, 1),
        "file": str(lease_file(path).path),
        "description": holder.describe(time.time()),
    }


def _status_text(path: str | Path, output: dict[str, Any]) -> str:
    """``; 8 of 16 events done, transform incomplete (run ...)`` for an output."""
    if output.get("events_done") is None and output.get("complete") is None:
        return "" if "complete" not in output else "; no transform record"
    parts = [f"{output['events_done']} of {output['shape'][0]} events done"]
    if output["complete"] is False:
        parts.append(f"transform incomplete (run `specufex-dask transform --resume {path}`)")
    elif output["complete"]:
        parts.append("complete")
    if output["model_match"] is False:
        parts.append(
            f"written by another model than the stored one (run `specufex-dask transform {path}`)"
        )
    elif output["model_match"] and output.get("applied_model"):
        parts.append(f"made by the model of {output['applied_model']} (transform --model)")
    elif output["model_match"]:
        parts.append("made by the stored model")
    return "; " + ", ".join(parts)


def archive_summary(path: str | Path, dataset, model) -> dict[str, Any]:
    """Everything ``info`` reports, as plain data."""
    from specufex_dask.io.archive import (
        read_rejected,
        spectrogram_parameters,
        stored_shard_events,
    )

    spectrogram = dataset["spectrogram"]
    chunks = _chunk_summary(spectrogram)
    n_events = int(dataset.sizes["event"])
    summary: dict[str, Any] = {
        "path": str(path),
        "archive_version": dataset.attrs.get("specufex_dask_archive_version"),
        "created_with": dataset.attrs.get("created_with"),
        "n_events": n_events,
        "n_frequencies": int(dataset.sizes["frequency"]),
        "n_times": int(dataset.sizes["time"]),
        "frequency_range_hz": [
            float(dataset["frequency"].min()),
            float(dataset["frequency"].max()),
        ],
        "time_range_s": [float(dataset["time"].min()), float(dataset["time"].max())],
        "dtype": str(spectrogram.dtype),
        "chunks": chunks,
        "n_chunks": None if not chunks else math.ceil(n_events / chunks[0]),
        "shard_events": stored_shard_events(spectrogram.encoding),
        "spectrogram_parameters": spectrogram_parameters(dataset),
        "outputs": {
            name: _output_summary(dataset[name], _applied_model(path, dataset))
            if name in dataset.variables
            else None
            for name in OUTPUT_VARIABLES
        },
        "lease": _lease_summary(path),
        "rejected": [r._asdict() for r in read_rejected(dataset)],
        "model": None,
        "configuration": json.loads(dataset.attrs[CONFIG_ATTR])
        if CONFIG_ATTR in dataset.attrs
        else None,
    }
    if "cluster" in dataset.variables:
        labels, counts = np.unique(np.asarray(dataset["cluster"].values), return_counts=True)
        summary["cluster_sizes"] = {int(k): int(v) for k, v in zip(labels, counts, strict=True)}
        from specufex_dask.io.status import cluster_problem

        summary["cluster_problem"] = cluster_problem(dataset, str(path))
    if model is not None:
        summary["model"] = {
            "variables": {
                str(name): list(model[name].shape) for name in sorted(map(str, model.data_vars))
            },
            "n_patterns": int(model.sizes["pattern"]) if "pattern" in model.sizes else None,
            "n_states": int(model.sizes["state"]) if "state" in model.sizes else None,
            "attributes": {str(k): v for k, v in model.attrs.items()},
        }
    return summary


def describe_archive(path: str | Path, dataset, model) -> list[str]:
    """Human-readable lines of :func:`archive_summary`."""
    s = archive_summary(path, dataset, model)
    lines = [
        f"archive: {s['path']}",
        f"  format version {s['archive_version']}, created with {s['created_with']}",
        f"events: {s['n_events']}",
        f"spectrogram: {s['n_events']} events x {s['n_frequencies']} frequencies "
        f"({s['frequency_range_hz'][0]:g}-{s['frequency_range_hz'][1]:g} Hz) x "
        f"{s['n_times']} times ({s['time_range_s'][0]:g}-{s['time_range_s'][1]:g} s), "
        f"{s['dtype']}",
    ]
    if s.get("shard_events"):
        n_shards = math.ceil(s["n_events"] / s["shard_events"])
        lines.append(
            f"shards: {s['shard_events']} events per shard file ({plural(n_shards, 'shard')}) "
            f"in chunks of {s['chunks'][0]} event(s), chunk shape {tuple(s['chunks'])}"
        )
    elif s["chunks"]:
        lines.append(
            f"chunks: {s['chunks'][0]} events per chunk ({plural(s['n_chunks'], 'chunk')}), "
            f"chunk shape {tuple(s['chunks'])}"
        )
    if s["spectrogram_parameters"]:
        parameters = ", ".join(f"{k}={v}" for k, v in sorted(s["spectrogram_parameters"].items()))
        lines.append(f"preprocessing: {parameters}")
    lines.append("outputs:")
    for name, output in s["outputs"].items():
        if output is None:
            lines.append(f"  {name}: missing")
        else:
            dims = " x ".join(
                f"{n} {d}" for n, d in zip(output["shape"], output["dims"], strict=True)
            )
            lines.append(f"  {name}: {dims}{_status_text(path, output)}")
    if "cluster_sizes" in s:
        sizes = ", ".join(f"{k}: {v}" for k, v in s["cluster_sizes"].items())
        lines.append(f"  cluster sizes: {sizes}")
        if s.get("cluster_problem"):
            lines.append(f"  stale: {s['cluster_problem']}")
    if s["model"] is None:
        lines.append("model: none (run `specufex-dask fit`)")
    else:
        m = s["model"]
        lines.append(f"model: {m['n_patterns']} patterns, {m['n_states']} states")
        for key, value in sorted(m["attributes"].items()):
            text = str(value)
            lines.append(f"  {key}: {text if len(text) <= 100 else text[:97] + '...'}")
    if s["lease"] is not None:
        lines.append(f"lease: held by {s['lease']['description']} in {s['lease']['file']}")
    lines.append(f"rejected inputs: {len(s['rejected'])}")
    for row in s["rejected"][:20]:
        event = f" (event {row['event']})" if row["event"] else ""
        lines.append(f"  {row['source']}{event}: {row['reason']}")
    if len(s["rejected"]) > 20:
        lines.append(f"  ... and {len(s['rejected']) - 20} more")
    if s["configuration"] is not None:
        commands = [entry["command"] for entry in s["configuration"].get("history", [])]
        lines.append(f"configuration stored in {CONFIG_ATTR!r}; commands: {', '.join(commands)}")
    return lines
