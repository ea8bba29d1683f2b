import pytest

from dinoscope.errors import InputError
from dinoscope.geometry import Geometry, Resolution


def test_native_drops_remainder_and_keeps_pixels():
    g, notice = Geometry.for_image(451, 300, 16, Resolution())
    assert notice is None
    assert (g.rows, g.cols) == (18, 28)
    assert g.input_size == (448, 288) and g.covered == (448, 288) and g.scale == (1.0, 1.0)
    assert g.box(0) == (0, 0, 16, 16)
    assert g.box(g.index(17, 27)) == (432, 272, 448, 288)


def test_reference_grid_for_640x427():
    g, _ = Geometry.for_image(640, 427, 16, Resolution())
    assert g.grid == (26, 40)


@pytest.mark.parametrize("text,expected", [("short:768", (1152, 768)), ("long:768", (768, 512)), ("960", (1440, 960))])
def test_resize_policies_round_to_patch(text, expected):
    g, _ = Geometry.for_image(600, 400, 16, Resolution.parse(text))
    assert g.input_size == expected
    assert g.resized and g.covered == (600, 400)
    # the last patch ends at the image's edge
    assert g.box(g.num_patches - 1)[2:] == pytest.approx((600, 400))


def test_token_budget_downscales_with_notice():
    g, notice = Geometry.for_image(4000, 3000, 16, Resolution(max_tokens=4096))
    assert g.num_patches <= 4096 and g.num_patches > 3500
    assert "4000x3000" in notice and "max_tokens=" in notice
    assert g.resized and g.covered == (4000, 3000)
    g2, notice2 = Geometry.for_image(4000, 3000, 16, Resolution(max_tokens=None))
    assert notice2 is None and g2.num_patches == 250 * 187


def test_patch_at_inverts_box():
    g, _ = Geometry.for_image(451, 300, 16, Resolution.parse("short:200"))
    for index in (0, 5, g.num_patches // 2, g.num_patches - 1):
        x0, y0, x1, y1 = g.box(index)
        assert g.patch_at(x0 + 0.01, y0 + 0.01) == index
        assert g.patch_at(x1 - 0.01, y1 - 0.01) == index


@pytest.mark.parametrize("x,y,where", [(449, 10, "margin"), (10, 295, "margin"), (-1, 0, "outside"), (451, 0, "outside")])
def test_pixels_outside_the_grid_are_refused(x, y, where):
    g, _ = Geometry.for_image(451, 300, 16, Resolution())
    with pytest.raises(InputError, match=where):
        g.patch_at(x, y)


def test_bad_inputs():
    with pytest.raises(InputError, match="smaller than one"):
        Geometry.for_image(15, 15, 16, Resolution())
    with pytest.raises(InputError):
        Resolution.parse("huge")
    g, _ = Geometry.for_image(64, 32, 16, Resolution())
    with pytest.raises(InputError, match="outside"):
        g.cell(8)
    with pytest.raises(InputError, match="outside"):
        g.index(2, 0)


def test_json_round_trip():
    g, _ = Geometry.for_image(451, 300, 16, Resolution.parse("long:512"))
    assert Geometry.from_json(g.to_json()) == g
