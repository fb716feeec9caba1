"""Tests of specufex_dask.analysis.timespace: clusters over time, on maps, by example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from specufex_dask.analysis import timespace


def _times(rng, n, start="2021-01-01", days=40):
    offsets = rng.integers(0, days * 86400, size=n).astype("timedelta64[s]")
    return (np.datetime64(start) + offsets).astype("datetime64[ns]")


def test_occurrence_counts_every_cluster_per_day_including_empty_days(rng):
    times = _times(rng, 300)
    times[::50] = np.datetime64("NaT")
    labels = rng.integers(0, 4, size=300) * 3  # labels 0, 3, 6, 9
    occurrence = timespace.cluster_occurrence(times, labels)
    assert occurrence.attrs["time_bin"] == "day"
    # Independently with pandas: floor to the day, count per (cluster, day).
    frame = pd.DataFrame({"time": times, "cluster": labels}).dropna()
    frame["day"] = frame["time"].dt.floor("D")
    expected = frame.groupby(["cluster", "day"]).size().unstack(fill_value=0)
    days = pd.date_range(frame["day"].min(), frame["day"].max(), freq="D")
    expected = expected.reindex(columns=days, fill_value=0)
    np.testing.assert_array_equal(occurrence["cluster"], [0, 3, 6, 9])
    np.testing.assert_array_equal(occurrence["time"].values, days.values)
    np.testing.assert_array_equal(occurrence.values, expected.values)
    assert occurrence.values.sum() == 300 - 6
    np.testing.assert_array_equal(
        occurrence["time_end"].values - occurrence["time"].values, np.timedelta64(1, "D")
    )


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (np.timedelta64(11, "h"), "10 minutes"),
        (np.timedelta64(4, "D"), "hour"),
        (np.timedelta64(100, "D"), "day"),
        (np.timedelta64(3 * 365, "D"), "week"),
        (np.timedelta64(30 * 365, "D"), "month"),
    ],
)
def test_the_time_bin_follows_the_span(span, expected):
    start = np.datetime64("2000-03-01T00:00", "ns")
    assert timespace.choose_time_bin(np.array([start, start + span])) == expected


def test_ten_minute_and_month_bins_start_on_their_boundaries():
    times = np.array(
        ["2011-03-31T00:28:00", "2011-03-31T00:39:59", "2011-03-31T00:40:00"],
        dtype="datetime64[ns]",
    )
    occurrence = timespace.cluster_occurrence(times, [0, 0, 1], "10 minutes")
    np.testing.assert_array_equal(
        occurrence["time"].values.astype("datetime64[m]").astype(str),
        ["2011-03-31T00:20", "2011-03-31T00:30", "2011-03-31T00:40"],
    )
    np.testing.assert_array_equal(occurrence.values, [[1, 1, 0], [0, 0, 1]])
    months = timespace.cluster_occurrence(
        np.array(["1984-03-15", "1984-05-02"], dtype="datetime64[ns]"), [1, 1], "month"
    )
    assert months["time"].values.astype("datetime64[M]").astype(str).tolist() == [
        "1984-03", "1984-04", "1984-05",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="time_bin must be one of"):
        timespace.cluster_occurrence(times, [0, 0, 1], "fortnight")


def _catalog(rng, n=120):
    labels = rng.integers(0, 3, size=n)
    latitude = 37.0 + 0.3 * labels + 0.05 * rng.standard_normal(n)
    longitude = -122.0 + 0.1 * rng.standard_normal(n)
    depth = 2.0 + 3.0 * labels + rng.random(n)
    return xr.Dataset(
        {
            "cluster": ("event", labels),
            "silhouette": ("event", rng.uniform(-0.2, 0.9, size=n)),
            "spectrogram": (("event", "frequency", "time"), rng.random((n, 6, 5))),
        },
        coords={
            "event": [f"ev{i}" for i in range(n)],
            "frequency": np.arange(1.0, 7.0),
            "time": np.arange(0.5, 5.0),
            "source_origin_time": ("event", _times(rng, n, days=400)),
            timespace.LATITUDE: ("event", latitude),
            timespace.LONGITUDE: ("event", longitude),
            timespace.DEPTH: ("event", depth),
        },
    )


def test_occurrence_figure_draws_the_counts(rng):
    data = _catalog(rng)
    figure = timespace.plot_cluster_occurrence(data)
    heat = figure.axes[1].collections[0]
    expected = timespace.cluster_occurrence(data["source_origin_time"].values, data["cluster"])
    assert expected.attrs["time_bin"] == "week"
    np.testing.assert_array_equal(np.asarray(heat.get_array()).reshape(3, -1), expected.values)
    assert figure.axes[1].get_xlabel() == "origin time (UTC)"


def test_map_and_depth_section_place_every_event(rng):
    data = _catalog(rng)
    figure = timespace.plot_cluster_map(data)
    map_axes, section = figure.axes
    labels = data["cluster"].values
    for cluster, (on_map, in_section) in enumerate(
        zip(map_axes.collections, section.collections, strict=True)
    ):
        chosen = labels == cluster
        np.testing.assert_allclose(
            on_map.get_offsets(),
            np.c_[data[timespace.LONGITUDE].values[chosen], data[timespace.LATITUDE][chosen]],
        )
        np.testing.assert_allclose(in_section.get_offsets()[:, 1], data[timespace.DEPTH][chosen])
    assert section.yaxis_inverted()
    with pytest.raises(ValueError, match="source_latitude_deg"):
        timespace.plot_cluster_map(data.drop_vars(timespace.LATITUDE))


def test_examples_are_the_largest_silhouettes(rng):
    data = _catalog(rng)
    chosen = timespace.examples_by_silhouette(data, 4)
    silhouette = data["silhouette"].values
    labels = data["cluster"].values
    for cluster, positions in chosen.items():
        members = np.flatnonzero(labels == cluster)
        assert sorted(silhouette[positions]) == sorted(silhouette[members])[-4:]
        assert list(silhouette[positions]) == sorted(silhouette[positions], reverse=True)
    figure = timespace.plot_cluster_examples(data, 2, reader=None)
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles[0].startswith(f"cluster 0: ev{chosen[0][0]}\n")


def test_waveforms_are_re_read_from_the_input_files(bav_dir, tmp_path):
    import obspy

    path = sorted((bav_dir / "waveforms").iterdir())[0]
    trace = obspy.read(str(path))[0]
    data = xr.Dataset(
        coords={
            "event": ["a", "b"],
            "source": ("event", [str(path), str(tmp_path / "gone.mseed")]),
            "starttime": ("event", np.array([trace.stats.starttime.datetime] * 2, "M8[ns]")),
            "frequency": np.linspace(8.0, 20.0, 5),
            "time": np.arange(0.5, 20.0, 0.75),
        }
    )
    samples, rate = timespace.read_waveform(data, 0)
    assert rate == trace.stats.sampling_rate
    span = data["time"].values[-1] + data["time"].values[0]
    assert abs(samples.size - span * rate) <= 1
    # Band-passed to 8-20 Hz: the energy below 4 Hz is gone (it dominates the raw trace).
    raw = trace.data[: samples.size].astype(float)
    raw -= raw.mean()
    frequencies = np.fft.rfftfreq(samples.size, 1 / rate)

    def low_share(x):
        power = np.abs(np.fft.rfft(x)) ** 2
        return power[frequencies < 4].sum() / power.sum()

    assert low_share(samples) < 0.01 < low_share(raw)
    assert timespace.read_waveform(data, 1) is None
