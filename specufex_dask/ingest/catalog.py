"""The columns of an input catalog, kept as per-event coordinates of the archive.

A catalog table (CSV) names the events and their waveform files; every other column is
carried into the archive as a coordinate on ``event``, with its type kept: times as
``datetime64[ns]`` (UTC), numbers as numbers, the rest as strings. The standard columns
take SeisBench's names with units (:data:`STANDARD_COLUMNS`), whatever the catalog calls
them among the usual spellings; a column whose name the archive uses itself (``station``,
``starttime``...) is kept as ``catalog_<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.io.archive import (
    DEPTH,
    EVENT_ID,
    LATITUDE,
    LONGITUDE,
    MAGNITUDE,
    MAGNITUDE_TYPE,
    ORIGIN_TIME,
)

__all__ = [
    "RESERVED_NAMES",
    "STANDARD_COLUMNS",
    "catalog_coordinates",
    "read_catalog_columns",
    "standard_name",
]

STANDARD_COLUMNS: dict[str, tuple[str, ...]] = {
    ORIGIN_TIME: ("origin_time", "origintime", "time", "timestamp", "datetime", "otime"),
    LATITUDE: ("latitude", "lat", "latitude_deg", "evla"),
    LONGITUDE: ("longitude", "lon", "long", "lng", "longitude_deg", "evlo"),
    DEPTH: ("depth_km", "depth", "evdp"),
    MAGNITUDE: ("magnitude", "mag", "ml", "md", "mw"),
    MAGNITUDE_TYPE: ("magnitude_type", "mag_type", "magtype", "magnitudetype"),
    EVENT_ID: ("resource_id", "event_resource_id", "public_id"),
}
"""SeisBench's name of each standard column, and the spellings taken for it
(case-insensitive, the SeisBench name itself included)."""

RESERVED_NAMES = frozenset(
    {
        "event", "input_file", "source", "median", "starttime", "network", "station",
        "location", "channel", "frequency", "time", "pattern", "state", "next_state",
    }
)  # fmt: skip
"""Names the archive uses itself; catalog columns of these names become ``catalog_<name>``."""


def standard_name(column: str) -> str | None:
    """The SeisBench name of a catalog column, or None for a column of its own.

    Examples
    --------
    >>> standard_name("Lat"), standard_name("timestamp"), standard_name("quality")
    ('source_latitude_deg', 'source_origin_time', None)
    """
    lowered = column.strip().lower()
    for name, spellings in STANDARD_COLUMNS.items():
        if lowered == name or lowered in spellings:
            return name
    return None


def _typed(values: Any) -> np.ndarray:
    """A column as numbers, UTC times or strings (missing: NaN, NaT or "")."""
    import pandas as pd

    series = pd.Series(values)
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64 if series.isna().any() else None)
    present = series.dropna().astype(str).str.strip()
    present = present[present != ""]
    if len(present):
        try:
            blank = series.astype(str).str.strip() == ""
            times = pd.to_datetime(series.where(~blank), utc=True, format="mixed")
        except (ValueError, TypeError, OverflowError):
            times = None
        # Only a column whose every value is a time: codes like "EHZ" must stay text.
        if times is not None and times.notna().sum() == len(present):
            return times.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return np.array(["" if pd.isna(v) else str(v) for v in series], dtype=object)


def read_catalog_columns(
    catalog: str | Path, exclude: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The typed columns of a CSV catalog under their archive names, row order kept.

    Parameters
    ----------
    catalog : str or Path
        CSV with a header row.
    exclude : sequence of str
        Columns not to keep (the event id and file name columns).

    Returns
    -------
    dict of name -> ndarray
        One entry per kept column: standard ones under :data:`STANDARD_COLUMNS`' names,
        reserved names as ``catalog_<name>``, the others unchanged. Unnamed columns
        (a saved DataFrame's index) are left out.

    Raises
    ------
    ValueError
        When two columns would get the same name (``lat`` and ``latitude``, say).
    """
    import pandas as pd

    frame = pd.read_csv(catalog, dtype=object, keep_default_na=False, na_values=[""])
    columns: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for column in frame.columns:
        if column in exclude or not str(column).strip() or str(column).startswith("Unnamed:"):
            continue
        name = standard_name(str(column)) or str(column).strip()
        if name in RESERVED_NAMES:
            name = f"catalog_{name}"
        if name in columns:
            raise ValueError(
                f"catalog {catalog}: columns {origin[name]!r} and {column!r} both give "
                f"{name!r}; rename one of them"
            )
        origin[name] = str(column)
        raw = frame[column]
        numeric = pd.to_numeric(raw, errors="coerce")
        # A column is numeric when every value present is a number.
        is_numeric = numeric.notna().sum() == raw.notna().sum() and raw.notna().any()
        columns[name] = _typed(numeric if is_numeric else raw)
    return columns


def catalog_coordinates(
    columns: Mapping[str, np.ndarray], catalog_events: Sequence[str], events: Sequence[str]
) -> dict[str, np.ndarray]:
    """The catalog's columns for the events written, in their order.

    Parameters
    ----------
    columns : mapping
        :func:`read_catalog_columns`, rows in catalog order.
    catalog_events : sequence of str
        The event id of every catalog row.
    events : sequence of str
        The events written (a subset of ``catalog_events``, rejected ones left out).
    """
    row = {event: i for i, event in enumerate(catalog_events)}
    positions = np.array([row[event] for event in events], dtype=np.intp)
    return {name: values[positions] for name, values in columns.items()}
