"""The specufex-dask archive: one Zarr (format 3) group of spectrograms and results.

The schema is the shared contract of /work/notes/ARCHIVE.md:

- ``spectrogram`` (event, frequency, time), float32 or float64, chunked along ``event`` only
  (in new archives: Zarr shards of :data:`DEFAULT_SHARD_EVENTS` events, one-event inner
  chunks; before: plain chunks of ``chunk_events``);
- coordinates ``event`` (unique str ids), ``frequency`` (Hz), ``time`` (s) and per-event
  metadata on ``event`` (``starttime``, ``network``, ``station``, ``location``, ``channel``,
  ``source``, ``median``);
- attributes ``specufex_dask_archive_version``, ``spectrogram_parameters`` (JSON) and
  ``created_with``;
- the table of rejected inputs: dimension ``rejected`` with ``rejected_source``,
  ``rejected_reason`` and ``rejected_event``.

Completeness
------------
A new archive is built in a hidden sibling directory (``.<name>.partial-<hex>``) and renamed
into place only once every chunk, the rejected table and the attributes are written, so an
interrupted or failed write never leaves anything at the target path. Appends cannot be
renamed, so they first set the attribute ``specufex_dask_complete`` to ``False`` and set it
back to ``True`` last; :func:`open_archive` refuses a store whose attribute is ``False``. A
store without the attribute (written by other tools) is accepted.

Damage
------
Every array of a new archive is stored compressed (zstd; the ``spectrogram`` with
Blosc's LZ4, which the fit's random reads decode faster: :func:`spectrogram_checksummed`),
then checksummed (:func:`checksummed`: Zarr's crc32c codec last; in a shard, every inner
chunk and the shard index), so a damaged chunk is caught on read
and named by its file (:mod:`specufex_dask.io.chunkread`). Zarr format 2 stores, which
xarray writes with ``zarr_format=2``, are read but refused for writes
(:func:`require_zarr_v3`), with the command that converts them.

Note that ``xarray.Dataset.to_zarr(mode="a")`` replaces the group attributes with the
dataset's own; writers adding variables to an archive should carry ``ds.attrs`` along.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import uuid
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
import xarray as xr

from specufex_dask.common import __version__, check_positive_int, quiet_zarr
from specufex_dask.io.location import (
    ArchiveLocation,
    ArchivePath,
    as_location,
    is_local,
    store_or_path,
    zarr_array,
    zarr_group,
)

if TYPE_CHECKING:
    import zarr

logger = logging.getLogger(__name__)

# Variables and dimensions of ARCHIVE.md.
SPECTROGRAM = "spectrogram"
EVENT = "event"
FREQUENCY = "frequency"
TIME = "time"
PATTERN = "pattern"
STATE = "state"
NEXT_STATE = "next_state"
ACTIVATION = "activation"
STATE_PROBABILITY = "state_probability"
TRANSITION = "transition"
FINGERPRINT = "fingerprint"
CLUSTER = "cluster"
MODEL_GROUP = "model"

# Per-event metadata coordinates on ``event``.
STARTTIME = "starttime"
NETWORK = "network"
STATION = "station"
LOCATION = "location"
CHANNEL = "channel"
INPUT_FILE = "input_file"
# The event's source, as a catalog gives it (SeisBench's names, with units).
ORIGIN_TIME = "source_origin_time"
LATITUDE = "source_latitude_deg"
LONGITUDE = "source_longitude_deg"
DEPTH = "source_depth_km"
MAGNITUDE = "source_magnitude"
MAGNITUDE_TYPE = "source_magnitude_type"
EVENT_ID = "source_event_id"
"""Per-event coordinate: the file (or array) each spectrogram was computed from."""
SOURCE = "source"
"""The name :data:`INPUT_FILE` had before (it collided with SeisBench's ``source_*``
names); archives that use it are read with it renamed."""
MEDIAN = "median"

# The table of rejected inputs.
REJECTED = "rejected"
REJECTED_SOURCE = "rejected_source"
REJECTED_REASON = "rejected_reason"
REJECTED_EVENT = "rejected_event"

# Attributes.
ARCHIVE_VERSION = 1
VERSION_ATTR = "specufex_dask_archive_version"
PARAMETERS_ATTR = "spectrogram_parameters"
CREATED_WITH_ATTR = "created_with"
COMPLETE_ATTR = "specufex_dask_complete"
# Set by the engine; an append clears it since the new events have no outputs yet.
TRANSFORM_COMPLETE_ATTR = "specufex_dask_transform_complete"
# Set by the engine: the model a transform in progress uses, and the model group's format.
TRANSFORM_TOKEN_ATTR = "specufex_dask_transform_model"
MODEL_VERSION_ATTR = "specufex_dask_model_version"

# An SVI step reads the whole chunk of every event in its minibatch, so small chunks
# keep a step's reading close to what it uses; the transform merges chunks into larger
# tasks (specufex_dask.parallel.engine). On spectrograms like the ingested ones (half zeros,
# zstd), 16 random events cost 38 ms of CPU to read from 8-event chunks against 66 ms
# from 16-event ones, while a 256-event range costs the same (67 / 66 ms); with 4-event
# chunks the random read costs 29 ms but the range 89 ms (Zarr's cost per chunk).
DEFAULT_CHUNK_EVENTS = 8
# New archives store ``spectrogram`` in Zarr shards (one file each) of
# DEFAULT_SHARD_EVENTS events, each made of SHARD_CHUNK_EVENTS-event inner chunks with
# their own zstd and crc32c: a step then decompresses only the rows it draws, while the
# file count stays that of 256-event chunks. On 10k 513 x 51 float32 events, 64 random
# rows read in 95-104 ms from 256-event shards, 239-312 ms from 8-event chunks; 512-event
# shards read them in 78-92 ms but a 256-event range in 216-277 ms against 196-215
# (benchmarks/bench_chunkread.py --layouts). Writers fill whole shards (a shard is one
# object: two writers of one shard would race), so a write task holds 256 events.
DEFAULT_SHARD_EVENTS = 256
SHARD_CHUNK_EVENTS = 1
# 1-D per-event coordinates are tiny; large chunks keep the file count low.
_COORD_CHUNK = 65536
# Ids duplicate_ids converts to str and hashes at a time (about 5 MB as str).
_ID_BLOCK = _COORD_CHUNK
_STARTTIME_ENCODING = {"units": "nanoseconds since 1970-01-01", "dtype": "int64"}


# Attributes holding JSON text of an object, and how to repair each when it is not.
JSON_ATTRS = {
    PARAMETERS_ATTR: "write it back as the JSON object of the preprocessing parameters, "
    "or re-ingest",
    "specufex_dask_config": "delete it (the commands record their configuration again)",
}


class ArchiveError(ValueError):
    """The archive is missing, incomplete or does not follow the schema."""


class DiskFullError(ArchiveError):
    """A write ran out of disk space (the message says what was left intact)."""


class RejectedInput(NamedTuple):
    """One input left out of the archive, and why.

    Attributes
    ----------
    source : str
        The file path or trace/array id of the input.
    reason : str
        Why the input was left out.
    event : str
        The event id, or "" when it is unknown.
    """

    source: str
    reason: str
    event: str = ""


# ----------------------------------------------------------------------------- reading


def _to_str(values: npt.ArrayLike) -> np.ndarray:
    """Fixed-width str array from str, object or StringDType input (no direct cast exists)."""
    return np.array([str(v) for v in np.asarray(values).tolist()], dtype=str)


def _is_local(path: ArchivePath) -> bool:
    return path.local if isinstance(path, ArchiveLocation) else is_local(path)


def member_array(group: zarr.Group, name: str, refusal: str) -> zarr.Array:
    """``group[name]``, which must be an array: a group there raises ``refusal``.

    Raises
    ------
    ArchiveError
        With the message ``refusal`` (what is wrong, where, and the fix).
    """
    import zarr

    member = group[name]
    if not isinstance(member, zarr.Array):
        raise ArchiveError(refusal)
    return member


def _live_attrs(path: ArchivePath) -> dict[str, Any]:
    """Group attributes read from the group's own metadata, never from consolidated copies."""
    return dict(zarr_group(path, mode="r").attrs)


def open_archive(
    path: ArchivePath,
    *,
    with_dask: bool = True,
    stored_names: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    indexed: bool = True,
) -> xr.Dataset:
    """Open an archive lazily (dask-backed) and validate its schema.

    Parameters
    ----------
    path : str, Path or ArchiveLocation
        The Zarr group written by ingest, :func:`write_spectrograms` or the h5 import:
        a local path or an fsspec URL (``s3://bucket/x.zarr``, ``memory://x.zarr``).
    with_dask : bool, default=True
        Dask arrays in the storage chunks; False gives xarray's lazily indexed arrays,
        cheaper to open when only metadata and encodings are needed.
    stored_names : bool, default=False
        Keep the names as stored: an archive written before :data:`INPUT_FILE` was
        named so has ``source`` in its place, which is otherwise renamed.
    storage_options : mapping, optional
        Options of the fsspec file system of a URL (``endpoint_url``, ``key``...).
    indexed : bool, default=True
        Give the dimension coordinates xarray's (pandas) indexes, which selection by
        label (``ds.sel(event=...)``) needs. False leaves every coordinate, the event
        ids above all, lazily in the store: a fit or transform, which names events only
        when they hold bad values, then does not hold the ids (about 210 bytes an
        event as an index).

    Returns
    -------
    xarray.Dataset
        The archive; ``spectrogram`` is a dask array chunked along ``event`` (unless
        ``with_dask`` is False).

    Raises
    ------
    ArchiveError
        If the path is missing or not a Zarr group, the store is marked incomplete, or
        ``spectrogram`` is missing, has wrong dims, an empty event axis, or duplicate ids.

    Notes
    -----
    The values of the spectrograms (negative, non-finite) are not checked here because that
    needs a full pass; see :func:`check_spectrogram_values`. The transform's outputs
    carry how far they are in their attributes ``events_done``, ``complete`` and
    ``model_match`` (:mod:`specufex_dask.io.status`).

    Examples
    --------
    >>> path = write_spectrograms("events.zarr", np.ones((2, 3, 4)), ["a", "b"],
    ...                           [1.0, 2, 3], [0.0, 1, 2, 3])
    >>> ds = open_archive(path)
    >>> ds.spectrogram.dims, ds.spectrogram.shape
    (('event', 'frequency', 'time'), (2, 3, 4))
    """
    location = as_location(path, storage_options)
    path_str = str(path)  # as given; a location shows its URL, never its options
    if not location.local:
        require_reachable(location)
    if not location.exists():
        raise ArchiveError(f"archive not found: {path_str} does not exist")
    source = store_or_path(location)
    try:
        attrs = _live_attrs(source)
    except Exception as error:  # zarr raises several types for "not a group"
        raise ArchiveError(f"{path_str} is not a Zarr group: {error}") from error
    if attrs.get(COMPLETE_ATTR) is False:
        raise ArchiveError(
            f"archive {path_str} is incomplete: attribute {COMPLETE_ATTR!r} is False (a write "
            "or append was interrupted); re-run the ingest"
        )
    for name, fix in JSON_ATTRS.items():
        json_attribute(attrs, name, path_str, fix)
    with quiet_zarr():  # stores from other writers may lack consolidated metadata
        try:
            ds = xr.open_zarr(
                location.open_store("r"),
                chunks={} if with_dask else None,
                create_default_indexes=indexed,
            )
        except Exception as error:
            raise ArchiveError(
                f"cannot open {path_str} as an xarray Zarr store: {error}"
            ) from error
    validate_archive(ds, where=path_str)
    if with_dask:
        ds = _dask_by_shards(ds, location)
    if not stored_names and SOURCE in ds.coords and INPUT_FILE not in ds.variables:
        ds = ds.rename({SOURCE: INPUT_FILE})
    # imported here: the module reads the model group, whose module imports this one
    from specufex_dask.io.status import output_status

    for name, status in output_status(source, ds.sizes[EVENT]).items():
        ds[name].attrs.update(status.attrs())
    return ds


def _dask_by_shards(ds: xr.Dataset, location: ArchiveLocation) -> xr.Dataset:
    """``ds`` with a sharded ``spectrogram`` (of the archive at ``location``) in dask
    chunks of whole shards.

    xarray makes a dask chunk of every inner chunk (one event): n_events tasks, each a
    Zarr read (8 ms for 1000 tiny events), which rechunking would only add to; so the
    array is built again from its lazily indexed form, one read per shard.
    """
    shard_events = stored_shard_events(ds[SPECTROGRAM].encoding)
    if shard_events is None:
        return ds
    others = [str(name) for name in ds.variables if name != SPECTROGRAM]
    with quiet_zarr():
        store = location.open_store("r")
        lazy = xr.open_zarr(store, chunks=None, drop_variables=others)[SPECTROGRAM]
    return ds.assign({SPECTROGRAM: lazy.variable.chunk({EVENT: shard_events})})


def validate_archive(ds: xr.Dataset, where: str = "archive") -> None:
    """Check the schema of an opened archive (no pass over the spectrogram values).

    Parameters
    ----------
    ds : xarray.Dataset
        The dataset to check.
    where : str, default="archive"
        Named in error messages (usually the path).

    Raises
    ------
    ArchiveError
        Naming the problem and ``where``.
    """
    if SPECTROGRAM not in ds.variables:
        raise ArchiveError(
            f"{where}: variable {SPECTROGRAM!r} is missing "
            f"(found {sorted(map(str, ds.variables))})"
        )
    dims = tuple(ds[SPECTROGRAM].dims)
    if dims != (EVENT, FREQUENCY, TIME):
        raise ArchiveError(
            f"{where}: {SPECTROGRAM!r} has dims {dims}, expected ({EVENT!r}, {FREQUENCY!r}, "
            f"{TIME!r})"
        )
    for dim in (EVENT, FREQUENCY, TIME):
        if ds.sizes[dim] == 0:
            raise ArchiveError(f"{where}: dimension {dim!r} of {SPECTROGRAM!r} is empty")
    version = ds.attrs.get(VERSION_ATTR)
    if version is not None and int(version) > ARCHIVE_VERSION:
        raise ArchiveError(
            f"{where}: archive version {version} is newer than this specufex-dask supports "
            f"({ARCHIVE_VERSION}); upgrade specufex-dask"
        )
    if EVENT in ds.coords:
        duplicated = duplicate_ids(ds[EVENT].variable)
        if duplicated:
            raise ArchiveError(f"{where}: event ids are not unique, e.g. {duplicated}")


def _str_objects(values: npt.ArrayLike) -> np.ndarray:
    """An object array of the str of every value (of str, object or StringDType input)."""
    return np.array([str(v) for v in np.asarray(values).tolist()], dtype=object)


def _id_hashes(ids: xr.Variable, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids as str, their 64-bit hashes)`` of every ``block`` consecutive ids of the
    1-D ``ids``, in order.

    A lazy variable is read one stored chunk at a time (at least ``block`` ids): a read
    decodes whole chunks, and the decoded chunk is far smaller than its ids as Python str.
    """
    import dask
    import pandas as pd

    chunks = ids.encoding.get("chunks") or (block,)
    read = max(block, int(chunks[0]))
    for start in range(0, ids.shape[0], read):
        # a dask variable is read here, never by the cluster a client may have set up
        with dask.config.set(scheduler="synchronous"):
            values = np.asarray(ids[start : start + read].values)
        for first in range(0, values.size, block):
            as_str = _str_objects(values[first : first + block])
            yield as_str, pd.util.hash_array(as_str, categorize=False)


def duplicate_ids(ids: xr.Variable, limit: int = 5, block: int | None = None) -> list[str]:
    """Up to ``limit`` ids that occur more than once in ``ids`` (compared as str).

    Only the ids' 64-bit hashes are kept (8 bytes an id, against about 210 for a pandas
    index of them), the ids themselves hashed ``block`` at a time; ids whose hashes
    repeat are then compared as str, so two ids whose hashes collide are never reported.

    Parameters
    ----------
    ids : xarray.Variable
        The 1-D ids, in memory or lazily in a store.
    limit : int, default=5
        How many repeated ids to return at most.
    block : int, optional
        Ids converted and hashed at a time; 65536 by default.

    Returns
    -------
    list of str
        Repeated ids, sorted; empty when every id is unique.

    Examples
    --------
    >>> duplicate_ids(xr.Variable("event", ["b", "a", "b", "c", "a"]), block=2)
    ['a', 'b']
    """
    block = _ID_BLOCK if block is None else block
    hashes = np.empty(ids.shape[0], dtype=np.uint64)
    start = 0
    for _, block_hashes in _id_hashes(ids, block):
        hashes[start : start + block_hashes.size] = block_hashes
        start += block_hashes.size
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if not repeated.size:
        return []
    candidates = [as_str[np.isin(found, repeated)] for as_str, found in _id_hashes(ids, block)]
    unique, counts = np.unique(np.concatenate(candidates).astype(str), return_counts=True)
    return [str(v) for v in unique[counts > 1][:limit]]


def json_attribute(attrs: Mapping[str, Any], name: str, where: str, fix: str) -> Any:
    """The JSON object held (as text) by attribute ``name``; None when there is none.

    Raises
    ------
    ArchiveError
        Naming the attribute, ``where`` (the store) and ``fix`` when the text is not
        JSON of an object.
    """
    raw = attrs.get(name)
    if raw is None or isinstance(raw, dict):  # Zarr may hold it as a JSON object already
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as error:
        problem = f"is not JSON ({error}; it starts {str(raw)[:40]!r})"
    else:
        if isinstance(value, dict):
            return value
        problem = f"is JSON of a {type(value).__name__}, not of an object"
    raise ArchiveError(f"store {where}: attribute {name!r} {problem}; {fix}")


def spectrogram_parameters(ds: xr.Dataset, where: str | None = None) -> dict[str, Any]:
    """The preprocessing parameters recorded in the archive (empty dict when absent).

    ``where`` (default the store xarray opened) is named when the attribute is not a
    JSON object."""
    where = where or str(ds.encoding.get("source") or "the archive")
    value = json_attribute(ds.attrs, PARAMETERS_ATTR, where, JSON_ATTRS[PARAMETERS_ATTR])
    return {} if value is None else dict(value)


def zarr_format(path: ArchivePath) -> int | None:
    """The Zarr format of the local group at ``path`` (2 or 3), None when it is neither."""
    if not _is_local(path):
        return None
    folder = as_location(path).path
    if (folder / "zarr.json").is_file():
        return 3
    return 2 if (folder / ".zgroup").is_file() else None


def require_zarr_v3(path: ArchivePath, what: str) -> None:
    """Refuse to write ``what`` into a Zarr format 2 store, saying how to convert it."""
    if not _is_local(path) or zarr_format(path) != 2:
        return
    source = as_location(path).path
    target = source.with_name(f"{source.stem}-v3{source.suffix or '.zarr'}")
    command = (
        f"python -c \"import xarray as xr; xr.open_zarr('{source}').drop_encoding()"
        f".to_zarr('{target}', zarr_format=3)\""
    )
    raise ArchiveError(
        f"store {path}: Zarr format 2, not supported for writing the {what}: convert with "
        f"{command} and use {target}"
    )


def _free_space(path: Path) -> int:
    """Bytes free on the disk of ``path`` (of its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 0


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is ENOSPC (or a quota's EDQUOT)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full(path: ArchivePath, what: str, n_bytes: float, intact: str) -> DiskFullError:
    """The one-line error of a write of ``n_bytes`` that ran out of space under ``path``.

    ``intact`` says what is left as it was and how to go on.
    """
    free = _free_space(as_location(path).path) if _is_local(path) else 0
    return DiskFullError(
        f"disk full: writing {what} ({_size(n_bytes)}) to {path} failed with {_size(free)} "
        f"free there; {intact}"
    )


def read_rejected(archive: xr.Dataset | str | Path) -> list[RejectedInput]:
    """The table of rejected inputs of an archive.

    Parameters
    ----------
    archive : xarray.Dataset or path
        An opened archive or its path.

    Returns
    -------
    list of RejectedInput
        Empty when the archive has no rejected table.
    """
    if isinstance(archive, xr.Dataset):
        ds = archive
    else:
        ds = open_archive(archive)
    if REJECTED_SOURCE not in ds.variables:
        return []
    sources = _to_str(ds[REJECTED_SOURCE].values)
    reasons = _to_str(ds[REJECTED_REASON].values)
    if REJECTED_EVENT in ds.variables:
        events = _to_str(ds[REJECTED_EVENT].values)
    else:
        events = np.full(sources.shape, "", dtype=object)
    rows = zip(sources, reasons, events, strict=True)
    return [RejectedInput(str(s), str(r), str(e)) for s, r, e in rows]


def check_spectrogram_values(
    block: npt.ArrayLike, event_ids: Sequence[Hashable] | npt.NDArray[Any]
) -> list[tuple[str, str]]:
    """Find events of a block whose spectrogram has negative or non-finite values.

    Parameters
    ----------
    block : array-like of shape (n_events, n_frequencies, n_times)
        One chunk of the ``spectrogram`` variable.
    event_ids : sequence or ndarray of length n_events
        The ids of the events of the block.

    Returns
    -------
    list of (event_id, reason)
        One entry per bad event, in block order; empty when all are valid.

    Examples
    --------
    >>> check_spectrogram_values(np.array([[[1.0]], [[-2.0]]]), ["a", "b"])
    [('b', '1 negative value(s), min -2')]
    """
    values = np.asarray(block)
    if values.ndim != 3 or values.shape[0] != len(event_ids):
        raise ValueError(
            f"block of shape {values.shape} does not match {len(event_ids)} event ids "
            "(expected (n_events, n_frequencies, n_times))"
        )
    flat = values.reshape(values.shape[0], -1)
    if flat.size == 0:
        return []
    # Fast pass over good data (two reductions, no temporaries): a NaN makes the minimum
    # NaN, and NaN fails both comparisons.
    lowest, highest = flat.min(axis=1), flat.max(axis=1)
    suspect = ~((lowest >= 0) & (highest < np.inf))
    if not suspect.any():
        return []
    flat = flat[suspect]
    event_ids = [event_ids[int(index)] for index in np.flatnonzero(suspect)]
    non_finite = (~np.isfinite(flat)).sum(axis=1)
    with np.errstate(invalid="ignore"):
        negative = (flat < 0).sum(axis=1)
    problems = []
    for index in np.flatnonzero((non_finite > 0) | (negative > 0)):
        reasons = []
        if non_finite[index]:
            reasons.append(f"{non_finite[index]} non-finite value(s)")
        if negative[index]:
            reasons.append(f"{negative[index]} negative value(s), min {np.nanmin(flat[index]):g}")
        problems.append((str(event_ids[index]), "; ".join(reasons)))
    return problems


# ----------------------------------------------------------------------------- writing


def left_intact(path: ArchivePath, appending: bool) -> str:
    """What a failed write of an archive leaves as it was, once :meth:`ArchiveWriter.abort`
    undid the rest, and how to go on."""
    if appending:
        return f"the append was rolled back: {path} is as before; free space and rerun"
    if as_location(path).exists():
        return f"the archive at {path} is unchanged; free space and rerun"
    return f"nothing was left at {path}; free space and rerun"


@contextlib.contextmanager
def naming_disk_full(path: ArchivePath, what: str, n_bytes: float, intact: str) -> Iterator[None]:
    """Turn running out of disk space inside the block into :func:`disk_full`'s error.

    Any error whose chain holds ENOSPC counts (workers' errors arrive as themselves,
    Zarr's may be wrapped); other errors pass unchanged.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        if not is_disk_full(error):
            raise
        raise disk_full(path, what, n_bytes, intact) from error


def region_bounds(start: int, stop: int, chunk_events: int) -> list[tuple[int, int]]:
    """Split events [start, stop) at multiples of ``chunk_events``.

    Each region then covers whole Zarr chunks (or the partial first/last one), so
    concurrent writers never touch the same chunk.

    Examples
    --------
    >>> region_bounds(3, 10, 4)
    [(3, 4), (4, 8), (8, 10)]
    """
    bounds = []
    position = start
    while position < stop:
        end = min((position // chunk_events + 1) * chunk_events, stop)
        bounds.append((position, end))
        position = end
    return bounds


def write_region(
    path: ArchivePath, name: str, start: int, block: npt.ArrayLike
) -> tuple[int, int]:
    """Write ``block`` into rows ``[start, start + len(block))`` of array ``name``.

    Meant to run on workers: it opens the array by path (or location: a URL and its
    storage options) and touches nothing else. Callers must give chunk-aligned regions
    (see :func:`region_bounds`).

    Returns
    -------
    (start, stop) : tuple of int
    """
    values = np.asarray(block)
    array = zarr_array(path, name, mode="r+")
    stop = start + values.shape[0]
    if stop > array.shape[0] or values.shape[1:] != tuple(array.shape[1:]):
        raise ValueError(
            f"cannot write a block of shape {values.shape} at rows {start}:{stop} of {name!r} "
            f"with shape {array.shape} in {path}"
        )
    array[start:stop] = values.astype(array.dtype, copy=False)
    return start, stop


def _as_event_coordinate(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if name == STARTTIME:
        return array.astype("datetime64[ns]")
    if array.dtype.kind in "USO":
        # Variable-length strings: fixed-width ones would break appends of longer ids.
        return np.array([str(v) for v in array.tolist()], dtype=object)
    return array


def _rejected_dataset(rejected: Sequence[RejectedInput]) -> xr.Dataset:
    def column(values: list[str]) -> np.ndarray:
        return np.array(values, dtype=object)

    return xr.Dataset(
        {
            REJECTED_SOURCE: (REJECTED, column([r.source for r in rejected])),
            REJECTED_REASON: (REJECTED, column([r.reason for r in rejected])),
            REJECTED_EVENT: (REJECTED, column([r.event for r in rejected])),
        }
    )


def _default_attrs(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        VERSION_ATTR: ARCHIVE_VERSION,
        CREATED_WITH_ATTR: f"specufex-dask {__version__}",
    }
    if parameters is not None:
        attrs[PARAMETERS_ATTR] = json.dumps(dict(parameters), sort_keys=True)
    return attrs


def consolidate(path: ArchivePath) -> None:
    """Rewrite the archive's consolidated metadata (which xarray reads) after a change."""
    import zarr

    with quiet_zarr():
        zarr.consolidate_metadata(as_location(path).open_store("r+"))


def _put_attrs(path: ArchivePath, attrs: Mapping[str, Any]) -> None:
    zarr_group(path, mode="r+").attrs.put(dict(attrs))


def require_reachable(location: ArchiveLocation) -> None:
    """Refuse a URL whose bucket (or container) does not exist, in one line.

    Raises
    ------
    ArchiveError
        Naming the bucket and the URL (the storage options are not shown).
    """
    bucket = location.bucket
    if location.url.startswith("memory://") or not bucket or location.exists():
        return  # an archive found proves its bucket (a reader may not look at buckets)
    fs, _ = location.filesystem()
    try:
        found = fs.exists(bucket)
    except PermissionError as error:
        raise ArchiveError(
            f"store {location}: access to bucket {bucket!r} was refused ({error}); check "
            "the credentials in the storage options"
        ) from None
    if not found:
        raise ArchiveError(
            f"store {location}: bucket {bucket!r} does not exist; create it or fix the URL"
        )


@dataclass
class ArchiveWriter:
    """Create or extend an archive whose data regions are written by anyone holding the path.

    Use :meth:`create` or :meth:`append`; then write every region of
    :attr:`regions` (with :func:`write_region`, on workers or locally) into
    :attr:`store_path`; then :meth:`commit` (or :meth:`abort` on failure).

    Attributes
    ----------
    final_path : Path or ArchiveLocation
        Where the archive lives once committed (a location for a URL).
    store_path : Path or ArchiveLocation
        Where to write now (a hidden sibling for new local archives; a new archive at a
        URL is written in place, marked incomplete until :meth:`commit`, since object
        stores rename nothing).
    start, stop : int
        The new events occupy rows [start, stop) of every event-dim variable.
    chunk_events : int
        Zarr chunk length along ``event`` (of ``spectrogram`` when it is not sharded).
    shard_events : int or None
        Events per shard of ``spectrogram``; None when it is stored in plain chunks.
    """

    final_path: Path | ArchiveLocation
    store_path: Path | ArchiveLocation
    start: int
    stop: int
    chunk_events: int
    appending: bool
    overwrite: bool = False
    _old_rejected: int = 0
    _attrs: dict[str, Any] = field(default_factory=dict)
    shard_events: int | None = None

    @property
    def regions(self) -> list[tuple[int, int]]:
        """(start, stop) rows to fill, each covering whole shards of ``spectrogram`` (whole
        chunks when unsharded), the first and last possibly partial: no two regions
        touch the same stored file."""
        return region_bounds(self.start, self.stop, self.shard_events or self.chunk_events)

    @property
    def target(self) -> str | ArchiveLocation:
        """:attr:`store_path` as the region writers take it (a plain path, or the
        location of a URL with its storage options): what workers are sent."""
        return store_or_path(self.store_path)

    def _store(self, mode: str) -> Any:
        return as_location(self.store_path).open_store(mode)

    @classmethod
    def create(
        cls,
        path: ArchivePath,
        *,
        event_coords: Mapping[str, npt.ArrayLike],
        frequency: npt.ArrayLike,
        time: npt.ArrayLike,
        parameters: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
        dtype: npt.DTypeLike = np.float64,
        extra_variables: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]] | None = None,
        extra_coords: Mapping[str, npt.ArrayLike] | None = None,
        overwrite: bool = False,
        shard_events: int | None = DEFAULT_SHARD_EVENTS,
    ) -> ArchiveWriter:
        """Write the metadata of a new archive into a hidden sibling of ``path``.

        Parameters
        ----------
        path : str or Path
            Final location (local file system).
        event_coords : mapping
            ``event`` (the ids) and further per-event coordinates, each of length n_events.
        frequency, time : array-like
            The spectrogram axes.
        parameters : mapping, optional
            Stored as JSON in ``spectrogram_parameters``.
        attrs : mapping, optional
            Further attributes.
        chunk_events : int, default=8
            Events per Zarr chunk of the extra variables, and of ``spectrogram`` when
            ``shard_events`` is None.
        dtype : dtype, default=float64
            Of ``spectrogram`` and the extra variables.
        extra_variables : mapping name -> (dims, shape), optional
            More event-major variables (e.g. ``activation``), dims starting with ``event``,
            shape without the event axis.
        extra_coords : mapping, optional
            Dimension coordinates of the extra variables' other dims.
        overwrite : bool, default=False
            Replace an existing archive at ``path`` on commit.
        shard_events : int or None, default=DEFAULT_SHARD_EVENTS
            Events per shard of ``spectrogram`` (inner chunks of
            :data:`SHARD_CHUNK_EVENTS` events); None stores it in plain chunks of
            ``chunk_events`` events, as archives were written before.
        """
        final = _final_path(path)
        if as_location(final).exists() and not overwrite:
            raise ArchiveError(f"{final} already exists; pass overwrite=True or append")
        _check_chunk_events(chunk_events)
        if shard_events is not None:
            _check_shard_events(shard_events)
        coords = {name: _as_event_coordinate(name, v) for name, v in event_coords.items()}
        if EVENT not in coords:
            raise ValueError("event_coords must contain the event ids under 'event'")
        n_events = coords[EVENT].shape[0]
        _check_event_ids(coords[EVENT], where=str(final))
        for name, values in coords.items():
            if values.shape != (n_events,):
                raise ValueError(
                    f"event coordinate {name!r} has shape {values.shape}, expected ({n_events},)"
                )
        frequency = np.asarray(frequency, dtype=np.float64)
        time = np.asarray(time, dtype=np.float64)
        store = _partial_store(final, overwrite)
        dataset = _placeholder_dataset(
            n_events, 0, coords, frequency, time, chunk_events, dtype, extra_variables,
            spectrogram_events=shard_events,
        )  # fmt: skip
        if extra_coords:
            dataset = dataset.assign_coords({k: np.asarray(v) for k, v in extra_coords.items()})
        all_attrs = {**_default_attrs(parameters), **dict(attrs or {}), COMPLETE_ATTR: False}
        dataset.attrs = all_attrs
        encoding = _encoding(dataset, chunk_events, shard_events)
        try:
            dataset.to_zarr(
                as_location(store).open_store("w-"),
                mode="w-",
                compute=False,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
            )
        except BaseException:
            as_location(store).remove()
            raise
        return cls(final, store, 0, n_events, chunk_events, False, overwrite, 0, all_attrs,
                   shard_events=shard_events)  # fmt: skip

    @classmethod
    def append(
        cls,
        path: ArchivePath,
        *,
        event_coords: Mapping[str, npt.ArrayLike],
        extra_variables: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]] | None = None,
    ) -> ArchiveWriter:
        """Extend an existing archive along ``event`` and mark it incomplete until commit.

        Full chunks (shards) of the existing events are never rewritten; only the last,
        partially filled one is extended in place, by the first region's writer alone.
        The layout of ``spectrogram`` (sharded or plain) is the archive's.
        """
        require_zarr_v3(path, "appended events")
        ds = open_archive(path, stored_names=True)
        coords = {name: _as_event_coordinate(name, v) for name, v in event_coords.items()}
        if SOURCE in ds.coords and INPUT_FILE in coords and INPUT_FILE not in ds.coords:
            coords[SOURCE] = coords.pop(INPUT_FILE)  # an archive of the old name
        n_new = coords[EVENT].shape[0]
        _check_event_ids(coords[EVENT], where="the events to append")
        clash = np.intersect1d(_to_str(ds[EVENT].values), _to_str(coords[EVENT]))
        if clash.size:
            raise ArchiveError(
                f"{path}: event ids already in the archive: {clash[:5].tolist()}"
                + (f" and {clash.size - 5} more" if clash.size > 5 else "")
            )
        existing_event_vars = {str(name) for name in ds.coords if ds[name].dims == (EVENT,)}
        # Results of the engine (activation, fingerprint, cluster...) for the old events.
        outputs = sorted(
            str(name)
            for name in ds.data_vars
            if ds[name].dims[:1] == (EVENT,)
            and name != SPECTROGRAM
            and name not in (extra_variables or {})
        )
        for name in sorted(existing_event_vars - set(coords)):
            coords[name] = _fill_like(ds[name], n_new)
        unknown = set(coords) - existing_event_vars
        if unknown:
            raise ArchiveError(
                f"{path}: cannot append new per-event coordinates {sorted(unknown)} "
                "(not in the archive)"
            )
        chunks = ds[SPECTROGRAM].encoding.get("chunks") or ds[SPECTROGRAM].data.chunksize
        chunk_events = int(chunks[0])
        shard_events = stored_shard_events(ds[SPECTROGRAM].encoding)
        old_n = ds.sizes[EVENT]
        shape_tail = {SPECTROGRAM: (ds.sizes[FREQUENCY], ds.sizes[TIME])}
        variables: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
            SPECTROGRAM: ((EVENT, FREQUENCY, TIME), shape_tail[SPECTROGRAM])
        }
        for name, (dims, tail) in (extra_variables or {}).items():
            variables[name] = (dims, tail)
        dtype = ds[SPECTROGRAM].dtype
        attrs = dict(ds.attrs)
        if outputs and TRANSFORM_COMPLETE_ATTR in attrs:
            # the new events have no outputs yet: the transform is no longer complete
            attrs[TRANSFORM_COMPLETE_ATTR] = False
        old_rejected = ds.sizes.get(REJECTED, 0)
        ds.close()
        _put_attrs(path, {**attrs, COMPLETE_ATTR: False})
        dataset = _placeholder_dataset(
            n_new,
            old_n,
            coords,
            None,
            None,
            chunk_events,
            dtype,
            {k: v for k, v in variables.items() if k != SPECTROGRAM},
            spectrogram_tail=variables[SPECTROGRAM][1],
            spectrogram_events=shard_events,
        )
        writer = cls(
            _final_path(path),
            _final_path(path),
            old_n,
            old_n + n_new,
            chunk_events,
            True,
            False,
            old_rejected,
            attrs,
            shard_events=shard_events,
        )
        try:
            dataset.to_zarr(
                as_location(path).open_store("a"), mode="a", append_dim=EVENT, compute=False,
                consolidated=False,
            )  # fmt: skip
            _extend_outputs(path, outputs, old_n + n_new)
        except BaseException:
            writer.abort()
            raise
        return writer

    def commit(self, rejected: Sequence[RejectedInput] = ()) -> Path | ArchiveLocation:
        """Write the rejected table and final attributes; move a new archive into place."""
        if rejected:
            table = _rejected_dataset(rejected)
            if self._old_rejected:
                table.to_zarr(self._store("a"), mode="a", append_dim=REJECTED, consolidated=False)
            else:
                chunking = {
                    name: {"chunks": (_COORD_CHUNK,), "compressors": checksummed()}
                    for name in table.data_vars
                }
                table.to_zarr(self._store("a"), mode="a", consolidated=False, encoding=chunking)
        # xarray's mode="a" replaced the group attributes: put ours back, completeness last.
        _put_attrs(self.store_path, {**self._attrs, COMPLETE_ATTR: True})
        consolidate(self.store_path)
        if not self.appending and self.store_path != self.final_path:
            assert isinstance(self.store_path, Path) and isinstance(self.final_path, Path)
            _move_into_place(self.store_path, self.final_path, self.overwrite)
        logger.info(
            "archive %s committed (%d new events)", self.final_path, self.stop - self.start
        )
        return self.final_path

    def abort(self) -> None:
        """Undo: delete a new archive's temporary store, or shrink an append back."""
        if not self.appending:
            as_location(self.store_path).remove()
            return
        group = zarr_group(self.store_path, mode="r+")
        for name, array in group.arrays():
            # zarr 2 metadata (never written here) has no dimension names
            dims = getattr(array.metadata, "dimension_names", None) or ()
            if dims and dims[0] == EVENT and array.shape[0] > self.start:
                array.resize((self.start, *array.shape[1:]))
            if dims and dims[0] == REJECTED and array.shape[0] > self._old_rejected:
                array.resize((self._old_rejected, *array.shape[1:]))
            logger.debug("rolled back %s", name)
        _put_attrs(self.store_path, {**self._attrs, COMPLETE_ATTR: True})
        consolidate(self.store_path)
        logger.warning("append to %s rolled back to %d events", self.final_path, self.start)


def _extend_outputs(path: ArchivePath, names: Sequence[str], n_events: int) -> None:
    """Grow event-major result variables; the new rows read as their fill value."""
    if not names:
        return
    group = zarr_group(path, mode="r+")
    for name in names:
        refusal = f"{path}: {name} is a group, not an event-major variable"
        array = member_array(group, name, refusal)
        array.resize((n_events, *array.shape[1:]))
    logger.warning(
        "appended events have no values yet in %s of %s (fill value); re-run the fit/transform",
        names,
        path,
    )


def _check_chunk_events(chunk_events: int) -> None:
    check_positive_int("chunk_events", chunk_events, allow_none=False)


def _check_shard_events(shard_events: int) -> None:
    check_positive_int("shard_events", shard_events, allow_none=False)
    if shard_events % SHARD_CHUNK_EVENTS:
        raise ValueError(
            f"shard_events must be a multiple of the inner chunk ({SHARD_CHUNK_EVENTS} "
            f"events), got {shard_events}"
        )


def stored_shard_events(encoding: Mapping[str, Any]) -> int | None:
    """Events per shard of a variable from its xarray encoding; None when unsharded."""
    shards = encoding.get("shards")
    return None if shards is None else int(shards[0])


def _check_event_ids(ids: np.ndarray, where: str) -> None:
    as_str = _to_str(ids)
    unique, counts = np.unique(as_str, return_counts=True)
    if unique.size != as_str.size:
        raise ArchiveError(f"{where}: duplicate event ids {unique[counts > 1][:5].tolist()}")
    if as_str.size and (as_str == "").any():
        raise ArchiveError(f"{where}: empty event id at position {int(np.argmax(as_str == ''))}")


def _fill_like(variable: xr.DataArray, n: int) -> np.ndarray:
    kind = variable.dtype.kind
    if kind == "M":
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    if kind == "f":
        return np.full(n, np.nan, dtype=variable.dtype)
    if kind in "iub":
        raise ArchiveError(f"no value given for the integer per-event variable {variable.name!r}")
    return np.full(n, "", dtype=object)


def _placeholder_dataset(
    n_events: int,
    offset: int,
    coords: Mapping[str, np.ndarray],
    frequency: np.ndarray | None,
    time: np.ndarray | None,
    chunk_events: int,
    dtype: npt.DTypeLike,
    extra_variables: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]] | None,
    spectrogram_tail: tuple[int, ...] | None = None,
    spectrogram_events: int | None = None,
) -> xr.Dataset:
    """Lazy zeros never computed: ``to_zarr(compute=False)`` only needs their metadata.

    Their dask chunks end where the stored ones do (xarray checks): ``chunk_events``,
    or ``spectrogram_events`` (the shard) for the spectrogram when given.
    """
    import dask.array as da

    def chunks_of(events: int) -> tuple[int, ...]:
        return tuple(b - a for a, b in region_bounds(offset, offset + n_events, events))

    event_chunks = chunks_of(chunk_events)
    spectrogram_chunks = chunks_of(spectrogram_events or chunk_events)
    if spectrogram_tail is None:
        # a new archive: its axes are given
        assert frequency is not None and time is not None
        spectrogram_tail = (len(frequency), len(time))
    variables: dict[str, tuple[tuple[str, ...], Any]] = {
        SPECTROGRAM: (
            (EVENT, FREQUENCY, TIME),
            da.zeros(
                (n_events, *spectrogram_tail), dtype=dtype, chunks=(spectrogram_chunks, -1, -1)
            ),
        )
    }
    for name, (dims, tail) in (extra_variables or {}).items():
        if dims[0] != EVENT or len(dims) != len(tail) + 1:
            raise ValueError(f"extra variable {name!r}: dims {dims} do not fit shape {tail}")
        variables[name] = (
            dims,
            da.zeros((n_events, *tail), dtype=dtype, chunks=(event_chunks, *(-1,) * len(tail))),
        )
    all_coords: dict[str, Any] = {name: (EVENT, values) for name, values in coords.items()}
    if frequency is not None:
        all_coords[FREQUENCY] = frequency
        all_coords[TIME] = time
    return xr.Dataset(variables, coords=all_coords)


def checksummed() -> tuple[Any, ...]:
    """The bytes-to-bytes codecs of new archives' arrays: zstd, then a crc32c of the
    compressed chunk, so damage that still decompresses is caught as a mismatch."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(), Crc32cCodec())


def spectrogram_checksummed() -> tuple[Any, ...]:
    """The bytes-to-bytes codecs of new archives' ``spectrogram``: Blosc's LZ4 after a
    bit shuffle, then a crc32c of the compressed chunk.

    The fit reads its minibatches one event at a time at random, so a row's decoding is
    on every step's path: in shards of 256, a read of 64 random 513 x 51 float32 rows
    takes 14.2 ms against 24.0 with zstd (8.1 against 9.9 ms for KW1's 113 x 39
    windows), and writing two thirds of the time, for 23-24 % more disk
    (``benchmarks/bench_chunkread.py --codecs``).
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec())


def _encoding(
    dataset: xr.Dataset, chunk_events: int, shard_events: int | None = None
) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {
        str(name): {"compressors": checksummed()} for name in dataset.variables
    }
    if SPECTROGRAM in encoding:
        encoding[SPECTROGRAM]["compressors"] = spectrogram_checksummed()
    for name, variable in dataset.variables.items():
        if not variable.dims or variable.dims[0] != EVENT:
            continue
        if variable.ndim == 1 and name not in dataset.data_vars:
            encoding[str(name)]["chunks"] = (_COORD_CHUNK,)
        else:
            encoding[str(name)]["chunks"] = (chunk_events, *variable.shape[1:])
        if name == SPECTROGRAM and shard_events is not None:
            # the compressors then act on each inner chunk; Zarr's default index codecs
            # end with a crc32c too, so a damaged index is caught as well
            encoding[str(name)]["chunks"] = (SHARD_CHUNK_EVENTS, *variable.shape[1:])
            encoding[str(name)]["shards"] = (shard_events, *variable.shape[1:])
        if name == STARTTIME:
            encoding[str(name)].update(_STARTTIME_ENCODING)
    return encoding


def _final_path(path: ArchivePath) -> Path | ArchiveLocation:
    """Where an archive lives: a local Path, or the location of a URL."""
    location = as_location(path)
    return location.path if location.local else location


def _partial_store(final: Path | ArchiveLocation, overwrite: bool) -> Path | ArchiveLocation:
    """Where a new archive is written: a hidden sibling folder renamed into place on
    commit, or, at a URL (no renames), the target itself, after removing what an
    overwrite replaces (the incomplete attribute guards it until the commit)."""
    if isinstance(final, Path):
        return final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
    if overwrite:
        final.remove()
    return final


def _move_into_place(store: Path, final: Path, overwrite: bool) -> None:
    retired = None
    if final.exists():
        if not overwrite:
            shutil.rmtree(store, ignore_errors=True)
            raise ArchiveError(f"{final} appeared while writing; the new archive was discarded")
        retired = final.parent / f".{final.name}.retired-{uuid.uuid4().hex[:12]}"
        final.rename(retired)
    store.rename(final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def write_spectrograms(
    path: ArchivePath,
    spectrogram: npt.ArrayLike,
    event: Sequence[Hashable] | npt.ArrayLike,
    frequency: npt.ArrayLike,
    time: npt.ArrayLike,
    event_coords: Mapping[str, npt.ArrayLike] | None = None,
    attrs: Mapping[str, Any] | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    mode: str = "w",
    rejected: Sequence[RejectedInput] = (),
    executor: Any = None,
    shard_events: int | None = DEFAULT_SHARD_EVENTS,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | ArchiveLocation:
    """Write spectrograms held in memory (NumPy) or lazily (dask) as an archive.

    Parameters
    ----------
    path : str, Path or ArchiveLocation
        The archive: a local directory or an fsspec URL.
    spectrogram : array-like of shape (n_events, n_frequencies, n_times)
        NumPy or dask array. NumPy input is checked for negative or non-finite values;
        dask input is not (that needs a pass; the fitting engine checks it).
    event : sequence of length n_events
        Unique event ids (converted to str).
    frequency : array-like of shape (n_frequencies,)
    time : array-like of shape (n_times,)
    event_coords : mapping, optional
        More per-event coordinates (``starttime``, ``station``, ``median``...).
    attrs : mapping, optional
        Attributes; ``spectrogram_parameters`` may be given as a dict or a JSON string.
    chunk_events : int, default=8
        Events per Zarr chunk when ``shard_events`` is None.
    mode : {"w", "w-", "a"}, default="w"
        Overwrite, create only, or append along ``event`` (ids must be new; frequency and
        time must equal the archive's).
    rejected : sequence of RejectedInput, optional
        Rows for the rejected table.
    executor : specufex_dask.parallel.executor.Executor, optional
        Where the regions of dask input are computed and written, a bounded number at a
        time (e.g. ``TaskExecutor(client)``); without one they are computed and written
        here one region (a shard, or ``chunk_events`` events) after another.
    shard_events : int or None, default=DEFAULT_SHARD_EVENTS
        Events per shard of a new archive's ``spectrogram``; None for plain chunks (see
        :meth:`ArchiveWriter.create`). An append keeps the archive's layout.
    storage_options : mapping, optional
        Options of the fsspec file system of a URL.

    Returns
    -------
    Path or ArchiveLocation
        The archive path (the location, for a URL).

    Examples
    --------
    >>> path = write_spectrograms("s.zarr", np.ones((2, 3, 4)), ["a", "b"], [1.0, 2, 3],
    ...                           [0.0, 1, 2, 3])
    >>> path.name, open_archive(path).event.values.tolist()
    ('s.zarr', ['a', 'b'])
    """
    import dask.array as da

    if mode not in ("w", "w-", "a"):
        raise ValueError(f"mode must be 'w', 'w-' or 'a', got {mode!r}")
    is_dask = isinstance(spectrogram, da.Array)
    values = spectrogram if isinstance(spectrogram, da.Array) else np.asarray(spectrogram)
    if values.ndim != 3:
        raise ValueError(
            f"spectrogram must have shape (n_events, n_frequencies, n_times), got {values.shape}"
        )
    ids = np.array([str(e) for e in np.asarray(event).tolist()], dtype=object)
    frequency = np.asarray(frequency, dtype=np.float64)
    time = np.asarray(time, dtype=np.float64)
    expected = (ids.size, frequency.size, time.size)
    if tuple(values.shape) != expected:
        raise ValueError(
            f"spectrogram shape {tuple(values.shape)} does not match (event, frequency, time) "
            f"lengths {expected}"
        )
    if not is_dask:
        problems = check_spectrogram_values(values, ids)
        if problems:
            raise ValueError(f"invalid spectrogram values: {problems[:5]}")
    coords = {EVENT: ids, **{k: v for k, v in (event_coords or {}).items()}}
    attrs = dict(attrs or {})
    parameters = attrs.pop(PARAMETERS_ATTR, None)
    if isinstance(parameters, str):
        parameters = json.loads(parameters)
    if storage_options is not None:
        path = as_location(path, storage_options)
    intact = left_intact(path, mode == "a")
    with naming_disk_full(path, f"{ids.size} spectrograms", values.nbytes, intact):
        writer = _writer(path, mode, coords, frequency, time, parameters, attrs, chunk_events,
                         values.dtype if values.dtype.kind == "f" else np.float64,
                         shard_events)  # fmt: skip
        try:
            _write_regions(writer, values, executor)
            return writer.commit(rejected)
        except BaseException:
            writer.abort()
            raise


def _writer(
    path: ArchivePath,
    mode: str,
    coords: dict[str, Any],
    frequency: np.ndarray,
    time: np.ndarray,
    parameters: Any,
    attrs: dict[str, Any],
    chunk_events: int,
    dtype: npt.DTypeLike,
    shard_events: int | None = DEFAULT_SHARD_EVENTS,
) -> ArchiveWriter:
    """The writer of :func:`write_spectrograms`: appending after checking the axes, or
    creating (``mode`` "w" replaces an archive on commit)."""
    if mode != "a":
        return ArchiveWriter.create(
            path,
            event_coords=coords,
            frequency=frequency,
            time=time,
            parameters=parameters,
            attrs=attrs,
            chunk_events=chunk_events,
            dtype=dtype,
            overwrite=mode == "w",
            shard_events=shard_events,
        )
    ds = open_archive(path)
    for name, axis in ((FREQUENCY, frequency), (TIME, time)):
        if not np.array_equal(ds[name].values, axis):
            raise ArchiveError(f"{path}: {name} axis differs from the archive's")
    ds.close()
    return ArchiveWriter.append(path, event_coords=coords)


def _write_regions(writer: ArchiveWriter, values: Any, executor: Any) -> None:
    """The spectrograms into every region of ``writer``: dask input on ``executor`` when
    there is one, else one region after another here."""
    import dask.array as da

    if isinstance(values, da.Array) and executor is not None:
        offset = writer.start
        store = writer.target
        executor.write_outputs(
            write_region,
            (
                (store, SPECTROGRAM, start, values[start - offset : stop - offset])
                for start, stop in writer.regions
            ),
        )
        return
    # Without an executor a dask array is read one region at a time (each computed by
    # dask's current scheduler as a lazy read) and written here.
    for start, stop in writer.regions:
        block = np.asarray(values[start - writer.start : stop - writer.start])
        write_region(writer.target, SPECTROGRAM, start, block)
