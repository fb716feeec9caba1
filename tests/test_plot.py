"""Tests of specufex_dask.analysis.plot on a synthetic dataset that follows the archive schema."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr

from specufex_dask.analysis import plot


def synthetic_archive(rng, n_events=9, n_frequencies=31, n_times=12, n_patterns=6, n_states=4):
    """An archive Dataset and model Dataset with random values and 3 clusters."""
    frequency = np.linspace(8.0, 20.0, n_frequencies)
    time = 0.5 + 0.75 * np.arange(n_times)
    events = [f"ev{i}" for i in range(n_events)]
    state_probability = rng.dirichlet(np.ones(n_states), size=(n_events, n_times))
    fingerprint = rng.dirichlet(np.ones(n_states**2), size=n_events)
    data = xr.Dataset(
        {
            "spectrogram": (
                ("event", "frequency", "time"),
                rng.gamma(2.0, 2.0, (n_events, n_frequencies, n_times)),
            ),
            "activation": (
                ("event", "pattern", "time"),
                rng.gamma(1.0, 1.0, (n_events, n_patterns, n_times)),
            ),
            "state_probability": (
                ("event", "state", "time"),
                state_probability.transpose(0, 2, 1),
            ),
            "fingerprint": (
                ("event", "state", "next_state"),
                fingerprint.reshape(n_events, n_states, n_states),
            ),
            "cluster": (("event",), np.array([0, 1, 2, 0, 0, 1, 2, 0, 1])[:n_events]),
        },
        coords={
            "event": events,
            "frequency": frequency,
            "time": time,
            "station": ("event", ["BAV"] * n_events),
        },
    )
    model = xr.Dataset(
        {
            "EW": (("frequency", "pattern"), rng.gamma(1.0, 1.0, (n_frequencies, n_patterns))),
            "EA": (("pattern",), np.sort(rng.gamma(1.0, 1.0, n_patterns))[::-1]),
            "EB": (("state", "pattern"), rng.gamma(1.0, 1.0, (n_states, n_patterns))),
        }
    )
    return data, model


@pytest.fixture
def archive(rng):
    return synthetic_archive(rng)


def mesh_values(axes):
    return np.asarray(axes.collections[0].get_array()).reshape(-1)


def test_event_figure_shows_the_event(archive):
    data, _ = archive
    figure = plot.plot_event(data, "ev4")
    # Panels come first, their colour bars after them.
    spectrogram_axes, activation_axes, state_axes = figure.axes[:3]
    np.testing.assert_array_equal(
        mesh_values(spectrogram_axes), data["spectrogram"][4].values.reshape(-1)
    )
    np.testing.assert_array_equal(
        mesh_values(activation_axes), data["activation"][4].values.reshape(-1)
    )
    (state_line,) = state_axes.get_lines()
    expected_states = data["state_probability"][4].values.argmax(axis=0)
    np.testing.assert_array_equal(state_line.get_ydata(), expected_states)
    np.testing.assert_array_equal(state_line.get_xdata(), data["time"].values)
    assert spectrogram_axes.get_ylabel() == "frequency (Hz)"
    assert state_axes.get_xlabel() == "time (s)"
    assert "ev4" in spectrogram_axes.get_title()
    colour_bar_labels = [axes.get_ylabel() for axes in figure.axes[3:]]
    assert colour_bar_labels == [
        "spectrogram (dB above median)",
        "activation",
        "state probability",
    ]


def test_event_figure_without_outputs_has_only_the_spectrogram(archive):
    data, _ = archive
    figure = plot.plot_event(data[["spectrogram"]], "ev0")
    assert len(figure.axes) == 2  # the image and its colour bar
    assert figure.axes[0].get_xlabel() == "time (s)"


def test_dictionary_figure(archive):
    data, model = archive
    figure = plot.plot_dictionary(model, data["frequency"], initial_patterns=75)
    bars, image = figure.axes[0], figure.axes[1]
    np.testing.assert_allclose([p.get_height() for p in bars.patches], model["EA"].values)
    # each pattern's spectral shape: EW divided by its column's largest value
    ew = model["EW"].values
    np.testing.assert_allclose(mesh_values(image), (ew / ew.max(axis=0)).reshape(-1))
    assert image.get_ylabel() == "frequency (Hz)"
    low, high = image.get_ylim()
    assert low < 8.0 and 20.0 < high < 21.0  # frequencies in Hz, not bin indices
    assert bars.get_title() == "NMF dictionary: 6 patterns kept of 75"
    assert plot.plot_dictionary(model).axes[0].get_title() == "NMF dictionary: 6 patterns"


def test_emission_figure(archive):
    _, model = archive
    axes = plot.plot_emission(model).axes[0]
    np.testing.assert_array_equal(mesh_values(axes), model["EB"].values.reshape(-1))
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("pattern", "state")
    assert axes.collections[0].norm.vmin == model["EB"].values.min()  # a log colour scale


def test_emission_figure_shows_the_states_in_use(archive):
    _, model = archive
    occupancy = np.array([0.6, 0.395, 0.005, 0.0])
    figure = plot.plot_emission(model, occupancy)
    bars = next(axes for axes in figure.axes if "in use" in axes.get_title())
    assert bars.get_title() == "2 states in use\n(>= 1 % of the frames)"
    np.testing.assert_allclose([p.get_width() for p in bars.patches], 100 * occupancy)


def test_fingerprint_figure_and_unknown_events(archive):
    data, _ = archive
    figure = plot.plot_fingerprints(data["fingerprint"], ["ev2", "ev7"])
    visible = [axes for axes in figure.axes if axes.get_title().startswith("BAV")]
    assert [axes.get_title() for axes in visible] == ["BAV ev2", "BAV ev7"]
    np.testing.assert_array_equal(
        mesh_values(visible[1]), data["fingerprint"][7].values.reshape(-1)
    )
    labelled = data["fingerprint"].assign_coords(cluster=data["cluster"])
    titles = [axes.get_title() for axes in plot.plot_fingerprints(labelled, ["ev2"]).axes]
    assert "cluster 2: BAV ev2" in titles
    with pytest.raises(ValueError, match=r"not in the archive: nope.*holds 9 events"):
        plot.plot_fingerprints(data["fingerprint"], ["ev1", "nope"])


def test_fingerprint_grid_spreads_the_panels_evenly():
    assert [plot._grid_shape(n, 5) for n in (1, 4, 5, 6, 8, 11)] == [
        (1, 1), (1, 4), (1, 5), (2, 3), (2, 4), (3, 4),
    ]  # fmt: skip


def test_cluster_summary(archive):
    data, _ = archive
    figure = plot.plot_cluster_summary(data, n_examples=1)
    sizes = figure.axes[0]
    assert [p.get_height() for p in sizes.patches] == [4, 3, 2]
    features = data["fingerprint"].values.reshape(9, -1)
    labels = data["cluster"].values
    titles = [axes.get_title() for axes in figure.axes]
    for cluster in range(3):
        members = np.flatnonzero(labels == cluster)
        centre = features[members].mean(axis=0)
        closest = members[np.argmin(np.linalg.norm(features[members] - centre, axis=1))]
        assert f"cluster {cluster}: BAV ev{closest}" in titles
        mean_axes = next(
            a for a in figure.axes if a.get_title() == f"cluster {cluster}: mean fingerprint"
        )
        np.testing.assert_allclose(
            mesh_values(mean_axes), data["fingerprint"].values[members].mean(axis=0).reshape(-1)
        )


def test_figures_save_as_png(archive):
    data, model = archive
    buffer = io.BytesIO()
    plot.plot_cluster_summary(data).savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_variables_are_named(archive):
    data, _ = archive
    with pytest.raises(ValueError, match=r"plot_cluster_summary needs the variable\(s\) cluster"):
        plot.plot_cluster_summary(data.drop_vars("cluster"))


def test_select_events_defaults_to_the_first(archive):
    data, _ = archive
    assert plot.select_events(data, None, n_events=2) == ["ev0", "ev1"]


def test_cluster_summary_examples_are_typical_in_the_clustered_features(archive):
    """The examples are nearest their cluster's mean in the features k-means saw."""
    from specufex_dask.analysis.clustering import fingerprint_features

    data, _ = archive
    data["cluster"].attrs["transform"] = "hellinger"
    features = fingerprint_features(data["fingerprint"], "hellinger")
    labels = data["cluster"].values
    expected = []
    for cluster in range(3):
        members = np.flatnonzero(labels == cluster)
        distance = np.linalg.norm(features[members] - features[members].mean(axis=0), axis=1)
        expected.append(f"ev{members[np.argmin(distance)]}")
    assert plot.representative_events(data) == expected
    figure = plot.plot_cluster_summary(data, n_examples=1)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[0] == "9 events in 3 clusters (k-means on the hellinger fingerprints)"
    data["cluster"].attrs["method"] = "spectral"
    figure = plot.plot_cluster_summary(data, n_examples=1)
    assert (
        figure.axes[0].get_title()
        == "9 events in 3 clusters (spectral on the hellinger fingerprints)"
    )
    for cluster, event in enumerate(expected):
        assert f"cluster {cluster}: BAV {event}" in titles


def two_stations(data):
    """Events 0-5 become 20 s windows of a continuous KW1 record, every 10 s."""
    n = data.sizes["event"]
    start = np.datetime64("2011-03-31T00:28:00.180", "ns") + np.arange(n) * np.timedelta64(10, "s")
    windows = [f"BW.KW1..EHZ.{np.datetime64(t, 'ns')}" for t in start[:6]]
    events = windows + [str(e) for e in data["event"].values[6:]]
    return data.assign_coords(
        event=events,
        network=("event", ["BW"] * 6 + ["NC"] * (n - 6)),
        station=("event", ["KW1"] * 6 + ["BAV"] * (n - 6)),
        location=("event", [""] * n),
        channel=("event", ["EHZ"] * n),
        starttime=("event", start),
    )


def test_titles_name_the_trace_and_the_time(archive):
    data = two_stations(archive[0])
    window = str(data["event"].values[1])
    title = plot.plot_event(data, window).axes[0].get_title()
    assert title == "BW.KW1..EHZ window from 2011-03-31 00:28:10.180 UTC, cluster 1"
    title = plot.plot_event(data, "ev7").axes[0].get_title()
    assert title == "event ev7: NC.BAV..EHZ 2011-03-31 00:29:10.180 UTC, cluster 0"
    summary = plot.plot_cluster_summary(data, n_examples=3)
    titles = [axes.get_title() for axes in summary.axes]
    assert any(t.startswith("cluster ") and ": KW1 00:28:" in t for t in titles)
    # members per cluster, split by station
    sizes = summary.axes[0]
    assert [text.get_text() for text in sizes.get_legend().get_texts()] == ["BAV", "KW1"]
    heights = [p.get_height() for p in sizes.patches]
    labels = data["cluster"].values
    assert heights[:3] == [int(((labels == c) & (np.arange(9) >= 6)).sum()) for c in range(3)]


def test_cluster_timeline(archive):
    data = two_stations(archive[0])
    records = plot.continuous_windows(data)
    assert list(records) == ["BW.KW1..EHZ"] and records["BW.KW1..EHZ"].tolist() == list(range(6))
    figure = plot.plot_cluster_timeline(data)
    (axes,) = figure.axes
    assert axes.get_title() == "BW.KW1..EHZ: cluster of each of its 6 windows"
    plotted = sorted(
        (float(x), int(y)) for points in axes.collections for x, y in points.get_offsets()
    )
    assert [cluster for _, cluster in plotted] == data["cluster"].values[:6].tolist()
    with pytest.raises(ValueError, match="needs windows of a continuous record"):
        plot.plot_cluster_timeline(archive[0])
