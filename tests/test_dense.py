"""Shift-and-stitch with a known answer: with the pixel model (a patch's tokens are its own pixels) a dense
cell must be exactly the model's tokens for its shifted window, and maps of a dense grid must land on the
square the dense geometry says the cell covers, for image sizes that are not multiples of the patch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinoscope import render
from dinoscope.analyses import similarity_map
from dinoscope.dense import dense_patches, pad_before, shift_and_stitch, shifted_inputs
from dinoscope.errors import InputError
from dinoscope.features import Features, forward_tokens, preprocess
from dinoscope.geometry import Geometry, Resolution


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def native_input(backbone, array):
    image = Image.fromarray(array)
    geometry, _ = Geometry.for_image(image.width, image.height, backbone.patch_size, Resolution())
    return geometry, preprocess(image, geometry, backbone.mean, backbone.std)


def forward_of(backbone):
    return lambda pixels: forward_tokens(backbone, pixels, [0], False)


@pytest.mark.slow
@pytest.mark.parametrize("density", [2, 4])
def test_dense_cells_are_the_tokens_of_their_shifted_windows(pixel_backbone, density):
    geometry, pixels = native_input(pixel_backbone, noise(16 * 4 + 5, 16 * 5 + 11))
    dense, [(_cls, _regs, grid)] = shift_and_stitch(forward_of(pixel_backbone), pixels, geometry, density, batch_size=3)
    assert dense.grid == (4 * density, 5 * density) == tuple(grid.shape[:2])
    # reference: the model run separately on every cell's own 16x16 window, cut from the padded input
    p, step, lead = 16, 16 // density, pad_before(16, density)
    padded = F.pad(pixels[None], (lead, 16 - step - lead) * 2, mode="replicate")[0]
    windows = torch.stack([padded[:, r * step:r * step + p, c * step:c * step + p]
                           for r in range(dense.rows) for c in range(dense.cols)])
    direct = forward_tokens(pixel_backbone, windows, [0], False)[0][2].reshape(dense.rows, dense.cols, -1)
    torch.testing.assert_close(grid, direct, rtol=0, atol=1e-5)
    # the pixel model's tokens are the window's pixels: interior cells equal the unpadded input there
    r, c = dense.rows // 2, dense.cols // 2
    x0, y0 = c * step - lead, r * step - lead
    torch.testing.assert_close(grid[r, c], pixels[:, y0:y0 + p, x0:x0 + p].reshape(-1), rtol=0, atol=1e-5)
    assert dense.window(dense.index(r, c)) == (x0, y0, x0 + p, y0 + p)


def test_density_one_reproduces_the_native_grid(pixel_backbone):
    geometry, pixels = native_input(pixel_backbone, noise(48, 64, seed=4))
    dense, [(cls_t, regs, grid)] = shift_and_stitch(forward_of(pixel_backbone), pixels, geometry, 1)
    native = forward_of(pixel_backbone)(pixels[None])[0]
    assert dense == geometry
    torch.testing.assert_close(grid, native[2][0])
    torch.testing.assert_close(cls_t, native[0][0])
    torch.testing.assert_close(regs, native[1][0])


def test_passes_are_interleaved_in_raster_order():
    # a "model" whose one-channel token is the mean of its patch: interleaving errors would scramble a ramp
    pixels = torch.arange(64.0)[None, None, :].expand(3, 32, 64).clone()
    geometry = Geometry(16, 2, 4, (64, 32), (64, 32), False)

    def tokens(batch):
        return F.avg_pool2d(batch[:, :1], 16).permute(0, 2, 3, 1)

    dense, grid = dense_patches(tokens, pixels, geometry, 4, pad="reflect")
    assert dense.grid == (8, 16)
    centres = grid[0, :, 0]
    inside = torch.arange(2, 14)  # cells whose windows [4C - 6, 4C + 10) lie inside the 64 columns
    torch.testing.assert_close(centres[inside], inside * 4.0 - 6 + 7.5)  # the mean column of the window
    assert centres[0] > 0 and centres[1] > centres[0]  # reflected padding keeps the edge cells in order


@pytest.mark.slow
@pytest.mark.parametrize("size,density", [((83, 61), 2), ((37, 53), 4), ((500, 17), 2)])
def test_dense_maps_land_on_the_cells_squares(pixel_backbone, size, density):
    w, h = size
    geometry, pixels = native_input(pixel_backbone, noise(h, w, seed=5))
    dense, [(cls_t, regs, grid)] = shift_and_stitch(forward_of(pixel_backbone), pixels, geometry, density)
    features = Features(cls_t, regs, grid, dense, normed=False)
    r, c = dense.rows - 1, dense.cols - 2  # near the bottom-right edge of the covered area
    index = dense.index(r, c)
    sims = similarity_map(features, index)
    painted = np.asarray(render.place(render.gray((sims + 1) / 2), dense))
    assert painted.shape == (h, w)
    ys, xs = np.nonzero(painted >= 254)
    step = 16 // density
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(dense.box(index)) == \
        (c * step, r * step, (c + 1) * step, (r + 1) * step)
    assert dense.patch_at(c * step + step - 1, r * step) == index
    cw, ch = geometry.covered
    assert dense.covered == (cw, ch)
    assert not painted[:, cw:].any() and not painted[ch:, :].any()


def test_dense_geometry_round_trips_and_old_files_read_as_native():
    dense = Geometry(16, 3, 5, (90, 60), (80, 48), False).densified(4)
    assert Geometry.from_json(dense.to_json()) == dense
    assert dense.grid == (12, 20) and dense.cell_size == 4
    legacy = '{"patch_size": 16, "rows": 3, "cols": 5, "image_size": [90, 60], "input_size": [80, 48], "resized": false}'
    assert Geometry.from_json(legacy).density == 1


def test_resized_dense_geometry_scales_cells_like_patches():
    geometry, _ = Geometry.for_image(451, 300, 16, Resolution.parse("short:160"))
    dense = geometry.densified(2)
    sx, sy = geometry.scale
    assert dense.box(dense.index(1, 3)) == pytest.approx((3 * 8 * sx, 8 * sy, 4 * 8 * sx, 16 * sy))
    assert dense.patch_at(450, 299) == dense.num_patches - 1


def test_bad_density_and_budget_say_what_to_do():
    geometry = Geometry(16, 30, 40, (640, 480), (640, 480), False)
    pixels = torch.zeros(3, 480, 640)
    with pytest.raises(InputError, match="density 3 is not supported"):
        shift_and_stitch(lambda x: [], pixels, geometry, 3)
    with pytest.raises(InputError, match="19200 cells, above the budget of 16384"):
        shift_and_stitch(lambda x: [], pixels, geometry, 4, max_tokens=16384)
    with pytest.raises(InputError, match="GiB is free"):
        shift_and_stitch(lambda x: [], pixels, geometry, 4, dim=10**9)
    with pytest.raises(InputError, match="do not match"):
        shift_and_stitch(lambda x: [], pixels[:, :32], geometry, 2)
    with pytest.raises(InputError, match="does not divide"):
        Geometry(14, 2, 2, (28, 28), (28, 28), False).densified(4)
    with pytest.raises(InputError, match="unknown padding"):
        shifted_inputs(pixels, 16, 2, pad="wrap")


def test_passes_run_in_bounded_batches():
    seen = []
    geometry = Geometry(16, 2, 3, (48, 32), (48, 32), False)

    def tokens(batch):
        seen.append(batch.shape[0])
        return F.avg_pool2d(batch, 16).permute(0, 2, 3, 1)

    dense, grid = dense_patches(tokens, torch.rand(3, 32, 48), geometry, 4, batch_size=5)
    assert seen == [5, 5, 5, 1] and grid.shape == (8, 12, 3) and dense.grid == (8, 12)
