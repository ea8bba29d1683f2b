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
