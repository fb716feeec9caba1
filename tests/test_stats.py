"""Sufficient statistics: fixed-tree folding and per-event leaves give the same bits however
the events are split into batches, chunks and workers (ALGORITHM.md 1d)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.testing import assert_allclose

from specufex_dask.inference.stats import HMMStatistics, NMFStatistics, fold, tree_nodes, tree_root
from specufex_dask.inference.steps import (
    HMMStepParameters,
    NMFStepParameters,
    hmm_leaves,
    nmf_leaves,
)


def _random_leaves(rng: np.random.Generator, count: int) -> list[NMFStatistics]:
    # widely spread magnitudes make floating-point addition order visible in the bits
    return [
        NMFStatistics(
            rng.standard_normal((3, 2)) * 10.0 ** rng.integers(-8, 8, size=(3, 2)),
            rng.standard_normal(2) * 10.0 ** rng.integers(-8, 8, size=2),
            int(rng.integers(1, 50)),
            1,
            float(rng.standard_normal() * 10.0 ** rng.integers(-8, 8)),
        )
        for _ in range(count)
    ]


def _assert_same_bits(left: NMFStatistics, right: NMFStatistics) -> None:
    assert left.basis_counts.tobytes() == right.basis_counts.tobytes()
    assert left.activation_sum.tobytes() == right.activation_sum.tobytes()
    assert (left.n_columns, left.n_spectrograms) == (right.n_columns, right.n_spectrograms)
    assert np.float64(left.elbo).tobytes() == np.float64(right.elbo).tobytes()


def _fold_split(leaves: list, cuts: tuple[int, ...]):
    """Fold contiguous runs separately (as chunks or workers would) and assemble the root."""
    total = len(leaves)
    bounds = (0, *cuts, total)
    nodes: dict = {}
    for start, stop in itertools.pairwise(bounds):
        run_nodes = tree_nodes(leaves[start:stop], start, total)
        assert not set(run_nodes) & set(nodes)  # runs own disjoint nodes
        nodes.update(run_nodes)
    return tree_root(nodes, total)


@pytest.mark.parametrize("total", [1, 2, 5, 8, 13])
def test_every_split_gives_the_same_bits(rng: np.random.Generator, total: int) -> None:
    leaves = _random_leaves(rng, total)
    whole = fold(leaves)
    assert_allclose(whole.basis_counts, np.sum([x.basis_counts for x in leaves], axis=0))
    assert whole.n_columns == sum(x.n_columns for x in leaves)
    positions = range(1, total)
    for n_cuts in range(min(total, 4)):
        for cuts in itertools.combinations(positions, n_cuts):
            _assert_same_bits(_fold_split(leaves, cuts), whole)


def test_folding_order_is_fixed_not_sequential(rng: np.random.Generator) -> None:
    """The tree sums pairs, so it can differ in the last bits from a left-to-right sum,
    which would depend on where a chunk starts."""
    leaves = _random_leaves(rng, 13)
    whole = fold(leaves)
    sequential = leaves[0]
    for leaf in leaves[1:]:
        sequential = sequential + leaf
    assert_allclose(sequential.basis_counts, whole.basis_counts, rtol=1e-6)
    assert sequential.basis_counts.tobytes() != whole.basis_counts.tobytes()


def test_missing_leaf_and_bad_run_raise(rng: np.random.Generator) -> None:
    leaves = _random_leaves(rng, 6)
    nodes = tree_nodes(leaves[:4], 0, 6)
    with pytest.raises(ValueError, match="leaf 4 of 6 is missing"):
        tree_root(nodes, 6)
    with pytest.raises(ValueError, match="do not fit in a tree of 6"):
        tree_nodes(leaves, 3, 6)
    with pytest.raises(ValueError, match="nothing to fold"):
        fold([])


def test_statistics_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"basis_counts: shapes \(5, 3\) and \(5, 4\) differ"):
        NMFStatistics.zeros(5, 3) + NMFStatistics.zeros(5, 4)
    with pytest.raises(ValueError, match=r"emission_counts: shapes \(2, 3\) and \(4, 3\)"):
        HMMStatistics.zeros(2, 3) + HMMStatistics.zeros(4, 3)
    with pytest.raises(TypeError, match="cannot add NMFStatistics and HMMStatistics"):
        NMFStatistics.zeros(2, 3) + HMMStatistics.zeros(2, 3)


def test_zeros_is_the_identity(rng: np.random.Generator) -> None:
    leaf = _random_leaves(rng, 1)[0]
    _assert_same_bits(NMFStatistics.zeros(3, 2) + leaf, leaf)


N_EVENTS, N_FREQUENCIES, N_TIMES, N_PATTERNS, N_STATES = 11, 9, 6, 5, 3


@pytest.fixture
def nmf_parameters(rng: np.random.Generator) -> NMFStepParameters:
    return NMFStepParameters(
        log_basis=rng.normal(-1.0, 1.0, size=(N_FREQUENCIES, N_PATTERNS)),
        basis_weight=rng.gamma(2.0, 1.0, size=N_PATTERNS),
        h01=1.0 / N_PATTERNS,
        h02=1.0,
        temperature=1.3,
        n_inner=11,
    )


@pytest.fixture
def hmm_parameters(rng: np.random.Generator) -> HMMStepParameters:
    B1 = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    B2 = rng.gamma(2.0, 1.0, size=(N_STATES, N_PATTERNS))
    return HMMStepParameters(
        log_rate=np.log(B1 / B2) - 0.1,
        rate=B1 / B2,
        gain=rng.gamma(2.0, 1.0, size=N_PATTERNS),
        tau_initial=0.01 / N_STATES,
        tau_transition=0.1 / N_STATES,
    )


def _leaf_bytes(leaf) -> bytes:
    arrays = [a for a in vars(leaf).values() if isinstance(a, np.ndarray)]
    return b"".join(a.tobytes() for a in arrays) + np.float64(leaf.elbo).tobytes()


# batches containing event 4 at different positions, crossing the kernel's group size
BATCHES = [[4], list(range(N_EVENTS)), [10, 9, 8, 7, 6, 5, 4, 3, 2], [0, 1, 2, 3, 5, 6, 7, 8, 4]]


@pytest.mark.parametrize("batch", BATCHES)
def test_nmf_leaf_does_not_depend_on_its_batch(rng, nmf_parameters, batch) -> None:
    X = rng.poisson(4.0, size=(N_EVENTS, N_FREQUENCIES, N_TIMES)).astype(np.float64)
    alone = nmf_leaves(X[4:5], nmf_parameters)[0]
    within = nmf_leaves(X[batch], nmf_parameters)[batch.index(4)]
    assert _leaf_bytes(within) == _leaf_bytes(alone)
    assert alone.basis_counts.sum() > 0


@pytest.mark.parametrize("batch", BATCHES)
def test_hmm_leaf_does_not_depend_on_its_batch(rng, hmm_parameters, batch) -> None:
    V = rng.gamma(0.5, 2.0, size=(N_EVENTS, N_PATTERNS, N_TIMES))
    alone = hmm_leaves(V[4:5], hmm_parameters)[0]
    within = hmm_leaves(V[batch], hmm_parameters)[batch.index(4)]
    assert _leaf_bytes(within) == _leaf_bytes(alone)
    assert_allclose(alone.state_counts.sum(), N_TIMES, rtol=1e-12)
