"""Figures of a specufex-dask archive (matplotlib, imported lazily).

Every function takes parts of the archive schema (ARCHIVE.md) as xarray objects and returns
a :class:`matplotlib.figure.Figure` drawn with the Agg canvas; nothing is shown or saved
here, so the functions work headless and the caller decides where files go. matplotlib is
an optional extra (``pip install "specufex-dask[plot]"``).

Figures:

- :func:`plot_dictionary` -- the NMF dictionary ``EW`` against frequency and the pattern
  weights ``EA``;
- :func:`plot_emission` -- the HMM emission matrix ``EB``;
- :func:`plot_event` -- one event's spectrogram, NMF activations and HMM state
  probabilities with its most probable state sequence, over time;
- :func:`plot_fingerprints` -- fingerprint matrices of several events;
- :func:`plot_cluster_summary` -- members per cluster, mean fingerprint and example
  spectrograms of each cluster;
- :func:`plot_cluster_timeline` -- the cluster of every window of a continuous record
  against time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "cluster_colours",
    "continuous_windows",
    "plot_cluster_summary",
    "plot_cluster_timeline",
    "plot_dictionary",
    "plot_emission",
    "plot_event",
    "plot_fingerprints",
    "representative_events",
    "select_events",
]

_SPECTROGRAM_LABEL = "spectrogram (dB above median)"
_FINGERPRINT_LABEL = "fingerprint (square-root scale)"


def _new_figure(width: float, height: float) -> Figure:
    """A Figure bound to the Agg canvas, independent of pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            'plotting needs matplotlib: pip install "specufex-dask[plot]"'
        ) from error
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def cluster_colours(clusters: Sequence[Any] | np.ndarray) -> dict[Any, str]:
    """The colour of each cluster in every figure: C0, C1, ... in label order."""
    return {cluster: f"C{i % 10}" for i, cluster in enumerate(clusters)}


def _require_variables(data: xr.Dataset, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in data.variables]
    if missing:
        raise ValueError(
            f"{what} needs the variable(s) {', '.join(missing)}, which the dataset does not "
            f"hold (it has: {', '.join(sorted(map(str, data.data_vars))) or 'nothing'})"
        )


def _event_ids(data: xr.Dataset | xr.DataArray) -> list[str]:
    return [str(event) for event in data["event"].values]


def select_events(
    data: xr.Dataset | xr.DataArray, events: Sequence[str] | None = None, n_events: int = 3
) -> list[str]:
    """Check requested event ids, or take the first ``n_events`` of the archive.

    Parameters
    ----------
    data : xarray.Dataset or xarray.DataArray
        Anything with an ``event`` coordinate.
    events : sequence of str, optional
        Event ids wanted; each must exist.
    n_events : int, default=3
        How many events to take when ``events`` is None.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        Naming the requested ids that are not in the archive.
    """
    known = _event_ids(data)
    if events is None:
        return known[:n_events]
    known_set = set(known)
    unknown = [str(event) for event in events if str(event) not in known_set]
    if unknown:
        examples = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
        raise ValueError(
            f"event(s) not in the archive: {', '.join(unknown)} (the archive holds "
            f"{len(known)} events: {examples})"
        )
    return [str(event) for event in events]


def representative_events(data: xr.Dataset, count: int = 1) -> list[str]:
    """The most typical members of every cluster, cluster by cluster.

    Parameters
    ----------
    data : xarray.Dataset
        The archive with ``cluster`` and ``fingerprint``; the distances are measured in
        the features the clustering used (the ``transform`` attribute of ``cluster``).
    count : int, default=1
        Events per cluster: those nearest the mean feature row of their cluster; when
        the archive holds several stations, a cluster that mixes them shows each
        (:func:`specufex_dask.analysis.clustering.representatives`).

    Returns
    -------
    list of str
    """
    from specufex_dask.analysis.clustering import representatives

    _require_variables(data, ["cluster", "fingerprint"], "representative_events")
    transform = data["cluster"].attrs.get("transform", "none")
    stations = None
    if "station" in data.coords:
        stations = np.array([str(station) for station in data["station"].values])
    chosen = representatives(
        data["fingerprint"], data["cluster"].values, transform, count, groups=stations
    )
    return [event for events in chosen for event in events]


def _select_event(data: xr.Dataset | xr.DataArray, event: str) -> xr.Dataset | xr.DataArray:
    (event,) = select_events(data, [event])
    position = _event_ids(data).index(event)
    return data.isel(event=position)


def _axis_values(data: xr.DataArray, dim: str) -> np.ndarray:
    """Coordinate values of ``dim``, or 0..n-1 when the dimension has no coordinate."""
    if dim in data.coords:
        return np.asarray(data[dim].values)
    return np.arange(data.sizes[dim])


def _image(
    figure: Figure,
    axes: Axes,
    values: xr.DataArray,
    x_dim: str,
    y_dim: str,
    *,
    cmap: str,
    label: str,
    vmin: float | None = None,
    vmax: float | None = None,
    norm=None,
    colorbar_location: str = "right",
):
    """Draw ``values`` (y_dim, x_dim) as cells centred on their coordinates, with a colour bar."""
    values = values.transpose(y_dim, x_dim)
    limits: dict[str, Any] = {} if norm is not None else {"vmin": vmin, "vmax": vmax}
    mesh = axes.pcolormesh(
        _axis_values(values, x_dim),
        _axis_values(values, y_dim),
        np.asarray(values.values, dtype=np.float64),
        shading="nearest",
        cmap=cmap,
        norm=norm,
        rasterized=True,
        **limits,
    )
    figure.colorbar(mesh, ax=axes, label=label, pad=0.01, location=colorbar_location)
    return mesh


def plot_dictionary(
    model: xr.Dataset,
    frequency: xr.DataArray | None = None,
    initial_patterns: int | None = None,
) -> Figure:
    """The NMF dictionary: ``EW`` against frequency and the pattern weights ``EA``.

    Parameters
    ----------
    model : xarray.Dataset
        The archive's ``model`` group, with ``EW`` (frequency, pattern) and ``EA`` (pattern).
    frequency : xarray.DataArray, optional
        Frequencies in Hz, used when ``model`` has no ``frequency`` coordinate.
    initial_patterns : int, optional
        The number of patterns the fit started from (K0), named in the title.

    Returns
    -------
    matplotlib.figure.Figure
        Top: ``EA`` per pattern. Bottom: ``EW`` as an image, frequency (Hz) against pattern,
        each column scaled to its own maximum (the patterns' shapes; their weights are
        the bars).
    """
    _require_variables(model, ["EW", "EA"], "plot_dictionary")
    dictionary = model["EW"]
    if frequency is not None and "frequency" not in dictionary.coords:
        dictionary = dictionary.assign_coords(frequency=np.asarray(frequency.values))
    weights = np.asarray(model["EA"].values, dtype=np.float64).reshape(-1)
    patterns = np.arange(dictionary.sizes["pattern"])
    dictionary = dictionary.assign_coords(pattern=patterns)
    values = np.asarray(dictionary.transpose("frequency", "pattern").values, dtype=np.float64)
    peaks = values.max(axis=0, keepdims=True)
    shapes = np.divide(values, peaks, out=np.zeros_like(values), where=peaks > 0)

    figure = _new_figure(max(6.0, min(12.0, 3.0 + 0.12 * len(patterns))), 6.5)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2.6]})
    top.bar(patterns, weights, width=0.8, color="tab:blue")
    top.set_ylabel("pattern weight EA")
    kept = f"{len(patterns)} patterns" + (
        f" kept of {initial_patterns}" if initial_patterns is not None else ""
    )
    top.set_title(f"NMF dictionary: {kept}")
    top.grid(axis="y", alpha=0.3)
    # The colour bar sits below the image so the bar chart and the image stay equally wide.
    mesh = bottom.pcolormesh(
        patterns,
        _axis_values(dictionary, "frequency"),
        shapes,
        shading="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        rasterized=True,
    )
    figure.colorbar(
        mesh,
        ax=bottom,
        location="bottom",
        label="EW / its largest value (spectral shape of each pattern)",
        shrink=0.6,
        pad=0.02,
    )
    _integer_ticks(bottom, y=False)
    bottom.set_xlabel("pattern")
    bottom.set_ylabel("frequency (Hz)")
    return figure


def plot_emission(model: xr.Dataset, occupancy: np.ndarray | None = None) -> Figure:
    """The HMM emission matrix ``EB`` (state, pattern), and how much each state is used.

    Parameters
    ----------
    model : xarray.Dataset
        The archive's ``model`` group, with ``EB`` (state, pattern).
    occupancy : array of shape (n_states,), optional
        Share of all frames whose most probable state is each state
        (:func:`specufex_dask.inference.diagnostics.state_occupancy`); drawn as bars beside the
        matrix, with the 1 % line above which a state counts as in use.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _require_variables(model, ["EB"], "plot_emission")
    emission = model["EB"]
    emission = emission.assign_coords(
        state=np.arange(emission.sizes["state"]), pattern=np.arange(emission.sizes["pattern"])
    )
    n_states, n_patterns = emission.sizes["state"], emission.sizes["pattern"]
    matrix_width = max(4.5, min(10.0, 2.5 + 0.15 * n_patterns))
    bars_width = 2.4 if occupancy is not None else 0.0
    figure = _new_figure(matrix_width + bars_width + 0.6, max(4.0, 2.2 + 0.3 * n_states))
    if occupancy is None:
        axes = figure.subplots()
    else:
        axes, bars = figure.subplots(
            1, 2, sharey=True, gridspec_kw={"width_ratios": [matrix_width, bars_width]}
        )
    # A log scale: the loudest state's rates would otherwise leave the others one colour.
    from matplotlib.colors import LogNorm

    values = np.asarray(emission.values, dtype=np.float64)
    positive = values[values > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    _image(
        figure,
        axes,
        emission,
        "pattern",
        "state",
        cmap="viridis",
        label="EB: Poisson rate of each pattern's gain-weighted activation (log scale)",
        norm=norm,
        colorbar_location="bottom",
    )
    _integer_ticks(axes)
    axes.set_xlabel("pattern")
    axes.set_ylabel("state")
    axes.set_title(f"HMM emissions EB: {n_states} states x {n_patterns} patterns")
    axes.invert_yaxis()
    if occupancy is not None:
        from specufex_dask.inference.diagnostics import MIN_STATE_SHARE

        share = 100.0 * np.asarray(occupancy, dtype=np.float64)
        used = share >= 100.0 * MIN_STATE_SHARE
        bars.barh(np.arange(n_states), share, color=np.where(used, "tab:blue", "tab:gray"))
        bars.axvline(100.0 * MIN_STATE_SHARE, color="tab:red", linewidth=1, linestyle="--")
        bars.set_xlabel("frames in the state (%)")
        bars.set_title(
            f"{int(used.sum())} states in use\n(>= 1 % of the frames)", fontsize="medium"
        )
        bars.grid(axis="x", alpha=0.3)
    return figure


def plot_event(data: xr.Dataset, event: str) -> Figure:
    """One event over time: spectrogram, activations and state probabilities.

    Parameters
    ----------
    data : xarray.Dataset
        The archive; needs ``spectrogram``. ``activation`` and ``state_probability``
        panels are drawn when those variables exist.
    event : str
        Event id.

    Returns
    -------
    matplotlib.figure.Figure
        Panels sharing the time axis (s). The state panel shows the state probabilities and,
        as a line, the most probable state at each time.
    """
    _require_variables(data, ["spectrogram"], "plot_event")
    one = _select_event(data, event)
    panels = ["spectrogram"] + [
        name for name in ("activation", "state_probability") if name in data.data_vars
    ]
    figure = _new_figure(8.0, 2.6 * len(panels) + 0.4)
    axes_list = np.atleast_1d(figure.subplots(len(panels), 1, sharex=True))
    axes_list[0].set_title(_event_title(event, one))
    for axes, name in zip(axes_list, panels, strict=True):
        if name == "spectrogram":
            _image(
                figure,
                axes,
                one["spectrogram"],
                "time",
                "frequency",
                cmap="magma",
                label=_SPECTROGRAM_LABEL,
                vmin=0.0,
            )
            axes.set_ylabel("frequency (Hz)")
        elif name == "activation":
            activation = one["activation"].assign_coords(pattern=np.arange(one.sizes["pattern"]))
            _image(figure, axes, activation, "time", "pattern", cmap="viridis", label="activation")
            _integer_ticks(axes, x=False)
            axes.set_ylabel("pattern")
        else:
            probability = one["state_probability"].assign_coords(
                state=np.arange(one.sizes["state"])
            )
            _image(
                figure,
                axes,
                probability,
                "time",
                "state",
                cmap="Blues",
                label="state probability",
                vmin=0.0,
                vmax=1.0,
            )
            most_probable = np.asarray(probability.argmax("state").values)
            axes.step(
                _axis_values(probability, "time"),
                most_probable,
                where="mid",
                color="tab:red",
                linewidth=1.5,
                label="most probable state",
            )
            axes.legend(loc="upper right", fontsize="small", framealpha=0.8)
            _integer_ticks(axes, x=False)
            axes.set_ylabel("state")
    axes_list[-1].set_xlabel("time (s)")
    return figure


def _fingerprint_norm(vmax: float):
    """Square-root colour scale: fingerprints are dominated by a few large entries."""
    from matplotlib.colors import PowerNorm

    return PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)


def _integer_ticks(axes: Axes, *, x: bool = True, y: bool = True) -> None:
    """Tick only whole numbers: states and patterns are indices."""
    from matplotlib.ticker import MaxNLocator

    if x:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def _coordinate(one: xr.Dataset | xr.DataArray, name: str) -> str | None:
    if name not in one.coords:
        return None
    value = one[name].values
    if np.issubdtype(np.asarray(value).dtype, np.datetime64):
        if np.isnat(value):
            return None
        return str(np.datetime_as_string(value, unit="ms")).replace("T", " ")
    return str(value)


def _trace_id(one: xr.Dataset | xr.DataArray) -> str | None:
    parts = [_coordinate(one, name) for name in ("network", "station", "location", "channel")]
    if parts[1] is None:
        return None
    return ".".join(part or "" for part in parts)


def _is_window(event: str, one: xr.Dataset | xr.DataArray) -> bool:
    """Whether the event is a window of a continuous record (its id starts with the trace id)."""
    trace = _trace_id(one)
    return trace is not None and event.startswith(trace + ".")


def _event_title(event: str, one: xr.Dataset | xr.DataArray) -> str:
    """``event 10633: NC.BAV..EHZ 1984-03-15 16:16:12.020 UTC, cluster 2`` or, for a
    window of a continuous record, ``BW.KW1..EHZ window from 2011-03-31 00:52:10.180 UTC``."""
    trace, start = _trace_id(one), _coordinate(one, "starttime")
    when = f" {start} UTC" if start else ""
    if _is_window(event, one):
        title = f"{trace} window from{when}"
    else:
        title = f"event {event}" + (f": {trace}{when}" if trace else when)
    if "cluster" in one.coords or (isinstance(one, xr.Dataset) and "cluster" in one):
        title += f", cluster {int(one['cluster'].values)}"
    return title


def _short_label(event: str, one: xr.Dataset | xr.DataArray) -> str:
    """A few characters for a panel: ``BAV 10633``, ``KW1 00:52:10`` (a window's start)."""
    station, start = _coordinate(one, "station"), _coordinate(one, "starttime")
    if _is_window(event, one) and start:
        return f"{station} {start[11:19]}"
    label = event if len(event) <= 20 else event[:9] + "..." + event[-8:]
    return f"{station} {label}" if station and station not in event else label


def _grid_shape(count: int, max_columns: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels: as few rows as ``max_columns`` allows, and
    the panels spread evenly over them (8 panels in 2 rows of 4, not 5 + 3)."""
    rows = -(-count // max_columns)
    columns = -(-count // rows)
    return rows, columns


def plot_fingerprints(
    fingerprint: xr.DataArray, events: Sequence[str] | None = None, *, max_columns: int = 5
) -> Figure:
    """Fingerprint matrices (state x next state) of several events on one colour scale.

    Parameters
    ----------
    fingerprint : xarray.DataArray, dims (event, state, next_state)
    events : sequence of str, optional
        Event ids; default the first 8.
    max_columns : int, default=5

    Returns
    -------
    matplotlib.figure.Figure
    """
    events = select_events(fingerprint, events, n_events=8)
    chosen = [_select_event(fingerprint, event) for event in events]
    vmax = float(max(np.nanmax(np.asarray(one.values)) for one in chosen))
    rows, columns = _grid_shape(len(events), max_columns)
    figure = _new_figure(2.6 * columns + 1.0, 2.5 * rows + 0.4)
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    mesh = None
    for axes, event, one in zip(axes_grid, events, chosen, strict=False):
        one = one.assign_coords(
            state=np.arange(one.sizes["state"]), next_state=np.arange(one.sizes["next_state"])
        )
        mesh = axes.pcolormesh(
            one["next_state"].values,
            one["state"].values,
            np.asarray(one.transpose("state", "next_state").values, dtype=np.float64),
            shading="nearest",
            cmap="viridis",
            norm=_fingerprint_norm(vmax),
        )
        axes.invert_yaxis()
        axes.set_aspect("equal")
        _integer_ticks(axes)
        title = _short_label(event, one)
        if "cluster" in one.coords:
            title = f"cluster {int(one['cluster'].values)}: {title}"
        axes.set_title(title, fontsize="medium")
        axes.set_xlabel("next state")
        axes.set_ylabel("state")
    for axes in axes_grid[len(events) :]:
        axes.set_visible(False)
    assert mesh is not None  # without events vmax's max() has raised
    figure.colorbar(mesh, ax=axes_grid.tolist(), label=_FINGERPRINT_LABEL, shrink=0.9)
    figure.suptitle("fingerprints (transitions from state to next state)")
    return figure


def plot_cluster_summary(data: xr.Dataset, *, n_examples: int = 2) -> Figure:
    """Members per cluster, mean fingerprint and example spectrograms of each cluster.

    Parameters
    ----------
    data : xarray.Dataset
        The archive with ``cluster`` (event), ``fingerprint`` and ``spectrogram``.
    n_examples : int, default=2
        Example spectrograms per cluster: its most typical members, those nearest the
        cluster's mean in the features the clustering used (the ``transform`` attribute
        of ``cluster``; :func:`representative_events`).

    Returns
    -------
    matplotlib.figure.Figure
        First row: number of members per cluster (split by station when the archive holds
        several). One column per cluster below: the mean fingerprint, on one colour scale
        for all clusters, then the example spectrograms (frequency in Hz against time in
        s, on one colour scale).
    """
    _require_variables(data, ["cluster", "fingerprint", "spectrogram"], "plot_cluster_summary")
    labels = np.asarray(data["cluster"].values)
    clusters = np.unique(labels)
    fingerprints = np.asarray(data["fingerprint"].values, dtype=np.float64)
    event_ids = _event_ids(data)
    position = {event: i for i, event in enumerate(event_ids)}
    n_clusters = len(clusters)

    figure = _new_figure(max(6.0, 3.0 * n_clusters), 2.2 + 2.6 * (1 + n_examples))
    grid = figure.add_gridspec(
        2 + n_examples, n_clusters, height_ratios=[0.8] + [1.0] * (1 + n_examples)
    )
    sizes_axes = figure.add_subplot(grid[0, :])
    counts = np.array([(labels == cluster).sum() for cluster in clusters])
    names = [str(c) for c in clusters]
    stations = (
        np.array([str(station) for station in data["station"].values])
        if "station" in data.coords
        else None
    )
    if stations is not None and len(set(stations.tolist())) > 1:
        bottom = np.zeros(n_clusters)
        for station in sorted(set(stations.tolist())):
            part = np.array([((labels == c) & (stations == station)).sum() for c in clusters])
            sizes_axes.bar(names, part, bottom=bottom, label=station)
            bottom += part
        sizes_axes.legend(title="station", fontsize="small", loc="upper right")
    else:
        sizes_axes.bar(names, counts, color="tab:blue")
    for index, count in enumerate(counts):
        sizes_axes.annotate(str(count), (index, count), ha="center", va="bottom", fontsize="small")
    _integer_ticks(sizes_axes, x=False)
    sizes_axes.set_xlabel("cluster")
    sizes_axes.set_ylabel("events")
    sizes_axes.set_ylim(0, counts.max() * 1.2)
    transform = data["cluster"].attrs.get("transform")
    from specufex_dask.analysis.clustering import METHOD_NAMES

    method = METHOD_NAMES.get(data["cluster"].attrs.get("method", "kmeans"), "k-means")
    on = f" ({method} on the {transform} fingerprints)" if transform else ""
    sizes_axes.set_title(f"{len(labels)} events in {n_clusters} clusters{on}")

    means = [fingerprints[labels == cluster].mean(axis=0) for cluster in clusters]
    vmax_fingerprint = float(max(mean.max() for mean in means))
    examples = representative_events(data, n_examples)
    per_cluster = [
        [position[e] for e in examples if labels[position[e]] == cluster] for cluster in clusters
    ]
    spectrogram = data["spectrogram"]
    example_values = {
        i: np.asarray(spectrogram.isel(event=i).transpose("frequency", "time").values)
        for i in (position[e] for e in examples)
    }
    spectrogram_max = float(max(np.nanmax(v) for v in example_values.values()))
    time = _axis_values(spectrogram, "time")
    frequency = _axis_values(spectrogram, "frequency")
    fingerprint_axes = []
    example_axes = []
    spectrogram_mesh = None
    for column, cluster in enumerate(clusters):
        axes = figure.add_subplot(grid[1, column])
        fingerprint_axes.append(axes)
        fingerprint_mesh = axes.pcolormesh(
            np.arange(means[column].shape[1]),
            np.arange(means[column].shape[0]),
            means[column],
            shading="nearest",
            cmap="viridis",
            norm=_fingerprint_norm(vmax_fingerprint),
        )
        _integer_ticks(axes)
        axes.invert_yaxis()
        axes.set_aspect("equal")
        axes.set_title(f"cluster {cluster}: mean fingerprint", fontsize="medium")
        axes.set_xlabel("next state")
        axes.set_ylabel("state")
        for row, index in enumerate(per_cluster[column]):
            axes = figure.add_subplot(grid[2 + row, column])
            example_axes.append(axes)
            spectrogram_mesh = axes.pcolormesh(
                time,
                frequency,
                example_values[index],
                shading="nearest",
                cmap="magma",
                vmin=0.0,
                vmax=spectrogram_max,
                rasterized=True,
            )
            label = _short_label(event_ids[index], data.isel(event=index))
            axes.set_title(f"cluster {cluster}: {label}", fontsize="medium")
            axes.set_xlabel("time (s)")
            axes.set_ylabel("frequency (Hz)")
    figure.colorbar(fingerprint_mesh, ax=fingerprint_axes, label="mean " + _FINGERPRINT_LABEL)
    if spectrogram_mesh is not None:
        figure.colorbar(spectrogram_mesh, ax=example_axes, label=_SPECTROGRAM_LABEL)
    return figure


def continuous_windows(data: xr.Dataset) -> dict[str, np.ndarray]:
    """Positions of the events that are windows of a continuous record, by trace id.

    A window's event id is ``<trace id>.<start>`` (as
    :func:`specufex_dask.ingest.ingest_continuous` names them) and it has a ``starttime``.

    Returns
    -------
    dict of str to ndarray of int
        Trace id to the positions of its windows, in time order; traces with fewer than
        two windows are left out.
    """
    if "starttime" not in data.coords or "station" not in data.coords:
        return {}
    columns = [
        [str(v) for v in data[name].values] if name in data.coords else [""] * data.sizes["event"]
        for name in ("network", "station", "location", "channel")
    ]
    windows: dict[str, list[int]] = {}
    for position, (event, *parts) in enumerate(zip(_event_ids(data), *columns, strict=True)):
        trace = ".".join(parts)
        if event.startswith(trace + "."):
            windows.setdefault(trace, []).append(position)
    start = np.asarray(data["starttime"].values)
    return {
        trace: np.asarray(sorted(positions, key=lambda i: start[i]))
        for trace, positions in windows.items()
        if len(positions) >= 2
    }


def plot_cluster_timeline(data: xr.Dataset) -> Figure:
    """The cluster of every window of a continuous record against the window's start.

    Parameters
    ----------
    data : xarray.Dataset
        The archive with ``cluster`` and windows of continuous records
        (:func:`continuous_windows`).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per record: a marker per window at its start time (UTC) and cluster,
        coloured by cluster as in the other figures; a change of regime in the record
        shows as a change of cluster.

    Raises
    ------
    ValueError
        When the archive holds no windows of a continuous record.
    """
    _require_variables(data, ["cluster"], "plot_cluster_timeline")
    records = continuous_windows(data)
    if not records:
        raise ValueError(
            "plot_cluster_timeline needs windows of a continuous record (event ids "
            "'<trace id>.<start>' with starttime), which the dataset does not hold"
        )
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    labels = np.asarray(data["cluster"].values)
    clusters = np.unique(labels)
    start = np.asarray(data["starttime"].values)
    figure = _new_figure(10.0, 0.6 + (1.2 + 0.25 * len(clusters)) * len(records))
    axes_list = np.atleast_1d(figure.subplots(len(records), 1, squeeze=False)).ravel()
    colours = cluster_colours(clusters)
    for axes, (trace, positions) in zip(axes_list, records.items(), strict=True):
        times = start[positions]
        for cluster in clusters:
            chosen = labels[positions] == cluster
            axes.scatter(
                times[chosen],
                np.full(int(chosen.sum()), cluster),
                marker="|",
                s=120,
                color=colours[cluster],
                linewidths=1.5,
            )
        axes.set_yticks(clusters)
        axes.set_ylim(clusters.min() - 0.6, clusters.max() + 0.6)
        axes.invert_yaxis()
        axes.set_ylabel("cluster")
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        axes.set_xlabel("window start (UTC)")
        axes.grid(axis="x", alpha=0.3)
        axes.set_title(f"{trace}: cluster of each of its {len(positions)} windows")
    return figure
