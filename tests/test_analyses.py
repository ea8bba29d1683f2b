"""Each analysis against an independent NumPy/SciPy computation on random features."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from dinoscope.analyses import CLS, PCABasis, Patch, Pixel, match_patches, minmax, patch_norms, pca_rgb, similarity_map
from dinoscope.errors import InputError
from dinoscope.features import Features
from dinoscope.geometry import Geometry, Resolution


def random_features(rows, cols, dim=32, seed=0, low_rank=False):
    g = torch.Generator().manual_seed(seed)
    if low_rank:  # a few strong directions, like real features
        patches = torch.randn(rows * cols, 4, generator=g) @ torch.randn(4, dim, generator=g) * 3
        patches += 0.1 * torch.randn(rows * cols, dim, generator=g)
    else:
        patches = torch.randn(rows * cols, dim, generator=g)
    geometry, _ = Geometry.for_image(cols * 16 + 5, rows * 16 + 3, 16, Resolution())
    return Features(torch.randn(dim, generator=g), torch.randn(4, dim, generator=g), patches.reshape(rows, cols, dim), geometry)


def test_norms_match_numpy():
    f = random_features(5, 7)
    ref = np.linalg.norm(f.patches.numpy(), axis=-1)
    np.testing.assert_allclose(patch_norms(f).numpy(), ref, rtol=1e-6)
    scaled = minmax(patch_norms(f)).numpy()
    np.testing.assert_allclose(scaled, (ref - ref.min()) / (ref.max() - ref.min()), atol=1e-6)
    assert minmax(torch.ones(3, 3)).abs().max() == 0


def test_pca_matches_numpy_svd():
    f = random_features(12, 16, low_rank=True)
    x = f.flat.double().numpy()
    z = (x - x.mean(0)) / x.std(0, ddof=1)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    basis = PCABasis.fit([f], 3)
    for k in range(3):
        # same axis up to sign, and the sign rule: the largest loading is positive
        assert abs(abs(float(np.dot(vt[k], basis.components[k].double().numpy()))) - 1) < 1e-5
        c = basis.components[k]
        assert c[c.abs().argmax()] > 0
    np.testing.assert_allclose(basis.variance.numpy(), (s[:3] ** 2) / (len(x) - 1), rtol=1e-4)
    colours = pca_rgb(f).numpy()
    assert colours.shape == (12, 16, 3)
    proj = z @ np.stack([basis.components[k].double().numpy() for k in range(3)]).T
    expected = (proj - proj.min(0)) / (proj.max(0) - proj.min(0))
    np.testing.assert_allclose(colours.reshape(-1, 3), expected, atol=1e-4)


def test_pca_is_deterministic_and_reusable():
    a, b = random_features(8, 8, seed=1, low_rank=True), random_features(8, 8, seed=2, low_rank=True)
    basis = PCABasis.fit([a], 3)
    again = PCABasis.fit([a.__class__(a.cls, a.registers, a.patches.clone(), a.geometry)], 3)
    torch.testing.assert_close(basis.components, again.components)
    # the same patch colours the same way whichever image it is drawn in
    mixed = Features(b.cls, b.registers, b.patches.clone(), b.geometry)
    mixed.patches[0, 0] = a.patches[3, 4]
    torch.testing.assert_close(basis.transform(mixed)[0, 0], basis.transform(a)[3, 4])


def test_pca_save_load(tmp_path):
    f = random_features(6, 6, low_rank=True)
    basis = PCABasis.fit([f], 4)
    basis.save(tmp_path / "b.safetensors")
    loaded = PCABasis.load(tmp_path / "b.safetensors")
    torch.testing.assert_close(loaded.transform(f), basis.transform(f))
    with pytest.raises(InputError):
        PCABasis.load(tmp_path / "missing.safetensors")


def test_pca_foreground_only_blacks_out_background():
    rows, cols, dim = 10, 10, 16
    g = torch.Generator().manual_seed(3)
    patches = torch.randn(rows, cols, dim, generator=g) * 0.2
    patches[3:7, 3:7] += 4 * torch.randn(dim, generator=g)  # a distinct object in the centre
    geometry, _ = Geometry.for_image(160, 160, 16, Resolution())
    f = Features(torch.zeros(dim), torch.zeros(0, dim), patches, geometry)
    colours = pca_rgb(f, foreground_only=True)
    assert colours[0, 0].abs().sum() == 0 and colours[9, 9].abs().sum() == 0
    mask = colours.abs().sum(-1) > 0
    assert mask[3:7, 3:7].float().mean() > 0.9 and mask.sum() <= 20


def test_similarity_matches_numpy_and_queries():
    f = random_features(6, 9)
    x = f.flat.numpy()
    q = x[13]
    ref = x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    np.testing.assert_allclose(similarity_map(f, 13).numpy().reshape(-1), ref, atol=1e-6)
    torch.testing.assert_close(similarity_map(f, Patch(1, 4)), similarity_map(f, 13))
    torch.testing.assert_close(similarity_map(f, Pixel(4 * 16 + 3, 16 + 15)), similarity_map(f, 13))
    c = f.cls.numpy()
    ref_cls = x @ c / (np.linalg.norm(x, axis=1) * np.linalg.norm(c))
    np.testing.assert_allclose(similarity_map(f, CLS).numpy().reshape(-1), ref_cls, atol=1e-6)
    assert similarity_map(f, 13).min() < 0  # the full [-1, 1] range is kept
    assert similarity_map(f, 13)[1, 4] == pytest.approx(1.0)


def test_cross_image_similarity_uses_the_query_image():
    a, b = random_features(4, 4, seed=1), random_features(5, 3, seed=2)
    out = similarity_map(b, 5, query_features=a)
    q = a.flat[5]
    ref = torch.nn.functional.cosine_similarity(b.flat, q[None], dim=-1).reshape(5, 3)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("query", [54, -2, Patch(6, 0), Pixel(9 * 16, 0), True, "3"])
def test_bad_queries(query):
    with pytest.raises(InputError):
        similarity_map(random_features(6, 9), query)


@pytest.mark.parametrize("shape_a,shape_b", [((5, 6), (7, 8)), ((7, 8), (5, 6)), ((6, 6), (6, 6))])
def test_hungarian_is_optimal_whichever_image_is_larger(shape_a, shape_b):
    a, b = random_features(*shape_a, seed=4), random_features(*shape_b, seed=5)
    m = match_patches(a, b, "hungarian")
    fa = torch.nn.functional.normalize(a.flat, dim=-1).numpy()
    fb = torch.nn.functional.normalize(b.flat, dim=-1).numpy()
    sims = fa @ fb.T
    rows, cols = linear_sum_assignment(-sims)
    assert len(m) == min(a.geometry.num_patches, b.geometry.num_patches)
    assert m.scores.sum() == pytest.approx(sims[rows, cols].sum(), rel=1e-5)
    assert len(set(m.index_a)) == len(m) and len(set(m.index_b)) == len(m)
    np.testing.assert_allclose(m.scores, sims[m.index_a, m.index_b], atol=1e-6)


def test_mutual_nearest_neighbours_match_brute_force():
    a, b = random_features(9, 9, seed=6), random_features(8, 10, seed=7)
    fa = torch.nn.functional.normalize(a.flat, dim=-1).numpy()
    fb = torch.nn.functional.normalize(b.flat, dim=-1).numpy()
    sims = fa @ fb.T
    ab, ba = sims.argmax(1), sims.argmax(0)
    expected = {(i, int(ab[i])) for i in range(len(ab)) if ba[ab[i]] == i}
    from dinoscope.analyses.matching import _mutual_nearest

    ia, ib, _ = _mutual_nearest(a, b, chunk=7)  # blocks smaller than the image exercise the streaming path
    assert set(zip(ia.tolist(), ib.tolist())) == expected
    m = match_patches(a, b, "mnn")
    assert set(zip(m.index_a.tolist(), m.index_b.tolist())) == expected


def test_matching_over_budget_falls_back_with_notice(caplog):
    a, b = random_features(6, 6, seed=8), random_features(6, 6, seed=9)
    with caplog.at_level("WARNING", logger="dinoscope"):
        m = match_patches(a, b, "hungarian", max_assignment=100)
    assert m.method == "mnn" and "mutual nearest" in caplog.text


def test_matches_export_pixel_coordinates():
    a, b = random_features(3, 4, seed=1), random_features(3, 4, seed=2)
    m = match_patches(a, b)
    rows = m.rows()
    first = rows[0]
    assert (first["x_a"], first["y_a"]) == a.geometry.center(first["index_a"])
    assert m.to_csv().splitlines()[0] == "index_a,index_b,x_a,y_a,x_b,y_b,score"
    assert '"pairs"' in m.to_json()
    with pytest.raises(InputError):
        match_patches(a, b, "greedy")
