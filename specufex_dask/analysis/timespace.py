"""Clusters in time and space: occurrence over time, maps, depth sections, examples.

- :func:`cluster_occurrence` counts every cluster's events per time bin (hour, day, week
  or month, chosen from the span by :func:`choose_time_bin`);
- :func:`plot_cluster_occurrence` draws those counts as lines and as a heat map of
  clusters x time;
- :func:`plot_cluster_map` draws the events at their epicentres coloured by cluster, and
  a depth section, when the archive has coordinates (``source_latitude_deg``,
  ``source_longitude_deg``, ``source_depth_km``);
- :func:`plot_cluster_examples` shows the events of each cluster with the largest
  silhouettes: their spectrograms and, when the input files can still be read, their
  waveforms.

Times are the events' origin times (``source_origin_time``) when the archive has them,
else the start of each spectrogram's waveform (``starttime``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import xarray as xr
from numpy.typing import NDArray

from specufex_dask.analysis.plot import _new_figure, _short_label, cluster_colours
from specufex_dask.io.archive import DEPTH, LATITUDE, LONGITUDE, ORIGIN_TIME

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ORIGIN_TIME",
    "LATITUDE",
    "LONGITUDE",
    "DEPTH",
    "choose_time_bin",
    "cluster_occurrence",
    "event_times",
    "has_locations",
    "plot_cluster_examples",
    "plot_cluster_map",
    "plot_cluster_occurrence",
]


# (name, NumPy unit, bin length in that unit, longest span the bin is used for)
_TIME_BINS = (
    ("10 minutes", "m", 10, np.timedelta64(12, "h")),
    ("hour", "h", 1, np.timedelta64(5, "D")),
    ("day", "D", 1, np.timedelta64(180, "D")),
    ("week", "W", 1, np.timedelta64(4 * 365, "D")),
    ("month", "M", 1, None),
)


def event_times(data: xr.Dataset) -> NDArray[np.datetime64] | None:
    """Origin times if the archive has them, else waveform start times, else None."""
    for name in (ORIGIN_TIME, "starttime"):
        if name in data.coords or name in data.variables:
            return np.asarray(data[name].values).astype("datetime64[ns]")
    return None


def choose_time_bin(times: npt.ArrayLike) -> str:
    """The bin of :func:`cluster_occurrence` for times spanning this long.

    Up to 12 hours: 10 minutes; up to 5 days: hours; up to 180 days: days; up to 4
    years: weeks; beyond: months.

    Examples
    --------
    >>> t = np.array(["2020-01-01", "2020-03-01"], dtype="datetime64[ns]")
    >>> choose_time_bin(t)
    'day'
    """
    values = np.asarray(times).astype("datetime64[ns]")
    values = values[~np.isnat(values)]
    span = values.max() - values.min() if values.size else np.timedelta64(0, "ns")
    for name, _, _, longest in _TIME_BINS:
        if longest is None or span <= longest:
            return name
    raise AssertionError("unreachable: the last bin has no limit")  # pragma: no cover


def cluster_occurrence(
    times: npt.ArrayLike, labels: npt.ArrayLike, time_bin: str | None = None
) -> xr.DataArray:
    """Events per cluster and time bin.

    Parameters
    ----------
    times : array_like of datetime64, shape (n_events,)
        Event times; NaT events are left out.
    labels : array_like of int, shape (n_events,)
    time_bin : {"10 minutes", "hour", "day", "week", "month"}, optional
        Default: :func:`choose_time_bin` of the times.

    Returns
    -------
    xarray.DataArray of int64, dims (cluster, time)
        Counts; ``time`` holds the start of every bin from the first event's to the
        last's (empty bins included), ``time_end`` their ends, ``cluster`` every label,
        and the attribute
        ``time_bin`` the bin used. Weeks start on Thursday (NumPy's weeks count from
        1970-01-01).
    """
    values = np.asarray(times).astype("datetime64[ns]")
    labels = np.asarray(labels)
    known = ~np.isnat(values)
    if not known.any():
        raise ValueError("cluster_occurrence: every event time is missing (NaT)")
    time_bin = time_bin or choose_time_bin(values[known])
    units = {name: (unit, length) for name, unit, length, _ in _TIME_BINS}
    if time_bin not in units:
        raise ValueError(f"time_bin must be one of {tuple(units)}, got {time_bin!r}")
    unit, length = units[time_bin]
    # Bins are whole multiples of ``length`` units since 1970 (NumPy's epoch).
    ticks = values[known].astype(f"datetime64[{unit}]").astype(np.int64) // length
    first, last = ticks.min(), ticks.max()
    bins = np.arange(first, last + 2) * length
    edges = bins.astype(f"datetime64[{unit}]").astype("datetime64[ns]")
    clusters = np.unique(labels)
    position = ticks - first
    counts = np.zeros((clusters.size, edges.size - 1), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(clusters, labels[known]), position), 1)
    return xr.DataArray(
        counts,
        dims=("cluster", "time"),
        coords={"cluster": clusters, "time": edges[:-1], "time_end": ("time", edges[1:])},
        name="events",
        attrs={"time_bin": time_bin},
    )


def plot_cluster_occurrence(data: xr.Dataset, time_bin: str | None = None) -> Figure:
    """Every cluster's events per time bin: lines above, a heat map of clusters x time
    below.

    Parameters
    ----------
    data : xarray.Dataset
        An archive with ``cluster`` and event times (:func:`event_times`).
    time_bin : str, optional
        As in :func:`cluster_occurrence`.
    """
    times = event_times(data)
    if times is None or "cluster" not in data.variables:
        raise ValueError("plot_cluster_occurrence needs cluster labels and event times")
    occurrence = cluster_occurrence(times, data["cluster"].values, time_bin)
    clusters = occurrence["cluster"].values
    starts = occurrence["time"].values
    ends = occurrence["time_end"].values
    figure = _new_figure(10.0, 2.6 + 0.3 * len(clusters))
    lines, heat = figure.subplots(2, 1, sharex=True, height_ratios=[1.2, 1.0])
    colours = cluster_colours(clusters)
    for row, cluster in enumerate(clusters):
        lines.step(
            starts,
            occurrence.values[row],
            where="post",
            color=colours[cluster],
            label=f"cluster {cluster}",
        )
    lines.set_ylabel(f"events per {occurrence.attrs['time_bin']}")
    lines.legend(loc="upper left", fontsize="small", ncols=min(len(clusters), 6))
    edges = np.concatenate([starts, ends[-1:]])
    y_edges = np.arange(len(clusters) + 1) - 0.5
    mesh = heat.pcolormesh(edges, y_edges, occurrence.values, cmap="viridis", shading="flat")
    heat.set_yticks(np.arange(len(clusters)), [str(c) for c in clusters])
    heat.set_ylabel("cluster")
    heat.invert_yaxis()
    figure.colorbar(mesh, ax=heat, label="events")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    heat.xaxis.set_major_locator(locator)
    heat.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    what = "origin time" if ORIGIN_TIME in data.coords else "waveform start"
    heat.set_xlabel(f"{what} (UTC)")
    lines.set_title(
        f"cluster occurrence: {int(occurrence.values.sum())} events per "
        f"{occurrence.attrs['time_bin']}"
    )
    return figure


def has_locations(data: xr.Dataset) -> bool:
    """Whether the archive has epicentres (latitude and longitude of every event)."""
    return all(name in data.coords or name in data.variables for name in (LATITUDE, LONGITUDE))


def plot_cluster_map(data: xr.Dataset) -> Figure:
    """Epicentres coloured by cluster and, with depths, a depth section (longitude x
    depth).

    The map's aspect keeps a degree of longitude as long as one of latitude at the
    events' mean latitude.
    """
    if not has_locations(data) or "cluster" not in data.variables:
        raise ValueError(f"plot_cluster_map needs cluster labels, {LATITUDE} and {LONGITUDE}")
    labels = np.asarray(data["cluster"].values)
    latitude = np.asarray(data[LATITUDE].values, dtype=np.float64)
    longitude = np.asarray(data[LONGITUDE].values, dtype=np.float64)
    depth = np.asarray(data[DEPTH].values, dtype=np.float64) if DEPTH in data.coords else None
    clusters = np.unique(labels)
    colours = cluster_colours(clusters)
    panels = 2 if depth is not None else 1
    figure = _new_figure(5.0 * panels + 1.0, 5.0)
    axes = np.atleast_1d(figure.subplots(1, panels, squeeze=False)).ravel()
    for cluster in clusters:
        chosen = labels == cluster
        axes[0].scatter(
            longitude[chosen],
            latitude[chosen],
            s=12,
            color=colours[cluster],
            label=f"cluster {cluster} ({int(chosen.sum())})",
            edgecolors="none",
        )
        if depth is not None:
            axes[1].scatter(
                longitude[chosen], depth[chosen], s=12, color=colours[cluster], edgecolors="none"
            )
    mean_latitude = np.nanmean(latitude)
    axes[0].set_aspect(1.0 / max(np.cos(np.radians(mean_latitude)), 1e-3))
    axes[0].set_xlabel("longitude (°)")
    axes[0].set_ylabel("latitude (°)")
    axes[0].legend(fontsize="small", markerscale=2)
    axes[0].set_title("epicentres by cluster")
    if depth is not None:
        axes[1].invert_yaxis()
        axes[1].set_xlabel("longitude (°)")
        axes[1].set_ylabel("depth (km)")
        axes[1].set_title("depth section")
    return figure


def examples_by_silhouette(data: xr.Dataset, count: int) -> dict[Any, list[int]]:
    """Per cluster, the positions of its ``count`` events with the largest silhouettes
    (ties in archive order)."""
    labels = np.asarray(data["cluster"].values)
    silhouette = np.asarray(data["silhouette"].values, dtype=np.float64)
    chosen = {}
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        order = np.argsort(-silhouette[members], kind="stable")
        chosen[cluster] = [int(i) for i in members[order[:count]]]
    return chosen


WaveformReader = Callable[[xr.Dataset, int], "tuple[NDArray[np.float64], float] | None"]


def read_waveform(data: xr.Dataset, position: int) -> tuple[NDArray[np.float64], float] | None:
    """The waveform of an event re-read from its input file (``input_file`` or
    ``source``), cut to the spectrogram's span from ``starttime`` and band-passed to the
    spectrograms' frequencies; None when the file cannot be read (moved, or not a
    waveform file ObsPy knows).

    Returns
    -------
    (samples, sampling_rate) or None
    """
    name = next((n for n in ("input_file", "source") if n in data.coords), None)
    if name is None:
        return None
    path = str(data[name].values[position])
    try:
        import obspy

        stream = obspy.read(path)
    except Exception:  # noqa: BLE001 - unreachable or unreadable: the panel is left out
        return None
    one = data.isel(event=position)
    for key in ("network", "station", "location", "channel"):
        if key in one.coords and str(one[key].values):
            stream = stream.select(**{key: str(one[key].values)})
    if not stream:
        return None
    trace = stream[0].copy()
    rate = float(trace.stats.sampling_rate)
    band = _spectrogram_band(data, rate)
    # Filter a padded stretch, then cut: the filter's edge transients stay outside.
    pad = 5.0 / band[0] if band is not None else 0.0
    if "starttime" in one.coords and not np.isnat(one["starttime"].values):
        start = obspy.UTCDateTime(str(np.datetime_as_string(one["starttime"].values)))
        span = float(data["time"].values[-1] + data["time"].values[0])
        trace = trace.slice(start - pad, start + span + pad)
    else:
        start, span = trace.stats.starttime, trace.stats.endtime - trace.stats.starttime
    if trace.stats.npts == 0:
        return None
    if band is not None:
        # Show what the spectrogram saw: the microseism below fmin would hide the rest.
        trace.detrend("demean")
        trace.taper(0.05)
        trace.filter("bandpass", freqmin=band[0], freqmax=band[1], corners=4, zerophase=True)
        trace = trace.slice(start, start + span)
    return np.asarray(trace.data, dtype=np.float64), rate


def _spectrogram_band(data: xr.Dataset, sampling_rate: float) -> tuple[float, float] | None:
    """The frequency band of the spectrograms, if it is narrower than the waveform's."""
    frequency = np.asarray(data["frequency"].values, dtype=np.float64)
    low, high = float(frequency.min()), float(frequency.max())
    nyquist = sampling_rate / 2.0
    if low <= 0.0 or high >= 0.95 * nyquist or low >= high:
        return None
    return low, high


def plot_cluster_examples(
    data: xr.Dataset, count: int = 3, reader: WaveformReader | None = read_waveform
) -> Figure:
    """The ``count`` most typical events of every cluster (largest silhouettes): each
    one's spectrogram and, above it, its waveform when the input file can be read.

    Parameters
    ----------
    data : xarray.Dataset
        An archive with ``cluster``, ``silhouette`` (``specufex-dask cluster`` stores
        both) and ``spectrogram``.
    count : int, default=3
    reader : callable or None, default=read_waveform
        ``reader(data, position)`` gives ``(samples, sampling_rate)`` or None; None
        draws no waveforms.
    """
    for name in ("cluster", "silhouette", "spectrogram"):
        if name not in data.variables:
            raise ValueError(f"plot_cluster_examples needs {name!r}")
    chosen = examples_by_silhouette(data, count)
    clusters = list(chosen)
    waveforms = {
        position: reader(data, position) if reader is not None else None
        for positions in chosen.values()
        for position in positions
    }
    with_waveforms = any(w is not None for w in waveforms.values())
    rows_per_cluster = 2 if with_waveforms else 1
    figure = _new_figure(2.6 * count + 0.8, (1.0 + 1.6 * rows_per_cluster) * len(clusters))
    grid = figure.subplots(
        rows_per_cluster * len(clusters),
        count,
        squeeze=False,
        height_ratios=[0.6, 1.0] * len(clusters) if with_waveforms else None,
    )
    frequency = data["frequency"].values
    time = data["time"].values
    events = [str(e) for e in data["event"].values]
    silhouette = np.asarray(data["silhouette"].values)
    colours = cluster_colours(clusters)
    for row, cluster in enumerate(clusters):
        for column in range(count):
            spectrogram_axes = grid[row * rows_per_cluster + rows_per_cluster - 1, column]
            waveform_axes = grid[row * rows_per_cluster, column] if with_waveforms else None
            if column >= len(chosen[cluster]):
                spectrogram_axes.set_axis_off()
                if waveform_axes is not None:
                    waveform_axes.set_axis_off()
                continue
            position = chosen[cluster][column]
            values = np.asarray(data["spectrogram"][position].values)
            spectrogram_axes.pcolormesh(time, frequency, values, shading="nearest", cmap="magma")
            label = _short_label(events[position], data.isel(event=position))
            spectrogram_axes.set_title(
                f"cluster {cluster}: {label}\nsilhouette {silhouette[position]:.2f}",
                fontsize="small",
                color=colours[cluster],
            )
            if column == 0:
                spectrogram_axes.set_ylabel("Hz")
            waveform = waveforms[position]
            if waveform_axes is not None:
                if waveform is None:
                    waveform_axes.set_axis_off()
                else:
                    samples, rate = waveform
                    waveform_axes.plot(
                        np.arange(samples.size) / rate, samples, color=colours[cluster], lw=0.6
                    )
                    waveform_axes.set_yticks([])
                    waveform_axes.set_xlim(0, samples.size / rate)
    return figure
