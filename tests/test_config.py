"""Tests of specufex_dask.cli.config: YAML sections, flag overrides and validation."""

from __future__ import annotations

import json

import pytest

from specufex_dask.cli.config import (
    ClusterConfig,
    Config,
    ConfigError,
    NMFConfig,
    config_from_mapping,
    config_to_json,
    config_to_yaml,
    load_config,
    merge_config,
)

FULL_YAML = """\
spectrograms:
  fs: 100
  window_s: 1.0
  overlap: 0.25
  nfft: 2000
  fmin: 8
  fmax: 20
  normalize_waveform: true
  n_samples: 2000
nmf:
  num_pat: 40
  steps: 30
  batch_size: 1
  tol: null
hmm:
  num_state: 12
  steps: 25
fit:
  compat: specufex
  random_state: 7
clustering:
  n_clusters: 4
  pca_components: 3
plot:
  events: ["10633", "13436"]
cluster:
  kind: slurm
  workers: 4
  memory_limit: 8GB
  jobqueue: {queue: normal, cores: 8, walltime: "01:00:00"}
  security: {}
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_match_the_dataclasses():
    config = Config()
    assert config.nmf == NMFConfig()
    assert config.spectrograms.nfft is None
    assert config.cluster.scheduler is None
    assert config.cluster.jobqueue == {}


def test_load_full_file(tmp_path):
    config = load_config(write(tmp_path, FULL_YAML))
    assert config.spectrograms.fs == 100.0
    assert isinstance(config.spectrograms.fs, float)  # YAML int promoted to float
    assert config.spectrograms.fmin == 8.0
    assert config.nmf.num_pat == 40
    assert config.nmf.tol is None
    assert config.hmm.num_state == 12
    assert config.fit.compat == "specufex"
    assert config.clustering.pca_components == 3
    assert config.plot.events == ["10633", "13436"]
    assert config.cluster.kind == "slurm"
    assert config.cluster.jobqueue == {"queue": "normal", "cores": 8, "walltime": "01:00:00"}
    # Sections the file does not mention keep their defaults.
    assert config.fit.checkpoint_every == Config().fit.checkpoint_every


def test_flags_override_file_and_keep_the_rest(tmp_path):
    from_file = load_config(write(tmp_path, FULL_YAML))
    merged = merge_config(from_file, {"nmf": {"num_pat": 9}, "hmm": {}}, source="flags")
    assert merged.nmf.num_pat == 9
    assert merged.nmf.steps == 30  # from the file
    assert merged.hmm.num_state == 12
    assert from_file.nmf.num_pat == 40  # frozen: the original is untouched


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nmf:\n  num_pattern: 3\n", r"unknown key 'nmf\.num_pattern' in .*config\.yaml"),
        ("hmmm:\n  num_state: 3\n", r"unknown section 'hmmm'"),
        # SpecUFEx's parameters: the rule of the parameter table, SpecUFEx's message
        (
            "nmf:\n  num_pat: many\n",
            r"'nmf\.num_pat': num_pat must be a positive integer, got 'many'",
        ),
        ("nmf:\n  num_pat: 7.5\n", r"'nmf\.num_pat': num_pat must be a positive integer, got 7.5"),
        (
            "nmf:\n  num_pat: true\n",
            r"'nmf\.num_pat': num_pat must be a positive integer, got True",
        ),
        ("nmf:\n  tol: .inf\n", r"'nmf\.tol': tol must be a nonnegative number or None, got inf"),
        ("spectrograms:\n  normalize_waveform: 1\n", r"'spectrograms\.normalize_waveform'"),
        ("spectrograms:\n  overlap: 1.0\n", r"'spectrograms' settings: overlap must be"),
        ("spectrograms:\n  fmin: 30\n  fmax: 20\n", r"'spectrograms' settings: fmin 30"),
        ("spectrograms:\n  events_per_chunk: 0\n", r"'spectrograms\.events_per_chunk'"),
        ("fit:\n  compat: matlab\n", r"'fit\.compat'.*'default', 'specufex'"),
        ("clustering:\n  n_neighbors: 1\n", r"'clustering\.n_neighbors'.*>= 2"),
        ("clustering:\n  method: dbscan\n", r"'clustering\.method'.*'spectral', 'kmeans'"),
        ("cluster:\n  kind: sge\n", r"'cluster\.kind'"),
        ("cluster:\n  jobqueue: [1, 2]\n", r"wrong type for 'cluster\.jobqueue'.*mapping"),
        ("cluster:\n  scheduler: tcp://h:8786\n  kind: pbs\n", r"'dask\.scheduler'.*kind"),
        ("nmf: 3\n", r"section 'nmf'.*must be a mapping"),
        ("- a\n- b\n", r"must be a mapping of sections"),
        ("nmf: [\n", r"not valid YAML"),
        ("hmm:\n  num_state: 0\n", r"'hmm\.num_state'.*positive integer, got 0"),
        ("plot:\n  events: [1, x]\n", r"'plot\.events\[0\]'"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*nowhere\.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_comma_separated_events_become_a_list():
    config = merge_config(Config(), {"plot": {"events": "a,b,,c"}})
    assert config.plot.events == ["a", "b", "c"]


def test_yaml_round_trip(tmp_path):
    config = load_config(write(tmp_path, FULL_YAML))
    assert load_config(write(tmp_path, config_to_yaml(config), "again.yaml")) == config


def test_json_holds_the_chosen_sections():
    config = config_from_mapping({"nmf": {"num_pat": 11}})
    document = json.loads(config_to_json(config, ["nmf", "hmm"]))
    assert set(document) == {"nmf", "hmm"}
    assert document["nmf"]["num_pat"] == 11
    assert document["hmm"]["num_state"] == Config().hmm.num_state


def test_cluster_config_is_frozen():
    with pytest.raises(AttributeError):
        ClusterConfig().workers = 3  # type: ignore[misc]


def test_file_over_a_base_keeps_the_base_where_the_file_is_silent(tmp_path):
    base = merge_config(Config(), {"nmf": {"num_pat": 75, "steps": 40}, "hmm": {"steps": 40}})
    config = load_config(write(tmp_path, "nmf:\n  steps: 5\n"), base=base)
    assert (config.nmf.num_pat, config.nmf.steps, config.hmm.steps) == (75, 5, 40)
    assert load_config(write(tmp_path, "", "empty.yaml"), base=base) == base


def test_spectrogram_settings_are_the_preprocessing_parameters():
    from specufex_dask.ingest.preprocessing import SpectrogramParameters

    config = merge_config(Config(), {"spectrograms": {"fs": 100, "nfft": 2000, "fmin": 8}})
    parameters = SpectrogramParameters(**config.spectrograms.parameters())
    assert (parameters.fs, parameters.nfft, parameters.fmin, parameters.fmax) == (
        100.0,
        2000,
        8.0,
        None,
    )


def test_fit_budgets_default_to_automatic_and_tol_agrees_with_the_pipeline():
    import inspect

    from specufex_dask.pipeline import SpecUFEx

    config = Config()
    assert (config.nmf.steps, config.hmm.steps, config.nmf.tol) == (None, None, 1e-4)
    defaults = inspect.signature(SpecUFEx).parameters
    assert defaults["tol"].default == config.nmf.tol
    assert defaults["nmf_steps"].default is None and defaults["hmm_steps"].default is None


def test_step_budgets_are_a_positive_number_or_null(tmp_path):
    config = load_config(write(tmp_path, "nmf:\n  steps: null\nhmm:\n  steps: 500\n"))
    assert (config.nmf.steps, config.hmm.steps) == (None, 500)
    for section in ("nmf", "hmm"):
        with pytest.raises(ConfigError, match=rf"'{section}\.steps'.*integer or None, got 0"):
            load_config(write(tmp_path, f"{section}:\n  steps: 0\n"))
