"""The explorer's Segments and Search tabs without a browser: pictures equal to the library's, a known hit, bad input."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio", reason="the explorer needs the ui extra: pip install 'dinoscope[ui]'")

from dinoscope import ui
from ui_helpers import default_settings, same_pixels
from dinoscope.analyses import Pixel, query_index
from dinoscope.analyses.segments import cosegment
from dinoscope.errors import InputError
from dinoscope.sheets import palette, segments_view
from dinoscope.ui import insights as tabs
from dinoscope.ui.state import DETAILS


def test_segments_tab_draws_the_library_segments_and_cosegments(engine):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    ui.load_sample(engine, s, "coffee", "B")
    fa = engine.features(engine.default_label, s.slots["A"], "native")
    fb = engine.features(engine.default_label, s.slots["B"], "native")
    picture, message = tabs.segments(engine, s, default_settings(engine), k=4, alpha=0.5)
    expected = segments_view(cosegment([fa], 4).labels[0], fa.geometry, s.slots["A"].image, alpha=0.5,
                             colours=palette(4))
    assert same_pixels(picture, expected) and "4 segments of image A" in message
    picture, message = tabs.segments(engine, s, default_settings(engine), k=3.0, both=True, foreground=True)
    joint = cosegment([fa, fb], 3, foreground_only=True)
    assert "co-segments" in message and "foreground" in message
    assert picture.width == fa.geometry.image_size[0] + fb.geometry.image_size[0] + 8
    left = picture.crop((0, 0, *fa.geometry.image_size))
    assert same_pixels(left, segments_view(joint.labels[0], fa.geometry, s.slots["A"].image, colours=palette(3)))
    picture, message = tabs.segments(engine, s, default_settings(engine), k=4, sharpen=True)
    assert picture.size == s.slots["A"].image.size and "edges following the photo" in message
    assert engine.forward_passes == 2  # every drawing came from the cached features


def test_search_tab_finds_the_clicked_patch_in_image_b(engine):
    """Image B is image A itself: the clicked patch is the top hit with score 1, at the clicked place."""
    s = ui.Session()
    ui.load_sample(engine, s, "coffee", "A")
    ui.load_sample(engine, s, "coffee", "B")
    s, _, _ = ui.similarity(engine, s, default_settings(engine), "A", 130, 75)
    sheet, rows, message = tabs.search(engine, s, default_settings(engine), scope=tabs.IN_B, top=5)
    feats = engine.features(engine.default_label, s.slots["A"], "native")
    row, col = divmod(query_index(feats, Pixel(130, 75)), feats.geometry.cols)
    assert len(rows) == 5 and rows[0][:3] == ["B: coffee", row, col] and rows[0][-1] == pytest.approx(1.0)
    assert rows[0][3:7] == [col * 16, row * 16, col * 16 + 16, row * 16 + 16]
    assert [r[-1] for r in rows] == sorted((r[-1] for r in rows), reverse=True)
    assert sheet.width > 5 * 160 and "best B: coffee" in message


def test_search_tab_over_the_server_folder(tiny_model_dir, tmp_path):
    from PIL import Image

    from dinoscope.images import SAMPLES, load_image

    folder = tmp_path / "photos"
    folder.mkdir()
    load_image(SAMPLES["astronaut"]).save(folder / "astronaut.png")
    load_image(SAMPLES["chelsea"]).save(folder / "cat.png")
    e = ui.Engine(tiny_model_dir, device="cpu", disk_cache=False, workdir=tmp_path, search_folder=folder)
    try:
        s = ui.Session()
        ui.load_sample(e, s, "chelsea", "A")
        ui.similarity(e, s, default_settings(e), "A", 200, 120)
        sheet, rows, message = tabs.search(e, s, default_settings(e), scope=tabs.IN_FOLDER, top=3)
        assert rows[0][:3] == ["cat", 120 // 16, 200 // 16] and rows[0][-1] == pytest.approx(1.0, abs=1e-5)
        assert "the server's folder" in message and isinstance(sheet, Image.Image)
    finally:
        e.close()


@pytest.mark.parametrize("call,word", [
    (lambda e, s: tabs.segments(e, s, default_settings(e), k=0), "number of segments"),
    (lambda e, s: tabs.segments(e, s, default_settings(e), k=2.5), "number of segments"),
    (lambda e, s: tabs.segments(e, s, default_settings(e), k=4, both=True), "load image B"),
    (lambda e, s: tabs.search(e, s, default_settings(e)), "click a point on image A"),
    (lambda e, s: tabs.search(e, s, default_settings(e), top=0), "number of hits"),
    (lambda e, s: tabs.search(e, s, default_settings(e), scope="/etc"), "scope"),
])
def test_bad_widget_values_are_one_line_errors(engine, call, word):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    with pytest.raises(InputError, match=word):
        call(engine, s)


def test_folder_scope_without_a_search_folder_says_how_to_add_one(engine):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    ui.similarity(engine, s, default_settings(engine), "A", 20, 20)
    with pytest.raises(InputError, match="--search-folder"):
        tabs.search(engine, s, default_settings(engine), scope=tabs.IN_FOLDER)


def test_tabs_are_wired_and_errors_stay_in_the_page(engine):
    app = ui.build_app(engine=engine)
    fns = {getattr(b, "api_name", None): b for b in app.fns.values()}
    assert {"segments", "search"} <= set(fns)
    result = fns["search"].fn(ui.Session(), engine.default_label, "native", -1, DETAILS[0], tabs.IN_B, 20)
    assert result[-1].startswith("error: click a point on image A")
    result = fns["segments"].fn(ui.Session(), engine.default_label, "native", -1, DETAILS[0], 4, False, False, False,
                                 0.6)
    assert result[-1].startswith("error: load image A first")


@pytest.mark.parametrize("make,word", [(lambda p: None, "no such folder"), (lambda p: p.mkdir(), "holds no image")])
def test_cli_ui_refuses_a_missing_or_empty_search_folder_before_serving(make, word, tmp_path, capsys):
    from dinoscope.cli import main

    folder = tmp_path / "photos"
    make(folder)
    assert main(["ui", "--search-folder", str(folder), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
