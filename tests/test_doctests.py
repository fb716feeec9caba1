"""The ``>>>`` examples in the package's docstrings run and show what the code does."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import specufex_dask

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(specufex_dask.__path__, f"{specufex_dask.__name__}.")
    # running ``python -m specufex_dask.cli`` is what importing __main__ does
    if info.name.rpartition(".")[2] != "__main__"
)


def test_modules_found():
    assert {"specufex_dask.common", "specufex_dask.io.archive"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name, tmp_path, monkeypatch):
    # examples that write an archive write it in a temporary directory
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    output: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=output.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(output)
