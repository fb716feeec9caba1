"""The archive's ``model`` group: the state of a fit as one Zarr group, written atomically.

What the variables mean, and the estimators they are built from and into, is the engine's
business (:mod:`specufex_dask.parallel.engine`); here are only the writes, the reads and
the recovery from a write interrupted between its two renames.

Object stores rename nothing, so in an archive at a URL every checkpoint is a new group
``.model-<hex>`` and the empty group ``.model`` (:data:`POINTER`) names the current one
in its attributes; its metadata object is replaced in one PUT once the new group is
whole, so a reader sees the old checkpoint or the new one, never a part. The previous group is kept
(a reader may be in it) and older ones are removed. :func:`model_group_name` is where
every reader finds the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr

from specufex_dask.common import quiet_zarr
from specufex_dask.io import archive
from specufex_dask.io.archive import MODEL_VERSION_ATTR
from specufex_dask.io.location import ArchiveLocation, ArchivePath, as_location, zarr_group

__all__ = [
    "MODEL_TOKEN_ATTR",
    "POINTER",
    "model_group_name",
    "TOKEN_ARRAYS",
    "model_attribute",
    "model_token",
    "read_model_dataset",
    "stored_frequency",
    "stored_model_token",
    "write_model_dataset",
]

TOKEN_ARRAYS = ("W1", "W2", "A1", "A2", "B1", "B2", "hmm_gain")
"""The model group's variables that :func:`model_token` digests, in order."""
MODEL_TOKEN_ATTR = "specufex_dask_model_token"
"""The model group's attribute holding its :func:`model_token`, written with it."""
POINTER = ".model"
"""The group of an archive at a URL whose attribute :data:`POINTER_ATTR` names its
current model group."""
POINTER_ATTR = "specufex_dask_model_group"
_VERSION_PREFIX = ".model-"


def _pointer_key(root: str) -> str:
    return f"{root}/{POINTER}/zarr.json"


def _pointer_document(name: str) -> bytes:
    """The metadata of the :data:`POINTER` group naming group ``name`` (Zarr v3)."""
    document = {"zarr_format": 3, "node_type": "group", "attributes": {POINTER_ATTR: name}}
    return json.dumps(document).encode()


def _read_pointer(path: ArchivePath) -> str | None:
    """The group :data:`POINTER` names, or None without one."""
    fs, root = as_location(path).filesystem()
    try:
        return str(json.loads(fs.cat_file(_pointer_key(root)))["attributes"][POINTER_ATTR])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise archive.ArchiveError(
            f"store {path}: group {POINTER} does not name the model group ({error!r}); "
            f"delete it and the {_VERSION_PREFIX}* groups, and fit again"
        ) from None


def model_group_name(path: ArchivePath) -> str | None:
    """The path of the archive's current model group inside it, or None without one:
    ``model`` in a local archive, the group :data:`POINTER` names at a URL."""
    location = as_location(path)
    if not location.local:
        return _read_pointer(location)
    return archive.MODEL_GROUP if (location.path / archive.MODEL_GROUP).exists() else None


async def _write_group(folder: Any, dataset: xr.Dataset) -> None:
    """Write ``dataset`` as a new Zarr v3 group that xarray opens as the same Dataset:
    each variable one uncompressed chunk, all written at once."""
    import zarr.api.asynchronous as zarr_async
    from zarr.codecs import Crc32cCodec  # uncompressed, but damage is caught

    group = await zarr_async.open_group(
        store=folder, mode="w", zarr_format=3, attributes=dict(dataset.attrs)
    )

    async def write(name: str, variable: xr.Variable) -> None:
        values = np.ascontiguousarray(variable.values)
        array = await group.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
            dimension_names=[str(dim) for dim in variable.dims], compressors=Crc32cCodec(),
            fill_value=None,
        )  # fmt: skip
        await array.setitem(Ellipsis, values)

    await asyncio.gather(*(write(str(name), var) for name, var in dataset.variables.items()))


def write_model_dataset(path: ArchivePath, dataset: xr.Dataset) -> None:
    """Write a Dataset of the fit state (``model_group_dataset`` of the engine) into
    ``<archive>/model`` atomically.

    The group is written beside the archive's ``model`` folder and swapped in with two
    renames; a crash between them leaves ``.model.old-*``, which
    :func:`read_model_dataset` falls back to. ``dataset`` carries the archive's
    frequencies as its ``frequency`` coordinate (the engine's checkpoints read
    them once per fit).

    Written through Zarr's asynchronous API rather than ``Dataset.to_zarr``: a
    checkpoint took 113 ms of CPU that way against 49 ms (15 arrays), and a fit writes
    one every few steps on the driver, whose CPU the workers of a local cluster share.

    At a URL the group is written as a new ``.model-<hex>`` group and :data:`POINTER`
    switched to it (see the module's docstring).
    """
    # the token as an attribute: readers of the outputs' status need not read the arrays
    dataset = dataset.assign_attrs(
        {MODEL_TOKEN_ATTR: _group_token(dataset.variables, dataset.attrs)}
    )
    if not as_location(path).local:
        _write_pointed_group(path, dataset)
        return
    root = Path(as_location(path).url)
    partial = root / f".model.partial-{uuid.uuid4().hex}"
    final = root / archive.MODEL_GROUP
    intact = (
        "the previous checkpoint is intact; free space and rerun with --resume"
        if final.exists()
        else "no checkpoint was written yet; free space and rerun"
    )
    try:
        with archive.naming_disk_full(root, "a checkpoint of the model", dataset.nbytes, intact):
            asyncio.run(_write_group(str(partial), dataset))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # half a group is never read: remove it
        raise
    old = root / f".model.old-{uuid.uuid4().hex}"
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    intact = "the new checkpoint is in place; free space and rerun with --resume"
    with archive.naming_disk_full(root, "the archive's metadata", 0, intact):
        archive.consolidate(path)


def _write_pointed_group(path: ArchivePath, dataset: xr.Dataset) -> None:
    """:func:`write_model_dataset` at a URL: a new group, then the pointer, then the
    groups older than the previous one removed."""
    from zarr.storage import MemoryStore

    location = as_location(path)
    name = f"{_VERSION_PREFIX}{uuid.uuid4().hex}"
    # Built in memory, then every object sent at once: one round trip per object,
    # concurrently, where Zarr would make several in turn for each array.
    objects: dict[str, Any] = {}
    asyncio.run(_write_group(MemoryStore(objects), dataset))
    fs, root = location.filesystem()
    try:
        fs.pipe({f"{root}/{name}/{key}": value.to_bytes() for key, value in objects.items()})
    except BaseException:
        location.child(name).remove()  # never pointed to, so never read: remove it
        raise
    previous = _read_pointer(location)
    fs.pipe_file(_pointer_key(root), _pointer_document(name))
    fs.invalidate_cache(root)  # the groups were written by another file system object
    for entry in fs.ls(root, detail=False):
        old = entry.rstrip("/").rpartition("/")[2]
        if old.startswith(_VERSION_PREFIX) and old not in (name, previous):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(entry, recursive=True)
    # The root's consolidated metadata is not rewritten: model groups are always read
    # from their own metadata, and rewriting it reads every node's (seconds on S3).


def _fetched(group: ArchiveLocation) -> Any:
    """Every object of the group at a URL, fetched at once into a Zarr MemoryStore
    (Zarr would fetch each array's metadata, then its chunk, in turn)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    fs, root = group.filesystem()
    contents = fs.cat(fs.find(root))
    buffer = default_buffer_prototype().buffer
    return MemoryStore(
        {key[len(root) + 1 :]: buffer.from_bytes(data) for key, data in contents.items()}
    )


def read_model_dataset(path: ArchivePath, newest_version: int) -> xr.Dataset | None:
    """``<archive>/model`` loaded as a Dataset, or None without one.

    A group left as ``.model.old-*`` by an interrupted :func:`write_model_dataset` is put
    back first. Raises :class:`~specufex_dask.io.archive.ArchiveError` for a group written
    in a format newer than ``newest_version``.
    """
    location = as_location(path)
    if location.local:
        root = Path(location.url)
        folder: Any = root / archive.MODEL_GROUP
        if not folder.exists():
            leftovers = sorted(root.glob(".model.old-*"))
            if not leftovers:
                return None
            os.replace(leftovers[-1], folder)
        store: Any = str(folder)
    else:
        group = model_group_name(location)
        if group is None:
            return None
        folder, store = location.child(group), _fetched(location.child(group))
    with quiet_zarr():
        # no dask arrays: read here, not by a cluster's workers (there may be none)
        dataset = xr.open_zarr(store, consolidated=False, chunks=None).load()
    if int(dataset.attrs.get(MODEL_VERSION_ATTR, 0)) > newest_version:
        raise archive.ArchiveError(
            f"{folder}: model version {dataset.attrs[MODEL_VERSION_ATTR]} is newer than this "
            "package reads"
        )
    return dataset


def model_attribute(dataset: xr.Dataset, name: str, path: ArchivePath) -> dict:
    """The JSON object of attribute ``name`` of the model group of archive ``path``.

    Raises
    ------
    ArchiveError
        Naming the attribute, the group and the fix when it is missing or not JSON of
        an object.
    """
    folder = f"{path}/{archive.MODEL_GROUP}"
    fix = f"delete {folder} and fit again without --resume"
    value = archive.json_attribute(dataset.attrs, name, str(folder), fix)
    if value is None:
        raise archive.ArchiveError(f"store {folder}: attribute {name!r} is missing; {fix}")
    return value


def stored_frequency(path: ArchivePath, n_frequencies: int) -> np.ndarray:
    """The archive's frequency axis; ``0..n-1`` when it has none of that length."""
    import zarr

    group = zarr_group(path, mode="r")
    axis = group.get(archive.FREQUENCY)
    if isinstance(axis, zarr.Array) and axis.shape == (n_frequencies,):
        return np.asarray(axis[:])
    return np.arange(n_frequencies, dtype=float)


def model_token(arrays: Sequence[npt.ArrayLike], compat: str, dtype: str) -> str:
    """A digest of a fitted state: the :data:`TOKEN_ARRAYS` (NMF ``W1 W2 A1 A2``, HMM
    ``B1 B2 gain``) as float64, and the settings that change the outputs.

    The transform records it with its outputs; outputs whose token differs from the
    stored model's were written with another model.
    """
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    digest.update(f"{compat}{np.dtype(dtype).name}".encode())
    return digest.hexdigest()


def stored_model_token(path: ArchivePath) -> str | None:
    """:func:`model_token` of ``<archive>/model``; None when the archive holds no model.

    A group of a fit still in its NMF stage has no HMM arrays: its token is that of the
    arrays it has, which no transform's token equals.
    """
    import zarr

    # A reader may meet a fit's checkpoint between its two renames: look again.
    for _ in range(3):
        try:
            root = zarr_group(path, mode="r")
            name = model_group_name(path)
            if name is None or name not in root:
                return None
            group = root[name]
            if not isinstance(group, zarr.Group):
                raise archive.ArchiveError(
                    f"{path}: {archive.MODEL_GROUP!r} is an array, not a model group; "
                    "remove it and fit again"
                )
            attrs = dict(group.attrs)
            if MODEL_TOKEN_ATTR in attrs:
                return str(attrs[MODEL_TOKEN_ATTR])
            # a group written before the token was stored with it
            arrays = {
                name: archive.member_array(
                    group,
                    name,
                    f"{path}: {archive.MODEL_GROUP}/{name} is a group, not a model array; "
                    "remove it and fit again",
                )[...]
                for name in TOKEN_ARRAYS
                if name in group
            }
        except (KeyError, OSError, zarr.errors.NodeNotFoundError):
            continue
        return _group_token(arrays, attrs)
    return None


# xarray keys its variables and attributes by Hashable, zarr by str
_Named = Mapping[str, Any] | Mapping[Hashable, Any]


def _group_token(arrays: _Named, attrs: _Named) -> str:
    """:func:`model_token` of a model group's arrays and attributes."""
    settings = json.loads(attrs.get("nmf_state", "{}")).get("settings", {})
    values = [np.asarray(arrays[name]) for name in TOKEN_ARRAYS if name in arrays]
    return model_token(values, settings.get("compat", ""), settings.get("dtype", "float64"))
