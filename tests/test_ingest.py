"""Ingest: real BAV seismograms against the golden workflow file, bad inputs, appends."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import obspy
import pytest

from specufex_dask.ingest.driver import (
    IngestError,
    ingest_arrays,
    ingest_catalog,
    ingest_continuous,
    ingest_waveforms,
)
from specufex_dask.ingest.preprocessing import SpectrogramParameters, waveform_to_spectrogram
from specufex_dask.io.archive import DEFAULT_SHARD_EVENTS, open_archive, read_rejected

GOLDEN_PARAMS = SpectrogramParameters(fs=100.0, nfft=2000, fmin=8, fmax=20, n_samples=2000)
T0 = obspy.UTCDateTime("2020-05-01T00:00:00")


def _catalog(bav_dir):
    with (bav_dir / "catalog.csv").open() as handle:
        return list(csv.DictReader(handle))


def _golden(golden_dir, ids, group="transformed_spectrograms"):
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        return np.stack([h5[f"spectrograms/{group}/{i}"][()] for i in ids])


def _relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def _write(path, data, fs=100.0, station="BAV", starttime=T0, fmt="MSEED"):
    obspy.Trace(
        np.asarray(data), header={"sampling_rate": fs, "station": station, "starttime": starttime}
    ).write(str(path), format=fmt)


def _last_dotted(path):
    return path.name.rsplit(".", 1)[-1]


def _make_bad_files(folder, rng):
    """One file per kind of bad input; names sort between the BAV files."""
    prefix = "BAV.NC.EHZ..D.1984"
    (folder / f"{prefix}.080.bad_garbage").write_bytes(b"definitely not a seismogram\n" * 200)
    _write(folder / f"{prefix}.095.bad_50hz", rng.standard_normal(2000), fs=50.0)
    _write(folder / f"{prefix}.100.bad_short", rng.standard_normal(1500))
    gaps = obspy.Stream(
        [
            obspy.Trace(rng.standard_normal(1000), {"sampling_rate": 100.0, "starttime": T0}),
            obspy.Trace(rng.standard_normal(1000), {"sampling_rate": 100.0, "starttime": T0 + 12}),
        ]
    )
    gaps.write(str(folder / f"{prefix}.130.bad_gaps"), format="MSEED")
    _write(folder / f"{prefix}.150.bad_zero", np.zeros(2000, dtype=np.int32))
    with_nan = rng.standard_normal(2000)
    with_nan[777] = np.nan
    _write(folder / f"{prefix}.210.bad_nan", with_nan)


EXPECTED_REASONS = {
    "bad_garbage": "unreadable",
    "bad_50hz": "sampling rate 50 Hz, expected 100 Hz",
    "bad_short": "too few samples: 1500 < 2000",
    "bad_gaps": "gaps: 2 traces",
    "bad_zero": "constant (e.g. all-zero) waveform",
    "bad_nan": "1 non-finite (NaN/inf) sample(s), first at index 777",
}


def test_catalog_ingest_reproduces_golden(tmp_path, bav_dir, golden_dir):
    rows = _catalog(bav_dir)
    report = ingest_catalog(
        bav_dir / "catalog.csv",
        tmp_path / "bav.zarr",
        GOLDEN_PARAMS,
        waveform_dir=bav_dir / "waveforms",
        chunk_events=4,
    )
    assert (report.n_inputs, report.n_written, report.rejected) == (10, 10, ())
    ds = open_archive(report.path)
    ids = [row["ev_ID"] for row in rows]
    assert ds.event.values.tolist() == ids
    # one shard of one-event chunks, one dask chunk
    assert ds.spectrogram.encoding["chunks"][0] == 1 and ds.spectrogram.data.chunks[0] == (10,)
    assert ds.spectrogram.encoding["shards"][0] == DEFAULT_SHARD_EVENTS
    assert _relative_error(ds.spectrogram.values, _golden(golden_dir, ids)) < 1e-10
    raw = _golden(golden_dir, ids, "raw_spectrograms")
    np.testing.assert_allclose(ds["median"].values, np.median(raw, axis=(1, 2)), rtol=1e-10)
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        np.testing.assert_allclose(ds.frequency.values, h5["spectrograms/fSTFT"][()], rtol=1e-12)
        np.testing.assert_allclose(ds.time.values, h5["spectrograms/tSTFT"][()], rtol=1e-12)
    first = obspy.read(str(bav_dir / "waveforms" / rows[0]["filename"]))[0].stats
    assert ds.starttime.values[0] == np.datetime64(first.starttime.ns, "ns")
    assert ds.station.values[0] == "BAV" and ds.channel.values[0] == "EHZ"
    assert ds.input_file.values[0].endswith(rows[0]["filename"])
    # The catalog's other column, its event time, is kept with its type and standard name.
    expected_times = np.array([row["timestamp"] for row in rows], dtype="datetime64[ns]")
    np.testing.assert_array_equal(ds.source_origin_time.values, expected_times)
    assert "source" not in ds.coords
    parameters = report.parameters
    assert (parameters["nperseg"], parameters["noverlap"], parameters["nfft"]) == (100, 25, 2000)


@pytest.fixture
def mixed_folder(tmp_path, bav_dir, rng):
    folder = tmp_path / "mixed"
    shutil.copytree(bav_dir / "waveforms", folder)
    _make_bad_files(folder, rng)
    return folder


def test_bad_files_are_rejected_not_fatal_on_a_cluster(tmp_path, mixed_folder, golden_dir):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        report = ingest_waveforms(
            mixed_folder,
            tmp_path / "mixed.zarr",
            GOLDEN_PARAMS,
            client=client,
            chunk_events=3,
            event_id=_last_dotted,
        )
    assert (report.n_inputs, report.n_written, report.n_rejected) == (16, 10, 6)
    reasons = {r.event: r.reason for r in report.rejected}
    assert set(reasons) == set(EXPECTED_REASONS)
    for event, expected in EXPECTED_REASONS.items():
        assert expected in reasons[event], (event, reasons[event])
    ds = open_archive(report.path)
    ids = [i for i in ds.event.values.tolist()]
    assert ids == sorted(ids, key=lambda i: int(i)) and len(ids) == 10
    # No placeholder rows: every stored event is a real one, equal to the golden file.
    assert _relative_error(ds.spectrogram.values, _golden(golden_dir, ids)) < 1e-10
    assert read_rejected(ds) == list(report.rejected)
    assert "ingested 10 of 16 inputs" in report.summary()
    assert "rejected 6: 1 x unreadable, 1 x sampling rate N Hz" in report.summary()


def test_folder_of_only_bad_files_writes_nothing(tmp_path, rng):
    folder = tmp_path / "bad"
    folder.mkdir()
    _make_bad_files(folder, rng)
    with pytest.raises(IngestError, match="no valid input among 6") as caught:
        ingest_waveforms(folder, tmp_path / "out.zarr", GOLDEN_PARAMS)
    assert len(caught.value.rejected) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_only_unreadable_files_with_a_rate_and_no_length_is_the_same_clear_error(tmp_path):
    # fs given, n_samples not: with no good input there is no length to fix, which once
    # raised a TypeError instead of the IngestError that names the inputs
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("a.mseed", "b.mseed"):
        (folder / name).write_bytes(b"not a waveform")
    with pytest.raises(IngestError, match="no valid input among 2: 2 x unreadable") as caught:
        ingest_waveforms(folder, tmp_path / "out.zarr", SpectrogramParameters(fs=100.0))
    assert [r.source for r in caught.value.rejected] == [
        str(folder / n) for n in ("a.mseed", "b.mseed")
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def _sub_catalog(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["ev_ID", "filename"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"ev_ID": row["ev_ID"], "filename": row["filename"]})
    return path


def test_append_adds_events_keeps_full_chunks_and_reports_duplicates(
    tmp_path, bav_dir, golden_dir, monkeypatch
):
    from specufex_dask.ingest import driver

    monkeypatch.setattr(driver, "DEFAULT_SHARD_EVENTS", 3)  # a full first shard
    rows = _catalog(bav_dir)
    out = tmp_path / "bav.zarr"
    options = {"waveform_dir": bav_dir / "waveforms", "chunk_events": 3}
    ingest_catalog(_sub_catalog(tmp_path / "a.csv", rows[:4]), out, GOLDEN_PARAMS, **options)
    full_chunk = (out / "spectrogram" / "c" / "0" / "0" / "0").read_bytes()
    report = ingest_catalog(
        _sub_catalog(tmp_path / "b.csv", rows[3:]), out, GOLDEN_PARAMS, append=True, **options
    )
    assert (report.n_written, report.n_rejected) == (6, 1)
    assert report.rejected[0].event == rows[3]["ev_ID"]
    assert "duplicate event id: already in the archive" in report.rejected[0].reason
    ds = open_archive(out)
    ids = [row["ev_ID"] for row in rows]
    assert ds.event.values.tolist() == ids
    assert _relative_error(ds.spectrogram.values, _golden(golden_dir, ids)) < 1e-10
    assert (out / "spectrogram" / "c" / "0" / "0" / "0").read_bytes() == full_chunk
    assert read_rejected(ds) == list(report.rejected)

    other = SpectrogramParameters(fs=100.0, nfft=2000, fmin=8, fmax=25, n_samples=2000)
    with pytest.raises(IngestError, match=r"parameters differ \(fmax: archive 20 vs 25\)"):
        ingest_catalog(
            _sub_catalog(tmp_path / "c.csv", rows[:1]), out, other, append=True, **options
        )
    assert open_archive(out).sizes["event"] == 10


def test_duplicates_within_one_ingest_keep_the_first(tmp_path, bav_dir):
    rows = _catalog(bav_dir)
    catalog = _sub_catalog(tmp_path / "d.csv", [rows[0], rows[1], rows[0]])
    report = ingest_catalog(
        catalog, tmp_path / "d.zarr", GOLDEN_PARAMS, waveform_dir=bav_dir / "waveforms"
    )
    assert report.n_written == 2
    assert report.rejected[0].reason.startswith("duplicate event id: also from")


def test_existing_archive_is_not_overwritten_by_default(tmp_path, bav_dir):
    out = tmp_path / "a.zarr"
    files = sorted((bav_dir / "waveforms").iterdir())
    ingest_waveforms(files[:2], out, GOLDEN_PARAMS)
    with pytest.raises(IngestError, match="already exists"):
        ingest_waveforms(files[2:4], out, GOLDEN_PARAMS)
    report = ingest_waveforms(files[2:5], out, GOLDEN_PARAMS, overwrite=True)
    assert open_archive(out).event.values.tolist() == [p.name for p in files[2:5]]
    assert report.n_written == 3


def test_unknown_rate_follows_first_good_file(tmp_path, rng):
    folder = tmp_path / "rates"
    folder.mkdir()
    _write(folder / "a.mseed", rng.standard_normal(600), fs=100.0)
    _write(folder / "b.mseed", rng.standard_normal(600), fs=50.0)
    _write(folder / "c.mseed", rng.standard_normal(600), fs=100.0)
    report = ingest_waveforms(folder, tmp_path / "r.zarr", SpectrogramParameters(fmin=5))
    assert open_archive(report.path).event.values.tolist() == ["a", "c"]
    assert report.rejected[0].event == "b"
    assert "sampling rate 50 Hz, expected 100 Hz (the rate of" in report.rejected[0].reason
    assert report.parameters["fs"] == 100.0 and report.parameters["n_samples"] == 600


def test_arrays_ingest_matches_golden_and_rejects_bad_rows(tmp_path, bav_dir, golden_dir):
    rows = _catalog(bav_dir)
    data = np.stack(
        [obspy.read(str(bav_dir / "waveforms" / r["filename"]))[0].data[:2000] for r in rows]
    ).astype(np.float64)
    with_bad = np.concatenate([data[:5], np.zeros((1, 2000)), data[5:]])
    with_bad[7, 10] = np.nan
    ids = [r["ev_ID"] for r in rows]
    names = ids[:5] + ["zero"] + ids[5:]
    starts = np.datetime64("2020-01-01T00:00:00", "ns") + np.arange(11) * np.timedelta64(1, "s")
    report = ingest_arrays(
        with_bad, tmp_path / "arr.zarr", GOLDEN_PARAMS, event=names, starttime=starts
    )
    assert sorted(r.event for r in report.rejected) == sorted(["zero", names[7]])
    assert {r.source for r in report.rejected} == {"array[5]", "array[7]"}
    ds = open_archive(report.path)
    kept = [n for n in names if n not in ("zero", names[7])]
    assert ds.event.values.tolist() == kept
    assert _relative_error(ds.spectrogram.values, _golden(golden_dir, kept)) < 1e-10
    np.testing.assert_array_equal(ds.starttime.values[:5], starts[:5])


def test_continuous_windows_match_direct_computation(tmp_path, rng):
    fs = 20.0
    data = rng.standard_normal(1300)
    path = tmp_path / "day.mseed"
    _write(path, data, fs=fs, station="CONT")
    params = SpectrogramParameters(fs=fs, window_s=2.0, fmin=1.0)
    report = ingest_continuous(path, tmp_path / "c.zarr", 10.0, 5.0, params, chunk_events=5)
    ds = open_archive(report.path)
    assert report.n_written == 12 and report.rejected == ()
    expected_starts = np.datetime64(T0.ns, "ns") + np.arange(12) * np.timedelta64(5, "s")
    np.testing.assert_array_equal(ds.starttime.values, expected_starts)
    assert ds.event.values[1] == f".CONT...{np.datetime64(T0.ns + 5 * 10**9, 'ns')}"
    for k in (0, 7, 11):
        expected = waveform_to_spectrogram(data[k * 100 : k * 100 + 200], params).transformed
        np.testing.assert_allclose(ds.spectrogram.values[k], expected, rtol=1e-12)


def test_continuous_windows_across_a_gap_are_rejected(tmp_path, rng):
    fs = 20.0
    first, second = rng.standard_normal(600), rng.standard_normal(600)
    stream = obspy.Stream(
        [
            obspy.Trace(first, {"sampling_rate": fs, "station": "G", "starttime": T0}),
            obspy.Trace(second, {"sampling_rate": fs, "station": "G", "starttime": T0 + 40}),
        ]
    )
    params = SpectrogramParameters(fs=fs, window_s=2.0, fmin=1.0)
    report = ingest_continuous(stream, tmp_path / "g.zarr", 10.0, 5.0, params)
    assert report.n_written == 10 and report.n_rejected == 3
    assert all("gaps" in r.reason for r in report.rejected)
    ds = open_archive(report.path)
    offsets = (ds.starttime.values - np.datetime64(T0.ns, "ns")) / np.timedelta64(1, "s")
    assert offsets.tolist() == [0, 5, 10, 15, 20, 40, 45, 50, 55, 60]
    after_gap = waveform_to_spectrogram(second[:200], params).transformed
    np.testing.assert_allclose(ds.spectrogram.values[5], after_gap, rtol=1e-12)


def test_catalog_starttime_and_station_columns_cut_the_right_trace(tmp_path, rng):
    one, two = rng.standard_normal(6000), rng.standard_normal(6000)
    stream = obspy.Stream(
        [
            obspy.Trace(one, {"sampling_rate": 100.0, "station": "STA1", "starttime": T0}),
            obspy.Trace(two, {"sampling_rate": 100.0, "station": "STA2", "starttime": T0}),
        ]
    )
    stream.write(str(tmp_path / "both.mseed"), format="MSEED")
    catalog = tmp_path / "cat.csv"
    catalog.write_text(
        "event,file,time,sta\n"
        f"ev1,both.mseed,{T0 + 10},STA1\n"
        f"ev2,both.mseed,{T0 + 20.5},STA2\n"
        "ev3,both.mseed,,\n"
    )
    params = SpectrogramParameters(fs=100.0, fmin=2.0, n_samples=500)
    report = ingest_catalog(
        catalog, tmp_path / "cat.zarr", params, starttime_column="time", station_column="sta"
    )
    ds = open_archive(report.path)
    assert ds.event.values.tolist() == ["ev1", "ev2"]
    assert ds.station.values.tolist() == ["STA1", "STA2"]
    assert "several channels" in report.rejected[0].reason and report.rejected[0].event == "ev3"
    np.testing.assert_allclose(
        ds.spectrogram.values[0], waveform_to_spectrogram(one[1000:1500], params).transformed
    )
    np.testing.assert_allclose(
        ds.spectrogram.values[1], waveform_to_spectrogram(two[2050:2550], params).transformed
    )


def test_catalog_column_errors_name_the_columns(tmp_path):
    catalog = tmp_path / "cat.csv"
    catalog.write_text("who,where\na,b\n")
    with pytest.raises(
        ValueError, match=r"no event column: tried .* \(columns: \['who', 'where'\]"
    ):
        ingest_catalog(catalog, tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="no file column 'nope'"):
        ingest_catalog(catalog, tmp_path / "x.zarr", event_column="who", file_column="nope")


def test_mixed_formats_in_one_folder_read_identically(tmp_path, rng):
    folder = tmp_path / "formats"
    folder.mkdir()
    data = rng.standard_normal(800)
    _write(folder / "a.mseed", data)
    _write(folder / "b.sac", data, fmt="SAC")
    _write(folder / "c.mseed", data)
    params = SpectrogramParameters(fs=100.0, fmin=2.0)
    report = ingest_waveforms(folder, tmp_path / "f.zarr", params, chunk_events=3)
    ds = open_archive(report.path)
    assert ds.event.values.tolist() == ["a", "b", "c"] and report.rejected == ()
    expected = waveform_to_spectrogram(data, params).transformed
    # SAC stores 32-bit floats.
    from_sac = waveform_to_spectrogram(data.astype(np.float32), params).transformed
    np.testing.assert_allclose(ds.spectrogram.values[[0, 2]], [expected, expected], rtol=1e-12)
    np.testing.assert_allclose(ds.spectrogram.values[1], from_sac, rtol=1e-12)


def test_catalog_columns_keep_their_types_and_standard_names(bav_dir, tmp_path):
    with open(bav_dir / "catalog.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(4)
    fields = ["ev_ID", "filename", "Lat", "longitude", "depth", "mag", "magType", "station",
              "quality", "picked"]  # fmt: skip
    catalog = tmp_path / "catalog.csv"
    with open(catalog, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for i, row in enumerate(rows):
            writer.writerow([
                row["ev_ID"], row["filename"], f"{37 + rng.random():.4f}",
                f"{-122 + rng.random():.4f}", "" if i == 2 else f"{10 * rng.random():.2f}",
                f"{i / 4}", "Md", "BAV", "AB"[i % 2], f"1984-01-{i + 1:02d}T00:00:0{i}Z",
            ])  # fmt: skip
    # one event is rejected (a file that does not exist): its row is left out
    text = catalog.read_text().replace(rows[4]["filename"], "missing.mseed")
    catalog.write_text(text)
    report = ingest_catalog(catalog, tmp_path / "a.zarr", GOLDEN_PARAMS,
                            waveform_dir=bav_dir / "waveforms")  # fmt: skip
    assert report.n_written == 9
    ds = open_archive(report.path)
    kept = [row for i, row in enumerate(rows) if i != 4]
    assert ds.event.values.tolist() == [row["ev_ID"] for row in kept]
    with open(catalog, newline="") as handle:
        table = [row for row in csv.DictReader(handle) if row["filename"] != "missing.mseed"]
    assert ds.source_latitude_deg.dtype == np.float64
    np.testing.assert_allclose(ds.source_latitude_deg, [float(r["Lat"]) for r in table])
    np.testing.assert_allclose(ds.source_longitude_deg, [float(r["longitude"]) for r in table])
    assert np.isnan(ds.source_depth_km.values[2])
    np.testing.assert_allclose(ds.source_magnitude, [float(r["mag"]) for r in table])
    assert ds.source_magnitude_type.values.tolist() == ["Md"] * 9
    assert ds.catalog_station.values.tolist() == ["BAV"] * 9  # "station" is the archive's
    assert ds.quality.values.tolist() == [r["quality"] for r in table]
    assert ds.picked.dtype == np.dtype("datetime64[ns]")
    assert ds.picked.values[1] == np.datetime64("1984-01-02T00:00:01", "ns")


def test_archives_with_the_old_source_name_read_and_append(bav_dir, tmp_path):
    report = ingest_waveforms(
        sorted((bav_dir / "waveforms").iterdir())[:4], tmp_path / "new.zarr", GOLDEN_PARAMS
    )
    path = tmp_path / "old.zarr"  # as archives were written before: "source"
    renamed = open_archive(report.path, with_dask=False).rename(input_file="source")
    renamed.drop_encoding().chunk({"event": 8}).to_zarr(path, consolidated=True)
    assert "input_file" in open_archive(path).coords
    assert "source" in open_archive(path, stored_names=True).coords
    more = ingest_waveforms(sorted((bav_dir / "waveforms").iterdir())[4:6], path,
                            GOLDEN_PARAMS, append=True)  # fmt: skip
    files = [str(f) for f in open_archive(more.path).input_file.values]
    names = [p.name for p in sorted((bav_dir / "waveforms").iterdir())[:6]]
    assert [Path(f).name for f in files] == names  # old and appended rows, one coordinate
    assert "input_file" not in open_archive(path, stored_names=True).coords


def test_sharded_ingest_from_two_workers_reads_back_exactly(tmp_path, rng, monkeypatch):
    """Two workers write shards of 4 events at once, and later append to the archive:
    every row equals its spectrogram computed here, and full shards are never rewritten."""
    from distributed import Client, LocalCluster

    from specufex_dask.ingest import driver

    monkeypatch.setattr(driver, "DEFAULT_SHARD_EVENTS", 4)
    params = SpectrogramParameters(fs=20.0, window_s=2.0, fmin=1.0)
    data = rng.standard_normal((16, 400))
    expected = np.stack([waveform_to_spectrogram(row, params).transformed for row in data])
    out = tmp_path / "sharded.zarr"
    shard = out / "spectrogram" / "c"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                     host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        options = {"client": client, "chunk_events": 2}  # 2 inspect tasks per shard
        ingest_arrays(data[:10], out, params, event=[f"e{i}" for i in range(10)], **options)
        ds = open_archive(out)
        assert ds.spectrogram.encoding["shards"][0] == 4
        np.testing.assert_array_equal(ds.spectrogram.values, expected[:10])
        full = (shard / "1" / "0" / "0").read_bytes()
        ingest_arrays(data[10:], out, params, event=[f"e{i}" for i in range(10, 16)],
                      append=True, **options)  # fmt: skip
    np.testing.assert_array_equal(open_archive(out).spectrogram.values, expected)
    assert (shard / "1" / "0" / "0").read_bytes() == full
    assert sorted(p.name for p in shard.iterdir()) == ["0", "1", "2", "3"]
