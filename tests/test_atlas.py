"""CKA, token-norm statistics and attention shares, against independent NumPy computations."""

import itertools

import numpy as np
import pytest
import torch

from dinoscope import render, sheets
from dinoscope.analyses.atlas import attention_shares, cka_matrix, common_grid, linear_cka, norm_stats, pooled
from dinoscope.analyses.attention import split_row
from dinoscope.errors import InputError
from dinoscope.features import Features
from dinoscope.geometry import Geometry


def numpy_cka(x, y):
    """CKA from Gram matrices and the centring matrix: HSIC = tr(K H L H), no feature-space shortcut."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def numpy_unbiased_cka(x, y):
    """The unbiased HSIC as its U-statistic: the mean over distinct ordered quadruples (i, j, q, r) of
    k_ij l_ij + k_ij l_qr - 2 k_ij l_iq, with linear kernels of the centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    quads = np.array([t for t in itertools.permutations(range(n), 4)])
    i, j, q, r = quads.T

    def hsic(k, l):
        return np.mean(k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q])

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def rand(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(d, seed):
    q, _ = torch.linalg.qr(rand(d, d, seed))
    return q


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one_and_invariant(debiased):
    x = rand(40, 12, 0)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-9)
    y = 3.7 * x @ orthogonal(12, 1)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(1.0, abs=1e-9)
    z = rand(40, 7, 2)
    assert linear_cka(z, y, debiased=debiased) == pytest.approx(linear_cka(z, x, debiased=debiased), abs=1e-9)
    # a shift of every row changes nothing (features are centred); stretching one axis does
    assert linear_cka(x + 5.0, x, debiased=debiased) == pytest.approx(1.0, abs=1e-9)
    stretched = x * torch.linspace(0.1, 3.0, 12, dtype=torch.float64)
    assert linear_cka(x, stretched, debiased=debiased) < 0.99


@pytest.mark.parametrize("n,dx,dy,seed", [(30, 5, 9, 0), (50, 20, 3, 1), (12, 40, 40, 2)])
def test_standard_cka_matches_the_gram_matrix_definition(n, dx, dy, seed):
    x, y = rand(n, dx, seed), rand(n, dy, seed + 100)
    y[:, 0] += 2 * x[:, 0]  # some shared signal
    assert linear_cka(x, y) == pytest.approx(numpy_cka(x.numpy(), y.numpy()), abs=1e-10)
    assert linear_cka(x.float(), y.float()) == pytest.approx(numpy_cka(x.numpy(), y.numpy()), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_debiased_cka_matches_the_u_statistic(seed):
    x, y = rand(8, 4, seed), rand(8, 3, seed + 10)
    y[:, 1] += x[:, 2]
    assert linear_cka(x, y, debiased=True) == pytest.approx(numpy_unbiased_cka(x.numpy(), y.numpy()), abs=1e-10)


def test_debiased_cka_is_near_zero_for_unrelated_wide_features_where_the_standard_one_is_not():
    x, y = rand(60, 200, 5), rand(60, 200, 6)
    assert linear_cka(x, y) > 0.5
    assert abs(linear_cka(x, y, debiased=True)) < 0.1


def features(patches, patch_size=16):
    rows, cols = patches.shape[:2]
    size = (cols * patch_size, rows * patch_size)
    return Features(torch.zeros(patches.shape[-1]), torch.zeros(0, patches.shape[-1]), patches.float(),
                    Geometry(patch_size, rows, cols, size, size, False))


def test_cka_matrix_pools_different_grids_to_the_common_grid():
    fine = features(rand(4 * 6, 10, 0).reshape(4, 6, 10))
    coarse = features(fine.patches.reshape(2, 2, 3, 2, 10).mean((1, 3)), patch_size=32)  # the 2x2 area means
    other = features(rand(3 * 5, 10, 1).reshape(3, 5, 10))
    assert common_grid([fine, coarse, other]) == (2, 3)
    assert torch.allclose(pooled(fine, (2, 3)), coarse.flat, atol=1e-6)
    m = cka_matrix([fine, coarse, other])
    assert m.shape == (3, 3)
    assert torch.allclose(m, m.T) and torch.allclose(m.diagonal(), torch.ones(3, dtype=m.dtype))
    assert m[0, 1] == pytest.approx(1.0, abs=1e-6)
    rect = cka_matrix([fine], [coarse, other])
    assert rect.shape == (1, 2) and rect[0, 1] == pytest.approx(float(m[0, 2]))


def test_bad_cka_input_is_a_clear_error():
    with pytest.raises(InputError, match="same N rows"):
        linear_cka(rand(5, 2, 0), rand(6, 2, 0))
    with pytest.raises(InputError, match="at least 4"):
        linear_cka(rand(3, 2, 0), rand(3, 2, 1), debiased=True)
    with pytest.raises(InputError, match="constant"):
        linear_cka(torch.ones(5, 3), rand(5, 2, 0))


def test_high_norm_tokens_are_flagged():
    patches = rand(6 * 8, 16, 3).reshape(6, 8, 16).float()
    spikes = [(0, 7), (3, 2), (5, 5)]
    for r, c in spikes:
        patches[r, c] *= 20
    stats = norm_stats(features(patches))
    assert set(zip(*np.nonzero(stats.outliers.numpy()))) == set(spikes)
    norms = np.linalg.norm(patches.numpy().astype(np.float64), axis=-1).reshape(-1)
    median = np.median(norms)
    assert stats.median == pytest.approx(median, rel=1e-5)
    assert stats.mad == pytest.approx(np.median(np.abs(norms - median)), rel=1e-5)
    assert stats.threshold == pytest.approx(median + 5 * 1.4826 * stats.mad, rel=1e-6)
    assert stats.outlier_count == 3 and stats.outlier_share == pytest.approx(3 / 48)
    assert not norm_stats(features(rand(48, 16, 4).reshape(6, 8, 16))).outliers.any()


def test_attention_shares_from_rows_and_from_attention_objects():
    g = Geometry(16, 2, 3, (48, 32), (48, 32), False)
    registers = 4
    logits = rand(5 * 6, 1 + registers + 6, 7).reshape(5, 6, -1)  # 5 layers, 6 heads
    weights = torch.softmax(logits, -1)
    shares = attention_shares(weights, registers)
    w = weights.numpy()
    assert np.allclose(shares.registers.numpy(), w[..., 1:5].sum(-1), atol=1e-6)
    assert np.allclose(shares.cls.numpy(), w[..., 0], atol=1e-6)
    assert np.allclose((shares.cls + shares.registers + shares.patches).numpy(), 1.0, atol=1e-6)
    assert np.allclose(shares.per_layer()["registers"].numpy(), w[..., 1:5].sum(-1).mean(1), atol=1e-6)
    objects = attention_shares([split_row(weights[i].float(), registers, g, layer=i) for i in range(5)], registers)
    assert torch.allclose(objects.registers, shares.registers, atol=1e-6)
    with pytest.raises(InputError, match="attention rows"):
        attention_shares(weights[0], registers)


def test_cka_heatmap_paints_each_value_in_its_colour():
    m = np.array([[1.0, 0.25], [0.25, 1.0]])
    picture = np.asarray(sheets.cka_heatmap(m, ["a", "b"], cell=40))
    for value, cells in ((1.0, 2), (0.25, 2)):
        colour = render.colorize(np.array([[value]]), "viridis", 0.0, 1.0)[0, 0]
        count = (picture == colour).all(-1).sum()
        assert cells * 40 * 40 * 0.7 < count <= cells * 40 * 40


def test_atlas_sheet_shares_one_basis_per_row():
    a = features(rand(4 * 5, 6, 8).reshape(4, 5, 6))
    b = features(rand(4 * 5, 6, 9).reshape(4, 5, 6))
    sheet = sheets.atlas_sheet([[a, a, b], [b, b]], ["model 1", "model 2"], ["L1", "L2", "L3"], height=40)
    assert sheet.mode == "RGB" and sheet.height >= 2 * 40
    # the same features in one row get the same colours; a basis fitted on the row, not per cell
    from dinoscope.analyses.pca import PCABasis
    from dinoscope.views import pca_view

    basis = PCABasis.fit([a, a, b], 3)
    row = np.asarray(pca_view(b, basis).resize((50, 40), 0))
    alone = np.asarray(pca_view(b).resize((50, 40), 0))
    array = np.asarray(sheet)
    found = [x for x in range(array.shape[1] - 50) if (array[18:58, x:x + 50] == row).all()]
    assert found and not any((array[18:58, x:x + 50] == alone).all() for x in found)


def test_an_atlas_row_must_hold_one_model():
    a = features(rand(4 * 5, 6, 8).reshape(4, 5, 6))
    b = features(rand(4 * 5, 9, 9).reshape(4, 5, 9))
    with pytest.raises(InputError, match="one model in a row"):
        sheets.atlas_sheet([[a, b]], ["mixed"], ["x", "y"])
    with pytest.raises(InputError, match="row labels"):
        sheets.atlas_sheet([[a], [a]], ["only one"], ["x"])
