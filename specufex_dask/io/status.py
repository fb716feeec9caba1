"""How far the transform's outputs are: events done, complete, made by the stored model.

The engine's transform (:func:`specufex_dask.parallel.engine.transform_chunks`) leaves
three records in the archive:

- the boolean array ``transformed`` (event): set for a task's events once all four of
  their outputs are written;
- the attribute ``specufex_dask_transform_complete``: True only after every event is done
  (an append sets it back to False);
- the token of the model that made the outputs (``specufex_dask_transform_model``) on the
  archive and on each output array, which must equal the stored model's token
  (:func:`specufex_dask.io.modelgroup.stored_model_token`), or that of a model applied
  on purpose from elsewhere (``transform --model OTHER``: the model of another archive
  or a saved model), which the transform records as the archive's attribute
  ``specufex_dask_transform_applied_model`` (:func:`record_applied_model`), JSON of
  ``{"token": ..., "source": ...}``. Such outputs count as made by the matching model
  (the archive's own model is left as it was, and a later fit of it does not make them
  stale); a transform with the archive's own model removes the record.

:func:`output_status` reads them into one :class:`OutputStatus` per output;
:func:`specufex_dask.io.archive.open_archive` puts them in each output's attributes
(``events_done``, ``complete``, ``model_match``), where :func:`output_problem` reads them.
Outputs without these records (imported from SpecUFEx HDF5 files, or written by other
tools) have ``None`` for what is unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from specufex_dask.io import archive
from specufex_dask.io.archive import TRANSFORM_COMPLETE_ATTR, TRANSFORM_TOKEN_ATTR
from specufex_dask.io.location import ArchivePath, zarr_group
from specufex_dask.io.modelgroup import stored_model_token

__all__ = [
    "APPLIED_MODEL_ATTR",
    "CLUSTER_MODEL_ATTR",
    "applied_model",
    "cluster_problem",
    "OUTPUTS",
    "STATUS_ATTRS",
    "TRANSFORMED",
    "OutputStatus",
    "output_problem",
    "output_status",
    "record_applied_model",
]

OUTPUTS = (archive.ACTIVATION, archive.STATE_PROBABILITY, archive.TRANSITION, archive.FINGERPRINT)
"""The transform's outputs."""
TRANSFORMED = "transformed"
"""The per-event done markers of the transform."""
STATUS_ATTRS = ("events_done", "complete", "model_match")
"""The attributes :func:`specufex_dask.io.archive.open_archive` sets on each output."""
APPLIED_MODEL_ATTR = "specufex_dask_transform_applied_model"
"""The archive's record of a model from elsewhere that the transform applied."""
CLUSTER_MODEL_ATTR = "fingerprint_model"
"""The attribute of the ``cluster`` labels holding the token of the model whose
fingerprints they were made from (the fingerprints' :data:`TRANSFORM_TOKEN_ATTR`)."""


def record_applied_model(path: ArchivePath, token: str, source: str | None) -> None:
    """Record that the transform of archive ``path`` applies the model of ``token``
    from ``source`` (another archive or a saved model); ``source=None`` (the archive's
    own model) removes the record."""
    group = zarr_group(path, mode="r+")
    if source is None:
        if APPLIED_MODEL_ATTR not in group.attrs:
            return
        del group.attrs[APPLIED_MODEL_ATTR]
    else:
        group.attrs[APPLIED_MODEL_ATTR] = json.dumps({"token": token, "source": source})
    archive.consolidate(path)


def applied_model(attrs: Mapping[str, Any], path: ArchivePath) -> dict[str, Any] | None:
    """The record of :data:`APPLIED_MODEL_ATTR` in an archive's attributes (``token``
    and ``source`` of the model a ``transform --model`` applied), or None without one.

    Raises
    ------
    ArchiveError
        When the attribute is not JSON, naming it, the store and the fix.
    """
    fix = f"run `specufex-dask transform {path}` (or with --model) again"
    record: dict[str, Any] | None = archive.json_attribute(
        attrs, APPLIED_MODEL_ATTR, str(path), fix
    )
    return record


def _applied_token(attrs: dict[str, Any], path: ArchivePath) -> str | None:
    """The token of :data:`APPLIED_MODEL_ATTR`, or None without the record."""
    record = applied_model(attrs, path)
    return None if record is None else record.get("token")


@dataclass(frozen=True)
class OutputStatus:
    """How far one output is.

    Attributes
    ----------
    events_done : int or None
        Events whose outputs are written (None: not recorded).
    n_events : int
        Events of the archive.
    complete : bool or None
        Whether the transform finished for every event (None: not recorded).
    model_match : bool or None
        Whether the output was made by the archive's stored model (None: the archive
        holds no model, or the output records none).
    """

    events_done: int | None
    n_events: int
    complete: bool | None
    model_match: bool | None

    def attrs(self) -> dict[str, Any]:
        """The :data:`STATUS_ATTRS` of an output variable."""
        return {
            "events_done": self.events_done,
            "complete": self.complete,
            "model_match": self.model_match,
        }


def _events_done(group: Any, n_events: int, complete_attr: Any) -> int | None:
    if TRANSFORMED in group and group[TRANSFORMED].shape == (n_events,):
        if complete_attr is True:
            return n_events  # set only once every marker was: no need to read them
        return int(np.count_nonzero(group[TRANSFORMED][...]))
    return n_events if complete_attr is True else None


def output_status(path: ArchivePath, n_events: int) -> dict[str, OutputStatus]:
    """The :class:`OutputStatus` of each of the :data:`OUTPUTS` the archive holds.

    Reads the archive's attributes, the done markers only while the transform is not
    complete, and the model group's arrays only when an output records a token.
    """
    group = zarr_group(path, mode="r")
    attrs = dict(group.attrs)
    present = [name for name in OUTPUTS if name in group]
    if not present:
        return {}
    complete_attr = attrs.get(TRANSFORM_COMPLETE_ATTR)
    done = _events_done(group, n_events, complete_attr)
    recorded = TRANSFORM_COMPLETE_ATTR in attrs or TRANSFORMED in group
    outputs = {
        name: archive.member_array(
            group,
            name,
            f"{path}: {name} is a group, not a transform output variable; remove it and "
            "run `specufex-dask transform` again",
        )
        for name in present
    }
    tokens = {
        name: output.attrs.get(TRANSFORM_TOKEN_ATTR, attrs.get(TRANSFORM_TOKEN_ATTR))
        for name, output in outputs.items()
    }
    stored = stored_model_token(path) if any(tokens.values()) else None
    expected = {token for token in (stored, _applied_token(attrs, path)) if token is not None}
    statuses = {}
    for name in present:
        complete = (
            complete_attr is True and done == n_events and outputs[name].shape[0] == n_events
            if recorded
            else None
        )
        match = None if not expected or tokens[name] is None else tokens[name] in expected
        statuses[name] = OutputStatus(done, n_events, complete, match)
    return statuses


def output_problem(dataset: Any, name: str, path: ArchivePath) -> str | None:
    """Why output ``name`` of an archive opened by ``open_archive`` cannot be used, as
    a one-line message telling how to fix it; None when it can (or nothing is known)."""
    variable = dataset[name]
    if variable.attrs.get("model_match") is False:
        return (
            f"{path}: {name} was written by another model than the one stored in "
            f"{path}/model (a fit ran after the transform); run `specufex-dask transform "
            f"{path}` first"
        )
    if variable.attrs.get("complete") is False:
        done = variable.attrs.get("events_done")
        n = dataset.sizes[archive.EVENT]
        return (
            f"{path}: the transform is incomplete ({done} of {n} events have {name} values); "
            f"run `specufex-dask transform --resume {path}` first"
        )
    return None


def cluster_problem(dataset: Any, path: ArchivePath) -> str | None:
    """Why the ``cluster`` labels of an archive opened by ``open_archive`` cannot be
    used, as a one-line message telling how to fix it; None when they can, when there
    are none, or when nothing is known (labels of earlier versions, or fingerprints
    without a model's token)."""
    if archive.CLUSTER not in dataset.variables or archive.FINGERPRINT not in dataset.variables:
        return None
    made_from = dataset[archive.CLUSTER].attrs.get(CLUSTER_MODEL_ATTR)
    current = dataset[archive.FINGERPRINT].attrs.get(TRANSFORM_TOKEN_ATTR)
    if made_from is None or current is None or made_from == current:
        return None
    return (
        f"{path}: the cluster labels were made from the fingerprints of another model (a "
        f"fit and transform ran since); run `specufex-dask cluster {path}` again"
    )
