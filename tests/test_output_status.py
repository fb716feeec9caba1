"""How far the transform's outputs are, as ``open_archive``'s attributes and ``info``
show it, and the commands that refuse outputs an unfinished transform or another model
wrote (:mod:`specufex_dask.io.status`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from specufex_dask.cli.main import main
from specufex_dask.io import archive
from specufex_dask.io.lease import lease_path, read_lease
from specufex_dask.io.modelgroup import MODEL_TOKEN_ATTR, stored_model_token
from specufex_dask.io.status import OUTPUTS
from specufex_dask.pipeline import SpecUFEx

N_EVENTS, CHUNK = 16, 4
SETTINGS = {"num_pat": 4, "num_state": 3, "nmf_steps": 4, "hmm_steps": 3, "batch_size": 4}

# Transforms the archive one chunk per task, one task at a time, and kills itself (no
# clean-up of any kind) once it has written two chunks.
KILLED_TRANSFORM = textwrap.dedent(
    """
    import os, signal, sys
    import dask
    from specufex_dask.parallel import engine
    from specufex_dask.pipeline import SpecUFEx

    engine.TASK_EVENTS = 1
    written = []
    chunk = engine._task_transform_to_zarr

    def killed_after_two(*args):
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        written.append(chunk(*args))
        return written[-1]

    engine._task_transform_to_zarr = killed_after_two
    with dask.config.set(scheduler="synchronous"):
        SpecUFEx.from_archive(sys.argv[1], client=False).transform_to_zarr(sys.argv[1])
    """
)


def _archive(path: Path) -> str:
    rng = np.random.default_rng(11)
    values = rng.gamma(1.0, 1.0, size=(N_EVENTS, 12, 10))
    events = [f"ev{i:02d}" for i in range(N_EVENTS)]
    frequency, time = np.arange(1.0, 13.0), np.arange(10.0)
    return str(
        archive.write_spectrograms(
            path, values, events, frequency, time, chunk_events=CHUNK, shard_events=CHUNK
        )
    )


def _fit(path: str, seed: int) -> SpecUFEx:
    return SpecUFEx(**SETTINGS, random_state=seed, client=False).fit(path)


def _info(capsys, path: str) -> dict:
    capsys.readouterr()
    assert main(["info", "--json", path]) == 0
    return json.loads(capsys.readouterr().out)


def _failing(capsys, *argv: str) -> str:
    """The one error line of a command that must fail."""
    capsys.readouterr()
    assert main(list(argv)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _status(dataset, name: str) -> tuple:
    attrs = dataset[name].attrs
    return attrs["events_done"], attrs["complete"], attrs["model_match"]


def test_a_killed_transform_shows_the_events_done_and_is_not_complete(
    tmp_path: Path, capsys
) -> None:
    path = _archive(tmp_path / "events.zarr")
    _fit(path, 7)
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_TRANSFORM, path], stderr=subprocess.PIPE, text=True
    )
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, stderr
    dataset = archive.open_archive(path)
    # independently: the events whose fingerprints the killed run wrote (NaN elsewhere)
    written = int(np.isfinite(dataset["fingerprint"].values).all(axis=(1, 2)).sum())
    assert written == 2 * CHUNK
    for name in OUTPUTS:
        assert _status(dataset, name) == (written, False, True)
    summary = _info(capsys, path)
    assert (summary["shard_events"], summary["chunks"][0]) == (CHUNK, 1)
    for name in OUTPUTS:
        output = summary["outputs"][name]
        assert (output["events_done"], output["complete"], output["model_match"]) == (
            written,
            False,
            True,
        )
    # the killed process left its lease: info names it, and it keeps writers out
    assert summary["lease"]["command"] == "transform" and summary["lease"]["pid"] == killed.pid
    assert f"PID {killed.pid}" in _failing(capsys, "cluster", path)
    lease_path(path).unlink()  # as the refusal says, once the process is known to be gone
    error = _failing(capsys, "cluster", path)
    assert f"the transform is incomplete ({written} of {N_EVENTS} events" in error
    assert f"specufex-dask transform --resume {path}" in error
    assert "transform incomplete" in "\n".join(_text_info(capsys, path))
    # resumed, the transform completes: the same facts say so
    SpecUFEx.from_archive(path, client=False).transform_to_zarr(path, resume=True)
    assert _status(archive.open_archive(path), "fingerprint") == (N_EVENTS, True, True)


def _text_info(capsys, path: str) -> list[str]:
    capsys.readouterr()
    assert main(["info", path]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_refit_after_the_transform_is_flagged_and_cluster_and_plot_refuse(
    tmp_path: Path, capsys
) -> None:
    path = _archive(tmp_path / "events.zarr")
    _fit(path, 7).transform_to_zarr(path)
    assert _status(archive.open_archive(path), "fingerprint") == (N_EVENTS, True, True)
    _fit(path, 8)
    dataset = archive.open_archive(path)
    for name in OUTPUTS:
        assert _status(dataset, name) == (N_EVENTS, True, False)
    summary = _info(capsys, path)
    assert [summary["outputs"][name]["model_match"] for name in OUTPUTS] == [False] * 4
    assert summary["lease"] is None
    text = [line for line in _text_info(capsys, path) if line.startswith("  fingerprint:")]
    assert "written by another model than the stored one" in text[0]
    for argv in (
        ["cluster", path],
        ["plot", path, str(tmp_path / "figures")],
        ["export", path, str(tmp_path / "catalog")],
    ):
        error = _failing(capsys, *argv)
        assert "another model than the one stored" in error
        assert f"run `specufex-dask transform {path}` first" in error
    assert "cluster" not in archive.open_archive(path)
    assert not (tmp_path / "catalog").exists()
    # transformed again with the stored model, the outputs match it and cluster works
    SpecUFEx.from_archive(path, client=False).transform_to_zarr(path)
    assert _status(archive.open_archive(path), "fingerprint") == (N_EVENTS, True, True)
    assert main(["cluster", path, "--n-clusters", "2"]) == 0
    assert archive.open_archive(path)["cluster"].shape == (N_EVENTS,)
    assert read_lease(path) is None


def test_labels_of_an_earlier_models_fingerprints_are_refused_until_clustered_again(
    tmp_path: Path, capsys
) -> None:
    path = _archive(tmp_path / "events.zarr")
    _fit(path, 7).transform_to_zarr(path)
    assert main(["cluster", path, "--n-clusters", "2"]) == 0
    first = archive.open_archive(path)
    made_from = first["cluster"].attrs["fingerprint_model"]
    assert made_from == first["fingerprint"].attrs[archive.TRANSFORM_TOKEN_ATTR]
    assert _info(capsys, path)["cluster_problem"] is None
    # a new fit and transform: the fingerprints are the new model's, the labels are not
    _fit(path, 8).transform_to_zarr(path)
    summary = _info(capsys, path)
    assert "made from the fingerprints of another model" in summary["cluster_problem"]
    assert any(line.startswith("  stale: ") for line in _text_info(capsys, path))
    for argv in (
        ["plot", path, str(tmp_path / "figures")],
        ["export", path, str(tmp_path / "catalog")],
    ):
        error = _failing(capsys, *argv)
        assert "the cluster labels were made from the fingerprints of another model" in error
        assert f"run `specufex-dask cluster {path}` again" in error
    assert not (tmp_path / "catalog").exists()
    assert main(["cluster", path, "--n-clusters", "2"]) == 0
    assert _info(capsys, path)["cluster_problem"] is None
    assert main(["export", path, str(tmp_path / "catalog")]) == 0


def test_appended_events_leave_the_outputs_incomplete(tmp_path: Path) -> None:
    path = _archive(tmp_path / "events.zarr")
    _fit(path, 7).transform_to_zarr(path)
    rng = np.random.default_rng(12)
    archive.write_spectrograms(
        path, rng.gamma(1.0, 1.0, size=(3, 12, 10)), ["new0", "new1", "new2"],
        np.arange(1.0, 13.0), np.arange(10.0), mode="a",
    )  # fmt: skip
    assert _status(archive.open_archive(path), "activation") == (N_EVENTS, False, True)


@pytest.mark.parametrize("name", ["fingerprint"])
def test_outputs_without_a_transform_record_are_unknown_not_refused(
    tmp_path: Path, name: str
) -> None:
    # as the HDF5 import writes them: values, no markers, no token
    import zarr

    path = _archive(tmp_path / "events.zarr")
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.create_array(
        name, shape=(N_EVENTS, 3, 3), dtype=float, dimension_names=("event", "state", "next_state")
    )[...] = np.full((N_EVENTS, 3, 3), 1 / 9)
    archive.consolidate(path)
    assert _status(archive.open_archive(path), name) == (None, None, None)


def test_the_stored_token_is_the_fitted_models_with_or_without_its_attribute(
    tmp_path: Path,
) -> None:
    import zarr

    path = _archive(tmp_path / "events.zarr")
    fitted = _fit(path, 7).model_token()  # of the arrays in memory
    assert stored_model_token(path) == fitted
    group = zarr.open_group(f"{path}/model", mode="r+", use_consolidated=False)
    del group.attrs[MODEL_TOKEN_ATTR]  # as a group written before the attribute existed
    assert stored_model_token(path) == fitted
    assert stored_model_token(str(tmp_path / "nothing.zarr")) is None


def test_an_output_or_model_stored_as_the_wrong_kind_of_node_is_refused_by_name(
    tmp_path: Path,
) -> None:
    import zarr

    from specufex_dask.io.status import output_status

    path = _archive(tmp_path / "events.zarr")
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    root.create_group("fingerprint")
    with pytest.raises(archive.ArchiveError, match=r"events\.zarr: fingerprint is a group"):
        output_status(path, N_EVENTS)
    root.create_array("model", shape=(2,), dtype=float)
    with pytest.raises(archive.ArchiveError, match=r"events\.zarr: 'model' is an array.*fit"):
        stored_model_token(path)
    del root["model"]
    root.create_group("model").create_group("W1")  # no token attribute: W1 is read
    with pytest.raises(archive.ArchiveError, match=r"events\.zarr: model/W1 is a group"):
        stored_model_token(path)


def _chunk_file(path: str, name: str, number: int) -> Path:
    return Path(path) / name / "c" / str(number) / "0" / "0"


def test_damaged_and_lost_output_chunks_are_named_by_their_files(tmp_path: Path, capsys) -> None:
    path = _archive(tmp_path / "events.zarr")
    _fit(path, 7).transform_to_zarr(path)
    assert main(["info", path, "--check"]) == 0
    assert "chunk files checked: 0 damaged or missing" in capsys.readouterr().out
    damaged = _chunk_file(path, "fingerprint", 0)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    # cluster reads through xarray, where Zarr only says "checksum do not match"
    error = _failing(capsys, "cluster", path, "--n-clusters", "2", "--quiet")
    where = f"store {path}, array 'fingerprint', chunk c/0/0/0: chunk file {damaged}"
    assert error.startswith(f"specufex-dask: error: {where}")
    assert "the chunk is damaged; delete the output and run transform again for the" in error
    lost = _chunk_file(path, "spectrogram", 1)
    kept = lost.read_bytes()
    lost.unlink()
    capsys.readouterr()
    assert main(["info", path, "--check"]) == 1
    out = capsys.readouterr().out
    assert "chunk files checked: 2 damaged or missing" in out
    assert f"shard file {lost}: the shard file is missing; re-ingest the events 4..7" in out
    lost.write_bytes(kept)
    damaged.unlink()  # a lost output chunk: once read as NaN values, now named
    error = _failing(capsys, "cluster", path, "--n-clusters", "2", "--quiet")
    assert f"chunk file {damaged}: the chunk file is missing" in error
    assert "NaN" not in error
