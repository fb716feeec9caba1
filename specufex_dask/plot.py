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
  spectrograms of each cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_cluster_summary",
    "plot_dictionary",
    "plot_emission",
    "plot_event",
    "plot_fingerprints",
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
):
    """Draw ``values`` (y_dim, x_dim) as cells centred on their coordinates, with a colour bar."""
    values = values.transpose(y_dim, x_dim)
    mesh = axes.pcolormesh(
        _axis_values(values, x_dim),
        _axis_values(values, y_dim),
        np.asarray(values.values, dtype=np.float64),
        shading="nearest",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        rasterized=True,
    )
    figure.colorbar(mesh, ax=axes, label=label, pad=0.01)
    return mesh


def plot_dictionary(model: xr.Dataset, frequency: xr.DataArray | None = None) -> Figure:
    """The NMF dictionary: ``EW`` against frequency and the pattern weights ``EA``.

    Parameters
    ----------
    model : xarray.Dataset
        The archive's ``model`` group, with ``EW`` (frequency, pattern) and ``EA`` (pattern).
    frequency : xarray.DataArray, optional
        Frequencies in Hz, used when ``model`` has no ``frequency`` coordinate.

    Returns
    -------
    matplotlib.figure.Figure
        Top: ``EA`` per pattern. Bottom: ``EW`` as an image, frequency (Hz) against pattern.
    """
    _require_variables(model, ["EW", "EA"], "plot_dictionary")
    dictionary = model["EW"]
    if frequency is not None and "frequency" not in dictionary.coords:
        dictionary = dictionary.assign_coords(frequency=np.asarray(frequency.values))
    weights = np.asarray(model["EA"].values, dtype=np.float64).reshape(-1)
    patterns = np.arange(dictionary.sizes["pattern"])
    dictionary = dictionary.assign_coords(pattern=patterns)

    figure = _new_figure(8.0, 6.5)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2.6]})
    top.bar(patterns, weights, width=0.8, color="tab:blue")
    top.set_ylabel("pattern weight EA")
    top.set_title(f"NMF dictionary: {len(patterns)} patterns")
    top.grid(axis="y", alpha=0.3)
    # The colour bar sits below the image so the bar chart and the image stay equally wide.
    mesh = bottom.pcolormesh(
        patterns,
        _axis_values(dictionary, "frequency"),
        np.asarray(dictionary.transpose("frequency", "pattern").values, dtype=np.float64),
        shading="nearest",
        cmap="viridis",
        rasterized=True,
    )
    figure.colorbar(
        mesh, ax=bottom, location="bottom", label="EW (expected dictionary)", shrink=0.6, pad=0.02
    )
    _integer_ticks(bottom, y=False)
    bottom.set_xlabel("pattern")
    bottom.set_ylabel("frequency (Hz)")
    return figure


def plot_emission(model: xr.Dataset) -> Figure:
    """The HMM emission matrix ``EB`` (state, pattern).

    Parameters
    ----------
    model : xarray.Dataset
        The archive's ``model`` group, with ``EB`` (state, pattern).

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
    figure = _new_figure(min(12.0, 3.0 + 0.15 * n_patterns), 1.5 + 0.3 * n_states)
    axes = figure.subplots()
    _image(figure, axes, emission, "pattern", "state", cmap="viridis", label="EB")
    _integer_ticks(axes)
    axes.set_xlabel("pattern")
    axes.set_ylabel("state")
    axes.set_title(f"HMM emission matrix EB: {n_states} states x {n_patterns} patterns")
    axes.invert_yaxis()
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
    station = _event_label(one)
    axes_list[0].set_title(f"event {event}{station}")
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


def _event_label(one: xr.Dataset) -> str:
    parts = []
    for name in ("station", "channel", "starttime"):
        if name in one.coords:
            parts.append(str(one[name].values))
    return f" ({' '.join(parts)})" if parts else ""


def _grid_shape(count: int, max_columns: int) -> tuple[int, int]:
    columns = min(count, max_columns)
    rows = -(-count // columns)
    return rows, columns


def plot_fingerprints(
    fingerprint: xr.DataArray, events: Sequence[str] | None = None, *, max_columns: int = 4
) -> Figure:
    """Fingerprint matrices (state x next state) of several events on one colour scale.

    Parameters
    ----------
    fingerprint : xarray.DataArray, dims (event, state, next_state)
    events : sequence of str, optional
        Event ids; default the first 8.
    max_columns : int, default=4

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
        axes.set_title(f"event {event}", fontsize="medium")
        axes.set_xlabel("next state")
        axes.set_ylabel("state")
    for axes in axes_grid[len(events) :]:
        axes.set_visible(False)
    figure.colorbar(mesh, ax=axes_grid.tolist(), label=_FINGERPRINT_LABEL, shrink=0.9)
    figure.suptitle("fingerprints")
    return figure


def _closest_members(
    features: np.ndarray, members: np.ndarray, centre: np.ndarray, count: int
) -> np.ndarray:
    """Indices (into the full event list) of the ``count`` members nearest to ``centre``."""
    distance = np.linalg.norm(features[members] - centre, axis=1)
    # Stable sort: equally distant members keep archive order, so the choice is reproducible.
    return members[np.argsort(distance, kind="stable")[:count]]


def plot_cluster_summary(data: xr.Dataset, *, n_examples: int = 2) -> Figure:
    """Members per cluster, mean fingerprint and example spectrograms of each cluster.

    Parameters
    ----------
    data : xarray.Dataset
        The archive with ``cluster`` (event), ``fingerprint`` and ``spectrogram``.
    n_examples : int, default=2
        Example spectrograms per cluster: the members whose fingerprints are closest to the
        cluster's mean fingerprint.

    Returns
    -------
    matplotlib.figure.Figure
        First row: number of members per cluster. One column per cluster below: the mean
        fingerprint, then the example spectrograms (frequency in Hz against time in s).
    """
    _require_variables(data, ["cluster", "fingerprint", "spectrogram"], "plot_cluster_summary")
    labels = np.asarray(data["cluster"].values)
    clusters = np.unique(labels)
    fingerprints = np.asarray(data["fingerprint"].values, dtype=np.float64)
    features = fingerprints.reshape(fingerprints.shape[0], -1)
    event_ids = _event_ids(data)
    n_clusters = len(clusters)

    figure = _new_figure(max(6.0, 3.0 * n_clusters), 2.2 + 2.6 * (1 + n_examples))
    grid = figure.add_gridspec(
        2 + n_examples, n_clusters, height_ratios=[0.8] + [1.0] * (1 + n_examples)
    )
    sizes_axes = figure.add_subplot(grid[0, :])
    counts = np.array([(labels == cluster).sum() for cluster in clusters])
    sizes_axes.bar([str(c) for c in clusters], counts, color="tab:blue")
    for position, count in enumerate(counts):
        sizes_axes.annotate(
            str(count), (position, count), ha="center", va="bottom", fontsize="small"
        )
    _integer_ticks(sizes_axes, x=False)
    sizes_axes.set_xlabel("cluster")
    sizes_axes.set_ylabel("events")
    sizes_axes.set_ylim(0, counts.max() * 1.2)
    sizes_axes.set_title(f"{len(labels)} events in {n_clusters} clusters")

    vmax_fingerprint = float(
        max(features[labels == cluster].mean(axis=0).max() for cluster in clusters)
    )
    spectrogram = data["spectrogram"]
    spectrogram_mesh = None
    spectrogram_max = 0.0
    examples_per_cluster = []
    for cluster in clusters:
        members = np.flatnonzero(labels == cluster)
        centre = features[members].mean(axis=0)
        examples_per_cluster.append(_closest_members(features, members, centre, n_examples))
    example_values = {
        int(i): np.asarray(spectrogram.isel(event=int(i)).transpose("frequency", "time").values)
        for examples in examples_per_cluster
        for i in examples
    }
    if example_values:
        spectrogram_max = float(max(np.nanmax(v) for v in example_values.values()))
    time = _axis_values(spectrogram, "time")
    frequency = _axis_values(spectrogram, "frequency")
    fingerprint_axes = []
    example_axes = []
    for column, cluster in enumerate(clusters):
        members = np.flatnonzero(labels == cluster)
        mean_fingerprint = fingerprints[members].mean(axis=0)
        axes = figure.add_subplot(grid[1, column])
        fingerprint_axes.append(axes)
        fingerprint_mesh = axes.pcolormesh(
            np.arange(mean_fingerprint.shape[1]),
            np.arange(mean_fingerprint.shape[0]),
            mean_fingerprint,
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
        examples = examples_per_cluster[column]
        for row, index in enumerate(examples):
            axes = figure.add_subplot(grid[2 + row, column])
            example_axes.append(axes)
            spectrogram_mesh = axes.pcolormesh(
                time,
                frequency,
                example_values[int(index)],
                shading="nearest",
                cmap="magma",
                vmin=0.0,
                vmax=spectrogram_max,
                rasterized=True,
            )
            axes.set_title(f"cluster {cluster}: event {event_ids[int(index)]}", fontsize="medium")
            axes.set_xlabel("time (s)")
            axes.set_ylabel("frequency (Hz)")
    figure.colorbar(fingerprint_mesh, ax=fingerprint_axes, label="mean " + _FINGERPRINT_LABEL)
    if spectrogram_mesh is not None:
        figure.colorbar(spectrogram_mesh, ax=example_axes, label=_SPECTROGRAM_LABEL)
    return figure
