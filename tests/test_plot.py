"""Tests of specufex_dask.plot on a synthetic dataset that follows the archive schema."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr

from specufex_dask import plot


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
    figure = plot.plot_dictionary(model, data["frequency"])
    bars, image = figure.axes[0], figure.axes[1]
    np.testing.assert_allclose([p.get_height() for p in bars.patches], model["EA"].values)
    np.testing.assert_array_equal(mesh_values(image), model["EW"].values.reshape(-1))
    assert image.get_ylabel() == "frequency (Hz)"
    low, high = image.get_ylim()
    assert low < 8.0 and 20.0 < high < 21.0  # frequencies in Hz, not bin indices


def test_emission_figure(archive):
    _, model = archive
    axes = plot.plot_emission(model).axes[0]
    np.testing.assert_array_equal(mesh_values(axes), model["EB"].values.reshape(-1))
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("pattern", "state")


def test_fingerprint_figure_and_unknown_events(archive):
    data, _ = archive
    figure = plot.plot_fingerprints(data["fingerprint"], ["ev2", "ev7"])
    visible = [axes for axes in figure.axes if axes.get_title().startswith("event")]
    assert [axes.get_title() for axes in visible] == ["event ev2", "event ev7"]
    np.testing.assert_array_equal(
        mesh_values(visible[1]), data["fingerprint"][7].values.reshape(-1)
    )
    with pytest.raises(ValueError, match=r"not in the archive: nope.*holds 9 events"):
        plot.plot_fingerprints(data["fingerprint"], ["ev1", "nope"])


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
        assert f"cluster {cluster}: event ev{closest}" in titles
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
