"""Tiled extraction: exact where the model's receptive field is one patch (the pixel model), and an agreement
figure to a single full pass on a real-architecture random ViT (reported, only sanity-checked)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinoscope.errors import InputError
from dinoscope.features import forward_tokens, preprocess
from dinoscope.geometry import Geometry, Resolution
from dinoscope.tiles import agreement_summary, patch_agreement, tile_layout, tiled_memory_bytes, tiled_tokens


def pixels_of(backbone, h, w, seed=0):
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    geometry, _ = Geometry.for_image(w, h, backbone.patch_size, Resolution(max_tokens=None))
    return preprocess(Image.fromarray(array), geometry, backbone.mean, backbone.std)


@pytest.mark.parametrize("rows,cols,tile,overlap", [(7, 11, 4, 1), (5, 5, 8, 2), (9, 3, 3, 0), (10, 13, 6, 5)])
def test_tiles_cover_the_grid_with_equal_tiles(rows, cols, tile, overlap):
    layout = tile_layout(rows, cols, tile, overlap)
    covered = np.zeros((rows, cols), int)
    for r, c, th, tw in layout:
        assert (th, tw) == (min(tile, rows), min(tile, cols))
        covered[r:r + th, c:c + tw] += 1
    assert covered.min() >= 1


@pytest.mark.slow
@pytest.mark.parametrize("blend", ["discard", "blend"])
def test_stitching_is_exact_for_a_local_model(pixel_backbone, blend):
    pixels = pixels_of(pixel_backbone, 16 * 7, 16 * 9)
    forward = lambda x: forward_tokens(pixel_backbone, x, [0], False)
    [(_c, _r, tiled)] = tiled_tokens(forward, pixels, 16, tile=4, overlap=2, batch_size=3, blend=blend)
    full = forward(pixels[None])[0][2][0]
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)
    assert torch.allclose(patch_agreement(tiled, full), torch.ones(7, 9))


def test_agreement_of_tiles_with_one_full_pass_on_a_random_vit(tiny_backbone, capsys):
    pixels = pixels_of(tiny_backbone, 16 * 12, 16 * 16, seed=1)
    forward = lambda x: forward_tokens(tiny_backbone, x, [tiny_backbone.num_layers - 1], True)
    full = forward(pixels[None])[0][2][0]
    [(_c, _r, tiled)] = tiled_tokens(forward, pixels, 16, tile=8, overlap=4)
    summary = agreement_summary(patch_agreement(tiled, full))
    with capsys.disabled():
        print(f"\ntiny random ViT, 12x16 grid, 8x8 tiles overlapping 4: per-patch cosine to one full pass {summary}")
    assert -1 <= summary["min"] <= summary["p05"] <= summary["mean"] <= 1
    [(_c, _r, whole)] = tiled_tokens(forward, pixels, 16, tile=16, overlap=0)  # one tile is the full pass
    assert agreement_summary(patch_agreement(whole, full))["min"] > 0.9999


def test_bad_tiles_say_what_to_do():
    with pytest.raises(InputError, match="overlap"):
        tile_layout(5, 5, 4, 4)
    with pytest.raises(InputError, match="whole number"):
        tiled_tokens(lambda x: [], torch.zeros(3, 20, 32), 16)
    with pytest.raises(InputError, match="blending"):
        tiled_tokens(lambda x: [], torch.zeros(3, 32, 32), 16, blend="max")


def test_no_pass_is_larger_than_one_batch_of_tiles_whatever_the_photo():
    seen = []

    def forward(batch):
        seen.append(tuple(batch.shape))
        b, _, h, w = batch.shape
        patches = batch.reshape(b, 3, h // 16, 16, w // 16, 16).mean((3, 5)).permute(0, 2, 3, 1)
        return [(patches.new_zeros(b, 3), patches.new_zeros(b, 0, 3), patches)]

    for rows, cols in [(20, 30), (60, 90)]:
        seen.clear()
        [(_c, _r, grid)] = tiled_tokens(forward, torch.rand(3, rows * 16, cols * 16), 16, tile=8, overlap=2, batch_size=3)
        assert grid.shape == (rows, cols, 3)
        assert max(s[0] for s in seen) <= 3 and {s[2:] for s in seen} == {(128, 128)}
    small, large = (tiled_memory_bytes(r, c, 768, tile=32) for r, c in [(100, 100), (200, 200)])
    assert large - small == 3 * 100 * 100 * (768 + 1) * 4  # only the stitched output grows with the photo
