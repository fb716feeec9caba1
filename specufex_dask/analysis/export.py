"""Labelled catalogs out of an archive: CSV, QuakeML and the SpecUFEx workflow HDF5 file.

- :func:`catalog_table` / :func:`write_catalog_csv`: one row per event with every
  per-event coordinate of the archive (times, station codes, the input catalog's columns),
  the cluster label, the event's silhouette and distance to its cluster's centroid, and
  the states it spends most time in.
- :func:`write_quakeml`: the same labels in a QuakeML catalog (each event's cluster in a
  comment), for archives whose events carry origin times.
- :func:`write_workflow_h5`: the layout the SpecUFEx workflow notebooks read
  (``fingerprints/<id>``, ``ACM/<id>``, ``STM/<id>``, ``SpecUFEx_output/As/<id>``, the
  spectrograms with ``fSTFT`` and ``tSTFT``, and the model's ``model_parameters``);
  :func:`specufex_dask.io.h5import.import_specufex_h5` reads it back into the same archive.

Every writer writes next to its target and renames at the end, so a failed export
leaves no half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from specufex_dask.common import spans
from specufex_dask.io.archive import (
    ACTIVATION,
    CLUSTER,
    DEPTH,
    EVENT,
    EVENT_ID,
    FINGERPRINT,
    FREQUENCY,
    LATITUDE,
    LONGITUDE,
    MAGNITUDE,
    MAGNITUDE_TYPE,
    ORIGIN_TIME,
    PARAMETERS_ATTR,
    SPECTROGRAM,
    STATE_PROBABILITY,
    TIME,
    TRANSITION,
    ArchiveError,
    open_archive,
)
from specufex_dask.io.h5import import FREQUENCY_DATASET, SPECTROGRAM_GROUP, TIME_DATASET

__all__ = [
    "ORIGIN_TIME",
    "catalog_table",
    "write_catalog_csv",
    "write_quakeml",
    "write_workflow_h5",
]

_QUAKEML_FIELDS = {
    "latitude": LATITUDE,
    "longitude": LONGITUDE,
    "depth_km": DEPTH,
    "magnitude": MAGNITUDE,
    "magnitude_type": MAGNITUDE_TYPE,
    "resource_id": EVENT_ID,
}

# h5 group of each per-event output, as the workflow names them.
_WORKFLOW_OUTPUTS = {
    ACTIVATION: "ACM",
    STATE_PROBABILITY: "STM",
    TRANSITION: "SpecUFEx_output/As",
    FINGERPRINT: "fingerprints",
}

# Events read at a time when streaming an archive's outputs.
_BLOCK_EVENTS = 512

DOMINANT_STATES = 3
"""States listed per event in the catalog's ``dominant_states`` column."""


@contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """A temporary path next to ``target`` that becomes ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield partial
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


def _dominant_states(state_probability: xr.DataArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per event: its most occupied state, that state's share of the frames, and the
    :data:`DOMINANT_STATES` most occupied states (space-separated, most occupied first)."""
    n_events = state_probability.sizes[EVENT]
    top = np.zeros(n_events, dtype=np.int64)
    share = np.zeros(n_events)
    listed: list[str] = []
    for block in spans(n_events, _BLOCK_EVENTS):
        occupancy = np.asarray(state_probability[block].values, dtype=np.float64).sum(axis=2)
        occupancy /= np.maximum(occupancy.sum(axis=1, keepdims=True), np.finfo(float).tiny)
        # Stable sort on the negated occupancy: ties go to the lower state number.
        order = np.argsort(-occupancy, axis=1, kind="stable")
        top[block] = order[:, 0]
        share[block] = np.take_along_axis(occupancy, order[:, :1], axis=1)[:, 0]
        listed.extend(" ".join(map(str, row[:DOMINANT_STATES])) for row in order)
    return top, share, listed


def _column(values: np.ndarray) -> np.ndarray:
    """Strings as Python objects (pandas does not take NumPy's variable-width strings)."""
    return values.astype(object) if values.dtype.kind in "TU" else values


def catalog_table(dataset: xr.Dataset) -> pd.DataFrame:
    """One row per event: its id, every per-event coordinate, and what the fit found.

    Parameters
    ----------
    dataset : xarray.Dataset
        An archive (:func:`specufex_dask.io.archive.open_archive`).

    Returns
    -------
    pandas.DataFrame
        Columns ``event``; every coordinate on ``event`` alone (types kept: times as
        datetime64); ``cluster``, ``silhouette`` and ``centroid_distance`` when the
        archive has been clustered; ``dominant_state``, ``dominant_state_share`` and
        ``dominant_states`` when it has state probabilities.
    """
    columns: dict[str, Any] = {EVENT: _column(dataset[EVENT].values)}
    for name, coordinate in dataset.coords.items():
        if name != EVENT and coordinate.dims == (EVENT,):
            columns[str(name)] = _column(coordinate.values)
    for name in (CLUSTER, "silhouette", "centroid_distance"):
        if name in dataset.data_vars and dataset[name].dims == (EVENT,):
            columns[name] = dataset[name].values
    if STATE_PROBABILITY in dataset.data_vars:
        top, share, listed = _dominant_states(dataset[STATE_PROBABILITY])
        columns["dominant_state"] = top
        columns["dominant_state_share"] = share
        columns["dominant_states"] = listed
    return pd.DataFrame(columns)


def _archive_table(archive: str | Path) -> pd.DataFrame:
    """:func:`catalog_table` of the archive at ``archive``, closed again after reading."""
    dataset = open_archive(archive)
    try:
        return catalog_table(dataset)
    finally:
        dataset.close()


def write_catalog_csv(archive: str | Path, out: str | Path) -> Path:
    """Write :func:`catalog_table` of an archive as CSV (times in ISO 8601, UTC).

    Returns
    -------
    Path
        ``out``.
    """
    table = _archive_table(archive)
    out = Path(out)
    with _replacing(out) as partial:
        table.to_csv(partial, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def write_quakeml(archive: str | Path, out: str | Path) -> Path:
    """Write the clustered events as QuakeML, each event's cluster in a comment.

    Every event needs an origin time (the ``source_origin_time`` coordinate that a
    catalog ingest stores); latitude, longitude, depth, magnitude and the event's
    resource id are written when the archive has them.

    Raises
    ------
    ArchiveError
        When the archive has no origin times or no ``cluster`` labels.
    """
    from obspy import UTCDateTime
    from obspy.core.event import Catalog, Comment, Event, Magnitude, Origin, ResourceIdentifier

    table = _archive_table(archive)
    if ORIGIN_TIME not in table:
        raise ArchiveError(
            f"{archive}: no {ORIGIN_TIME!r} coordinate, so no QuakeML catalog: ingest the "
            f"events from a catalog with origin times to get one"
        )
    if CLUSTER not in table:
        raise ArchiveError(f"{archive}: no cluster labels; run `specufex-dask cluster` first")
    catalog = Catalog(description=f"clusters of {Path(str(archive)).name} by specufex-dask")
    for row in table.itertuples(index=False, name=None):
        values = dict(zip(table.columns, row, strict=True))
        event = Event()
        resource = values.get(_QUAKEML_FIELDS["resource_id"])
        if isinstance(resource, str) and resource:
            event.resource_id = ResourceIdentifier(resource)
        origin = Origin(time=UTCDateTime(pd.Timestamp(values[ORIGIN_TIME]).isoformat()))
        for attribute in ("latitude", "longitude"):
            value = values.get(_QUAKEML_FIELDS[attribute])
            if value is not None and np.isfinite(value):
                setattr(origin, attribute, float(value))
        depth = values.get(_QUAKEML_FIELDS["depth_km"])
        if depth is not None and np.isfinite(depth):
            origin.depth = float(depth) * 1000.0  # QuakeML depths are in metres
        event.origins.append(origin)
        magnitude = values.get(_QUAKEML_FIELDS["magnitude"])
        if magnitude is not None and np.isfinite(magnitude):
            kind = values.get(_QUAKEML_FIELDS["magnitude_type"])
            event.magnitudes.append(
                Magnitude(
                    mag=float(magnitude),
                    magnitude_type=str(kind) if isinstance(kind, str) else None,
                    origin_id=origin.resource_id,
                )
            )
        label = {"event": values[EVENT], "cluster": int(values[CLUSTER])}
        if "silhouette" in values:
            label["silhouette"] = round(float(values["silhouette"]), 6)
        event.comments.append(Comment(text="specufex-dask " + json.dumps(label)))
        catalog.append(event)
    out = Path(out)
    with _replacing(out) as partial:
        catalog.write(str(partial), format="QUAKEML")
    return out


def write_workflow_h5(archive: str | Path, out: str | Path) -> Path:
    """Write an archive in the SpecUFEx workflow's HDF5 layout.

    Groups keep the archive's event order (HDF5 creation order), so
    :func:`~specufex_dask.io.h5import.import_specufex_h5` gives the same archive back.
    The spectrograms go to ``spectrograms/transformed_spectrograms/<id>`` with
    ``fSTFT`` and ``tSTFT``; the outputs present to ``ACM``, ``STM``,
    ``SpecUFEx_output/As`` and ``fingerprints``; a fitted model's ``EW``, ``EA``,
    ``ElnWA`` and ``EB`` to ``model_parameters`` and its gains to
    ``SpecUFEx_output/ACM_gain``; the spectrogram parameters to the ``spectrograms``
    group's attributes under the workflow's names.

    Returns
    -------
    Path
        ``out``.
    """
    import h5py

    dataset = open_archive(archive)
    try:
        ids = [str(event) for event in dataset[EVENT].values]
        out = Path(out)
        with _replacing(out) as partial, h5py.File(partial, "w", track_order=True) as h5:
            spectrograms = _ordered_group(h5, "spectrograms")
            _write_parameters(spectrograms, h5, dataset)
            h5[FREQUENCY_DATASET] = dataset[FREQUENCY].values
            h5[TIME_DATASET] = dataset[TIME].values
            groups = {SPECTROGRAM: SPECTROGRAM_GROUP, **_WORKFLOW_OUTPUTS}
            for name, group_name in groups.items():
                if name not in dataset.data_vars:
                    continue
                group = _ordered_group(h5, group_name)
                for block in spans(len(ids), _BLOCK_EVENTS):
                    values = dataset[name][block].values
                    for event, value in zip(ids[block], values, strict=True):
                        group.create_dataset(event, data=value)
            _write_model(h5, archive)
    finally:
        dataset.close()
    return out


def _ordered_group(h5: Any, path: str) -> Any:
    """The group at ``path``, each level created to list its members in creation order."""
    group = h5
    for name in path.split("/"):
        group = group[name] if name in group else group.create_group(name, track_order=True)
    return group


def _write_parameters(spectrograms: Any, h5: Any, dataset: xr.Dataset) -> None:
    """The spectrogram parameters under the workflow's attribute names."""
    raw = dataset.attrs.get(PARAMETERS_ATTR)
    parameters = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    for key in ("fs", "nfft", "fmin", "fmax", "nperseg", "noverlap", "mode", "scaling"):
        if parameters.get(key) is not None:
            spectrograms.attrs[key] = parameters[key]
    workflow = h5.create_group("sgram_attrs")
    for ours, theirs in (
        ("window_s", "winLen_Sec"),
        ("overlap", "fracOverlap"),
        ("nfft", "nfft"),
        ("fmin", "fmin"),
        ("fmax", "fmax"),
        ("normalize_waveform", "norm_waveforms"),
    ):
        if parameters.get(ours) is not None:
            workflow.attrs[theirs] = parameters[ours]


def _model_source(archive: str | Path) -> str | None:
    """Where the model that made the outputs is stored: the archive, or the other
    archive (or saved model) a ``transform --model`` applied; None when that model was
    given otherwise (the estimators' files, or in Python)."""
    from specufex_dask.io.location import zarr_group
    from specufex_dask.io.status import applied_model

    attrs = zarr_group(archive, mode="r").attrs
    record = applied_model(dict(attrs), str(archive))
    if record is None:
        return str(archive)
    source = record.get("source")
    return str(source) if source is not None and Path(str(source)).is_dir() else None


def _write_model(h5: Any, archive: str | Path) -> None:
    """``model_parameters`` and ``SpecUFEx_output/ACM_gain`` of the model that made the
    outputs, if it is stored (the archive's own, or the one ``transform --model``
    applied); otherwise none, and the file's attribute ``model_parameters`` says why."""
    from specufex_dask.parallel.engine import read_model_group

    source = _model_source(archive)
    if source is None:
        h5.attrs["model_parameters"] = (
            "left out: the outputs were made with a model given as the estimators' files "
            "or in Python, which the archive does not hold"
        )
        return
    state = read_model_group(source)
    if state is None:
        return
    nmf, hmm, _ = state
    parameters = h5.create_group("model_parameters")
    parameters["EW"] = nmf.EW
    parameters["EA"] = nmf.EA
    parameters["ElnWA"] = nmf.ElnWA
    _ordered_group(h5, "SpecUFEx_output")["ACM_gain"] = np.asarray(nmf.gain)
    if hmm is not None:
        parameters["EB"] = hmm.EB
