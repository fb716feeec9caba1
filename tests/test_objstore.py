"""Archives at fsspec URLs: an S3 server of moto on 127.0.0.1 (``s3_server``, with IAM
checked, tests/conftest.py) and ``memory://``.

What must hold at a URL as on a local disk: an ingest (on a cluster's workers) reads
back equal to the local one; a fit and a transform give the same bits, also when a
worker is SIGKILLed mid-fit; an interrupted transform resumes to the same outputs; a
checkpoint is never half visible; damage is named by its object; a bucket that does
not exist or refuses writes is one error line; no secret is ever shown.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from workerprocesses import (
    Killer,
    assert_same_model,
    ensure_workers,
    install_gate,
)

from specufex_dask.cli.archive import open_model
from specufex_dask.cli.main import main
from specufex_dask.io import archive, modelgroup
from specufex_dask.io.lease import ArchiveBusy, archive_lease, read_lease
from specufex_dask.io.location import ArchiveLocation, as_location, zarr_array, zarr_group
from specufex_dask.parallel import engine
from specufex_dask.pipeline import SpecUFEx

N_EVENTS, N_FREQUENCIES, N_TIMES, CHUNK_EVENTS = 8, 16, 10, 2
SETTINGS = {
    "num_pat": 5,
    "num_state": 3,
    "nmf_steps": 4,
    "hmm_steps": 2,
    "batch_size": 4,
    "random_state": 7,
    "checkpoint_every": 100,
}
OUTPUTS = ("activation", "state_probability", "transition", "fingerprint")


def _spectrograms() -> tuple[np.ndarray, list[str]]:
    """Planted patterns and noise, seeded."""
    rng = np.random.default_rng(21)
    patterns = rng.gamma(2.0, 1.0, size=(N_FREQUENCIES, 4))
    activations = rng.gamma(0.5, 1.0, size=(N_EVENTS, 4, N_TIMES))
    values = np.einsum("dk,nkt->ndt", patterns, activations) + rng.gamma(
        1.0, 0.1, (N_EVENTS, N_FREQUENCIES, N_TIMES)
    )
    return values, [f"ev{i:02d}" for i in range(N_EVENTS)]


def _write(path) -> None:
    """The test archive, in shards of ``CHUNK_EVENTS`` one-event chunks: several shards,
    so a task per shard can fail and a shard object can be damaged."""
    values, ids = _spectrograms()
    archive.write_spectrograms(
        path, values, ids, np.linspace(1.0, 20.0, N_FREQUENCIES), np.arange(N_TIMES) * 0.5,
        chunk_events=CHUNK_EVENTS, shard_events=CHUNK_EVENTS,
        rejected=[archive.RejectedInput("bad.mseed", "unreadable")],
    )  # fmt: skip


def _outputs(path) -> dict[str, np.ndarray]:
    dataset = archive.open_archive(path, with_dask=False)  # read here, not on a client
    return {name: dataset[name].values for name in OUTPUTS}


@pytest.fixture(scope="module")
def local_fit(tmp_path_factory):
    """A fit and transform of a local archive, on dask's synchronous scheduler."""
    path = tmp_path_factory.mktemp("local") / "events.zarr"
    _write(path)
    with dask.config.set(scheduler="sync"):
        model = SpecUFEx(**SETTINGS, client=False).fit(str(path))
        model.transform_to_zarr(str(path))
    return path, model


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.bucket("specufex-objstore")


def _url(bucket: str, tmp_path: Path) -> str:
    """A URL of its own for each test (tmp_path names the test)."""
    return f"s3://{bucket}/{tmp_path.name}.zarr"


def test_locations_never_show_their_secrets(s3_server) -> None:
    location = ArchiveLocation("s3://b/x.zarr", s3_server.options)
    shown = f"{location} {location!r} {as_location(location)!r}"
    assert s3_server.options["secret"] not in shown and s3_server.options["key"] not in shown
    assert str(location) == "s3://b/x.zarr" and "endpoint_url" in repr(location)
    assert ArchiveLocation("file:///tmp/a.zarr").url == "/tmp/a.zarr"  # a local path
    with pytest.raises(ValueError, match="only for URLs"):
        ArchiveLocation("/tmp/a.zarr", {"anon": True})


def test_an_interrupted_transform_on_s3_resumes_to_the_local_bits(
    s3_server, bucket, local_fit, tmp_path, monkeypatch
) -> None:
    """The local fit's model applied to the same spectrograms at a URL (the fit at a
    URL is compared with the local one in the test of the killed worker)."""
    monkeypatch.setattr(engine, "TASK_EVENTS", 1)  # a task per chunk: one can fail
    local, model = local_fit
    location = ArchiveLocation(_url(bucket, tmp_path), s3_server.options)
    _write(location)
    assert archive.read_rejected(location) == archive.read_rejected(local)

    # the third chunk's task fails: the transform stops, marked incomplete
    original = engine._task_transform
    started: list[str] = []

    def planted(source, ids, nmf, hmm):
        started.append(str(ids[0]))
        if len(started) == 3:
            raise RuntimeError("planted failure")
        return original(source, ids, nmf, hmm)

    with monkeypatch.context() as patch, dask.config.set(scheduler="sync"):
        patch.setattr(engine, "_task_transform", planted)
        with pytest.raises(RuntimeError, match="planted"):
            model.transform_to_zarr(location)
    group = zarr_group(location)
    assert group.attrs[engine.TRANSFORM_COMPLETE_ATTR] is False
    assert 0 < np.count_nonzero(group[engine.TRANSFORMED][:]) < N_EVENTS
    done = set(np.flatnonzero(group[engine.TRANSFORMED][:]).tolist())
    rerun: list[int] = []
    original_chunk = engine._task_transform_to_zarr

    def counted(source, ids, start, path, nmf, hmm):
        rerun.append(start)
        return original_chunk(source, ids, start, path, nmf, hmm)

    monkeypatch.setattr(engine, "_task_transform_to_zarr", counted)
    with dask.config.set(scheduler="sync"):
        model.transform_to_zarr(location, resume=True)
    assert not done & set(rerun)  # only what was missing was computed
    expected = _outputs(local)
    for name, values in _outputs(location).items():
        assert np.array_equal(values, expected[name]), name
    assert archive.open_archive(location).fingerprint.attrs["complete"] is True


def test_a_worker_killed_mid_fit_on_s3_leaves_the_bits(
    s3_server, bucket, local_fit, cluster, client, tmp_path, monkeypatch
) -> None:
    """A fit at a URL on two worker processes, which read the archive from S3
    themselves, one SIGKILLed in a task of the third NMF step: the local fit's bits."""
    monkeypatch.setattr(engine, "TASK_EVENTS", 1)  # one task per chunk: work is left
    _, reference = local_fit
    location = ArchiveLocation(_url(bucket, tmp_path), s3_server.options)
    _write(location)
    ours = ensure_workers(cluster, client, 2)
    gate = tmp_path / "gate"
    gate.mkdir()
    install_gate(client, "task_nodes", gate, hold_others=False)

    def arm(stage: str, info: dict) -> None:
        if (stage, info.get("step")) == ("nmf", 2):
            (gate / "armed").touch()

    killer = Killer(gate, ours)
    killer.start()
    try:
        model = SpecUFEx(**SETTINGS, client=client, progress=arm).fit(location)
    finally:
        killer.done.set()
        killer.join(timeout=60)
    assert killer.killed is not None, "no worker was caught running the gated task"
    assert_same_model(model, reference)
    assert_same_model(SpecUFEx.from_archive(location, client=False), reference)


def test_ingest_on_workers_into_s3_reads_back_as_the_local_ingest(
    s3_server, bucket, bav_dir, cluster, client, tmp_path, capsys
) -> None:
    """The command line with the configuration's storage_options; the workers write the
    spectrograms into the bucket."""
    ensure_workers(cluster, client, 1)  # the one the test before left, when it ran
    folder = tmp_path / "waveforms"
    folder.mkdir()
    for source in sorted((bav_dir / "waveforms").iterdir())[:3]:  # three keep it quick
        shutil.copy(source, folder)
    (folder / "broken.mseed").write_bytes(b"not a waveform")
    options = "".join(f"  {key}: {value}\n" for key, value in s3_server.options.items())
    config = tmp_path / "bav.yaml"
    config.write_text(
        "spectrograms:\n  fs: 100\n  nfft: 2000\n  fmin: 8\n  fmax: 20\n  n_samples: 2000\n"
        f"storage_options:\n{options}"
    )
    url, local = _url(bucket, tmp_path), tmp_path / "local.zarr"
    common = ["--config", str(config), "--events-per-chunk", "4", "--scheduler", cluster.address]
    try:
        for target in (url, str(local)):
            assert main(["spectrograms", str(folder), "-o", target, *common]) == 0
        assert main(["info", url, "--config", str(config)]) == 0
    finally:
        cluster.stop_workers()
    out, err = capsys.readouterr()
    assert "ingested 3 of 4 inputs" in out and f"archive: {url}" in out
    assert s3_server.options["secret"] not in out + err
    stored = archive.open_archive(ArchiveLocation(url, s3_server.options), with_dask=False)
    expected = archive.open_archive(local, with_dask=False)
    assert stored.spectrogram.encoding["shards"][0] == archive.DEFAULT_SHARD_EVENTS
    assert stored.spectrogram.encoding["chunks"] == expected.spectrogram.encoding["chunks"]
    # read here: the module's client, dask's default scheduler, has no workers left
    xr.testing.assert_identical(stored.load().drop_encoding(), expected.load().drop_encoding())
    assert archive.read_rejected(stored) == archive.read_rejected(expected)
    assert len(archive.read_rejected(stored)) == 1
    assert read_lease(ArchiveLocation(url, s3_server.options)) is None  # released


def test_a_checkpoint_is_never_half_visible(s3_server, bucket, local_fit, tmp_path) -> None:
    """A write that fails before the pointer moves leaves the previous checkpoint as the
    one read; the next write removes the orphan group."""
    _, reference = local_fit
    location = ArchiveLocation(_url(bucket, tmp_path), s3_server.options)
    first = engine.model_group_dataset(reference.nmf_, None, {"stage": "hmm"})
    modelgroup.write_model_dataset(location, first)
    fs, root = location.filesystem()

    def failing(name: str) -> bytes:
        raise OSError("connection reset")

    second = engine.model_group_dataset(reference.nmf_, reference.hmm_, {"stage": "done"})
    original = modelgroup._pointer_document
    modelgroup._pointer_document = failing
    try:
        with pytest.raises(OSError, match="connection reset"):
            modelgroup.write_model_dataset(location, second)
    finally:
        modelgroup._pointer_document = original
    read = modelgroup.read_model_dataset(location, engine.FORMAT_VERSION)
    assert read is not None and "hmm_state" not in read.attrs
    assert np.array_equal(read["W1"].values, first["W1"].values)
    fs.invalidate_cache(root)
    versions = [p for p in fs.ls(root, detail=False) if "/.model-" in p]
    assert len(versions) == 2  # the checkpoint and the orphan
    modelgroup.write_model_dataset(location, second)
    fs.invalidate_cache(root)
    assert len([p for p in fs.ls(root, detail=False) if "/.model-" in p]) == 2  # + previous
    assert "hmm_state" in modelgroup.read_model_dataset(location, engine.FORMAT_VERSION).attrs


def test_damage_is_named_by_its_object_when_read_and_when_checked(
    s3_server, bucket, tmp_path, capsys
) -> None:
    location = ArchiveLocation(_url(bucket, tmp_path), s3_server.options)
    _write(location)
    fs, root = location.filesystem()
    key = f"{root}/spectrogram/c/1/0/0"
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    from specufex_dask.io.chunkread import read_rows

    with pytest.raises(archive.ArchiveError) as error:
        read_rows(zarr_array(location, "spectrogram"), slice(0, N_EVENTS))
    assert f"object s3://{key}" in str(error.value) and "2..3" in str(error.value)
    lost = f"{root}/spectrogram/c/2/0/0"
    fs.rm_file(lost)
    flags = [f"--storage-option={k}={v}" for k, v in s3_server.options.items()]
    with dask.config.set(scheduler="sync"):  # not the module's client, whose workers died
        assert main(["info", location.url, "--check", *flags]) == 1
    report = capsys.readouterr().out
    assert "chunk files checked: 2 damaged or missing" in report
    assert f"object s3://{key}: checksum mismatch" in report and "events 2..3" in report
    assert f"object s3://{lost}: the object is missing; re-ingest the events 4..5" in report


def test_transform_applies_the_model_of_another_archive_at_a_url(
    s3_server, bucket, local_fit, tmp_path, local_cluster
) -> None:
    """``transform B --model A`` with both at URLs: A's model is read with B's storage
    options, and B's outputs are those of the local fit."""
    local, _ = local_fit
    source = ArchiveLocation(f"s3://{bucket}/{tmp_path.name}-model.zarr", s3_server.options)
    _write(source)
    modelgroup.write_model_dataset(source, open_model(local).load())
    target = _url(bucket, tmp_path)
    _write(ArchiveLocation(target, s3_server.options))
    flags = [f"--storage-option={k}={v}" for k, v in s3_server.options.items()]
    scheduler = ["--scheduler", local_cluster[0].scheduler_address, "--quiet"]
    assert main(["transform", target, "--model", source.url, *flags, *scheduler]) == 0
    expected = _outputs(local)
    for name, values in _outputs(ArchiveLocation(target, s3_server.options)).items():
        assert np.array_equal(values, expected[name]), name


def test_import_h5_writes_an_archive_at_a_url_as_at_a_path(
    s3_server, bucket, tmp_path, capsys
) -> None:
    """The golden workflow file imported to S3 and to a folder: the same variables."""
    from tests.conftest import GOLDEN

    h5 = str(GOLDEN / "SpecUFEx_test1.h5")
    url = _url(bucket, tmp_path)
    flags = [f"--storage-option={k}={v}" for k, v in s3_server.options.items()]
    assert main(["import-h5", h5, url, "--events-per-chunk", "10", *flags]) == 0
    assert f"into {url} with" in capsys.readouterr().out
    assert main(["import-h5", h5, str(tmp_path / "local.zarr"), "--events-per-chunk", "10"]) == 0
    local = archive.open_archive(tmp_path / "local.zarr", with_dask=False)
    remote = archive.open_archive(ArchiveLocation(url, s3_server.options), with_dask=False)
    assert remote.spectrogram.shape[0] == 10 and set(remote.variables) == set(local.variables)
    for name in local.variables:
        np.testing.assert_array_equal(remote[name].values, local[name].values, err_msg=name)


def test_a_missing_bucket_is_one_error_line(s3_server, tmp_path, capsys) -> None:
    url = "s3://no-such-bucket/x.zarr"
    flags = [f"--storage-option={k}={v}" for k, v in s3_server.options.items()]
    for command in (["fit", url], ["info", url]):
        assert main([*command, *flags]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        assert "bucket 'no-such-bucket' does not exist" in err and url in err


def test_a_bucket_refusing_writes_is_one_error_line(s3_server, bucket, tmp_path, capsys) -> None:
    """The reader may read the archive but not write it: a fit is refused before any
    work, naming the URL and the write, and leaves nothing."""
    url = _url(bucket, tmp_path)
    _write(ArchiveLocation(url, s3_server.options))
    flags = [f"--storage-option={k}={v}" for k, v in s3_server.reader.items()]
    # An earlier test's timed-out waits may still be garbage: collected during the fit,
    # asyncio would report them ("Future exception was never retrieved") on this stderr.
    gc.collect()
    capsys.readouterr()
    with s3_server.enforcing_iam():
        assert main(["fit", url, "--nmf-steps", "2", "--hmm-steps", "1", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"store {url}: writing refused (creating the lease object" in err
    assert "access denied" in err and s3_server.reader["secret"] not in err
    assert modelgroup.model_group_name(ArchiveLocation(url, s3_server.options)) is None


def test_memory_urls_take_the_whole_api(local_fit) -> None:
    """``memory://``: written, fitted, leased (a second writer refused), as a path is."""
    local, reference = local_fit
    url = "memory://specufex-objstore/events.zarr"
    _write(url)
    try:
        with dask.config.set(scheduler="sync"):
            model = SpecUFEx(**SETTINGS, client=False).fit(url)
            model.transform_to_zarr(url)
        assert_same_model(model, reference)
        expected = _outputs(local)
        for name, values in _outputs(url).items():
            assert np.array_equal(values, expected[name]), name
        with archive_lease(url, "fit") as holder:
            assert read_lease(url) == holder
            other = archive_lease(ArchiveLocation(url), "fit")
            with pytest.raises(ArchiveBusy, match="in use by `fit`"):
                # another process's lease: drop this process's record of holding it
                from specufex_dask.io import lease

                held = lease._held.pop(str(lease.lease_file(url).path))
                try:
                    other.__enter__()
                finally:
                    lease._held[str(lease.lease_file(url).path)] = held
    finally:
        as_location(url).remove()
