"""The command line's structure: one option table for fit, run and transform, the archive
as a positional argument of every command (``-o``/``--output`` still accepted where it was
used), and the configuration section ``dask`` (read under its old name ``cluster``)."""

from __future__ import annotations

import argparse
import warnings

import pytest

from specufex_dask.cli import build_parser, effective_config, main, parse_args
from specufex_dask.cli.config import Config, ConfigError, load_config, merge_config
from specufex_dask.cli.options import (
    DASK_FLAGS,
    FIT_OPTIONS,
    TRANSFORM_OPTIONS,
    describe_default,
)

COMMANDS_WITH_ARCHIVE = {
    # command: the positionals before the archive
    "spectrograms": ["a.mseed"],
    "import-h5": ["file.h5"],
    "fit": [],
    "transform": [],
    "run": [],
    "export": [],
    "info": [],
    "cluster": [],
    "plot": [],  # plot ARCHIVE OUTDIR
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def config_options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """The options that set a configuration key: dest -> what the user sees of them."""
    return {
        action.dest: (tuple(action.option_strings), action.metavar, action.choices, action.help)
        for action in parser._actions
        if "." in action.dest
    }


def table_dests(groups) -> set[str]:
    return {flag.dest for _, flags in groups for flag in flags}


# ------------------------------------------------------------------- one option table


def test_fit_and_run_take_the_same_options_from_the_one_table():
    commands = subcommands()
    fit, run = config_options(commands["fit"]), config_options(commands["run"])
    assert fit == run
    assert set(fit) == table_dests(FIT_OPTIONS)
    # the help titles too: the groups of the table, in its order
    for name in ("fit", "run"):
        titles = [group.title for group in commands[name]._action_groups]
        assert [t for t in titles if t in dict(FIT_OPTIONS)] == [t for t, _ in FIT_OPTIONS]


def test_transform_takes_the_dask_options_of_the_same_table_with_the_same_help():
    commands = subcommands()
    transform = config_options(commands["transform"])
    assert set(transform) == table_dests(TRANSFORM_OPTIONS) == {f.dest for f in DASK_FLAGS}
    assert all(group in FIT_OPTIONS for group in TRANSFORM_OPTIONS)  # one declaration
    fit = config_options(commands["fit"])
    assert transform == {dest: fit[dest] for dest in transform}
    for command in ("fit", "run", "transform"):
        assert {a.dest for a in commands[command]._actions if a.dest == "resume"} == {"resume"}


def test_the_help_shows_each_options_default_and_key_from_the_configuration():
    defaults = Config()
    commands = subcommands()
    for _, flags in FIT_OPTIONS:
        for flag in flags:
            value = getattr(getattr(defaults, flag.section), flag.key)
            shown = flag.default_text if value is None and flag.default_text else None
            shown = shown or describe_default(value)
            ending = f"(default: {shown}; config: {flag.dest})".replace("%", "%%")
            for command in ("fit", "run"):
                assert config_options(commands[command])[flag.dest][3].endswith(ending)
    # the parsed flags set the key of their table entry, in every command alike
    for command in ("fit", "run", "transform"):
        config = effective_config(parse_args([command, "x.zarr", "--workers", "3"]))
        assert config.dask.workers == 3
    config = effective_config(parse_args(["run", "x.zarr", "--num-pat", "9", "--seed", "4"]))
    assert (config.nmf.num_pat, config.fit.random_state) == (9, 4)


# ------------------------------------------------------------------- archive positional


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_ARCHIVE))
def test_every_command_takes_the_archive_as_a_positional_argument(command):
    before = COMMANDS_WITH_ARCHIVE[command]
    after = ["out"] if command in ("plot", "export") else []
    args = parse_args([command, *before, "x.zarr", *after])
    assert args.archive == "x.zarr"
    positionals = [a for a in subcommands()[command]._actions if not a.option_strings]
    assert "archive" in [a.dest for a in positionals]


def test_every_command_but_the_demo_has_an_archive():
    assert set(subcommands()) == {*COMMANDS_WITH_ARCHIVE, "demo"}


def test_spectrograms_takes_the_archive_after_its_sources():
    args = parse_args(["spectrograms", "a.mseed", "b/", "x.zarr", "--fs", "100"])
    assert (args.sources, args.archive) == (["a.mseed", "b/"], "x.zarr")
    args = parse_args(["spectrograms", "--catalog", "c.csv", "x.zarr"])
    assert (args.sources, args.archive, args.catalog) == ([], "x.zarr", "c.csv")


@pytest.mark.parametrize(
    "argv",
    [
        ["spectrograms", "a.mseed", "b/", "-o", "x.zarr"],
        ["spectrograms", "-o", "x.zarr", "a.mseed", "b/"],
        ["spectrograms", "a.mseed", "b/", "--output", "x.zarr", "--fs", "100"],
    ],
)
def test_spectrograms_still_takes_the_archive_as_o_or_output(argv):
    args = parse_args(argv)
    assert (args.sources, args.archive) == (["a.mseed", "b/"], "x.zarr")


def test_spectrograms_with_a_catalog_and_o():
    args = parse_args(["spectrograms", "--catalog", "c.csv", "-o", "x.zarr"])
    assert (args.sources, args.archive) == ([], "x.zarr")


def test_spectrograms_without_an_archive_is_a_usage_error(tmp_path, capsys):
    for argv in (["spectrograms"], ["spectrograms", "--catalog", "c.csv"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        assert exit_info.value.code == 2
    assert "no archive given" in capsys.readouterr().err
    waveform = tmp_path / "b.mseed"
    waveform.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["spectrograms", "a.mseed", str(waveform)])  # the archive left out
    assert exit_info.value.code == 2
    assert "is a file, not an archive" in capsys.readouterr().err


# ------------------------------------------------------------------- the dask section


def test_the_dask_section_sets_the_dask_cluster(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("dask:\n  workers: 2\n  memory_limit: 4GB\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = effective_config(parse_args(["fit", "x.zarr", "--config", str(path)]))
    assert (config.dask.workers, config.dask.memory_limit) == (2, "4GB")
    assert config.cluster is config.dask  # the old attribute name, for code
    assert "warning" not in capsys.readouterr().err
    assert "dask" in Config().to_dict() and "cluster" not in Config().to_dict()


def test_the_old_cluster_section_is_read_with_a_message_on_stderr(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("cluster:\n  workers: 2\n")
    config = effective_config(parse_args(["run", "x.zarr", "--config", str(path)]))
    assert config.dask.workers == 2
    err = capsys.readouterr().err
    assert err == (
        f"specufex-dask: warning: configuration section 'cluster' in {path} is now called "
        "'dask' (the Dask cluster; the clustering's settings are in 'clustering'): rename it\n"
    )
    with pytest.warns(DeprecationWarning, match="section 'cluster' in .* now called 'dask'"):
        assert load_config(path).dask.workers == 2


def test_the_message_comes_before_the_commands_own_output(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("cluster:\n  workers: 2\n")
    assert main(["info", str(tmp_path / "missing.zarr"), "--config", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("specufex-dask: warning: configuration section 'cluster'")
    assert lines[1].startswith("specufex-dask: error: archive not found")


def test_the_old_and_the_new_section_together_are_an_error():
    with pytest.raises(ConfigError, match="'cluster' and 'dask' both in .*keep one"):
        merge_config(Config(), {"cluster": {"workers": 2}, "dask": {"workers": 3}})


def test_a_bad_key_of_the_old_section_is_named_as_written(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("cluster:\n  n_clusters: 4\n")
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ConfigError, match="'cluster.n_clusters'"),
    ):
        load_config(path)
