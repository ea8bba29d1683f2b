import numpy as np
import pytest
from PIL import Image

from dinoscope import render
from dinoscope.analyses.matching import Matches
from dinoscope.errors import InputError
from dinoscope.geometry import Geometry, Resolution


def test_colorize_range_and_errors():
    out = render.colorize(np.array([[0.0, 1.0]]), "gray", 0.0, 1.0)
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    with pytest.raises(InputError, match="colormap"):
        render.colorize(np.zeros((2, 2)), "no-such-map")


def test_place_rejects_mismatched_grid():
    g, _ = Geometry.for_image(64, 48, 16, Resolution())
    with pytest.raises(ValueError):
        render.place(np.zeros((2, 2), np.uint8), g)


def test_draw_matches_joins_patch_centres():
    ga, _ = Geometry.for_image(64, 48, 16, Resolution())
    gb, _ = Geometry.for_image(80, 64, 16, Resolution())
    m = Matches(np.array([0, 5]), np.array([19, 0]), np.array([0.2, 0.9], np.float32), "hungarian", ga, gb)
    a, b = Image.new("RGB", (64, 48), "black"), Image.new("RGB", (80, 64), "black")
    out = np.asarray(render.draw_matches(a, b, m, max_lines=None, cmap="viridis", gap=0))
    assert out.shape == (64, 144, 3)
    assert out[8, 8].tolist() != [0, 0, 0]  # centre of patch 0 in A
    x, y = gb.center(19)
    assert out[int(y), int(x) + 64].tolist() != [0, 0, 0]  # centre of patch 19 in B
    assert out[60, 10].tolist() == [255, 255, 255]  # below the shorter image: background
    top = np.asarray(render.draw_matches(a, b, m, top_k=1, cmap="gray"))
    assert top[8, 8].tolist() == [0, 0, 0] and top[int(ga.center(5)[1]), int(ga.center(5)[0])].tolist() == [255] * 3


def test_select_pairs_is_seeded():
    ga, _ = Geometry.for_image(160, 160, 16, Resolution())
    m = Matches(np.arange(100), np.arange(100), np.linspace(0, 1, 100).astype(np.float32), "mnn", ga, ga)
    one = render.select_pairs(m, max_lines=10, seed=3)
    assert len(one) == 10 and (one == render.select_pairs(m, max_lines=10, seed=3)).all()
    assert not (one == render.select_pairs(m, max_lines=10, seed=4)).all()
    assert render.select_pairs(m, top_k=3).tolist() == [99, 98, 97]


def test_overlay_checks_alpha():
    im = Image.new("RGB", (4, 4))
    with pytest.raises(InputError):
        render.overlay(im, im, 1.5)


def test_colorbar_pixels_follow_the_colormap_at_known_values():
    import matplotlib

    bar = np.asarray(render.colorbar("turbo", -1.0, 1.0, 200, label="cosine similarity", text=12))
    x, y, width = render.colorbar_geometry(12, "cosine similarity")
    height = bar.shape[0] - y - 12 // 2
    lut = matplotlib.colormaps["turbo"]
    for value in (-1.0, 0.0, 0.5, 1.0):
        row = y + round((1.0 - value) / 2.0 * (height - 1))
        expected = (np.array(lut((value + 1) / 2)[:3]) * 255 + 0.5).astype(int)
        assert np.abs(bar[row, x + width // 2].astype(int) - expected).max() <= 1, value


def test_tick_labels_tell_close_values_apart():
    assert render.tick_labels([19.59568, 19.59572, 19.59576]) == ["19.59568", "19.59572", "19.59576"]
    assert render.tick_labels([-1.0, 0.0, 1.0]) == ["-1", "0", "1"]


def test_uncovered_strip_is_hatched_and_the_covered_area_untouched():
    g, _ = Geometry.for_image(70, 50, 16, Resolution())  # covered 64x48: a 6 px strip right, 2 px below
    red = Image.new("RGB", (70, 50), (255, 0, 0))
    out = np.asarray(render.mark_uncovered(red, g))
    assert (out[:48, :64] == [255, 0, 0]).all()
    strip = out[:, 64:].reshape(-1, 3)
    assert not (strip == [255, 0, 0]).all(axis=1).any()  # every strip pixel repainted
    assert {tuple(p) for p in strip} == {(225, 225, 225), render.UNCOVERED_GREY}  # background and hatching
    assert (out[48:, :64] != [255, 0, 0]).any(axis=-1).all()


def test_caption_band_sits_below_the_picture_and_wraps():
    picture = Image.new("RGB", (120, 40), (10, 200, 10))
    out = render.caption_band(picture, "model | layer 3 | query patch 7 | 448x288 input", size=12)
    a = np.asarray(out)
    assert (a[:40] == [10, 200, 10]).all()  # the map itself is not covered
    band = a[40:]
    assert (band < 100).all(axis=-1).any()  # dark text drawn below
    assert out.height > 40 + 2 * 12  # too long for one line at this width: wrapped


def test_pca_legend_names_the_components():
    legend = np.asarray(render.pca_legend([0, 1, 2], 60))
    assert ((legend == [255, 0, 0]).all(-1)).any() and ((legend == [0, 128, 0]).all(-1)).any()
    assert ((legend == [0, 0, 255]).all(-1)).any()
