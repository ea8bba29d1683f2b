"""Geometry with a known answer: a model whose features are its patches' pixels, run through the
real extraction path, so that matches, similarity and drawn maps can be checked against the image."""

import numpy as np
import pytest
from PIL import Image

from dinoscope import render
from dinoscope.analyses import Pixel, match_patches, similarity_map
from dinoscope.features import extract_batch
from dinoscope.geometry import Resolution
from dinoscope.views import similarity_view


def features_of(backbone, array, resolution=None):
    return extract_batch(backbone, [Image.fromarray(array)], resolution=resolution, normed=False)[0][0]


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("dy,dx", [(0, 2), (1, 0), (2, 3)])
def test_matching_recovers_a_shift_by_whole_patches(pixel_backbone, dy, dx):
    big = noise(16 * 8, 16 * 10)
    shifted = big[dy * 16:, dx * 16:]  # patch (r, c) of `shifted` is patch (r + dy, c + dx) of `big`
    fa, fb = features_of(pixel_backbone, shifted), features_of(pixel_backbone, big)
    m = match_patches(fa, fb, "hungarian")  # the first image is the smaller one here...
    ga, gb = fa.geometry, fb.geometry
    for ia, ib in zip(m.index_a, m.index_b):
        r, c = ga.cell(int(ia))
        assert gb.cell(int(ib)) == (r + dy, c + dx)
    m2 = match_patches(fb, fa, "hungarian")  # ...and here the larger one
    hits = sum(ga.cell(int(ib)) == tuple(np.subtract(gb.cell(int(ia)), (dy, dx))) for ia, ib in zip(m2.index_a, m2.index_b))
    assert hits == fa.geometry.num_patches
    assert np.allclose(m.scores, 1.0, atol=1e-5)


def test_similarity_finds_the_uniquely_coloured_patches(pixel_backbone):
    image = np.zeros((16 * 5, 16 * 7, 3), dtype=np.uint8)
    image[...] = (40, 90, 160)
    image += np.random.default_rng(1).integers(0, 6, image.shape, dtype=np.uint8)
    red_cells = [(1, 2), (3, 5), (4, 0)]
    for r, c in red_cells:
        image[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = (230, 20, 20)
    f = features_of(pixel_backbone, image)
    sims = similarity_map(f, Pixel(2 * 16 + 8, 1 * 16 + 8)).numpy()
    top = {divmod(int(i), 7) for i in np.argsort(-sims.reshape(-1))[:3]}
    assert top == set(red_cells)


@pytest.mark.parametrize("size", [(451, 300), (37, 53), (500, 17)])
def test_drawn_maps_land_on_the_pixels_they_describe(pixel_backbone, size):
    w, h = size
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 2] = 128
    cols, rows = w // 16, h // 16
    r, c = rows // 2, cols - 1  # a patch at the right edge of the covered area
    image[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = (255, 255, 0)
    f = features_of(pixel_backbone, image)
    assert f.geometry.grid == (rows, cols)
    sims = similarity_map(f, r * cols + c)
    painted = np.asarray(render.place(render.gray((sims + 1) / 2), f.geometry))
    assert painted.shape == (h, w)
    bright = painted >= 254
    ys, xs = np.nonzero(bright)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (c * 16, c * 16 + 15, r * 16, r * 16 + 15)
    assert not painted[:, cols * 16:].any() and not painted[rows * 16:, :].any()  # uncovered margin stays empty


def test_resized_maps_cover_the_whole_image(pixel_backbone):
    image = noise(300, 451, seed=2)
    image[:, :225] = (250, 0, 0)
    image[:, 225:] = (0, 0, 250)
    f = features_of(pixel_backbone, image, Resolution.parse("short:160"))
    sims = similarity_map(f, Pixel(10, 10))
    painted = np.asarray(render.place(render.gray((sims + 1) / 2), f.geometry))
    assert painted.shape == (300, 451)
    # left half similar to the query, right half not; the boundary lands within one patch of x = 225
    row = painted[150]
    edge = np.nonzero(row < 128)[0].min()
    assert abs(edge - 225) <= 451 / f.geometry.cols


def test_query_box_is_drawn_on_the_query_patch_and_not_for_cls(pixel_backbone):
    image = noise(100, 120, seed=3)
    f = features_of(pixel_backbone, image)
    picture = np.asarray(similarity_view(f, 13, Image.fromarray(image), alpha=0.0))
    white = (picture == 255).all(axis=-1)  # the box: white on the patch's edge, black just outside it
    ys, xs = np.nonzero(white)
    r, c = f.geometry.cell(13)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (c * 16, c * 16 + 15, r * 16, r * 16 + 15)
    for x, y in ((c * 16 - 1, r * 16 + 8), (c * 16 + 16, r * 16 + 8), (c * 16 + 8, r * 16 - 1), (c * 16 + 8, r * 16 + 16)):
        assert tuple(picture[y, x]) == (0, 0, 0), (x, y)
    cls_picture = np.asarray(similarity_view(f, -1, Image.fromarray(image), alpha=0.0))
    np.testing.assert_array_equal(cls_picture, image)  # alpha 0 and no box: the photo itself
