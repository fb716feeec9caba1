"""SpecUFEx workflow configuration files read by --config (specufex_dask.cli.workflow_config)."""

from __future__ import annotations

import pytest
import xarray as xr

from specufex_dask.cli import main
from specufex_dask.cli.config import ConfigError, load_config

WORKFLOW_YAML = """
paths:
  key: geysers
  projectPath: /data/geysers/
dataParams:
  station: GDXB
  channel_ID: 0
  sampling_rate: 100
sgramParams:
  sgramType: spectrogram
  fmin: 8
  fmax: 20
  winLen_Sec: 1
  fracOverlap: 0.25
  nfft: 2000
specufexParams:
  N_patterns_NMF: 40
  nmf_batchsz: 16
  nmf_nbatch: 120
  N_states_HMM: 8
  hmm_batchsz: 16
  hmm_nbatch: 90
clusterParams:
  minK: 2
  maxK: 5
  PVE: 80
  topF: 3
"""


def test_every_key_is_mapped_or_named(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(WORKFLOW_YAML)
    lines: list[str] = []
    config = load_config(path, report=lines.append)
    assert (config.nmf.num_pat, config.nmf.batch_size, config.nmf.steps) == (40, 16, 120)
    assert (config.hmm.num_state, config.hmm.steps) == (8, 90)
    spectrograms = config.spectrograms
    assert (spectrograms.fs, spectrograms.fmin, spectrograms.fmax) == (100.0, 8.0, 20.0)
    assert (spectrograms.window_s, spectrograms.overlap, spectrograms.nfft) == (1.0, 0.25, 2000)
    assert config.clustering.n_clusters == [2, 3, 4, 5]
    assert config.clustering.pca_variance == 0.8  # written as a percentage
    # One line per key of the file (the paths section as one), each naming the key.
    keys = ["paths", "dataParams.station", "dataParams.channel_ID", "dataParams.sampling_rate"]
    keys += [f"sgramParams.{k}" for k in ("sgramType", "fmin", "fmax", "winLen_Sec")]
    keys += ["sgramParams.fracOverlap", "sgramParams.nfft"]
    keys += [f"specufexParams.{k}" for k in ("N_patterns_NMF", "nmf_batchsz", "nmf_nbatch")]
    keys += [f"specufexParams.{k}" for k in ("N_states_HMM", "hmm_batchsz", "hmm_nbatch")]
    keys += [f"clusterParams.{k}" for k in ("minK", "maxK", "PVE", "topF")]
    assert len(lines) == len(keys)
    for line, key in zip(lines, keys, strict=True):
        assert line.startswith(f"{path}: ") and key in line
    assert f"{path}: sgramParams.winLen_Sec = 1 -> spectrograms.window_s" in lines
    assert any(line.startswith(f"{path}: not mapped: clusterParams.topF") for line in lines)
    assert any(line.startswith(f"{path}: not mapped: dataParams.station") for line in lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("specufexParams: {nmf_batchsz: 16, hmm_batchsz: 8}", "hmm_batchsz 8 differs"),
        ("clusterParams: {minK: 2}", "minK and maxK go together"),
        ("specufexParams: {N_states_HMM: 0}", "num_state"),
    ],
)
def test_bad_workflow_values_are_named(tmp_path, text, message):
    path = tmp_path / "config.yml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_the_cluster_command_reads_a_workflow_file(golden_dir, tmp_path, capsys):
    archive = tmp_path / "clustered.zarr"
    assert main(["import-h5", str(golden_dir / "SpecUFEx_test1.h5"), str(archive)]) == 0
    path = tmp_path / "config.yml"
    path.write_text("clusterParams:\n  minK: 2\n  maxK: 4\n  PVE: 0.9\n")
    assert main(["cluster", str(archive), "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}: clusterParams.minK = 2 -> clustering.n_clusters (sweep 2-4)" in err
    labels = xr.open_zarr(archive)["cluster"]
    assert labels.attrs["swept_n_clusters"] == [2, 3, 4]
    assert labels.attrs["pca_variance"] == 0.9
