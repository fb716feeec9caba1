"""The archive as the commands read and write it: opening it and its model group, the
record of the configuration each command used, and one added per-event variable."""

from __future__ import annotations

import json
from collections.abc import Sequence

from specufex_dask.cli.config import Config, config_to_json
from specufex_dask.common import __version__, quiet_zarr
from specufex_dask.io.archive import consolidate
from specufex_dask.io.location import ArchivePath, as_location, zarr_group

__all__ = [
    "CONFIG_ATTR",
    "damage_behind",
    "OUTPUT_VARIABLES",
    "open_archive",
    "open_model",
    "record_configuration",
    "write_event_variable",
]

CONFIG_ATTR = "specufex_dask_config"
OUTPUT_VARIABLES = ("activation", "state_probability", "transition", "fingerprint", "cluster")


def open_archive(path: ArchivePath, check_only: bool = False):
    """The archive as an xarray Dataset (:func:`specufex_dask.io.archive.open_archive`).

    ``check_only``: for a check of the archive before a command's work, without dask
    arrays or an index of the event ids (no selection by label then).
    """
    from specufex_dask.io.archive import open_archive as open_zarr_archive

    return open_zarr_archive(path, with_dask=not check_only, indexed=not check_only)


def open_model(path: ArchivePath):
    """The ``model`` group as a Dataset, or None when the archive holds no model."""
    import xarray as xr

    from specufex_dask.io.modelgroup import model_group_name

    group = model_group_name(path)
    if group is None:
        return None
    store = as_location(path).open_store("r")
    with quiet_zarr():
        # the root's consolidated metadata does not follow a model group switched in
        # at a URL (io/modelgroup.py): read the group's own
        return xr.open_zarr(store, group=group, chunks=None, consolidated=False)


def record_configuration(
    path: ArchivePath, config: Config, sections: Sequence[str], command: str
) -> None:
    """Add the sections a command used to the archive attribute ``specufex_dask_config``.

    The attribute is a JSON object: one entry per section (the last value used) and
    ``history``, the list of commands that wrote to the archive with their sections.
    """
    group = zarr_group(path, mode="r+")
    raw = group.attrs.get(CONFIG_ATTR)
    record = json.loads(raw) if isinstance(raw, str) else {}
    record.update(json.loads(config_to_json(config, list(sections))))
    record.setdefault("history", []).append(
        {"command": command, "sections": list(sections), "version": __version__}
    )
    group.attrs.update({CONFIG_ATTR: json.dumps(record, sort_keys=True)})
    consolidate(path)


def write_event_variable(path: ArchivePath, variable) -> None:
    """Add (or replace) one per-event variable of the archive, keeping the archive's
    attributes; a replaced variable gets the new one's attributes (xarray's append mode
    would keep the old ones: the settings of an earlier clustering)."""
    import xarray as xr

    group = zarr_group(path, mode="r+")
    attrs = dict(group.attrs)
    if variable.name in group:
        del group[variable.name]
    bare = variable.drop_vars(list(variable.coords))
    dataset = xr.Dataset({variable.name: bare}, attrs=attrs)
    dataset.to_zarr(as_location(path).open_store("a"), mode="a", consolidated=True)


# Errors whose cause may be a damaged or lost chunk file that the reader could not name.
_DAMAGE_SIGNS = ("checksum do not match", "NaN or infinite values", "non-finite value")


def damage_behind(archive: ArchivePath | None, error: BaseException) -> str | None:
    """The damaged or missing chunk files behind ``error``, when it looks like their doing.

    A read through xarray meets a wrong checksum as Zarr's bare "stored and computed
    checksum do not match", and a lost chunk of an output as NaN values; this checks the
    archive's chunk files (:func:`specufex_dask.io.chunkread.damaged_chunks`) to name
    them. None when the error is of another kind or every chunk is sound.
    """
    if archive is None or not any(sign in str(error) for sign in _DAMAGE_SIGNS):
        return None
    from specufex_dask.io.chunkread import damaged_chunks

    try:
        problems = damaged_chunks(archive)
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more damaged chunk file(s))" if len(problems) > 1 else ""
    return problems[0] + more
