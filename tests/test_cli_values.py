"""Every command-line value means what it says, and the guards of issue 19.5 and 19.10.

* Each flag of ``fit``, ``run``, ``transform``, ``cluster``, ``spectrograms`` and
  ``import-h5`` (the ingests) reaches what the command builds (the pipeline's parameters, the Dask
  cluster's connect options, k-means' arguments, the spectrogram parameters), and a
  ``none`` overrides a value of the ``--config`` file with None.
* A value of a SpecUFEx parameter that the command line refuses is refused by
  ``SpecUFEx`` with the same message, before any work.
* ``cluster`` refuses a read-only archive as ``fit`` does; a fit too large for the
  memory it has is refused up front with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from specufex_dask.cli import Reporter, build_parser, effective_config, main, make_pipeline
from specufex_dask.cli.archive import write_event_variable
from specufex_dask.cli.base import chunk_events, dask_client, spectrogram_parameters
from specufex_dask.cli.cluster import clustering_arguments
from specufex_dask.cli.config import FIT_KEYS
from specufex_dask.cli.fit import with_run_settings
from specufex_dask.cli.options import (
    CLUSTERING_FLAGS,
    DASK_FLAGS,
    FIT_OPTIONS,
    SPECTROGRAM_FLAGS,
    TRANSFORM_OPTIONS,
)
from specufex_dask.inference.params import PIPELINE_PARAMETERS
from specufex_dask.io import archive
from specufex_dask.io.archive import ArchiveError
from specufex_dask.parallel import clusters, workersetup
from specufex_dask.parallel.executor import no_worker_timeout
from specufex_dask.pipeline import SpecUFEx, fit_memory

COMMANDS = {
    "fit": (["x.zarr"], [flag for _, group in FIT_OPTIONS for flag in group]),
    "run": (["x.zarr"], [flag for _, group in FIT_OPTIONS for flag in group]),
    "transform": (["x.zarr"], [flag for _, group in TRANSFORM_OPTIONS for flag in group]),
    "cluster": (["x.zarr"], list(CLUSTERING_FLAGS)),
    "spectrograms": (["w.mseed", "out.zarr"], [*SPECTROGRAM_FLAGS, *DASK_FLAGS]),
    "import-h5": (
        ["in.h5", "out.zarr"],
        [flag for flag in SPECTROGRAM_FLAGS if flag.key == "events_per_chunk"],
    ),
}
"""Each command: its positional arguments and the configuration flags it takes."""

# dest: (the flag's value on the command line, the value the command must pass on);
# None for the text is the off form of an on/off pair
VALUES = {
    "nmf.num_pat": ("40", 40),
    "nmf.steps": ("300", 300),
    "nmf.batch_size": ("32", 32),
    "nmf.tol": ("0.01", 0.01),
    "hmm.num_state": ("5", 5),
    "hmm.steps": ("9", 9),
    "fit.compat": ("specufex", "specufex"),
    "fit.random_state": ("8", 8),
    "fit.checkpoint_every": ("3", 3),
    "dask.scheduler": ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    "dask.kind": ("slurm", "slurm"),
    "dask.workers": ("3", 3),
    "dask.threads_per_worker": ("2", 2),
    "dask.memory_limit": ("4GB", "4GB"),
    "dask.dashboard_address": ("127.0.0.1:0", "127.0.0.1:0"),
    "dask.no_worker_timeout": ("30", 30.0),
    "clustering.n_clusters": ("4", 4),
    "clustering.pca_components": ("5", 5),
    "clustering.random_state": ("2", 2),
    "clustering.n_init": ("7", 7),
    "clustering.transform": ("sqrt", "sqrt"),
    "clustering.method": ("ward", "ward"),
    "clustering.n_neighbors": ("12", 12),
    "clustering.pca_variance": ("0.8", 0.8),
    "clustering.scale": ("", True),  # "": the bare on-flag
    "clustering.silhouette_sample": ("300", 300),
    "spectrograms.fs": ("100", 100.0),
    "spectrograms.window_s": ("2", 2.0),
    "spectrograms.overlap": ("0.5", 0.5),
    "spectrograms.nfft": ("512", 512),
    "spectrograms.fmin": ("1", 1.0),
    "spectrograms.fmax": ("20", 20.0),
    "spectrograms.normalize_waveform": (None, False),
    "spectrograms.n_samples": ("2000", 2000),
    "spectrograms.detrend": ("linear", "linear"),
    "spectrograms.taper": ("0.05", 0.05),
    "spectrograms.bandpass_fmin": ("1", 1.0),
    "spectrograms.bandpass_fmax": ("20", 20.0),
    "spectrograms.bandpass_corners": ("2", 2),
    "spectrograms.remove_response": ("inventory.xml", "inventory.xml"),
    "spectrograms.response_output": ("DISP", "DISP"),
    "spectrograms.events_per_chunk": ("16", 16),
}
# A --config file with a value (not None) for every key below; "none" (or "auto")
# must set it back
CONFIG_FILE = """
nmf: {tol: 0.01, steps: 70, batch_size: 16}
hmm: {steps: 80}
clustering: {pca_components: 3}
spectrograms: {fs: 50, nfft: 256, fmin: 2, fmax: 10, n_samples: 100, events_per_chunk: 4}
dask: {workers: 2, threads_per_worker: 1, memory_limit: 1GB}
"""
NONE_VALUES = {
    "nmf.tol": ("none", None),
    "nmf.steps": ("auto", None),
    "nmf.batch_size": ("auto", "auto"),
    "hmm.steps": ("none", None),
    "clustering.pca_components": ("none", None),
    "spectrograms.fs": ("none", None),
    "spectrograms.nfft": ("none", None),
    "spectrograms.fmin": ("none", None),
    "spectrograms.fmax": ("none", None),
    "spectrograms.n_samples": ("none", None),
    "spectrograms.events_per_chunk": ("none", None),
    "dask.workers": ("none", None),
    "dask.threads_per_worker": ("none", None),
    "dask.memory_limit": ("none", None),
}


def _dask_options(config, monkeypatch) -> dict:
    """The keyword arguments the command's Dask client passes to ``connect``."""
    seen: dict = {}

    @contextlib.contextmanager
    def connect(**options):
        seen.update(options)
        yield SimpleNamespace(client=None, dashboard_link="-")

    monkeypatch.setattr(clusters, "connect", connect)
    monkeypatch.setattr(
        workersetup, "quiet_task_failures", lambda client: contextlib.nullcontext()
    )
    with dask_client(config, Reporter(quiet=True)):
        # what every pass of the command waits without workers
        seen["no_worker_timeout"] = no_worker_timeout()
    return seen


def built(command: str, config, monkeypatch) -> dict:
    """What ``command`` passes on, by configuration key (None: left to the default)."""
    values: dict = {}
    dask = _dask_options(config, monkeypatch) if command not in ("cluster", "import-h5") else {}
    for flag in DASK_FLAGS:
        values[flag.dest] = dask.get("cluster" if flag.key == "kind" else flag.key)
    if command in ("fit", "run"):
        params = make_pipeline(config, False, Reporter(quiet=True)).get_params()
        values.update({key: params[name] for key, name in FIT_KEYS.items()})
    if command == "transform":
        model = with_run_settings(SpecUFEx(), config, Reporter(quiet=True), None)
        values["dask.no_worker_timeout"] = model.get_params()["no_worker_timeout"]
    if command == "cluster":
        arguments = clustering_arguments(config)
        values.update({f"clustering.{key}": value for key, value in arguments.items()})
    if command == "spectrograms":
        parameters = dataclasses.asdict(spectrogram_parameters(config))
        values.update({f"spectrograms.{key}": value for key, value in parameters.items()})
    if command in ("spectrograms", "import-h5"):
        values["spectrograms.events_per_chunk"] = chunk_events(config).get("chunk_events")
    return values


def _argv(command: str, flag, text: str | None) -> list[str]:
    positional, _ = COMMANDS[command]
    if text is None:
        return [command, *positional, "--no-" + flag.names[0][2:]]
    if text == "":
        return [command, *positional, flag.names[0]]
    return [command, *positional, flag.names[0], text]


def _cases(values: dict) -> list:
    return [
        pytest.param(command, flag, *values[flag.dest], id=f"{command}-{flag.names[0]}")
        for command, (_, flags) in COMMANDS.items()
        for flag in flags
        if flag.dest in values
    ]


def test_every_flag_of_the_commands_is_tried() -> None:
    """The table above covers every configuration flag the parser gives the commands."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command, (_, flags) in COMMANDS.items():
        parsed = {a.dest for a in subparsers.choices[command]._actions if "." in a.dest}
        assert parsed == {flag.dest for flag in flags}, command
        assert parsed <= set(VALUES), command


@pytest.mark.parametrize(("command", "flag", "text", "expected"), _cases(VALUES))
def test_every_flag_reaches_what_the_command_builds(
    command: str, flag, text, expected, monkeypatch
) -> None:
    positional, _ = COMMANDS[command]
    default = effective_config(build_parser().parse_args([command, *positional]))
    assert built(command, default, monkeypatch)[flag.dest] != expected  # the flag changes it
    config = effective_config(build_parser().parse_args(_argv(command, flag, text)))
    assert built(command, config, monkeypatch)[flag.dest] == expected


@pytest.mark.parametrize(("command", "flag", "text", "expected"), _cases(NONE_VALUES))
def test_none_on_the_command_line_overrides_the_configuration_file(
    command: str, flag, text, expected, tmp_path, monkeypatch
) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(CONFIG_FILE)
    positional, _ = COMMANDS[command]
    base = [command, *positional, "--config", str(config_file)]
    from_file = built(command, effective_config(build_parser().parse_args(base)), monkeypatch)
    assert from_file[flag.dest] != expected  # the file's value differs
    argv = [*base, flag.names[0], text]
    config = effective_config(build_parser().parse_args(argv))
    assert built(command, config, monkeypatch)[flag.dest] == expected


# ------------------------------------------------ the same rules and messages everywhere

FIT_FLAGS = {flag.dest: flag for _, group in FIT_OPTIONS for flag in group}


def _parsed(flag, value) -> list:
    """``[value as the flag parses str(value)]``, or [] when the parser refuses it (a
    usage error, exit 2: not a value the configuration sees)."""
    try:
        parsed = flag.type(str(value))
    except (ValueError, argparse.ArgumentTypeError):
        return []
    return [] if flag.choices is not None and parsed not in flag.choices else [parsed]


REFUSED = [
    pytest.param(key, name, str(value), parsed, id=f"{key}={value!r}")
    for key, name in FIT_KEYS.items()
    for value in PIPELINE_PARAMETERS[name].rule.invalid
    for parsed in _parsed(FIT_FLAGS[key], value)
]


def test_every_fit_flag_has_a_value_the_table_refuses() -> None:
    tried = {key for key, *_ in (case.values for case in REFUSED)}
    # compat: argparse's choices refuse the table's invalid value first
    assert tried == set(FIT_KEYS) - {"fit.compat"}


@pytest.mark.parametrize(("key", "name", "text", "value"), REFUSED)
def test_the_api_refuses_what_the_command_line_refuses_with_the_same_message(
    key: str, name: str, text: str, value, capsys
) -> None:
    code = main(["fit", "x.zarr", FIT_FLAGS[key].names[0], text])
    err = capsys.readouterr().err.strip()
    assert code == 1
    steps: list = []
    model = SpecUFEx(
        num_pat=3, num_state=2, nmf_steps=2, hmm_steps=2, client=False,
        progress=lambda stage, info: steps.append(stage),
    )  # fmt: skip
    data = xr.DataArray(np.ones((4, 5, 6)), dims=("event", "frequency", "time"))
    with pytest.raises(ValueError) as error:
        model.set_params(**{name: value}).fit(data)
    assert steps == [] and not hasattr(model, "nmf_")
    assert str(error.value) == PIPELINE_PARAMETERS[name].rule.message(name, value)
    assert err == (
        f"specufex-dask: error: invalid value for '{key}': {error.value} (in command-line flags)"
    )


# ----------------------------------------------------------------------- read-only archives

N_EVENTS, N_FREQUENCIES, N_TIMES = 32, 30, 20


def _write(path: Path) -> str:
    rng = np.random.default_rng(11)
    values = rng.gamma(1.0, 2.0, size=(N_EVENTS, N_FREQUENCIES, N_TIMES))
    events = [f"ev{i:03d}" for i in range(N_EVENTS)]
    archive.write_spectrograms(
        path, values, events, np.linspace(1.0, 30.0, N_FREQUENCIES), np.arange(N_TIMES) * 0.5,
        chunk_events=8,
    )  # fmt: skip
    return str(path)


def _with_fingerprints(path: Path) -> str:
    """An archive with planted fingerprints (rows of three clear groups of events)."""
    _write(path)
    rng = np.random.default_rng(12)
    centres = rng.dirichlet(np.ones(9), size=3)
    rows = centres[np.arange(N_EVENTS) % 3] + rng.normal(0, 0.01, size=(N_EVENTS, 9))
    fingerprint = xr.DataArray(
        np.abs(rows).reshape(N_EVENTS, 3, 3), dims=("event", "state", "next_state"),
        name="fingerprint",
    )  # fmt: skip
    write_event_variable(path, fingerprint)
    return str(path)


def _files(folder: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _chmod_tree(folder: str, writable: bool) -> None:
    for item in [Path(folder), *Path(folder).rglob("*")]:
        mode = item.stat().st_mode
        bits = stat.S_IWUSR if writable else 0
        item.chmod((mode & ~0o222) | bits)


def test_cluster_refuses_a_read_only_archive_as_fit_does(tmp_path: Path, capsys) -> None:
    """``chmod -R a-w``: the write bits are what ``fit`` reads (root may write anyway)."""
    path = _with_fingerprints(tmp_path / "events.zarr")
    _chmod_tree(path, writable=False)
    before = _files(path)
    try:
        code = main(["cluster", path, "--n-clusters", "3"])
        err = capsys.readouterr().err.strip()
        expected = f"archive {path} is read-only: cannot write the cluster labels"
        assert (code, err) == (1, f"specufex-dask: error: {expected}")
        assert _files(path) == before
        # the check fit makes (engine.require_writable): fit's message for the model
        with pytest.raises(ArchiveError, match=f"archive {path} is read-only: cannot write"):
            SpecUFEx(client=False).fit(path)
    finally:
        _chmod_tree(path, writable=True)
    # writable again, the same command writes the labels of the three planted groups
    assert main(["cluster", path, "--n-clusters", "3", "--transform", "none"]) == 0
    labels = xr.open_zarr(path)["cluster"].values
    assert len(set(zip(np.arange(N_EVENTS) % 3, labels, strict=True))) == 3


# ----------------------------------------------------------------------------- memory


def test_a_fit_too_large_for_the_workers_memory_limit_is_refused_with_the_numbers(
    tmp_path: Path,
) -> None:
    import distributed

    path = _write(tmp_path / "events.zarr")
    num_pat = 20_000
    _, task = fit_memory((N_EVENTS, N_FREQUENCIES, N_TIMES), num_pat, 15, 8, "float64")
    limit = 64_000_000
    assert task > limit
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
        host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=limit,
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        (address,) = client.scheduler_info()["workers"]
        model = SpecUFEx(num_pat=num_pat, batch_size=8, client=client)
        with pytest.raises(ValueError) as error:
            model.fit(path)
    message = str(error.value)
    assert message.startswith(f"num_pat={num_pat} and num_state=15 on {N_FREQUENCIES} frequencies")
    assert f"({task} bytes) per task" in message
    assert f"worker {address} has a memory limit of" in message and f"({limit} bytes)" in message
    assert not (Path(path) / archive.MODEL_GROUP).exists()


def test_an_in_process_fit_too_large_for_the_memory_available_is_refused(
    tmp_path: Path, monkeypatch
) -> None:
    from specufex_dask import pipeline

    path = _write(tmp_path / "events.zarr")
    shape = (N_EVENTS, N_FREQUENCIES, N_TIMES)
    # far beyond any machine: refused before the model (8 x 30 x 1e9 bytes for W1) exists
    huge = 10**9
    with pytest.raises(ValueError, match=rf"num_pat={huge} .* are available: lower num_pat"):
        SpecUFEx(num_pat=huge, client=False).fit(path)
    # a small fit against a planted shortage: the numbers are the estimate's
    driver, task = fit_memory(shape, 8, 3, 8, "float64")
    monkeypatch.setattr(pipeline, "available_memory", lambda: driver + task - 1)
    with pytest.raises(ValueError) as error:
        SpecUFEx(num_pat=8, num_state=3, batch_size=8, client=False).fit(path)
    assert f"({driver + task} bytes) in this process" in str(error.value)
    assert f"({driver + task - 1} bytes) are available" in str(error.value)
    assert not (Path(path) / archive.MODEL_GROUP).exists()
    monkeypatch.setattr(pipeline, "available_memory", lambda: driver + task)
    model = SpecUFEx(num_pat=8, num_state=3, batch_size=8, nmf_steps=2, hmm_steps=2, client=False)
    assert model.fit(path).n_steps_ == {"nmf": 2, "hmm": 2}


def test_the_task_estimate_grows_with_the_patterns_and_the_batch() -> None:
    """An independent count for float32: the task's K x D arrays (L in float64 and
    float32, exp(L) and its transpose, the float64 statistics, 16 events' counts) and
    the events' spectrograms and activations."""
    D, K, M = 30, 100, 20
    driver, task = fit_memory((500, D, M), K, 4, 64, "float32")
    assert task == D * K * (8 + 4 + 4 + 4 + 8) + 16 * 4 * (D * K + D * M + K * M)
    assert driver == 8 * (7 * D * K + 4 * 4 * K)
    assert fit_memory((500, D, M), K, 4, 2, "float32")[1] < task
