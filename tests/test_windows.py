"""Event windows from an SDS archive and day files: a QuakeML and an SDS tree built here from
the BAV files, response removal with ObsPy's StationXML, bad inputs in the rejected table."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import obspy
import pytest
from obspy.core.event import (
    Catalog,
    Event,
    Magnitude,
    Origin,
    Pick,
    ResourceIdentifier,
    WaveformStreamID,
)
from obspy.core.util.base import get_example_file
from obspy.io.mseed.util import get_record_information

from specufex_dask.cli import main
from specufex_dask.ingest.driver import IngestError, ingest_catalog, ingest_quakeml
from specufex_dask.ingest.preprocessing import SpectrogramParameters, waveform_to_spectrogram
from specufex_dask.ingest.waveform import apply_waveform_steps
from specufex_dask.ingest.windows import SDSUnit, WindowRequest, parse_station_ids
from specufex_dask.io.archive import open_archive, read_rejected, spectrogram_parameters

GOLDEN = SpectrogramParameters(fs=100.0, nfft=2000, fmin=8, fmax=20, n_samples=2000)
SMALL = SpectrogramParameters(fs=100.0, nfft=256, fmin=2, fmax=30)
BAV = "NC.BAV..EHZ"
ANMO = "IU.ANMO.00.BHZ"


def _sds_path(root: Path, trace) -> Path:
    s = trace.stats
    day = f"{s.starttime.year}.{s.starttime.julday:03d}"
    name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{day}"
    return root / str(s.starttime.year) / s.network / s.station / f"{s.channel}.D" / name


def _write_days(root: Path, traces, sds: bool = True) -> None:
    """Traces grouped by day into one file each: SDS paths, or a flat folder."""
    days: dict[Path, obspy.Stream] = {}
    for trace in traces:
        path = _sds_path(root, trace) if sds else root / _sds_path(root, trace).name
        days.setdefault(path, obspy.Stream()).append(trace)
    for path, stream in days.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        stream.write(str(path), format="MSEED", reclen=512)  # several records a trace


def _rows(bav_dir):
    with (bav_dir / "catalog.csv").open() as handle:
        return list(csv.DictReader(handle))


def _anmo_trace() -> obspy.Trace:
    """A synthetic trace with the ids of ObsPy's IU_ANMO_00_BHZ StationXML, in its epoch."""
    rng = np.random.default_rng(11)
    header = {
        "network": "IU", "station": "ANMO", "location": "00", "channel": "BHZ",
        "sampling_rate": 20.0, "starttime": obspy.UTCDateTime("2014-06-01T00:10:00"),
    }  # fmt: skip
    return obspy.Trace(np.round(rng.standard_normal(12000) * 5e4).astype(np.int32), header)


@pytest.fixture
def sds(tmp_path, bav_dir):
    """An SDS tree of the BAV files (several events share a day file) and the ANMO trace."""
    root = tmp_path / "sds"
    traces = [obspy.read(str(p))[0] for p in sorted((bav_dir / "waveforms").iterdir())]
    _write_days(root, [*traces, _anmo_trace()])
    return root


def _quakeml(path: Path, bav_dir, rng, extra=()) -> tuple[Path, dict]:
    """A QuakeML of the BAV catalog: origin times from its timestamps, planted locations,
    magnitudes and a P pick at each file's first sample."""
    events, planted = [], {}
    for row in _rows(bav_dir):
        first = obspy.read(str(bav_dir / "waveforms" / row["filename"]), headonly=True)[0]
        values = {
            "time": obspy.UTCDateTime(row["timestamp"]),
            "latitude": float(rng.uniform(36, 38)),
            "longitude": float(rng.uniform(-122, -120)),
            "depth": float(rng.uniform(1e3, 1.5e4)),
            "mag": float(np.round(rng.uniform(1, 3), 2)),
            "pick": first.stats.starttime,
        }
        planted[row["ev_ID"]] = values
        events.append(_event(row["ev_ID"], values))
    events.extend(extra)
    Catalog(events).write(str(path), format="QUAKEML")
    return path, planted


def _event(name: str, values: dict) -> Event:
    origin = Origin(
        time=values.get("time"),
        latitude=values.get("latitude"),
        longitude=values.get("longitude"),
        depth=values.get("depth"),
    )
    event = Event(resource_id=ResourceIdentifier(f"smi:local/event/{name}"))
    if values.get("time") is not None:
        event.origins = [origin]
        event.preferred_origin_id = origin.resource_id
    if values.get("mag") is not None:
        magnitude = Magnitude(mag=values["mag"], magnitude_type="Md")
        event.magnitudes = [magnitude]
        event.preferred_magnitude_id = magnitude.resource_id
    if values.get("pick") is not None:
        wid = WaveformStreamID("NC", "BAV", "", "EHZ")
        event.picks = [Pick(time=values["pick"], waveform_id=wid, phase_hint="P")]
    return event


def _golden(golden_dir, ids):
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        return np.stack([h5[f"spectrograms/transformed_spectrograms/{i}"][()] for i in ids])


def _reasons(path) -> dict[str, str]:
    return {row.event: row.reason for row in read_rejected(open_archive(path))}


def test_p_windows_from_sds_reproduce_golden_with_quakeml_coordinates(
    tmp_path, bav_dir, golden_dir, sds, rng
):
    """P picks at each file's first sample, 20 s windows: the golden spectrograms, and the
    QuakeML's values as coordinates; a window without P pick or with its pick outside the
    data is rejected."""
    quakeml, planted = _quakeml(tmp_path / "events.xml", bav_dir, rng)
    # an event without pick and an unknown station: rejected, never fatal
    events = obspy.read_events(str(quakeml))
    events[3].picks = []
    events[5].picks[0].time += 3600  # a pick outside the data of an existing day
    events.write(str(quakeml), format="QUAKEML")
    report = ingest_quakeml(
        quakeml, tmp_path / "p.zarr", GOLDEN, waveforms=sds, stations=[BAV, "NC.NOPE..EHZ"],
        window=(0, 20), relative_to="P", chunk_events=4,
    )  # fmt: skip
    ids = [row["ev_ID"] for row in _rows(bav_dir)]
    kept = [i for i in ids if i not in (ids[3], ids[5])]
    ds = open_archive(report.path).load()
    assert ds.event.values.tolist() == [f"{i}.{BAV}" for i in kept]
    assert np.max(np.abs(ds.spectrogram.values - _golden(golden_dir, kept))) < 1e-10 * np.max(
        _golden(golden_dir, kept)
    )
    reasons = _reasons(report.path)
    assert reasons.pop(f"{ids[3]}.{BAV}") == "no P pick for NC.BAV in the catalog"
    pick = planted[ids[5]]["pick"] + 3600
    assert reasons.pop(f"{ids[5]}.{BAV}") == (
        f"window not fully covered by the data: {pick}-{pick + 20} (P pick "
        f"{np.datetime64(pick.ns, 'ns')}Z); no data read"
    )
    # a station the QuakeML has no pick for
    assert reasons == {f"{i}.NC.NOPE..EHZ": "no P pick for NC.NOPE in the catalog" for i in ids}
    # coordinates equal the QuakeML's, read back independently
    back = {str(e.resource_id).rsplit("/", 1)[-1]: e for e in obspy.read_events(str(quakeml))}
    for k, event_id in enumerate(kept):
        origin, magnitude = back[event_id].origins[0], back[event_id].magnitudes[0]
        row = ds.isel(event=k)
        assert row.source_origin_time.values == np.datetime64(origin.time.ns, "ns")
        assert row.source_latitude_deg.item() == origin.latitude == planted[event_id]["latitude"]
        assert row.source_longitude_deg.item() == origin.longitude
        assert row.source_depth_km.item() == pytest.approx(origin.depth / 1000, rel=1e-12)
        assert row.source_magnitude.item() == magnitude.mag == planted[event_id]["mag"]
        assert row.source_magnitude_type.item() == "Md"
        assert row.source_event_id.item() == f"smi:local/event/{event_id}"
        assert (row.network.item(), row.station.item(), row.channel.item()) == ("NC", "BAV", "EHZ")
        assert row.starttime.values == np.datetime64(planted[event_id]["pick"].ns, "ns")
    assert spectrogram_parameters(ds)["detrend"] is None


def test_origin_windows_equal_obspy_slices_and_bad_windows_are_rejected(
    tmp_path, bav_dir, sds, rng
):
    """Windows around the origin time are obspy's own slice of the same data; an unknown
    station, a day without SDS file, a window past the data and an event without origin
    are rejected."""
    first = obspy.read(str(sorted((bav_dir / "waveforms").iterdir())[0]))[0]
    extra = [
        _event("nofile", {"time": obspy.UTCDateTime("1984-06-01T12:00:00")}),
        _event("late", {"time": first.stats.endtime - 5}),
        _event("noorigin", {"mag": 2.0}),
    ]
    quakeml, _ = _quakeml(tmp_path / "events.xml", bav_dir, rng, extra)
    report = ingest_quakeml(
        quakeml, tmp_path / "o.zarr", SMALL, waveforms=sds, stations=[BAV, "NC.NOPE..EHZ"],
        window=(-0.5, 15), chunk_events=3,
    )  # fmt: skip
    ds = open_archive(report.path).load()
    rows = _rows(bav_dir)
    for k, row in enumerate(rows):
        trace = obspy.read(str(bav_dir / "waveforms" / row["filename"]))[0]
        t0 = obspy.UTCDateTime(row["timestamp"]) + 0.5
        expected = waveform_to_spectrogram(trace.slice(t0, t0 + 14.5).data[:1450], SMALL)
        np.testing.assert_allclose(ds.spectrogram.values[k], expected.transformed, atol=1e-12)
    assert ds.event.size == len(rows)
    reasons = _reasons(report.path)
    assert reasons[f"nofile.{BAV}"].startswith("SDS day file does not exist: ")
    assert reasons[f"nofile.{BAV}"].endswith("NC.BAV..EHZ.D.1984.153")
    assert reasons[f"late.{BAV}"].startswith(
        "window not fully covered by the data: 1984-03-15T16:16:27.490000Z-"
        "1984-03-15T16:16:41.990000Z (origin time 1984-03-15T16:16:26.990000000Z); data "
    )
    assert reasons[f"noorigin.{BAV}"] == "no origin time: event smi:local/event/noorigin"
    unknown = {
        e: r for e, r in reasons.items() if ".NC.NOPE." in e and not e.startswith("noorigin")
    }
    assert len(unknown) == len(rows) + 2
    assert set(unknown.values()) == {f"unknown station NC.NOPE: not in the SDS archive {sds}"}

    # The unit's own window is exactly obspy's slice of the day file it reads, also when it
    # starts just before a miniSEED record, its nearest sample the last of the record before.
    (day_file,) = (sds / "1984").rglob("*.075")
    record_npts = get_record_information(str(day_file))["npts"]
    for t0 in (first.stats.starttime + 1.234, first.stats.starttime + (record_npts - 0.9) / 100):
        request = WindowRequest("x", ("NC", "BAV", "", "EHZ"), t0.ns, 10.0, "test")
        (record,) = SDSUnit(str(sds), (request,)).load()
        assert record.reason is None
        np.testing.assert_array_equal(record.waveform, first.slice(t0, t0 + 10).data[:1000])

    # day-long files outside an SDS layout give the same archive
    flat = tmp_path / "days"
    _write_days(
        flat, [obspy.read(str(p))[0] for p in sorted((bav_dir / "waveforms").iterdir())], sds=False
    )
    days = ingest_quakeml(
        quakeml, tmp_path / "d.zarr", SMALL, waveforms=flat, stations=BAV, window=(-0.5, 15)
    )
    np.testing.assert_array_equal(
        open_archive(days.path).spectrogram.values, ds.spectrogram.values
    )
    assert _reasons(days.path)[f"nofile.{BAV}"] == (
        "no day file covers the window: NC.BAV..EHZ at origin time 1984-06-01T12:00:00.000000000Z"
    )


def test_csv_catalog_windows_from_sds_keep_columns_and_reject_a_missing_time(
    tmp_path, bav_dir, sds
):
    rows = _rows(bav_dir)
    catalog = tmp_path / "catalog.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ev_ID", "timestamp", "quality"])
        for k, row in enumerate(rows):
            writer.writerow([row["ev_ID"], row["timestamp"], k * 0.5])
        writer.writerow(["blank", "", 9.0])
    report = ingest_catalog(
        catalog, tmp_path / "c.zarr", SMALL, waveforms=sds, stations=BAV, window=(-0.5, 10)
    )
    ds = open_archive(report.path).load()
    assert ds.event.values.tolist() == [f"{row['ev_ID']}.{BAV}" for row in rows]
    np.testing.assert_array_equal(
        ds.source_origin_time.values, np.array([r["timestamp"] for r in rows], "datetime64[ns]")
    )
    np.testing.assert_array_equal(ds.quality.values, np.arange(len(rows)) * 0.5)
    assert _reasons(report.path) == {f"blank.{BAV}": "empty origin time ('source_origin_time')"}
    missing = tmp_path / "no_time.csv"
    missing.write_text("ev_ID,depth\n1,3.0\n")
    with pytest.raises(ValueError, match="no_time.csv has no origin time column"):
        ingest_catalog(
            missing, tmp_path / "m.zarr", SMALL, waveforms=sds, stations=BAV, window=(1, 1)
        )


def test_response_removal_and_filters_match_obspy_and_are_recorded(tmp_path, sds, rng):
    inventory = get_example_file("IU_ANMO_00_BHZ.xml")
    trace = _anmo_trace()
    origin = trace.stats.starttime + 100
    quakeml = tmp_path / "anmo.xml"
    Catalog([_event("a1", {"time": origin}), _event("a2", {"time": origin + 200})]).write(
        str(quakeml), format="QUAKEML"
    )
    params = SpectrogramParameters(
        fs=20.0, window_s=4.0, detrend="linear", taper=0.05, bandpass_fmin=0.5,
        bandpass_fmax=5.0, bandpass_corners=3, remove_response=inventory, response_output="DISP",
    )  # fmt: skip
    report = ingest_quakeml(
        quakeml, tmp_path / "r.zarr", params, waveforms=sds, stations=[ANMO, BAV],
        window=(10, 110),
    )  # fmt: skip
    ds = open_archive(report.path).load()
    assert ds.event.values.tolist() == [f"a1.{ANMO}", f"a2.{ANMO}"]
    inv = obspy.read_inventory(inventory)
    for k, t in enumerate((origin, origin + 200)):
        piece = trace.slice(t - 10, t + 110).copy()
        piece.data = piece.data[:2400].astype(np.float64)
        piece.detrend("linear").taper(0.05, type="hann")
        piece.remove_response(inventory=inv, output="DISP")
        piece.filter("bandpass", freqmin=0.5, freqmax=5.0, corners=3)
        expected = waveform_to_spectrogram(piece.data, params)
        np.testing.assert_allclose(ds.spectrogram.values[k], expected.transformed, atol=1e-9)
    recorded = spectrogram_parameters(ds)
    assert (recorded["detrend"], recorded["taper"], recorded["remove_response"]) == (
        "linear", 0.05, inventory,
    )  # fmt: skip
    assert (recorded["bandpass_fmin"], recorded["response_output"]) == (0.5, "DISP")
    # BAV is not in the inventory (and the ANMO windows are on days BAV has no file)
    assert all(r.startswith("SDS day file") for r in _reasons(report.path).values())
    with pytest.raises(IngestError, match="StationXML file .*missing.xml not found"):
        ingest_quakeml(
            quakeml, tmp_path / "x.zarr",
            SpectrogramParameters(remove_response=str(tmp_path / "missing.xml")),
            waveforms=sds, stations=ANMO, window=(1, 1),
        )  # fmt: skip
    assert not (tmp_path / "x.zarr").exists()


def test_a_channel_without_response_is_rejected(tmp_path, bav_dir, sds, rng):
    quakeml, planted = _quakeml(tmp_path / "events.xml", bav_dir, rng)
    params = SpectrogramParameters(
        fs=100.0, remove_response=get_example_file("IU_ANMO_00_BHZ.xml")
    )
    with pytest.raises(IngestError) as caught:
        ingest_quakeml(
            quakeml, tmp_path / "n.zarr", params, waveforms=sds, stations=BAV, window=(0, 20),
            relative_to="P",
        )  # fmt: skip
    inventory = get_example_file("IU_ANMO_00_BHZ.xml")
    expected = {
        f"{e}.{BAV}": f"no response: {BAV} at {v['pick']} is not in {inventory} ("
        for e, v in planted.items()
    }
    found = {r.event: r.reason for r in caught.value.rejected}
    assert set(found) == set(expected)
    assert all(found[e].startswith(expected[e]) for e in found)
    assert not (tmp_path / "n.zarr").exists()


def test_station_ids_must_be_full_seed_ids():
    assert parse_station_ids([BAV, ANMO]) == [
        ("NC", "BAV", "", "EHZ"),
        ("IU", "ANMO", "00", "BHZ"),
    ]
    with pytest.raises(ValueError, match="'NC.BAV' is not a full SEED id NET.STA.LOC.CHA"):
        parse_station_ids("NC.BAV")
    with pytest.raises(ValueError, match="given twice"):
        parse_station_ids([BAV, BAV])


def test_cli_quakeml_sds_and_continuous(tmp_path, bav_dir, golden_dir, sds, rng, local_cluster):
    cluster, _ = local_cluster
    on = ["--scheduler", cluster.scheduler_address, "--quiet"]
    quakeml, _ = _quakeml(tmp_path / "events.xml", bav_dir, rng)
    out = tmp_path / "cli.zarr"
    code = main([
        "spectrograms", "--quakeml", str(quakeml), "--sds", str(sds), "--stations", BAV,
        "--window", "0,20", "--relative-to", "P", "--fs", "100", "--nfft", "2000",
        "--fmin", "8", "--fmax", "20", "--n-samples", "2000", str(out), *on,
    ])  # fmt: skip
    assert code == 0
    ids = [row["ev_ID"] for row in _rows(bav_dir)]
    ds = open_archive(out)
    assert ds.event.values.tolist() == [f"{i}.{BAV}" for i in ids]
    assert np.max(np.abs(ds.spectrogram.values - _golden(golden_dir, ids))) < 1e-8
    day = next(p for p in (sds / "1984").rglob("*.075"))  # one event of 2000 samples
    windows = tmp_path / "w.zarr"
    code = main([
        "spectrograms", "--continuous", str(day), "--window-length", "10", "--step", "5",
        "--fs", "100", "--nfft", "256", "--fmax", "30", "-o", str(windows), *on,
    ])  # fmt: skip
    assert code == 0
    cut = open_archive(windows)
    stream = obspy.read(str(day))
    expected = sum((t.stats.npts - 1000) // 500 + 1 for t in stream)
    assert cut.event.size == expected
    start = stream[0].stats.starttime
    piece = stream[0].slice(start + 5, start + 15).data[:1000]
    params = SpectrogramParameters(fs=100.0, nfft=256, fmax=30)
    np.testing.assert_allclose(
        cut.spectrogram.values[1], waveform_to_spectrogram(piece, params).transformed, atol=1e-12
    )
    shutil.rmtree(windows)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--quakeml", "q.xml", "--sds", "sds", "--window", "1,2"], "need --stations"),
        (["--quakeml", "q.xml", "--stations", BAV, "--window", "1,2"], "--sds ROOT or the day"),
        (
            [
                "--catalog",
                "c.csv",
                "--sds",
                "sds",
                "--stations",
                BAV,
                "--window",
                "1,2",
                "--relative-to",
                "P",
            ],
            "a CSV catalog has no picks",
        ),  # fmt: skip
        (["--continuous", "day.mseed", "--step", "5"], "--continuous needs --window-length"),
        (["w.mseed", "--window-length", "5"], "with --continuous only"),
        (["w.mseed", "--stations", BAV], "--stations needs --quakeml or --sds"),
    ],
)
def test_cli_refuses_options_that_do_not_go_together(tmp_path, capsys, arguments, message):
    code = main(["spectrograms", *arguments, "-o", str(tmp_path / "x.zarr"), "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and message in error[0]
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize(
    ("corners", "kind", "options"),
    [
        ((0.5, None), "highpass", {"freq": 0.5}),
        ((None, 3.0), "lowpass", {"freq": 3.0}),
        ((0.5, 3.0), "bandpass", {"freqmin": 0.5, "freqmax": 3.0}),
    ],
)
def test_one_corner_gives_a_high_or_low_pass(rng, corners, kind, options):
    trace = obspy.Trace(rng.standard_normal(600), {"sampling_rate": 20.0})
    params = SpectrogramParameters(bandpass_fmin=corners[0], bandpass_fmax=corners[1])
    filtered = apply_waveform_steps(trace.data, 20.0, {}, params)
    expected = trace.copy().filter(kind, corners=4, **options).data
    np.testing.assert_array_equal(filtered, expected)
    assert not np.allclose(filtered, trace.data)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"taper": 0.7}, r"taper must be a fraction in \(0, 0.5\], got 0.7"),
        ({"bandpass_fmin": 5.0, "bandpass_fmax": 2.0}, "bandpass_fmin < bandpass_fmax"),
        ({"bandpass_fmax": -1.0}, "bandpass_fmax must be a positive number of Hz"),
        ({"detrend": "spline"}, "detrend must be linear, demean or simple, got 'spline'"),
        ({"response_output": "VELOCITY"}, "response_output must be VEL, DISP or ACC"),
    ],
)
def test_bad_waveform_steps_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SpectrogramParameters(**settings)
    assert not SpectrogramParameters().has_waveform_steps
