"""The official notebooks' recipes: paper-style PCA (whitened, sigmoid(2x), fitted on the foreground) against
an independent NumPy computation, and the foreground probe (labels from mask shares, logistic regression,
C chosen by held-out average precision, median filter, threshold) on images with known regions."""

import numpy as np
import pytest
from PIL import Image

from dinoscope.analyses.pca import PCABasis
from dinoscope.analyses.probe import (CLEAR, Probe, average_precision, fit_logistic, patch_shares, read_mask,
                                      train_probe)
from dinoscope.errors import InputError
from dinoscope.features import extract_batch
from dinoscope.geometry import Resolution

P = 16


def reference_paper_pca(x_fit, x, n=3):
    """scikit-learn's PCA(whiten=True) by SVD of the centred data, signs as its svd_flip (largest |loading| of
    each component positive), colours sigmoid(2 x score)."""
    x_fit = x_fit.astype(np.float64)
    mean = x_fit.mean(0)
    _, s, vt = np.linalg.svd(x_fit - mean, full_matrices=False)
    vt = vt[:n]
    signs = np.sign(vt[np.arange(n), np.abs(vt).argmax(1)])
    vt = vt * signs[:, None]
    variance = s[:n] ** 2 / (len(x_fit) - 1)
    score = (x.astype(np.float64) - mean) @ vt.T / np.sqrt(variance)
    return 1 / (1 + np.exp(-2 * score))


def regions_image(regions, colours, seed=0, noise=6):
    regions = np.asarray(regions)
    image = np.asarray(colours, dtype=np.int16)[regions].repeat(P, 0).repeat(P, 1)
    image = image + np.random.default_rng(seed).integers(-noise, noise + 1, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def mask_of(regions, foreground=1):
    m = (np.asarray(regions) == foreground).repeat(P, 0).repeat(P, 1)
    return Image.fromarray((m * 255).astype(np.uint8))


def blob(rows, cols, r0, c0, r1, c1):
    g = np.zeros((rows, cols), int)
    g[r0:r1, c0:c1] = 1
    return g


@pytest.fixture(scope="module")
def photo_features(tiny_backbone):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    return extract_batch(tiny_backbone, [image], resolution=Resolution())[0][0]


def test_paper_pca_equals_the_numpy_recipe(photo_features):
    x = np.asarray(photo_features.flat)
    basis = PCABasis.fit([photo_features], 3, style="paper")
    got = np.asarray(basis.transform(photo_features)).reshape(-1, 3)
    np.testing.assert_allclose(got, reference_paper_pca(x, x), atol=1e-5)


def test_paper_pca_on_foreground_only_blackens_the_rest(photo_features):
    rows, cols = photo_features.patches.shape[:2]
    mask = np.zeros((rows, cols), bool)
    mask[1:-1, 2:-2] = True
    x = np.asarray(photo_features.flat)
    basis = PCABasis.fit([photo_features], 3, style="paper", masks=[mask])
    got = np.asarray(basis.transform(photo_features, mask=mask)).reshape(-1, 3)
    want = reference_paper_pca(x[mask.reshape(-1)], x) * mask.reshape(-1, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got[~mask.reshape(-1)] == 0).all()


def test_paper_style_survives_save_and_load(photo_features, tmp_path):
    basis = PCABasis.fit([photo_features], 3, style="paper")
    loaded = PCABasis.load(basis.save(tmp_path / "b.safetensors"), framework="numpy")
    assert loaded.style == "paper"
    np.testing.assert_allclose(np.asarray(loaded.transform(photo_features)),
                               np.asarray(basis.transform(photo_features)), atol=1e-6)


def test_plain_stays_the_default(photo_features):
    assert PCABasis.fit([photo_features], 3).style == "plain"
    with pytest.raises(InputError, match="style"):
        PCABasis.fit([photo_features], 3, style="pretty")


def test_average_precision_matches_a_direct_count():
    rng = np.random.default_rng(0)
    score, truth = rng.normal(size=200).round(1), rng.random(200) < 0.3
    # direct definition: mean over positives of the precision at that positive's score threshold
    want = np.mean([(truth & (score >= s)).sum() / (score >= s).sum() for s in score[truth]])
    assert average_precision(score, truth) == pytest.approx(want)


def test_logistic_fit_is_the_regularised_optimum():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = (x @ [1.5, -2, 0, 0.5, 1] + rng.normal(size=300) > 0).astype(int)
    c = 0.3
    w, b = fit_logistic(x, y, 2, c)
    z = x @ w[0] + b[0]
    p = 1 / (1 + np.exp(-z))
    grad_w = c * (p - y) @ x + w[0]  # the objective's gradient vanishes at the optimum
    assert np.abs(grad_w).max() < 1e-3 and abs(c * (p - y).sum()) < 1e-3


def test_patch_shares_leave_ambiguous_patches_out(tiny_backbone):
    image = regions_image(blob(4, 6, 1, 1, 3, 4), [(0, 0, 0), (200, 50, 50)])
    feats = extract_batch(tiny_backbone, [image], resolution=Resolution())[0][0]
    m = np.zeros((64, 96), np.uint8)
    m[16:48, 16:40] = 255  # the last foreground column is half a patch: ambiguous
    labels = read_mask(Image.fromarray(m)).labels
    shares = patch_shares(labels, feats.geometry, 2)[..., 1]
    assert shares[1, 1] == 1 and shares[0, 0] == 0 and shares[1, 2] == pytest.approx(0.5)
    assert ((shares > CLEAR) & (shares < 1 - CLEAR)).sum() == 2


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("which", ["random", "pixels"])
def test_probe_finds_the_foreground_of_an_unseen_image(which, tiny_backbone, pixel_backbone):
    backbone = tiny_backbone if which == "random" else pixel_backbone
    colours = [(30, 40, 200), (230, 200, 30)]
    train = [blob(6, 8, 1, 1, 4, 5), blob(6, 8, 2, 3, 6, 8)]
    test = blob(6, 8, 0, 2, 4, 7)
    images = [regions_image(r, colours, seed=i) for i, r in enumerate(train + [test])]
    feats = [f[0] for f in extract_batch(backbone, images, resolution=Resolution(), normed=which == "random")]
    probe = train_probe(feats[:2], [read_mask(mask_of(r)) for r in train])
    assert probe.c in probe.scores and probe.held_out_ap > 0.9
    assert iou(probe.predict(feats[2], median=1), test.astype(bool)) >= 0.9


def test_probe_refuses_other_features(tiny_backbone, pixel_backbone, tmp_path):
    regions = blob(4, 4, 1, 1, 3, 3)
    image = regions_image(regions, [(0, 0, 0), (250, 250, 250)])
    feats = extract_batch(tiny_backbone, [image], resolution=Resolution())[0][0]
    probe = train_probe([feats], [read_mask(mask_of(regions))])
    loaded = Probe.load(probe.save(tmp_path / "p.safetensors"))
    assert loaded.classes == probe.classes and loaded.layer == probe.layer and loaded.c == probe.c
    other = extract_batch(pixel_backbone, [image], resolution=Resolution())[0][0]
    with pytest.raises(InputError, match="dim"):
        loaded.predict(other)
    layer0 = extract_batch(tiny_backbone, [image], resolution=Resolution(), layers=(0,))[0][0]
    with pytest.raises(InputError, match="layer"):
        loaded.predict(layer0)


@pytest.mark.parametrize("mask, words", [
    (np.zeros((64, 64), np.uint8), "no foreground"),
    (np.full((64, 64), 255, np.uint8), "no background"),
    (np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "flat colours"),
])
def test_bad_masks_say_what_is_wrong(mask, words):
    with pytest.raises(InputError, match=words):
        read_mask(Image.fromarray(mask))


def test_mask_of_the_wrong_size_is_refused(tiny_backbone):
    image = regions_image(blob(4, 4, 1, 1, 3, 3), [(0, 0, 0), (250, 250, 250)])
    feats = extract_batch(tiny_backbone, [image], resolution=Resolution())[0][0]
    with pytest.raises(InputError, match="the mask is 32x32"):
        train_probe([feats], [read_mask(mask_of(blob(2, 2, 0, 0, 1, 1)))])


def test_one_class_per_mask_colour(tiny_backbone):
    colours = [(0, 0, 0), (220, 30, 30), (30, 200, 40)]
    regions = np.zeros((6, 8), int)
    regions[1:3, 1:4] = 1
    regions[3:6, 4:8] = 2
    image = regions_image(regions, colours)
    painted = Image.fromarray(np.asarray(colours, np.uint8)[regions].repeat(P, 0).repeat(P, 1))
    mask = read_mask(painted)
    assert mask.classes == ("#000000", "#1ec828", "#dc1e1e")  # darkest first (sum of channels)
    regions = np.array([0, 2, 1])[regions]
    feats = extract_batch(tiny_backbone, [image], resolution=Resolution())[0][0]
    probe = train_probe([feats], [mask])
    assert not probe.binary
    assert (probe.predict(feats, median=1) == regions).mean() >= 0.9
