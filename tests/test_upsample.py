"""Maps at pixel resolution with known answers: nearest lands where the geometry says, bilinear reproduces
ramps, and joint bilateral ("guided") upsampling puts map edges on the photo's colour edges."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from dinoscope import render
from dinoscope.analyses import upsample as up
from dinoscope.analyses.upsample import upsample
from dinoscope.errors import InputError
from dinoscope.geometry import Geometry, Resolution


def scene(w, h, seed=0):
    """A photo of sharp colour regions (a red disk, a green box on blue, mild noise) and the true map: 1, 0.5, 0."""
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.empty((h, w, 3), np.float32)
    photo[:] = (40, 60, 170)
    truth = np.zeros((h, w), np.float32)
    disk = (xx - 0.4 * w) ** 2 + (yy - 0.5 * h) ** 2 < (0.25 * h) ** 2
    box = (xx > 0.6 * w) & (xx < 0.9 * w) & (yy > 0.15 * h) & (yy < 0.7 * h)
    photo[disk], truth[disk] = (220, 40, 30), 1.0
    photo[box], truth[box] = (60, 200, 70), 0.5
    photo += np.random.default_rng(seed).normal(0, 4, photo.shape)
    return np.clip(photo, 0, 255).astype(np.uint8), truth


def patch_means(truth, geometry):
    """What a patch-level map of this scene is: the true map averaged over each cell."""
    cw, ch = geometry.covered
    s = geometry.cell_size
    return truth[:ch, :cw].reshape(geometry.rows, s, geometry.cols, s).mean(axis=(1, 3))


@pytest.mark.parametrize("density", [1, 2, 4])
def test_guided_edges_follow_the_photo_far_better_than_bilinear_and_nearest(density):
    # measured at density 1 (16-pixel cells) on 203x157: mean error within 3 pixels of a region edge
    # guided 0.025, bilinear 0.307, nearest 0.315; density 2 (8-pixel cells): 0.016, 0.246, 0.205;
    # density 4: 0.010, 0.170, 0.141
    photo, truth = scene(203, 157)
    geometry = Geometry.for_image(203, 157, 16, Resolution())[0].densified(density)
    cw, ch = geometry.covered
    t = truth[:ch, :cw]
    edges = np.zeros_like(t, bool)
    edges[:, 1:] |= t[:, 1:] != t[:, :-1]
    edges[1:] |= t[1:] != t[:-1]
    band = binary_dilation(edges, iterations=3)
    grid = patch_means(truth, geometry)
    error = {m: float(np.abs(upsample(grid, geometry, photo, method=m)[:ch, :cw] - t)[band].mean())
             for m in up.METHODS}
    assert error["guided"] < 0.2 * min(error["bilinear"], error["nearest"]), error
    assert error["guided"] < 0.05, error


@pytest.mark.parametrize("size,resolution,density", [((203, 157), "native", 1), ((83, 61), "native", 4),
                                                      ((451, 300), "short:160", 2)])
def test_nearest_paints_each_pixel_with_the_cell_patch_at_names(size, resolution, density):
    w, h = size
    geometry = Geometry.for_image(w, h, 16, Resolution.parse(resolution))[0].densified(density)
    ids = np.arange(geometry.num_patches, dtype=np.float32).reshape(geometry.grid)
    painted = upsample(ids, geometry, method="nearest")
    cw, ch = geometry.covered
    for y in range(0, ch, 7):
        for x in range(0, cw, 5):
            assert painted[y, x] == geometry.patch_at(x, y)
    assert np.isnan(painted[ch:]).all() and np.isnan(painted[:, cw:]).all()  # the uncovered strip
    if resolution == "native":  # the same pixels render.place paints
        gray = (ids % 251).astype(np.uint8)
        placed = np.asarray(render.place(gray, geometry))
        np.testing.assert_array_equal(placed[:ch, :cw], upsample(gray, geometry, method="nearest")[:ch, :cw])


def test_bilinear_hits_cell_centres_and_follows_a_ramp():
    geometry = Geometry.for_image(16 * 6 + 9, 16 * 4 + 3, 16, Resolution())[0]
    ramp = np.add.outer(np.arange(4) * 10.0, np.arange(6) * 1.0)
    out = upsample(ramp, geometry, method="bilinear", fill=-1)
    # a pixel centre at x + 0.5 lies (x + 0.5 - 8) / 16 cells from cell 0's centre: interior values are exact
    for y, x in [(8, 8), (23, 40), (40, 71), (55, 87)]:
        assert out[y, x] == pytest.approx((y + 0.5 - 8) / 16 * 10 + (x + 0.5 - 8) / 16, abs=1e-4)
    assert out[0, 0] == pytest.approx(0) and (out[64:] == -1).all()  # clamped at the border, fill outside


def test_guided_keeps_constants_and_colours_map_channels_together():
    photo, _ = scene(120, 90, seed=1)
    geometry = Geometry.for_image(120, 90, 16, Resolution())[0]
    flat = np.full(geometry.grid + (3,), 0.25, np.float32)
    out = upsample(flat, geometry, photo)
    cw, ch = geometry.covered
    assert out.shape == (90, 120, 3)
    np.testing.assert_allclose(out[:ch, :cw], 0.25, atol=1e-6)


def test_strips_do_not_change_the_result(monkeypatch):
    photo, truth = scene(130, 100, seed=2)
    geometry = Geometry.for_image(130, 100, 16, Resolution())[0]
    grid = patch_means(truth, geometry)
    whole = {m: upsample(grid, geometry, photo, method=m) for m in up.METHODS}
    monkeypatch.setattr(up, "STRIP_ROWS", 7)
    for m in up.METHODS:
        np.testing.assert_allclose(upsample(grid, geometry, photo, method=m), whole[m], atol=1e-6)


def test_bad_upsampling_input_says_what_to_do():
    geometry = Geometry.for_image(64, 48, 16, Resolution())[0]
    with pytest.raises(InputError, match="does not fit the 3x4 grid"):
        upsample(np.zeros((4, 3)), geometry, method="nearest")
    with pytest.raises(InputError, match="needs the photo"):
        upsample(np.zeros((3, 4)), geometry)
    with pytest.raises(InputError, match="not the 64x48 RGB photo"):
        upsample(np.zeros((3, 4)), geometry, np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(InputError, match="unknown upsampling"):
        upsample(np.zeros((3, 4)), geometry, method="bicubic")


def direct_joint_bilateral(grid, photo, sigma_space=1.0, sigma_colour=0.1, reach=2):
    """The formula pixel by pixel: cells within `reach` of the pixel's nearest cell, spatial x (range + floor)."""
    rows, cols, _ = grid.shape
    h, w = photo.shape[:2]
    from PIL import Image
    means = np.asarray(Image.fromarray(photo).resize((cols, rows), Image.Resampling.BOX), np.float64) / 255
    out = np.zeros((h, w, grid.shape[2]))
    for y in range(h):
        v = (y + 0.5) * rows / h - 0.5
        for x in range(w):
            u = (x + 0.5) * cols / w - 0.5
            colour = photo[y, x] / 255.0
            num, den = 0.0, 0.0
            for i in range(int(np.floor(v + 0.5)) - reach, int(np.floor(v + 0.5)) + reach + 1):
                for j in range(int(np.floor(u + 0.5)) - reach, int(np.floor(u + 0.5)) + reach + 1):
                    if not (0 <= i < rows and 0 <= j < cols):
                        continue
                    spatial = np.exp(-((v - i) ** 2 + (u - j) ** 2) / (2 * sigma_space ** 2))
                    similar = np.exp(-np.sum((colour - means[i, j]) ** 2) / (2 * sigma_colour ** 2)) + 1e-12
                    num, den = num + spatial * similar * grid[i, j], den + spatial * similar
            out[y, x] = num / den
    return out


@pytest.mark.parametrize("size,cells", [((48, 40), (5, 6)), ((45, 37), (4, 5))])  # whole and fractional cells
def test_joint_bilateral_equals_the_formula_pixel_by_pixel(size, cells, monkeypatch):
    photo, _ = scene(*size, seed=3)
    grid = np.random.default_rng(4).random(cells + (2,), dtype=np.float32)
    monkeypatch.setattr(up, "STRIP_ROWS", 16)  # several strips, each reaching other strips' cell rows
    np.testing.assert_allclose(up.joint_bilateral(grid, photo), direct_joint_bilateral(grid, photo), atol=2e-5)
