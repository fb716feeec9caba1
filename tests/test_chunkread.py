"""Direct reads of plain and sharded local Zarr arrays against Zarr's own reads of the same
arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

from specufex_dask.io import archive
from specufex_dask.io.chunkread import damaged_chunks, plain_chunks, sharded_chunks
from specufex_dask.parallel import engine

SHAPE = (21, 5, 3)  # 21 rows in chunks of 4: the last chunk is partial
CHUNKS = (4, 5, 3)


def _array(path: Path, rng: np.random.Generator, dtype="float32", **options) -> zarr.Array:
    values = rng.gamma(1.0, 1.0, size=SHAPE).astype(dtype)
    values[values < 0.5] = 0  # runs of zeros, as in dB spectrograms clipped at 0
    array = zarr.create_array(path, shape=SHAPE, dtype=dtype, **{"chunks": CHUNKS, **options})
    array[:] = values
    return zarr.open_array(path, mode="r")


def _selections(rng: np.random.Generator) -> list:
    rows = np.sort(rng.choice(SHAPE[0], 9, replace=False))
    return [rows, np.array([0, 1, 2, 3]), np.array([20]), np.array([], dtype=np.int64),
            slice(0, 21), slice(5, 18), slice(19, None), slice(7, 7)]  # fmt: skip


def _zarr_read(array: zarr.Array, rows) -> np.ndarray:
    if isinstance(rows, slice):
        return np.asarray(array[rows])
    return np.asarray(array.get_orthogonal_selection((rows, slice(None), slice(None))))


@pytest.mark.parametrize(
    ("dtype", "compressors"),
    [
        ("float32", "auto"),
        ("float64", "auto"),
        ("float32", None),
        ("float32", ZstdCodec(level=-1, checksum=True)),
        ("float32", BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")),
        ("float64", BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")),
        ("float32", (BloscCodec(cname="lz4", shuffle="noshuffle"), Crc32cCodec())),
    ],
)
def test_rows_equal_zarrs_read(tmp_path: Path, rng, dtype: str, compressors) -> None:
    array = _array(tmp_path / "a.zarr", rng, dtype=dtype, compressors=compressors)
    plain = plain_chunks(array)
    assert plain is not None
    for rows in _selections(rng):
        direct = plain.read(rows)
        assert direct.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(direct, _zarr_read(array, rows))


def test_a_chunk_without_a_file_holds_the_fill_value(tmp_path: Path, rng) -> None:
    array = _array(tmp_path / "a.zarr", rng, fill_value=-1.5)
    plain = plain_chunks(array)
    (plain.directory / plain.key((1, 0, 0))).unlink()
    rows = np.arange(SHAPE[0])
    expected = _zarr_read(array, rows)
    assert np.all(expected[4:8] == -1.5)
    np.testing.assert_array_equal(plain.read(rows), expected)


@pytest.mark.parametrize("compressors", ["auto", None, BloscCodec(cname="lz4")])
def test_a_damaged_chunk_file_is_named(tmp_path: Path, rng, compressors) -> None:
    array = _array(tmp_path / "a.zarr", rng, compressors=compressors)
    plain = plain_chunks(array)
    damaged = plain.directory / plain.key((2, 0, 0))
    damaged.write_bytes(damaged.read_bytes()[:-7])
    with pytest.raises(archive.ArchiveError, match=f"chunk file {damaged}: cannot be read"):
        plain.read(np.array([1, 9]))
    np.testing.assert_array_equal(plain.read(np.array([1, 13])), _zarr_read(array, [1, 13]))


def test_rows_outside_the_array_are_refused(tmp_path: Path, rng) -> None:
    plain = plain_chunks(_array(tmp_path / "a.zarr", rng))
    with pytest.raises(IndexError, match="out of 0..20"):
        plain.read(np.array([3, 21]))
    with pytest.raises(ValueError, match="step 1"):
        plain.read(slice(0, 10, 2))


@pytest.mark.parametrize(
    "options",
    [
        {"compressors": GzipCodec()},
        {"compressors": (BloscCodec(cname="lz4"), ZstdCodec())},
        {"chunks": (4, 5, 1)},  # chunked along another axis too
        {"shards": {"shape": (8, 5, 3), "index_location": "start"}},
        {"shards": (8, 5, 3), "chunks": (4, 5, 1)},
        {"zarr_format": 2},
        {"serializer": BytesCodec(endian="big")},
    ],
    ids="gzip blosc-zstd chunked-in-time index-first sharded-in-time zarr-v2 big-endian".split(),
)
def test_other_arrays_are_left_to_zarr(tmp_path: Path, rng, options: dict) -> None:
    array = _array(tmp_path / archive.SPECTROGRAM, rng, **options)
    assert plain_chunks(array) is None
    # and the engine still reads them, through Zarr
    rows = np.array([2, 9, 20])
    stored = engine.StoredRows(str(tmp_path), rows).read()
    np.testing.assert_array_equal(stored, _zarr_read(array, rows))


@pytest.mark.parametrize("shard_events", [4, None], ids=["sharded", "plain"])
def test_archives_are_read_directly(tmp_path: Path, rng, shard_events) -> None:
    """The archives this package writes take the direct path (the fit depends on it)."""
    values = rng.gamma(1.0, 1.0, size=(10, 6, 4)).astype(np.float32)
    ids = np.array([f"e{i}" for i in range(10)])
    path = tmp_path / "events.zarr"
    archive.write_spectrograms(path, values, ids, np.arange(6.0), np.arange(4.0), chunk_events=3,
                               shard_events=shard_events)  # fmt: skip
    array = zarr.open_array(path, path=archive.SPECTROGRAM, mode="r")
    if shard_events is None:
        plain = plain_chunks(array)
        assert plain is not None and plain.codec == "blosc" and plain.crc32c
    else:
        sharded = sharded_chunks(array)
        assert sharded is not None and sharded.index_crc32c and sharded.shard_events == 4
        assert sharded.chunks.chunk_shape == (1, 6, 4) and sharded.chunks.crc32c
        assert sharded.chunks.codec == "blosc"
    rows = np.array([0, 4, 5, 9])
    np.testing.assert_array_equal(engine.StoredRows(str(path), rows).read(), values[rows])
    np.testing.assert_array_equal(engine.StoredRows(str(path), slice(2, 8)).read(), values[2:8])


def _small_archive(path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """20 events in plain chunks of 8 (as archives were written before shards): chunk 2
    (events 16..19) is the partial last one."""
    values = rng.gamma(1.0, 1.0, size=(20, 6, 4))
    ids = np.array([f"e{i}" for i in range(20)])
    archive.write_spectrograms(path, values, ids, np.arange(6.0), np.arange(4.0), chunk_events=8,
                               shard_events=None)  # fmt: skip
    return path, values


def _chunk_file(path: Path, number: int) -> Path:
    array = zarr.open_array(path, path=archive.SPECTROGRAM, mode="r")
    plain = plain_chunks(array)
    return plain.directory / plain.key((number, 0, 0))


def test_new_archives_checksum_every_chunk(tmp_path: Path, rng) -> None:
    path, _ = _small_archive(tmp_path / "events.zarr", rng)
    group = zarr.open_group(path, mode="r")
    for name, array in group.arrays():
        assert type(array.metadata.codecs[-1]) is Crc32cCodec, name
    assert plain_chunks(group[archive.SPECTROGRAM]).crc32c


def test_bytes_written_into_a_chunk_are_named_as_damage(tmp_path: Path, rng) -> None:
    path, values = _small_archive(tmp_path / "events.zarr", rng)
    damaged = _chunk_file(path, 1)
    data = bytearray(damaged.read_bytes())
    offset = int(rng.integers(0, len(data) - 68))
    data[offset : offset + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    expected = (
        f"store {path}, array 'spectrogram', chunk c/1/0/0: chunk file {damaged}: checksum "
        "mismatch: the chunk is damaged; re-ingest the events 8..15"
    )
    with pytest.raises(archive.ArchiveError) as caught:
        engine.StoredRows(str(path), np.array([3, 9])).read()
    assert str(caught.value) == expected
    # the other chunks still read
    rows = np.array([0, 7, 16, 19])
    np.testing.assert_array_equal(engine.StoredRows(str(path), rows).read(), values[rows])


def test_a_deleted_chunk_file_is_named_as_missing(tmp_path: Path, rng) -> None:
    path, _ = _small_archive(tmp_path / "events.zarr", rng)
    missing = _chunk_file(path, 2)
    missing.unlink()
    with pytest.raises(archive.ArchiveError) as caught:
        engine.StoredRows(str(path), slice(10, 20)).read()
    assert str(caught.value) == (
        f"store {path}, array 'spectrogram', chunk c/2/0/0: chunk file {missing}: the chunk "
        "file is missing; re-ingest the events 16..19"
    )


def test_archives_without_checksums_still_read(tmp_path: Path, rng, monkeypatch) -> None:
    """Archives written before checksums (zstd only) read directly, as before."""
    monkeypatch.setattr(archive, "checksummed", lambda: (ZstdCodec(),))
    monkeypatch.setattr(archive, "spectrogram_checksummed", lambda: (ZstdCodec(),))
    path, values = _small_archive(tmp_path / "old.zarr", rng)
    array = zarr.open_array(path, path=archive.SPECTROGRAM, mode="r")
    assert [type(codec) for codec in array.metadata.codecs] == [BytesCodec, ZstdCodec]
    plain = plain_chunks(array)
    assert plain is not None and plain.codec == "zstd" and not plain.crc32c
    rows = np.array([1, 8, 15, 19])
    np.testing.assert_array_equal(engine.StoredRows(str(path), rows).read(), values[rows])
    np.testing.assert_array_equal(archive.open_archive(path).spectrogram.values, values)


@pytest.mark.parametrize("shard_events", [4, None], ids=["sharded", "plain"])
def test_zstd_spectrograms_read_as_blosc_ones(
    tmp_path: Path, rng, monkeypatch, shard_events
) -> None:
    """Archives whose spectrograms are zstd (written before Blosc) read directly, to the
    values a Blosc archive of the same events reads."""
    values = rng.gamma(1.0, 1.0, size=(10, 6, 4)).astype(np.float32)
    values[values < 0.5] = 0
    ids = np.array([f"e{i}" for i in range(10)])

    def written(name: str) -> Path:
        path = tmp_path / name
        archive.write_spectrograms(path, values, ids, np.arange(6.0), np.arange(4.0),
                                   chunk_events=3, shard_events=shard_events)  # fmt: skip
        return path

    new = written("blosc.zarr")
    monkeypatch.setattr(archive, "spectrogram_checksummed", archive.checksummed)
    old = written("zstd.zarr")
    layouts = {}
    for path in (new, old):
        array = zarr.open_array(path, path=archive.SPECTROGRAM, mode="r")
        direct = plain_chunks(array) if shard_events is None else sharded_chunks(array)
        assert direct is not None
        layouts[path] = direct.chunks if shard_events else direct
    assert (layouts[new].codec, layouts[old].codec) == ("blosc", "zstd")
    for rows in (np.array([0, 4, 5, 9]), slice(2, 8), np.array([7])):
        expected = values[rows]
        np.testing.assert_array_equal(engine.StoredRows(str(old), rows).read(), expected)
        np.testing.assert_array_equal(engine.StoredRows(str(new), rows).read(), expected)


def test_damage_read_through_zarr_is_named_by_its_file(tmp_path: Path, rng) -> None:
    """A shard with its index first is left to Zarr, whose checksum error is traced to
    its shard file."""
    codecs = (ZstdCodec(), Crc32cCodec())
    shards = {"shape": (8, 5, 3), "index_location": "start"}
    array = _array(tmp_path / archive.SPECTROGRAM, rng, shards=shards, compressors=codecs)
    assert plain_chunks(array) is None and sharded_chunks(array) is None
    damaged = tmp_path / archive.SPECTROGRAM / "c" / "1" / "0" / "0"
    data = bytearray(damaged.read_bytes())
    first = 2 * 16 + 4  # after the index of its 2 inner chunks
    data[first : first + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    with pytest.raises(archive.ArchiveError) as caught:
        engine.StoredRows(str(tmp_path), np.array([2, 9, 20])).read()
    assert str(caught.value) == (
        f"store {tmp_path}, array 'spectrogram', chunk c/1/0/0: chunk file {damaged}: checksum "
        "mismatch: the chunk is damaged; re-ingest the events 8..15"
    )
    rows = np.array([2, 20])
    np.testing.assert_array_equal(engine.StoredRows(str(tmp_path), rows).read(), array[rows])


@pytest.mark.parametrize(
    ("chunks", "compressors"),
    [((1, 5, 3), "auto"), ((4, 5, 3), (ZstdCodec(), Crc32cCodec())), ((2, 5, 3), None)],
    ids=["inner-1", "inner-4-crc32c", "inner-2-raw"],
)
def test_sharded_rows_equal_zarrs_read(tmp_path: Path, rng, chunks, compressors) -> None:
    """Shards of 8 rows (the last of 21 partial), read directly and by Zarr."""
    array = _array(tmp_path / "a.zarr", rng, chunks=chunks, shards=(8, 5, 3),
                   compressors=compressors)  # fmt: skip
    sharded = sharded_chunks(array)
    assert sharded is not None and sharded.inner_events == chunks[0]
    for rows in _selections(rng):
        np.testing.assert_array_equal(sharded.read(rows), _zarr_read(array, rows))


def _sharded_archive(path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """10 events in shards of 4 one-event chunks: shard 2 (events 8, 9) is partial."""
    values = rng.gamma(1.0, 1.0, size=(10, 6, 4)).astype(np.float32)
    ids = np.array([f"e{i}" for i in range(10)])
    archive.write_spectrograms(path, values, ids, np.arange(6.0), np.arange(4.0), shard_events=4)
    return path, values


def _inner_chunk_bytes(shard: Path, inner: int, n_inner: int = 4) -> slice:
    """Where inner chunk ``inner`` lies in a shard file, from its index (the last
    16 n + 4 bytes: uint64 offset and length pairs, then their crc32c)."""
    data = shard.read_bytes()
    pairs = np.frombuffer(data[-(16 * n_inner + 4) : -4], dtype="<u8").reshape(n_inner, 2)
    offset, length = (int(v) for v in pairs[inner])
    return slice(offset, offset + length)


@pytest.mark.parametrize("where", ["inner chunk", "index", "missing"])
def test_damage_in_a_shard_is_named(tmp_path: Path, rng, where: str) -> None:
    path, values = _sharded_archive(tmp_path / "events.zarr", rng)
    shard = path / archive.SPECTROGRAM / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    start = f"store {path}, array 'spectrogram', shard c/1/0/0: shard file {shard}: "
    if where == "inner chunk":
        data[_inner_chunk_bytes(shard, 2).start + 3] ^= 0x10
        expected = "inner chunk 2: checksum mismatch: the chunk is damaged; re-ingest the "
        expected += "events 6..6"
    elif where == "index":
        data[-9] ^= 0x01
        expected = "checksum mismatch: the shard index is damaged; re-ingest the events 4..7"
    if where == "missing":
        shard.unlink()
        expected = "the shard file is missing; re-ingest the events 4..7"
    else:
        shard.write_bytes(bytes(data))
    with pytest.raises(archive.ArchiveError) as caught:
        engine.StoredRows(str(path), np.array([1, 6, 9])).read()
    assert str(caught.value) == start + expected
    assert damaged_chunks(path) == [start + expected]
    # the other shards still read, and so do the sound inner chunks of this one
    sound = np.array([0, 3, 8, 9] + ([4, 5, 7] if where == "inner chunk" else []))
    sound.sort()
    np.testing.assert_array_equal(engine.StoredRows(str(path), sound).read(), values[sound])
