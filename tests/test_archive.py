"""The archive schema: writing, appending, validation on open, rejected table, value checks."""

from __future__ import annotations

import json

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

from specufex_dask.io import archive
from specufex_dask.io.archive import (
    ArchiveError,
    RejectedInput,
    check_spectrogram_values,
    open_archive,
    read_rejected,
    region_bounds,
    write_spectrograms,
)
from specufex_dask.io.h5import import import_specufex_h5

FREQUENCY = np.array([1.0, 2.0, 3.0])
TIME = np.array([0.5, 1.5, 2.5, 3.5])


def _spectrograms(rng, n):
    return rng.random((n, FREQUENCY.size, TIME.size)) * 10


def _chunk_files(path):
    """Bytes of every stored chunk of ``spectrogram`` (Zarr 3 keys c/<i>/<j>/<k>)."""
    root = path / "spectrogram" / "c"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_then_open_round_trips_values_coords_and_attrs(tmp_path, rng):
    values = _spectrograms(rng, 5)
    start = np.array(["2020-01-01T00:00:00.25"] * 5, dtype="datetime64[ns]")
    path = write_spectrograms(
        tmp_path / "a.zarr",
        values,
        ["e0", "e1", "e2", "e3", "e4"],
        FREQUENCY,
        TIME,
        event_coords={"median": np.arange(5.0), "station": ["BAV"] * 5, "starttime": start},
        attrs={"spectrogram_parameters": {"fs": 100.0}, "note": "x"},
        rejected=[RejectedInput("bad.mseed", "unreadable: garbage", "e9")],
        shard_events=2,
    )
    ds = open_archive(path)
    assert isinstance(ds.spectrogram.data, da.Array)
    assert ds.spectrogram.encoding["shards"][0] == 2
    assert ds.spectrogram.data.chunks[0] == (2, 2, 1)  # whole shards, not inner chunks
    np.testing.assert_array_equal(ds.spectrogram.values, values)
    assert ds.event.values.tolist() == ["e0", "e1", "e2", "e3", "e4"]
    np.testing.assert_array_equal(ds["median"].values, np.arange(5.0))
    np.testing.assert_array_equal(ds.starttime.values, start)
    assert ds.station.values.tolist() == ["BAV"] * 5
    assert ds.attrs[archive.VERSION_ATTR] == 1
    assert ds.attrs["created_with"].startswith("specufex-dask ")
    assert json.loads(ds.attrs[archive.PARAMETERS_ATTR]) == {"fs": 100.0}
    assert read_rejected(ds) == [RejectedInput("bad.mseed", "unreadable: garbage", "e9")]
    assert _leftovers(tmp_path) == []


LAYOUTS = {"sharded": {"shard_events": 2}, "plain": {"chunk_events": 2, "shard_events": None}}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_append_extends_without_rewriting_full_chunks(tmp_path, rng, layout):
    """Appends to a sharded archive and to an unsharded one (as written before shards)
    keep its layout and never rewrite a full shard or chunk."""
    first, second = _spectrograms(rng, 5), _spectrograms(rng, 6)
    path = tmp_path / "a.zarr"
    write_spectrograms(path, first, list("abcde"), FREQUENCY, TIME, **layout)
    before = _chunk_files(path)
    lazy = da.from_array(second, chunks=4)
    write_spectrograms(
        path,
        lazy,
        ["f", "g", "a-long-new-id", "i", "j", "k"],
        FREQUENCY,
        TIME,
        mode="a",
        rejected=[RejectedInput("x", "why")],
    )
    after = _chunk_files(path)
    ds = open_archive(path)
    np.testing.assert_array_equal(ds.spectrogram.values, np.concatenate([first, second]))
    assert ds.event.values.tolist()[-4:] == ["a-long-new-id", "i", "j", "k"]
    # The two full chunks of the first write are byte-identical; the partial one grew.
    assert before["0/0/0"] == after["0/0/0"] and before["1/0/0"] == after["1/0/0"]
    assert before["2/0/0"] != after["2/0/0"]
    assert read_rejected(ds) == [RejectedInput("x", "why", "")]
    assert ds.attrs[archive.COMPLETE_ATTR] is True
    assert archive.stored_shard_events(ds.spectrogram.encoding) == layout["shard_events"]


def test_append_rejects_existing_ids_and_leaves_archive_unchanged(tmp_path, rng):
    path = tmp_path / "a.zarr"
    write_spectrograms(path, _spectrograms(rng, 3), list("abc"), FREQUENCY, TIME)
    with pytest.raises(ArchiveError, match=r"already in the archive: \['b'\]"):
        write_spectrograms(path, _spectrograms(rng, 2), ["z", "b"], FREQUENCY, TIME, mode="a")
    with pytest.raises(ArchiveError, match="time axis differs"):
        write_spectrograms(path, _spectrograms(rng, 1), ["z"], FREQUENCY, TIME + 1, mode="a")
    assert open_archive(path).sizes["event"] == 3


def test_failed_append_rolls_back(tmp_path, rng):
    path = tmp_path / "a.zarr"
    original = _spectrograms(rng, 3)
    write_spectrograms(path, original, list("abc"), FREQUENCY, TIME, chunk_events=2)

    def explode(block):
        raise RuntimeError("worker lost")

    failing = da.from_array(_spectrograms(rng, 4), chunks=2).map_blocks(explode, dtype=float)
    with pytest.raises(RuntimeError, match="worker lost"):
        write_spectrograms(path, failing, list("defg"), FREQUENCY, TIME, mode="a")
    ds = open_archive(path)
    assert ds.event.values.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.spectrogram.values, original)


def test_interrupted_append_is_refused_by_open(tmp_path, rng):
    path = tmp_path / "a.zarr"
    write_spectrograms(path, _spectrograms(rng, 2), list("ab"), FREQUENCY, TIME)
    zarr.open_group(str(path), mode="r+", use_consolidated=False).attrs.update(
        {archive.COMPLETE_ATTR: False}
    )
    with pytest.raises(ArchiveError, match="incomplete"):
        open_archive(path)


def test_failed_new_write_leaves_nothing(tmp_path, rng):
    def explode(block):
        raise RuntimeError("disk full")

    failing = da.from_array(_spectrograms(rng, 4), chunks=2).map_blocks(explode, dtype=float)
    with pytest.raises(RuntimeError, match="disk full"):
        write_spectrograms(tmp_path / "a.zarr", failing, list("abcd"), FREQUENCY, TIME)
    assert list(tmp_path.iterdir()) == []


def test_modes_w_and_w_minus(tmp_path, rng):
    path = tmp_path / "a.zarr"
    write_spectrograms(path, _spectrograms(rng, 2), list("ab"), FREQUENCY, TIME)
    with pytest.raises(ArchiveError, match="already exists"):
        write_spectrograms(path, _spectrograms(rng, 2), list("xy"), FREQUENCY, TIME, mode="w-")
    replacement = _spectrograms(rng, 3)
    write_spectrograms(path, replacement, list("xyz"), FREQUENCY, TIME, mode="w")
    np.testing.assert_array_equal(open_archive(path).spectrogram.values, replacement)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("values", "ids", "message"),
    [
        (-np.ones((2, 3, 4)), list("ab"), "negative"),
        (np.ones((2, 3, 5)), list("ab"), r"does not match .* \(2, 3, 4\)"),
        (np.ones((2, 3, 4)), list("aa"), "duplicate event ids"),
        (np.ones((3, 4)), list("ab"), "shape"),
    ],
)
def test_write_rejects_bad_input(tmp_path, values, ids, message):
    with pytest.raises(ValueError, match=message):
        write_spectrograms(tmp_path / "a.zarr", values, ids, FREQUENCY, TIME)
    assert list(tmp_path.iterdir()) == []


def _plain_store(path, **variables):
    xr.Dataset(variables).to_zarr(path, zarr_format=3, consolidated=False)
    return path


def test_open_archive_names_what_is_wrong(tmp_path, rng):
    with pytest.raises(ArchiveError, match="not found"):
        open_archive(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="not a Zarr group"):
        open_archive(tmp_path / "empty")
    no_spectrogram = _plain_store(tmp_path / "n.zarr", other=("event", np.ones(2)))
    with pytest.raises(ArchiveError, match=r"n.zarr: variable 'spectrogram' is missing"):
        open_archive(no_spectrogram)
    transposed = _plain_store(
        tmp_path / "t.zarr", spectrogram=(("event", "time", "frequency"), np.ones((2, 4, 3)))
    )
    with pytest.raises(ArchiveError, match=r"has dims \('event', 'time', 'frequency'\)"):
        open_archive(transposed)
    empty = _plain_store(
        tmp_path / "e.zarr", spectrogram=(("event", "frequency", "time"), np.ones((0, 3, 4)))
    )
    with pytest.raises(ArchiveError, match="dimension 'event' of 'spectrogram' is empty"):
        open_archive(empty)
    duplicated = tmp_path / "d.zarr"
    xr.Dataset(
        {"spectrogram": (("event", "frequency", "time"), np.ones((2, 3, 4)))},
        coords={"event": np.array(["a", "a"], dtype=object)},
    ).to_zarr(duplicated, zarr_format=3, consolidated=False)
    for indexed in (True, False):
        with pytest.raises(ArchiveError, match=r"d.zarr: event ids are not unique, e.g. \['a'\]"):
            open_archive(duplicated, indexed=indexed)


def test_duplicate_ids_are_found_across_blocks_and_as_str():
    ids = xr.Variable("event", np.array([f"e{i}" for i in range(50)] + ["e7", "e31", "e7"]))
    assert archive.duplicate_ids(ids, block=8) == ["e31", "e7"]
    assert archive.duplicate_ids(ids, limit=1, block=8) == ["e31"]
    assert archive.duplicate_ids(ids[:50], block=8) == []
    # ids that differ as objects but not as text repeat
    assert archive.duplicate_ids(xr.Variable("event", np.array([1, "1", 2], dtype=object))) == [
        "1"
    ]


def test_duplicate_ids_never_reports_a_hash_collision(monkeypatch):
    import pandas as pd

    # every id hashes alike: only the comparison of the strings can tell them apart
    monkeypatch.setattr(
        pd.util, "hash_array", lambda values, **_: np.zeros(len(values), np.uint64)
    )
    ids = xr.Variable("event", np.array(["a", "b", "c", "d", "e"]))
    assert archive.duplicate_ids(ids, block=2) == []
    assert archive.duplicate_ids(xr.Variable("event", ["a", "b", "a"]), block=2) == ["a"]


def test_an_unindexed_open_keeps_the_ids_in_the_store(tmp_path, rng):
    path = write_spectrograms(
        tmp_path / "a.zarr", _spectrograms(rng, 3), ["x", "y", "z"], FREQUENCY, TIME,
        event_coords={"station": ["S1", "S2", "S3"]},
    )  # fmt: skip

    def refuse(*args, **kwargs):
        raise AssertionError("the ids were read through the scheduler dask was given")

    for with_dask in (True, False):
        with dask.config.set(scheduler=refuse):  # as a client no worker serves
            ds = open_archive(path, with_dask=with_dask, indexed=False)
        assert len(ds.indexes) == 0
        assert not ds.event.variable._in_memory
        assert ds.event.values.tolist() == ["x", "y", "z"]
        assert ds.station.values.tolist() == ["S1", "S2", "S3"]
        np.testing.assert_array_equal(ds.frequency.values, FREQUENCY)
    assert list(open_archive(path).indexes) == ["event", "frequency", "time"]


def test_open_archive_accepts_store_of_other_writers(tmp_path, rng):
    values = _spectrograms(rng, 2)
    path = _plain_store(tmp_path / "p.zarr", spectrogram=(("event", "frequency", "time"), values))
    ds = open_archive(path)
    np.testing.assert_array_equal(ds.spectrogram.values, values)
    assert read_rejected(ds) == []


def test_check_spectrogram_values_finds_planted_problems(rng):
    block = _spectrograms(rng, 4)
    block[1, 0, 2] = np.nan
    block[2, 2, 3] = -0.5
    block[2, 1, 1] = np.inf
    problems = check_spectrogram_values(block, ["a", "b", "c", "d"])
    assert problems == [
        ("b", "1 non-finite value(s)"),
        ("c", "1 non-finite value(s); 1 negative value(s), min -0.5"),
    ]
    assert check_spectrogram_values(np.abs(block[[0, 3]]), ["a", "d"]) == []
    with pytest.raises(ValueError, match="does not match 3 event ids"):
        check_spectrogram_values(block, ["a", "b", "c"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_spectrogram_values_agrees_with_counting_every_value(rng, dtype):
    """Only +inf, only a NaN, -0.0, a tiny negative, many problems in one event."""
    block = np.abs(_spectrograms(rng, 8)).astype(dtype)
    block[1, 2, 3] = np.inf
    block[2, 0, 0] = np.nan
    block[3, 1, 1] = -0.0
    block[4, 2, 2] = -np.finfo(dtype).tiny
    block[5, :2, :] = -1.0
    block[5, 2, :2] = np.nan
    block[6, 0, 0] = -np.inf
    ids = [f"e{i}" for i in range(8)]
    bad_count = ~np.isfinite(block) | (block < 0)
    expected = [ids[i] for i in range(8) if bad_count[i].any()]
    assert [event for event, _ in check_spectrogram_values(block, ids)] == expected
    assert expected == ["e1", "e2", "e4", "e5", "e6"]
    reasons = dict(check_spectrogram_values(block, ids))
    assert reasons["e5"] == (
        f"2 non-finite value(s); {2 * block.shape[2]} negative value(s), min -1"
    )


def test_region_bounds_are_chunk_aligned():
    assert region_bounds(0, 5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert region_bounds(5, 11, 4) == [(5, 8), (8, 11)]
    assert region_bounds(3, 3, 4) == []


H5_GROUPS = {
    "spectrogram": "spectrograms/transformed_spectrograms",
    "activation": "ACM",
    "state_probability": "STM",
    "transition": "SpecUFEx_output/As",
    "fingerprint": "fingerprints",
}


def test_import_golden_h5_copies_every_dataset_exactly(tmp_path, golden_dir):
    source = golden_dir / "SpecUFEx_test1.h5"
    path = import_specufex_h5(source, tmp_path / "g.zarr", chunk_events=3)
    ds = open_archive(path)
    with h5py.File(source, "r") as h5:
        ids = list(h5["spectrograms/transformed_spectrograms"].keys())
        assert ds.event.values.tolist() == ids
        for name, group in H5_GROUPS.items():
            expected = np.stack([h5[group][i][()] for i in ids])
            np.testing.assert_array_equal(ds[name].values, expected)
        np.testing.assert_array_equal(ds.frequency.values, h5["spectrograms/fSTFT"][()])
        np.testing.assert_array_equal(ds.time.values, h5["spectrograms/tSTFT"][()])
    assert ds.activation.dims == ("event", "pattern", "time")
    assert ds.state_probability.dims == ("event", "state", "time")
    assert ds.transition.dims == ds.fingerprint.dims == ("event", "state", "next_state")
    assert np.isnan(ds["median"].values).all()
    parameters = archive.spectrogram_parameters(ds)
    assert parameters["fs"] == 100 and parameters["nfft"] == 2000 and parameters["fmin"] == 8


def test_import_h5_without_outputs_and_with_partial_output_group(tmp_path, rng):
    source = tmp_path / "w.h5"
    spectrograms = _spectrograms(rng, 3)
    with h5py.File(source, "w") as h5:
        h5.create_dataset("spectrograms/fSTFT", data=FREQUENCY)
        h5.create_dataset("spectrograms/tSTFT", data=TIME)
        for i, event in enumerate(["z9", "a1", "m5"]):
            h5.create_dataset(
                f"spectrograms/transformed_spectrograms/{event}", data=spectrograms[i]
            )
        h5.create_dataset("fingerprints/a1", data=np.eye(2))
    with pytest.raises(ArchiveError, match=r"'fingerprints' lacks 2 of the 3 event ids"):
        import_specufex_h5(source, tmp_path / "w.zarr")
    assert not (tmp_path / "w.zarr").exists()
    ds = open_archive(import_specufex_h5(source, tmp_path / "w.zarr", include_outputs=False))
    # h5py lists the group's members by name, which is the workflow's own order.
    assert ds.event.values.tolist() == ["a1", "m5", "z9"]
    np.testing.assert_array_equal(ds.spectrogram.values, spectrograms[[1, 2, 0]])
    assert "fingerprint" not in ds


def test_append_grows_result_variables_with_fill_values(tmp_path, rng):
    path = tmp_path / "a.zarr"
    write_spectrograms(path, _spectrograms(rng, 3), list("abc"), FREQUENCY, TIME, chunk_events=2)
    activation = rng.random((3, 2, TIME.size))
    attrs = dict(open_archive(path).attrs)
    xr.Dataset(
        {
            "activation": (("event", "pattern", "time"), activation),
            "cluster": ("event", np.array([2, 0, 1])),
        },
        attrs=attrs,
    ).to_zarr(path, mode="a", consolidated=False)
    write_spectrograms(path, _spectrograms(rng, 2), list("de"), FREQUENCY, TIME, mode="a")
    ds = open_archive(path)
    assert ds.sizes["event"] == 5
    np.testing.assert_array_equal(ds.activation.values[:3], activation)
    assert np.isnan(ds.activation.values[3:]).all()
    assert ds.cluster.values[:3].tolist() == [2, 0, 1]
