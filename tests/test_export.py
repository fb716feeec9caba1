"""Tests of specufex_dask.analysis.export: CSV, QuakeML and workflow HDF5 catalogs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from specufex_dask.analysis.clustering import cluster_fingerprints
from specufex_dask.analysis.export import (
    catalog_table,
    write_catalog_csv,
    write_quakeml,
    write_workflow_h5,
)
from specufex_dask.cli.archive import write_event_variable
from specufex_dask.io.archive import ArchiveError, ArchiveWriter, open_archive, write_region
from specufex_dask.io.h5import import import_specufex_h5

GOLDEN_H5 = "SpecUFEx_test1.h5"
GROUPS = ("ACM", "STM", "SpecUFEx_output/As", "fingerprints")


def _golden_outputs(golden_dir):
    with h5py.File(golden_dir / GOLDEN_H5, "r") as h5:
        ids = list(h5["spectrograms/transformed_spectrograms"].keys())
        return ids, {group: np.stack([h5[group][i][()] for i in ids]) for group in (*GROUPS,)} | {
            "spectrogram": np.stack(
                [h5["spectrograms/transformed_spectrograms"][i][()] for i in ids]
            ),
            "frequency": h5["spectrograms/fSTFT"][()],
            "time": h5["spectrograms/tSTFT"][()],
        }


@pytest.fixture
def catalog_archive(tmp_path, golden_dir, bav_dir):
    """The ten BAV events with the golden outputs, planted locations and magnitudes, in an
    order that is not alphabetical, clustered into two groups."""
    ids, golden = _golden_outputs(golden_dir)
    order = np.array([3, 0, 9, 1, 8, 2, 7, 4, 6, 5])
    catalog = (
        pd.read_csv(bav_dir / "catalog.csv").set_index("ev_ID").loc[[int(ids[i]) for i in order]]
    )
    rng = np.random.default_rng(7)
    coords = {
        "event": [ids[i] for i in order],
        "source_origin_time": pd.to_datetime(catalog["timestamp"]).to_numpy(),
        "source_latitude_deg": 37.5 + rng.random(10) / 10,
        "source_longitude_deg": -121.8 + rng.random(10) / 10,
        "source_depth_km": 2 + 8 * rng.random(10),
        "source_magnitude": np.round(1 + 2 * rng.random(10), 2),
        "source_magnitude_type": np.array(["Md"] * 10, dtype=object),
    }
    names = {"ACM": "activation", "STM": "state_probability"}
    names |= {"SpecUFEx_output/As": "transition", "fingerprints": "fingerprint"}
    dims = {
        "activation": ("event", "pattern", "time"),
        "state_probability": ("event", "state", "time"),
        "transition": ("event", "state", "next_state"),
        "fingerprint": ("event", "state", "next_state"),
    }
    writer = ArchiveWriter.create(
        tmp_path / "bav.zarr",
        event_coords=coords,
        frequency=golden["frequency"],
        time=golden["time"],
        parameters={"fs": 100.0, "window_s": 1.0, "overlap": 0.25, "nfft": 2000},
        chunk_events=4,
        extra_variables={names[g]: (dims[names[g]], golden[g].shape[1:]) for g in GROUPS},
    )
    for start, stop in writer.regions:
        write_region(
            writer.store_path, "spectrogram", start, golden["spectrogram"][order][start:stop]
        )
        for group in GROUPS:
            write_region(writer.store_path, names[group], start, golden[group][order][start:stop])
    path = writer.commit()
    dataset = open_archive(path)
    result = cluster_fingerprints(dataset["fingerprint"], 2, transform="hellinger")
    dataset.close()
    for variable in (result.labels, result.silhouette, result.distance):
        write_event_variable(path, variable)
    return path, order, golden, result


def test_csv_catalog_keeps_every_column_and_its_type(tmp_path, catalog_archive):
    path, order, golden, result = catalog_archive
    out = write_catalog_csv(path, tmp_path / "out" / "catalog.csv")
    table = pd.read_csv(out, parse_dates=["source_origin_time"])
    assert list(table["event"].astype(str)) == list(result.labels["event"].values)
    np.testing.assert_array_equal(table["cluster"], result.labels.values)
    np.testing.assert_allclose(table["silhouette"], result.silhouette.values)
    np.testing.assert_allclose(table["centroid_distance"], result.distance.values)
    dataset = open_archive(path)
    np.testing.assert_allclose(table["source_depth_km"], dataset["source_depth_km"].values)
    assert (
        table["source_origin_time"].dt.tz_localize(None).to_numpy().astype("datetime64[ms]")
        == dataset["source_origin_time"].values.astype("datetime64[ms]")
    ).all()
    assert table["source_magnitude_type"].eq("Md").all()
    # Dominant states: the largest total state probability, computed here from STM.
    occupancy = golden["STM"][order].sum(axis=2)
    np.testing.assert_array_equal(table["dominant_state"], occupancy.argmax(axis=1))
    np.testing.assert_allclose(
        table["dominant_state_share"], occupancy.max(axis=1) / occupancy.sum(axis=1)
    )
    second = np.argsort(-occupancy, axis=1, kind="stable")[:, 1]
    listed = table["dominant_states"].str.split().map(lambda s: int(s[1]))
    np.testing.assert_array_equal(listed, second)
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_quakeml_carries_the_clusters(tmp_path, catalog_archive):
    import json

    from obspy import read_events

    path, order, _, result = catalog_archive
    out = write_quakeml(path, tmp_path / "catalog.xml")
    events = read_events(str(out))
    dataset = open_archive(path)
    assert len(events) == 10
    for index, event in enumerate(events):
        label = json.loads(event.comments[0].text.removeprefix("specufex-dask "))
        assert label["event"] == str(dataset["event"].values[index])
        assert label["cluster"] == int(result.labels.values[index])
        origin = event.origins[0]
        np.testing.assert_allclose(origin.depth, dataset["source_depth_km"].values[index] * 1000)
        np.testing.assert_allclose(origin.latitude, dataset["source_latitude_deg"].values[index])
        assert event.magnitudes[0].mag == pytest.approx(dataset["source_magnitude"].values[index])
        assert event.magnitudes[0].magnitude_type == "Md"
        expected = dataset["source_origin_time"].values[index].astype("datetime64[ms]")
        assert np.datetime64(origin.time.datetime, "ms") == expected


def test_quakeml_needs_origin_times(tmp_path, golden_dir):
    archive = import_specufex_h5(golden_dir / GOLDEN_H5, tmp_path / "a.zarr")
    with pytest.raises(ArchiveError, match="no 'source_origin_time' coordinate"):
        write_quakeml(archive, tmp_path / "catalog.xml")
    assert not (tmp_path / "catalog.xml").exists()


def test_workflow_h5_round_trip(tmp_path, catalog_archive):
    path, order, golden, _ = catalog_archive
    out = write_workflow_h5(path, tmp_path / "SpecUFEx_bav.h5")
    ids = [str(e) for e in open_archive(path)["event"].values]
    with h5py.File(out, "r") as h5:
        # Groups list the events in the archive's order, not alphabetically.
        assert list(h5["fingerprints"].keys()) == ids != sorted(ids)
        for group in GROUPS:
            stacked = np.stack([h5[group][i][()] for i in ids])
            np.testing.assert_array_equal(stacked, golden[group][order])
        np.testing.assert_array_equal(h5["spectrograms/fSTFT"][()], golden["frequency"])
        assert h5["sgram_attrs"].attrs["winLen_Sec"] == 1.0
        assert h5["sgram_attrs"].attrs["fracOverlap"] == 0.25
    back = open_archive(import_specufex_h5(out, tmp_path / "back.zarr"))
    original = open_archive(path)
    assert list(back["event"].values) == list(original["event"].values)
    for name in ("spectrogram", "activation", "state_probability", "transition", "fingerprint"):
        np.testing.assert_array_equal(back[name].values, original[name].values)


def test_a_failed_export_leaves_nothing(tmp_path, catalog_archive, monkeypatch):
    import specufex_dask.analysis.export as export

    path = catalog_archive[0]

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(export, "_write_model", broken)
    with pytest.raises(OSError, match="disk gone"):
        write_workflow_h5(path, tmp_path / "w.h5")
    assert list(tmp_path.glob("*w.h5*")) == []


def test_catalog_table_without_outputs(tmp_path, golden_dir):
    archive = import_specufex_h5(
        golden_dir / GOLDEN_H5, tmp_path / "a.zarr", include_outputs=False
    )
    table = catalog_table(open_archive(archive))
    assert "cluster" not in table and "dominant_state" not in table
    assert len(table) == 10 and table["event"].is_unique


def test_export_command(tmp_path, catalog_archive, golden_dir, capsys):
    from specufex_dask.cli import main

    path, order, golden, result = catalog_archive
    assert main(["export", str(path), str(tmp_path / "out"), "--quiet"]) == 0
    written = capsys.readouterr().out.split()
    assert [Path(p).name for p in written] == ["catalog.csv", "catalog.xml", "SpecUFEx_bav.h5"]
    table = pd.read_csv(written[0])
    np.testing.assert_array_equal(table["cluster"], result.labels.values)
    assert main(["import-h5", written[2], str(tmp_path / "back.zarr"), "--quiet"]) == 0
    back = open_archive(tmp_path / "back.zarr")
    np.testing.assert_array_equal(back["fingerprint"].values, golden["fingerprints"][order])
    # Without origin times: QuakeML is left out by default, refused when asked for.
    plain = import_specufex_h5(golden_dir / GOLDEN_H5, tmp_path / "plain.zarr")
    assert main(["export", str(plain), str(tmp_path / "plain"), "--formats", "csv,quakeml"]) == 1
    assert "no 'source_origin_time' coordinate" in capsys.readouterr().err
    assert main(["export", str(plain), str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [
        "SpecUFEx_plain.h5",
        "catalog.csv",
    ]
