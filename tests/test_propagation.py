"""Mask propagation with a known answer: coloured shapes moving over a textured background, seen by the
pixel model, are followed from a first-frame mask; plus the mask decoder and the grid <-> pixel steps."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dinoscope import sheets
from dinoscope.analyses.propagation import (
    PropagationSettings, decode_mask, grid_to_pixels, iter_propagation, mask_grid, neighbourhood, propagate,
)
from dinoscope.errors import InputError
from dinoscope.features import extract_batch
from dinoscope.geometry import Geometry, Resolution

H, W = 480, 640  # 30 x 40 patches, as ViT-B/16 sees a VGA frame; shapes 11-12 patches across, as DAVIS objects


def scene(t, background):
    """Frame t and its true labels: a red diamond moving right and down, a blue disc moving down-left.

    Slanted and curved edges cut patches in every proportion in the first frame already, so a boundary
    patch of a later frame finds neighbours covered as much as it is (a square's four straight edges
    offer only four proportions, and its boundary patches drift toward them)."""
    frame = background.copy()
    labels = np.zeros((H, W), dtype=np.int64)
    yy, xx = np.mgrid[:H, :W]
    labels[np.abs(xx - (130 + 5 * t)) + np.abs(yy - (320 + 2 * t)) <= 110] = 1
    cx, cy = 500 - 5 * t, 120 + 4 * t
    labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= 95 ** 2] = 2
    frame[labels == 1] = (230, 30, 30)
    frame[labels == 2] = (30, 60, 220)
    return frame, labels


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.slow
def test_moving_shapes_are_followed(pixel_backbone):
    rng = np.random.default_rng(0)
    # a flat green with noise: on a static texture, the pixel model would match each background patch
    # to its own position in earlier frames and keep whatever label was there (labels would stick)
    background = np.clip(np.array([70, 150, 80]) + rng.integers(-12, 13, (H, W, 3)), 0, 255).astype(np.uint8)
    frames, truth = zip(*(scene(t, background) for t in range(12)))
    feats = [f[0] for f in extract_batch(pixel_backbone, [Image.fromarray(f) for f in frames],
                                         resolution=Resolution(), normed=False)]
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)], dtype=np.uint8)
    first_mask, palette = decode_mask(colours[truth[0]])  # the mask as a user would draw it
    assert (palette[first_mask] == colours[truth[0]]).all()
    decoded = [int(np.nonzero((palette == c).all(1))[0][0]) for c in colours]  # true label -> decoded label
    assert decoded[0] == 0  # black is the background label
    truth = [np.asarray(decoded)[t] for t in truth]
    geometry = feats[0].geometry
    grids = list(iter_propagation(feats, mask_grid(first_mask, geometry)))
    assert len(grids) == len(frames)
    for t in range(1, len(frames)):
        pixels = grid_to_pixels(grids[t], geometry)
        for label in (1, 2):
            assert iou(pixels == label, truth[t] == label) > 0.9, (t, label)
    coarse = propagate(feats, first_mask, geometry)
    assert [g.shape for g in coarse] == [geometry.grid] * len(frames)
    assert all(torch.equal(a, b.argmax(-1)) for a, b in zip(coarse, grids))


def test_the_radius_keeps_labels_from_jumping_across_the_frame():
    # frame 1 shows frame 0's object patch far away: without a radius the label jumps there
    base = torch.nn.functional.normalize(torch.randn(12, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    frame0 = base.clone().reshape(1, 12, 6)
    frame1 = base.clone()
    frame1[11], frame1[0] = base[0], base[11]
    first = torch.zeros(1, 12, 2)
    first[0, :, 0] = 1
    first[0, 0] = torch.tensor([0.0, 1.0])
    settings = dict(top_k=1, window=0)
    free = list(iter_propagation([frame0, frame1.reshape(1, 12, 6)], first, PropagationSettings(radius=0, **settings)))
    near = list(iter_propagation([frame0, frame1.reshape(1, 12, 6)], first, PropagationSettings(radius=2, **settings)))
    assert free[1].argmax(-1)[0, 11] == 1
    assert near[1].argmax(-1)[0, 11] == 0
    assert neighbourhood((1, 12), 2).sum(1).tolist() == [3, 4, 5, 5, 5, 5, 5, 5, 5, 5, 4, 3]


def test_decode_mask_from_rgb_and_palette_pictures():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[1, 1] = (0, 255, 0)
    rgb[2:, 3:] = (255, 0, 0)
    labels, colours = decode_mask(rgb)
    assert colours.tolist() == [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
    assert labels[1, 1] == 1 and (labels[2:, 3:] == 2).all() and labels.sum() == 1 + 2 * 4
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 255, np.uint8)], -1)
    assert (decode_mask(rgba)[0] == labels).all()
    indexed = Image.fromarray(labels.astype(np.uint8), "P")
    indexed.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (3 * 253))  # a DAVIS-style palette PNG
    buffer = io.BytesIO()
    indexed.save(buffer, "PNG")
    assert (decode_mask(Image.open(buffer))[0] == labels).all()
    photo = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="flat colours"):
        decode_mask(photo)


def test_mask_grid_is_the_share_of_each_label_per_patch_and_back():
    g = Geometry(16, 2, 3, (50, 40), (48, 32), False)
    labels = np.zeros((40, 50), dtype=np.int64)
    labels[:16, :8] = 1  # half of patch (0, 0)
    labels[16:32, 32:48] = 2  # all of patch (1, 2)
    labels[35:, 49:] = 1  # in the uncovered margin: ignored
    grid = mask_grid(labels, g).numpy()
    assert grid.shape == (2, 3, 3)
    assert np.allclose(grid[0, 0], [0.5, 0.5, 0]) and np.allclose(grid[1, 2], [0, 0, 1])
    assert np.allclose(grid.sum(-1), 1)
    pixels = grid_to_pixels(torch.from_numpy(grid), g, smooth=False)
    assert pixels.shape == (40, 50) and (pixels[16:32, 32:48] == 2).all() and (pixels[32:] == 0).all()
    with pytest.raises(InputError, match="first frame at its own size"):
        mask_grid(labels[:30], g)


def test_frames_of_another_size_are_a_clear_error():
    first = torch.zeros(2, 3, 2)
    first[..., 0] = 1
    frames = [torch.randn(2, 3, 4), torch.randn(3, 3, 4)]
    with pytest.raises(InputError, match="same size"):
        list(iter_propagation(frames, first))


def test_mask_view_keeps_the_photo_on_the_background():
    photo = Image.fromarray(np.full((10, 12, 3), 200, np.uint8))
    labels = np.zeros((10, 12), dtype=np.int64)
    labels[2:5, 3:7] = 1
    colours = np.array([(0, 0, 0), (255, 0, 0)], np.uint8)
    picture = np.asarray(sheets.mask_view(labels, colours, photo, alpha=1.0))
    assert (picture[labels == 0] == 200).all() and (picture[labels == 1] == (255, 0, 0)).all()


def test_one_step_matches_a_numpy_reading_of_the_protocol():
    from dinoscope.analyses.propagation import propagate_step

    rng = np.random.default_rng(3)
    rows, cols, d, c, frames = 4, 5, 6, 3, 3
    n = rows * cols

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    target = unit(rng.normal(size=(n, d)))
    keys = unit(rng.normal(size=(frames, n, d)))
    labels = rng.dirichlet(np.ones(c), size=(frames, n))
    settings = PropagationSettings(top_k=4, radius=1, temperature=0.2)
    # per target patch: context patches within one row and col, exp(cos / T), the 4 largest, normalised
    cells = [divmod(i, cols) for i in range(n)]
    expected = np.zeros((n, c))
    for i, (r, cc) in enumerate(cells):
        cand = [(np.exp(target[i] @ keys[f, j] / 0.2), f, j) for f in range(frames) for j, (r2, c2) in enumerate(cells)
                if abs(r - r2) <= 1 and abs(cc - c2) <= 1]
        top = sorted(cand, reverse=True)[:4]
        total = sum(w for w, _, _ in top)
        expected[i] = sum(w / total * labels[f, j] for w, f, j in top)
    context = [(torch.from_numpy(keys[f]).float(), torch.from_numpy(labels[f]).float()) for f in range(frames)]
    got = propagate_step(torch.from_numpy(target).float(), context, settings, neighbourhood((rows, cols), 1), chunk=7)
    assert np.allclose(got.numpy(), expected, atol=1e-5)
