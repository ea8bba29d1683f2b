"""Segments with known answers: the pixel model (features = the patch's own pixels) on images of flat
colour regions must give exactly those regions, and one clustering over several images the same label
to the same colour everywhere."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from dinoscope import sheets
from dinoscope.analyses.segments import BACKGROUND, cosegment, kmeans, segment
from dinoscope.errors import InputError
from dinoscope.features import Features, extract_batch
from dinoscope.geometry import Geometry, Resolution

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 210), (230, 220, 40), (240, 240, 240)]
P = 16


def painted(region_of_cell, seed=0):
    """An image whose patch (r, c) is filled with COLOURS[region_of_cell[r][c]], plus a little noise."""
    regions = np.asarray(region_of_cell)
    image = np.asarray(COLOURS, dtype=np.int16)[regions].repeat(P, 0).repeat(P, 1)
    image = image + np.random.default_rng(seed).integers(-4, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), regions


def features_of(backbone, arrays):
    images = [Image.fromarray(a) for a in arrays]
    return [f[0] for f in extract_batch(backbone, images, resolution=Resolution(), normed=False)]


def same_partition(labels, regions):
    """True when labels and regions split the cells the same way (a bijection between their values)."""
    pairs = set(zip(np.asarray(labels).reshape(-1).tolist(), np.asarray(regions).reshape(-1).tolist()))
    return len(pairs) == len(set(np.asarray(labels).reshape(-1).tolist())) == len(set(np.asarray(regions).reshape(-1).tolist()))


def random_regions(rows, cols, k, seed):
    rng = np.random.default_rng(seed)
    regions = rng.integers(0, k, (rows, cols))
    regions.reshape(-1)[:k] = np.arange(k)  # every region present
    return regions


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (4, 2), (5, 3)])
def test_flat_colour_regions_are_found_exactly(pixel_backbone, k, seed):
    image, regions = painted(random_regions(5, 7, k, seed), seed)
    (f,) = features_of(pixel_backbone, [image])
    result = segment(f, k, seed=seed)
    assert result.labels[0].shape == (5, 7)
    assert result.labels[0].dtype == torch.int64
    assert same_partition(result.labels[0], regions)
    # labels are numbered by size, largest first
    sizes = np.bincount(result.labels[0].reshape(-1).numpy(), minlength=k)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_cosegmentation_gives_the_same_label_to_the_same_colour_in_every_image(pixel_backbone):
    layouts = [random_regions(4, 6, 3, s) for s in (10, 11, 12)]
    images = [painted(r, s)[0] for s, r in enumerate(layouts)]
    feats = features_of(pixel_backbone, images)
    result = cosegment(feats, 3, seed=5)
    label_of_colour = {}
    for labels, regions in zip(result.labels, layouts):
        for lab, reg in zip(labels.reshape(-1).tolist(), regions.reshape(-1).tolist()):
            assert label_of_colour.setdefault(reg, lab) == lab
    assert sorted(label_of_colour.values()) == [0, 1, 2]


def test_separate_clusterings_need_not_agree_but_the_joint_one_does(pixel_backbone):
    # region sizes differ between the images, so per-image size order gives the colours different numbers
    a = [[0] * 6] * 3 + [[1] * 6]
    b = [[1] * 6] * 3 + [[0] * 6]
    (fa, fb) = features_of(pixel_backbone, [painted(a)[0], painted(b)[0]])
    alone = [segment(f, 2).labels[0][0, 0].item() for f in (fa, fb)]
    assert alone == [0, 0]  # each image's largest region is its label 0, though the colours differ
    joint = cosegment([fa, fb], 2).labels
    assert joint[0][0, 0] != joint[1][0, 0] and joint[0][3, 0] == joint[1][0, 0]


def test_same_seed_same_segments_and_no_global_random_state_touched():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(300, 32, generator=g)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = kmeans(data, 5, seed=7)
    after = torch.rand(1)
    second = kmeans(data, 5, seed=7)
    assert torch.equal(before, after)
    assert torch.equal(first[0], second[0]) and torch.allclose(first[1], second[1])
    assert first[2] == pytest.approx(second[2])


def test_kmeans_is_a_local_optimum_of_cosine_inertia():
    data = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    labels, centroids, inertia = kmeans(data, 4, seed=1)
    unit = torch.nn.functional.normalize(data, dim=1)
    # every point is with its most similar centroid, and each centroid is its members' normalised mean
    assert torch.equal((unit @ centroids.T).argmax(1), labels)
    for c in range(4):
        mean = unit[labels == c].sum(0)
        assert torch.allclose(centroids[c], mean / mean.norm(), atol=1e-5)
    assert inertia == pytest.approx(float((1 - (unit * centroids[labels]).sum(1)).sum()), rel=1e-5)


def test_foreground_only_leaves_the_background_out(pixel_backbone):
    regions = np.full((8, 10), 4)  # a light background all round
    regions[2:6, 2:5] = 0
    regions[2:6, 5:8] = 2
    image, regions = painted(regions)
    (f,) = features_of(pixel_backbone, [image])
    result = segment(f, 2, foreground_only=True)
    labels = result.labels[0].numpy()
    assert ((labels == BACKGROUND) == (regions == 4)).all()
    assert same_partition(labels[regions != 4], regions[regions != 4])
    assert result.foreground is not None and (result.foreground[0].numpy() == (regions != 4)).all()


def test_bad_k_is_a_clear_error():
    g = Geometry(16, 2, 2, (32, 32), (32, 32), False)
    f = Features(torch.zeros(4), torch.zeros(0, 4), torch.randn(2, 2, 4), g)
    for k in (0, 5):
        with pytest.raises(InputError, match="segments"):
            segment(f, k)


def test_segment_colours_land_on_the_pixels_of_their_patches(pixel_backbone):
    image, regions = painted(random_regions(4, 5, 3, 4))
    image = np.pad(image, ((0, 9), (0, 7), (0, 0)))  # an uncovered margin at the right and bottom
    (f,) = features_of(pixel_backbone, [image])
    labels = segment(f, 3).labels[0]
    picture = np.asarray(sheets.segments_view(labels, f.geometry))
    assert picture.shape == image.shape
    colours = sheets.palette(3)
    for r, c in itertools.product(range(4), range(5)):
        block = picture[r * P:(r + 1) * P, c * P:(c + 1) * P]
        assert (block == colours[labels[r, c]]).all()
    assert not picture[4 * P:].any() and not picture[:, 5 * P:].any()
    over = np.asarray(sheets.segments_view(labels, f.geometry, Image.fromarray(image), alpha=0.5))
    assert (over[4 * P:] == image[4 * P:]).all()  # the margin shows the photo


def test_palette_colours_are_distinct():
    colours = sheets.palette(40).astype(int)
    distances = np.abs(colours[:, None] - colours[None]).sum(-1) + np.eye(40, dtype=int) * 999
    assert distances.min() > 30
