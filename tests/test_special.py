"""The vectorised digamma against SciPy's over the whole positive range."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from specufex_dask.kernels.special import digamma


def test_digamma_matches_scipy_over_the_positive_range(rng: np.random.Generator) -> None:
    x = np.concatenate(
        [
            rng.gamma(0.05, 1.0, 20_000) + 1e-300,  # Dirichlet pseudo-counts near zero
            rng.uniform(1e-6, 1.0, 20_000),
            rng.uniform(1.0, 30.0, 20_000),  # around the shift and the root at 1.46
            rng.uniform(30.0, 1e6, 20_000),
            10.0 ** rng.uniform(6.0, 300.0, 5_000),  # where the fraction would overflow
        ]
    )
    expected = special.digamma(x)
    error = np.abs(digamma(x) - expected) / np.maximum(np.abs(expected), 1.0)
    assert error.max() < 4e-15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_digamma_keeps_shape_and_float_dtype(rng, dtype) -> None:
    x = rng.gamma(2.0, 1.0, size=(3, 4, 5)).astype(dtype)
    result = digamma(x)
    assert result.dtype == dtype
    np.testing.assert_allclose(result, special.digamma(x.astype(np.float64)), rtol=1e-6)


def test_digamma_propagates_nan_and_gives_float64_for_integers() -> None:
    result = digamma(np.array([np.nan, 1, 2]))
    assert np.isnan(result[0])
    np.testing.assert_allclose(result[1:], [-np.euler_gamma, 1.0 - np.euler_gamma], rtol=1e-15)
    assert digamma(np.array([3])).dtype == np.float64


@pytest.mark.parametrize("out_dtype", [np.float64, np.float32])
def test_digamma_into_out_equals_the_returned_values(rng, out_dtype) -> None:
    x = rng.gamma(0.5, 2.0, size=(6, 7))
    out = np.full(x.shape, np.nan, dtype=out_dtype)
    assert digamma(x, out=out) is out
    np.testing.assert_array_equal(out, digamma(x).astype(out_dtype))
    # a transposed view is written through, not bypassed
    view = np.full((7, 6), np.nan).T
    digamma(x, out=view)
    np.testing.assert_array_equal(view, digamma(x))


def test_digamma_in_place_over_its_input(rng) -> None:
    x = rng.gamma(0.5, 2.0, size=50)
    expected = special.digamma(x)
    digamma(x, out=x)
    np.testing.assert_allclose(x, expected, rtol=4e-15, atol=4e-15)


def test_compiled_kernels_cache_outside_the_package(tmp_path) -> None:
    """Numba's cache files must not land in the installed package (pip does not know
    them, and the folder they leave behind shadows an editable install)."""
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    environment["XDG_CACHE_HOME"] = str(tmp_path)
    script = (
        "import numpy as np\n"
        "from specufex_dask.kernels.special import digamma\n"
        "import numba\n"
        "digamma(np.array([0.5, 2.0]))\n"
        "print(numba.config.CACHE_DIR)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    cache = tmp_path / "specufex-dask" / "numba"
    assert result.stdout.strip() == str(cache)
    assert any(cache.rglob("*special*.nbi")), sorted(p.name for p in cache.rglob("*"))
