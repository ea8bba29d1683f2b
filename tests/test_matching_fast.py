"""The sparse, certified assignment solver gives the dense optimum (SciPy's linear_sum_assignment)."""

import logging

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import certified_assignment as assignment
from certified_assignment import max_similarity_assignment, max_similarity_assignment_features


def optimum(sims: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(sims.astype(np.float64), maximize=True)
    return float(sims[rows, cols].astype(np.float64).sum())


def check(sims: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    assert len(rows) == min(sims.shape)
    assert len(np.unique(rows)) == len(rows) and len(np.unique(cols)) == len(cols)
    assert np.all(np.diff(rows) > 0)
    total = float(sims[rows, cols].astype(np.float64).sum())
    assert total == pytest.approx(optimum(sims), rel=1e-12, abs=1e-7)


def near_degenerate_features(n: int, rng, dim: int = 96, noise: float = 0.04, mean=None) -> np.ndarray:
    """Like real ViT features: one shared mean direction plus small noise, normalised (cosines all close)."""
    mean = rng.normal(size=dim) if mean is None else mean
    f = mean / np.linalg.norm(mean) + rng.normal(scale=noise, size=(n, dim))
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)


def near_degenerate(n_a: int, n_b: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=96)
    return near_degenerate_features(n_a, rng, mean=mean) @ near_degenerate_features(n_b, rng, mean=mean).T


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (60, 60), (300, 300), (120, 310), (310, 120)])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_matrices(shape, seed):
    sims = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    check(sims, *max_similarity_assignment(sims))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(400, 400), (250, 420), (420, 250)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_degenerate_matrices(shape, seed):
    sims = near_degenerate(*shape, seed)
    assert sims.std() < 0.05 * abs(sims.mean())  # the hard case: everything close together
    check(sims, *max_similarity_assignment(sims))


@pytest.mark.parametrize("shape", [(150, 150), (90, 200), (200, 90)])
@pytest.mark.parametrize("levels", [2, 5])
def test_tied_matrices(shape, levels):
    rng = np.random.default_rng(levels)
    sims = rng.integers(0, levels, shape).astype(np.float32)
    sims[: shape[0] // 3] = sims[0]  # duplicated rows: many optimal assignments
    check(sims, *max_similarity_assignment(sims))


def test_constant_matrix():
    sims = np.full((40, 70), 0.5, dtype=np.float32)
    check(sims, *max_similarity_assignment(sims))


@pytest.mark.parametrize("shape", [(300, 300), (200, 330), (330, 200)])
def test_features_path_never_materialises_the_matrix(shape, monkeypatch):
    rng = np.random.default_rng(3)
    mean = rng.normal(size=96)
    fa, fb = (near_degenerate_features(n, rng, mean=mean) for n in shape)
    monkeypatch.setattr(assignment, "BLOCK_ENTRIES", 64 * max(shape))  # several blocks of rows
    rows, cols = max_similarity_assignment_features(torch.from_numpy(fa), torch.from_numpy(fb))
    sims = (torch.from_numpy(fa) @ torch.from_numpy(fb).T).numpy()
    check(sims, rows, cols)


def trap(n: int, seed: int) -> np.ndarray:
    """Every row's best few columns are decoys shared by all rows; the optimum uses each row's own
    column, ranked just below the decoys, so the top-k candidate set alone cannot contain it.
    """
    rng = np.random.default_rng(seed)
    sims = rng.uniform(0.0, 0.1, size=(n, n)).astype(np.float32)
    decoys = np.arange(4)
    sims[:, decoys] = 1.0 + rng.uniform(0, 0.01, size=(n, len(decoys)))
    own = rng.permutation(n)
    sims[np.arange(n), own] = np.maximum(sims[np.arange(n), own], 0.9)
    return sims


@pytest.mark.parametrize("n", [30, 100])
def test_certificate_repairs_a_pruned_optimum(n, monkeypatch):
    sims = trap(n, n)
    # with the centring switched off and k = 2, the candidate set holds only decoys and the diagonal
    monkeypatch.setattr(assignment, "_initial_candidates", lambda s, k: _plain_top(sims, k))
    keys, values = _plain_top(sims, 2)
    r, c = np.divmod(keys, n)
    pruned_cols = assignment._solve_sparse(r, c, values, sims.shape)
    pruned_total = sims[np.arange(n), pruned_cols].astype(np.float64).sum()
    assert pruned_total < optimum(sims) - 1.0  # pruning alone is badly wrong here
    rounds = []
    original = assignment._violations
    monkeypatch.setattr(assignment, "_violations", lambda *a: rounds.append(1) or original(*a))
    check(sims, *max_similarity_assignment(sims, k=2, max_rounds=50))
    assert len(rounds) >= 2  # the certificate rejected the first solution and the loop grew the set


def _plain_top(sims: np.ndarray, k: int):
    n_rows, n_cols = sims.shape
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    rows = np.concatenate([np.repeat(np.arange(n_rows), k), np.arange(n_rows)])
    cols = np.concatenate([top.ravel(), np.arange(n_rows)])
    keys, first = np.unique(rows * n_cols + cols, return_index=True)
    return keys, sims[rows, cols].astype(np.float64)[first]


def test_falls_back_to_the_dense_solver_when_certification_keeps_failing(caplog):
    sims = trap(60, 1)
    with caplog.at_level(logging.INFO, logger="dinoscope"):
        rows, cols = max_similarity_assignment(sims, k=1, max_rounds=1)
    assert "dense" in caplog.text
    check(sims, rows, cols)


def test_certificate_accepts_only_optimal_potentials():
    """The certificate checks every pair: a sparse solution that is optimal only on its candidates fails."""
    sims = trap(40, 2)
    keys, values = _plain_top(sims, 2)
    r, c = np.divmod(keys, 40)
    match = assignment._solve_sparse(r, c, values, sims.shape)
    potentials = assignment._potentials(r, c, values, match, 40)
    source = assignment._Similarities(matrix=torch.from_numpy(sims))
    found, _ = assignment._violations(source, keys, match, potentials, 2)
    assert len(found) > 0 and not np.isin(found, keys).any()
    # with every pair a candidate the sparse optimum is the optimum, and its potentials certify it
    keys = np.arange(40 * 40)
    values = sims.reshape(-1).astype(np.float64)
    r, c = np.divmod(keys, 40)
    match = assignment._solve_sparse(r, c, values, sims.shape)
    potentials = assignment._potentials(r, c, values, match, 40)
    found, _ = assignment._violations(source, keys, match, potentials, 2)
    assert len(found) == 0
