"""The Dask side of the pipeline: per-chunk tasks, the fixed-order reducer, checkpoints.

Workers run the functions prefixed ``_task_``: they get one event chunk of the
spectrogram array (read from Zarr where the task runs), the small global parameters of
the step, and return either nodes of the fixed summation tree
(:func:`specufex_dask.stats.tree_nodes`) or, for the transform, write their own region
of the output arrays. Spectrograms never travel to the driver; the driver folds the
nodes (:func:`specufex_dask.stats.tree_root`) and applies the global update.

Minibatches are drawn from the seed and the step number only, every event's statistics
are computed on its own (:mod:`specufex_dask.steps`) and summed in a tree fixed by the
minibatch, so a fit gives the same bits for any chunking and any number of workers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from . import archive
from .models import BayesianHMM, BayesianNonparametricNMF
from .persistence import FORMAT_VERSION, build_model, model_state
from .stats import tree_nodes, tree_root
from .steps import (
    HMMStepParameters,
    NMFStepParameters,
    hmm_leaves,
    hmm_outputs,
    nmf_activations,
    nmf_leaves,
)

__all__ = [
    "EventChunks",
    "check_values",
    "hmm_statistics",
    "nmf_statistics",
    "read_model_group",
    "transform_chunks",
    "write_model_group",
]

TRANSFORMED = "transformed"
TASK_EVENTS = 256  # events per task of a pass over all events
TRANSFORM_TOKEN_ATTR = "specufex_dask_transform_model"
TRANSFORM_COMPLETE_ATTR = "specufex_dask_transform_complete"
MODEL_VERSION_ATTR = "specufex_dask_model_version"


# ----------------------------------------------------------------------------- data


@dataclass
class EventChunks:
    """A spectrogram collection split into event chunks, as Dask blocks.

    Attributes
    ----------
    blocks : list of dask.delayed.Delayed
        One (n_i, D, M) block per chunk; computing one reads that chunk only.
    bounds : list of (start, stop)
        Event range of every chunk.
    event : ndarray of str
        Event ids.
    frequency : ndarray
        Frequencies (Hz), or bin indices when unknown.
    shape : (N, D, M)
    dtype : numpy dtype
    path : str or None
        The archive, when the data came from one.
    array : dask.array.Array
        The spectrograms.
    """

    blocks: list
    bounds: list[tuple[int, int]]
    event: np.ndarray
    frequency: np.ndarray
    shape: tuple[int, int, int]
    dtype: np.dtype
    path: str | None = None
    array: Any = None
    frequency_known: bool = True

    @classmethod
    def from_data(cls, data: Any, chunk_events: int = archive.DEFAULT_CHUNK_EVENTS):
        """From an archive path, an xarray Dataset (with ``spectrogram``) or DataArray."""
        path = None
        if isinstance(data, (str, os.PathLike)):
            path = str(data)
            data = archive.open_archive(path)
        if isinstance(data, xr.Dataset):
            if archive.SPECTROGRAM not in data:
                raise archive.ArchiveError(
                    f"dataset has no {archive.SPECTROGRAM!r} variable (has {list(data)})"
                )
            data = data[archive.SPECTROGRAM]
        if not isinstance(data, xr.DataArray):
            raise TypeError(
                f"expected an archive path, xarray Dataset or DataArray, got {type(data)}"
            )
        dims = (archive.EVENT, archive.FREQUENCY, archive.TIME)
        if data.dims != dims:
            raise archive.ArchiveError(f"spectrogram dims are {data.dims}, expected {dims}")
        if data.sizes[archive.EVENT] == 0:
            raise archive.ArchiveError("spectrogram has no events")
        if data.dtype.kind != "f":
            data = data.astype(np.float64)
        array = data.data
        if not isinstance(array, dask.array.Array):
            array = dask.array.from_array(np.asarray(array), chunks=(chunk_events, -1, -1))
        else:
            array = array.rechunk({1: -1, 2: -1})
        starts = np.concatenate([[0], np.cumsum(array.chunks[0])])
        bounds = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        event = (
            np.array([str(v) for v in data[archive.EVENT].values.tolist()], dtype=object)
            if archive.EVENT in data.coords
            else np.arange(array.shape[0]).astype(str)
        )
        frequency = (
            data[archive.FREQUENCY].values
            if archive.FREQUENCY in data.coords
            else np.arange(array.shape[1], dtype=float)
        )
        return cls(
            blocks=list(array.to_delayed().ravel()),
            bounds=bounds,
            event=event,
            frequency=frequency,
            shape=tuple(int(v) for v in array.shape),
            dtype=array.dtype,
            path=path,
            array=array,
            frequency_known=archive.FREQUENCY in data.coords,
        )

    @property
    def chunk_events(self) -> int:
        """Events per (storage) chunk."""
        return self.bounds[0][1] - self.bounds[0][0]

    def merged(self, min_events: int | None = None) -> EventChunks:
        """The same data in tasks of whole consecutive chunks, each >= ``min_events``.

        Kernels amortise their per-call work over a batch (the HMM's time loop above
        all), so a pass over every event wants larger tasks than an SVI step does.
        """
        min_events = TASK_EVENTS if min_events is None else min_events
        sizes, current = [], 0
        for start, stop in self.bounds:
            current += stop - start
            if current >= min_events:
                sizes.append(current)
                current = 0
        if current:
            sizes.append(current)
        if len(sizes) == len(self.bounds):
            return self
        array = self.array.rechunk({0: tuple(sizes)})
        starts = np.concatenate([[0], np.cumsum(sizes)])
        return replace(
            self,
            blocks=list(array.to_delayed().ravel()),
            bounds=[(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)],
            array=array,
        )

    def split(self, index: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
        """``(chunk, local indices, first minibatch position)`` for sorted event indices."""
        starts = np.array([start for start, _ in self.bounds])
        chunk_of = np.searchsorted(starts, index, side="right") - 1
        parts = []
        position = 0
        for chunk in np.unique(chunk_of):
            local = index[chunk_of == chunk] - starts[chunk]
            parts.append((int(chunk), local, position))
            position += len(local)
        return parts


def _on_workers(params):
    """Step parameters for tasks, as one graph key that every task of the step shares.

    Dask already runs one task per worker thread, so the kernels get one thread; the
    shared key sends the (frequencies x patterns) arrays once per worker, not per task.
    """
    return dask.delayed(replace(params, threads=1), pure=True)


def _compute(client: Any, tasks: Sequence) -> list:
    """Run delayed tasks on the client (or dask's current scheduler without one)."""
    if client is None:
        return list(dask.compute(*tasks))
    return client.gather(client.compute(list(tasks)))


# ----------------------------------------------------------------------------- worker tasks


def _checked(block: np.ndarray, ids: np.ndarray) -> np.ndarray:
    problems = archive.check_spectrogram_values(block, ids)
    if problems:
        listing = "; ".join(f"{event}: {reason}" for event, reason in problems[:10])
        more = f" ... ({len(problems)} events in all)" if len(problems) > 10 else ""
        raise archive.ArchiveError(f"bad spectrogram values in events {listing}{more}")
    return block


def _task_check(block: np.ndarray, ids: np.ndarray) -> list[tuple[str, str]]:
    return archive.check_spectrogram_values(np.asarray(block), ids)


def _nmf_leaves(X: np.ndarray, nmf: NMFStepParameters) -> list:
    return nmf_leaves(X, nmf)


def _hmm_leaves(X: np.ndarray, nmf: NMFStepParameters, hmm: HMMStepParameters) -> list:
    return hmm_leaves(nmf_activations(X, nmf), hmm)


def _task_nodes(block, local, ids, position, total, leaves, *params) -> dict:
    """Tree nodes of the minibatch events of one chunk (``leaves``: per-event statistics)."""
    X = _checked(np.asarray(block)[local], ids)
    return tree_nodes(leaves(X, *params), position, total)


def _task_transform(block, ids, nmf: NMFStepParameters, hmm: HMMStepParameters):
    X = _checked(np.asarray(block), ids)
    activation = nmf_activations(X, nmf)
    fingerprint, transition, state_probability = hmm_outputs(activation, hmm)
    return activation, state_probability, transition, fingerprint


def _task_transform_to_zarr(block, ids, start, path, nmf, hmm) -> tuple[int, int]:
    outputs = _task_transform(block, ids, nmf, hmm)
    for name, values in zip(OUTPUT_NAMES, outputs, strict=True):
        archive.write_region(path, name, start, values)
    # Written last: a chunk counts as done only once all its outputs are on disk.
    return archive.write_region(path, TRANSFORMED, start, np.ones(len(ids), dtype=bool))


# ----------------------------------------------------------------------------- driver side


def require_writable(path: str, what: str) -> None:
    """Fail before any work when the archive cannot take ``what``."""
    folder = Path(path)
    # Root may write anywhere; an archive whose write bits are all cleared was still
    # meant to be left alone.
    if not all(
        os.access(item, os.W_OK) and item.stat().st_mode & 0o222
        for item in (folder, folder / "zarr.json")
    ):
        raise archive.ArchiveError(f"archive {path} is read-only: cannot write the {what}")


def check_values(chunks: EventChunks, client: Any) -> None:
    """One parallel pass over every chunk; raise naming the events with bad values."""
    chunks = chunks.merged()
    tasks = [
        dask.delayed(_task_check)(block, chunks.event[start:stop])
        for block, (start, stop) in zip(chunks.blocks, chunks.bounds, strict=True)
    ]
    problems = [item for found in _compute(client, tasks) for item in found]
    if problems:
        listing = "; ".join(f"{event}: {reason}" for event, reason in problems[:10])
        more = f" ... ({len(problems)} events in all)" if len(problems) > 10 else ""
        where = f" of {chunks.path}" if chunks.path else ""
        raise archive.ArchiveError(f"bad spectrogram values{where} in events {listing}{more}")


def _minibatch_statistics(chunks: EventChunks, index: np.ndarray, client, leaves, *params):
    """Statistics of the minibatch ``index`` (sorted event indices), folded in fixed order."""
    params = tuple(_on_workers(p) for p in params)
    tasks = [
        dask.delayed(_task_nodes)(
            chunks.blocks[chunk], local, chunks.event[index[position : position + len(local)]],
            position, len(index), leaves, *params,
        )
        for chunk, local, position in chunks.split(index)
    ]  # fmt: skip
    nodes: dict = {}
    for part in _compute(client, tasks):
        nodes.update(part)
    return tree_root(nodes, len(index))


def nmf_statistics(chunks: EventChunks, index: np.ndarray, params, client: Any):
    """NMF statistics of the minibatch ``index`` (sorted event indices)."""
    return _minibatch_statistics(chunks, index, client, _nmf_leaves, params)


def hmm_statistics(chunks: EventChunks, index: np.ndarray, nmf_params, hmm_params, client):
    """HMM statistics of the minibatch; activations are computed where the chunk is."""
    return _minibatch_statistics(chunks, index, client, _hmm_leaves, nmf_params, hmm_params)


OUTPUT_NAMES = (
    archive.ACTIVATION,
    archive.STATE_PROBABILITY,
    archive.TRANSITION,
    archive.FINGERPRINT,
)


def output_dims() -> dict[str, tuple[str, ...]]:
    """Dimensions of every output variable."""
    e, p, s, n, t = (
        archive.EVENT, archive.PATTERN, archive.STATE, archive.NEXT_STATE, archive.TIME
    )  # fmt: skip
    return {
        archive.ACTIVATION: (e, p, t),
        archive.STATE_PROBABILITY: (e, s, t),
        archive.TRANSITION: (e, s, n),
        archive.FINGERPRINT: (e, s, n),
    }


def lazy_transform(chunks: EventChunks, nmf_params, hmm_params) -> xr.Dataset:
    """The four outputs as a lazy Dataset (nothing computed yet)."""
    chunks = chunks.merged()
    M = chunks.shape[2]
    K = nmf_params.log_basis.shape[1]
    S = hmm_params.rate.shape[0]
    dtype = np.dtype(nmf_params.dtype)
    nmf_params, hmm_params = _on_workers(nmf_params), _on_workers(hmm_params)
    pieces: dict[str, list] = {name: [] for name in OUTPUT_NAMES}
    for block, (start, stop) in zip(chunks.blocks, chunks.bounds, strict=True):
        outputs = dask.delayed(_task_transform, nout=4)(
            block, chunks.event[start:stop], nmf_params, hmm_params
        )
        n = stop - start
        shapes = [(n, K, M), (n, S, M), (n, S, S), (n, S, S)]
        for name, value, shape in zip(OUTPUT_NAMES, outputs, shapes, strict=True):
            pieces[name].append(dask.array.from_delayed(value, shape=shape, dtype=dtype))
    dims = output_dims()
    variables = {
        name: (dims[name], dask.array.concatenate(parts, axis=0)) for name, parts in pieces.items()
    }
    return xr.Dataset(variables, coords={archive.EVENT: chunks.event})


def _prepare_outputs(path: str, chunks: EventChunks, K: int, S: int, dtype, token: str) -> None:
    """Create empty output arrays (chunked like the events) and the done markers."""
    import zarr

    N, _, M = chunks.shape
    chunk_events = chunks.chunk_events
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    shapes = {
        archive.ACTIVATION: (N, K, M),
        archive.STATE_PROBABILITY: (N, S, M),
        archive.TRANSITION: (N, S, S),
        archive.FINGERPRINT: (N, S, S),
    }
    for name, shape in shapes.items():
        group.create_array(
            name, shape=shape, chunks=(chunk_events,) + shape[1:], dtype=dtype,
            fill_value=np.nan, dimension_names=output_dims()[name], overwrite=True,
        )  # fmt: skip
    group.create_array(
        TRANSFORMED, shape=(N,), chunks=(chunk_events,), dtype=bool, fill_value=False,
        dimension_names=(archive.EVENT,), overwrite=True,
    )  # fmt: skip
    group.attrs.update({TRANSFORM_TOKEN_ATTR: token, TRANSFORM_COMPLETE_ATTR: False})
    archive._consolidate(path)


def _resumable(path: str, chunks: EventChunks, token: str) -> np.ndarray | None:
    """Done markers of an earlier transform with the same model, or None."""
    import zarr

    group = zarr.open_group(path, mode="r", use_consolidated=False)
    if group.attrs.get(TRANSFORM_TOKEN_ATTR) != token or TRANSFORMED not in group:
        return None
    done = group[TRANSFORMED][:]
    return done if done.shape == (chunks.shape[0],) else None


def transform_chunks(
    chunks: EventChunks,
    nmf_params,
    hmm_params,
    token: str,
    client: Any,
    *,
    resume: bool = False,
    progress=None,
) -> int:
    """Write the outputs of every chunk into the archive from the workers.

    Returns the number of chunks computed (chunks already done are skipped on resume).
    """
    if chunks.path is None:
        raise ValueError("transform_to_zarr needs data opened from an archive path")
    path = chunks.path
    require_writable(path, "transform outputs")
    K = nmf_params.log_basis.shape[1]
    S = hmm_params.rate.shape[0]
    done = _resumable(path, chunks, token) if resume else None
    if done is None:
        _prepare_outputs(path, chunks, K, S, np.dtype(nmf_params.dtype), token)
        done = np.zeros(chunks.shape[0], dtype=bool)
    nmf_params, hmm_params = _on_workers(nmf_params), _on_workers(hmm_params)
    # tasks of whole storage chunks: their output regions never share a Zarr chunk
    chunks = chunks.merged()
    todo = [
        (block, start, stop)
        for block, (start, stop) in zip(chunks.blocks, chunks.bounds, strict=True)
        if not done[start:stop].all()
    ]
    tasks = [
        dask.delayed(_task_transform_to_zarr)(
            block, chunks.event[start:stop], start, path, nmf_params, hmm_params
        )
        for block, start, stop in todo
    ]
    if client is None:
        _compute(None, tasks)
    else:
        from distributed import as_completed

        futures = client.compute(tasks)
        for finished, future in enumerate(as_completed(futures, loop=client.loop), start=1):
            future.result()
            if progress is not None:
                progress("transform", {"chunk": finished, "n_chunks": len(tasks)})
    import zarr

    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.attrs[TRANSFORM_COMPLETE_ATTR] = True
    archive._consolidate(path)
    return len(tasks)


# ----------------------------------------------------------------------------- model group


def _state_variables(model: Any, kind: str) -> dict[str, tuple]:
    arrays, _, _ = model_state(model)
    if kind == "nmf":
        fp = (archive.FREQUENCY, archive.PATTERN)
        return {
            "W1": (fp, arrays["W1"]),
            "W2": (fp, arrays["W2"]),
            "A1": ((archive.PATTERN,), arrays["A1"].ravel()),
            "A2": ((archive.PATTERN,), arrays["A2"].ravel()),
            "EW": (fp, model.EW),
            "EA": ((archive.PATTERN,), model.EA.ravel()),
            "ElnWA": (fp, model.ElnWA),
            "gain": ((archive.PATTERN,), model.gain),
        }
    sp = (archive.STATE, archive.PATTERN)
    return {
        "B1": (sp, arrays["B1"]),
        "B2": (sp, arrays["B2"]),
        "EB": (sp, model.EB),
        "ElnB": (sp, model.ElnB),
        "hmm_gain": ((archive.PATTERN,), arrays["gain"]),
    }


def write_model_group(
    path: str, nmf: BayesianNonparametricNMF, hmm: BayesianHMM | None, progress: dict
) -> None:
    """Write the fit state into ``<archive>/model`` atomically, with provenance.

    The group is written beside the archive's ``model`` folder and swapped in with two
    renames; a crash between them leaves ``.model.old-*``, which
    :func:`read_model_group` falls back to.
    """
    variables = _state_variables(nmf, "nmf")
    attrs: dict[str, Any] = {
        MODEL_VERSION_ATTR: FORMAT_VERSION,
        "progress": json.dumps(progress),
        "nmf_state": json.dumps(_scalars_and_settings(nmf)),
    }
    if hmm is not None:
        variables.update(_state_variables(hmm, "hmm"))
        attrs["hmm_state"] = json.dumps(_scalars_and_settings(hmm))
    coords = {archive.FREQUENCY: np.asarray(_frequency(path, nmf.dim))}
    dataset = xr.Dataset(variables, coords=coords, attrs=attrs)
    root = Path(path)
    partial = root / f".model.partial-{uuid.uuid4().hex}"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        dataset.to_zarr(str(partial), mode="w", consolidated=False, zarr_format=3)
    final = root / archive.MODEL_GROUP
    old = root / f".model.old-{uuid.uuid4().hex}"
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    archive._consolidate(path)


def _frequency(path: str, n_frequencies: int) -> np.ndarray:
    import zarr

    group = zarr.open_group(path, mode="r", use_consolidated=False)
    if archive.FREQUENCY in group and group[archive.FREQUENCY].shape == (n_frequencies,):
        return group[archive.FREQUENCY][:]
    return np.arange(n_frequencies, dtype=float)


def _scalars_and_settings(model: Any) -> dict[str, Any]:
    _, scalars, settings = model_state(model)
    return {"scalars": scalars, "settings": settings, "elbo_": list(map(float, model.elbo_))}


def read_model_group(path: str):
    """``(nmf, hmm or None, progress)`` from ``<archive>/model``, or None without one."""
    root = Path(path)
    folder = root / archive.MODEL_GROUP
    if not folder.exists():
        leftovers = sorted(root.glob(".model.old-*"))
        if not leftovers:
            return None
        os.replace(leftovers[-1], folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        dataset = xr.open_zarr(str(folder), consolidated=False).load()
    if int(dataset.attrs.get(MODEL_VERSION_ATTR, 0)) > FORMAT_VERSION:
        raise archive.ArchiveError(
            f"{folder}: model version {dataset.attrs[MODEL_VERSION_ATTR]} is newer than this "
            "package reads"
        )
    nmf_state = json.loads(dataset.attrs["nmf_state"])
    nmf = build_model(
        BayesianNonparametricNMF,
        {
            "W1": dataset["W1"].values,
            "W2": dataset["W2"].values,
            "A1": dataset["A1"].values[None, :],
            "A2": dataset["A2"].values[None, :],
            **nmf_state["scalars"],
            "elbo_": nmf_state["elbo_"],
        },
        nmf_state["settings"],
    )
    hmm = None
    if "hmm_state" in dataset.attrs:
        hmm_state = json.loads(dataset.attrs["hmm_state"])
        hmm = build_model(
            BayesianHMM,
            {
                "B1": dataset["B1"].values,
                "B2": dataset["B2"].values,
                "gain": dataset["hmm_gain"].values,
                **hmm_state["scalars"],
                "elbo_": hmm_state["elbo_"],
            },
            hmm_state["settings"],
        )
    return nmf, hmm, json.loads(dataset.attrs["progress"])
