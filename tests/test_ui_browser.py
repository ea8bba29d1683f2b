"""The explorer in a real browser: headless Chromium (Debian's package) driven by Playwright.

Starts the server on a free local port with a tiny random-weight model, picks a sample,
clicks on it, and checks that the similarity picture shown in the page is the one the
library draws for the clicked point; then, on one shared page, the overlay drawn in the
browser (hover, value readout, arrow keys), the example on first visit, redraws and
clearing, the sample dropdown left without a choice, typed top-k, the notice of a
downscaled upload and a refused model. Saves a screenshot to test-artifacts/ui.png.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from ui_helpers import (
    browser,
    chromium_available,
    pick_sample,
    quiet_gradio_env,
    served,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]  # inside Gradio, with pandas 3
IN_CI = bool(os.environ.get("CI"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

if not IN_CI:  # in CI these must be there (the CI installs them); elsewhere they may be missing
    pytest.importorskip("gradio", reason="the explorer needs the ui extra: pip install 'dinoscope[ui]'")
    pytest.importorskip("playwright", reason="the browser test needs playwright: pip install playwright")
    if not chromium_available():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium); set DINOSCOPE_CHROMIUM to another path",
                    allow_module_level=True)


def _shown(page, selector: str):
    """The picture an <img> in the page shows, fetched from its src and decoded."""
    from PIL import Image

    src = page.evaluate(f"() => document.querySelector('{selector}').src")
    data = page.request.get(src).body()
    return src, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _query_of(status: str) -> tuple[int, int]:
    m = re.search(r"pixel \((\d+), (\d+)\)", status)
    assert m, status
    return int(m.group(1)), int(m.group(2))


def _wait_status(page, pattern: str, timeout: float = 60_000):
    page.wait_for_function(
        "p => { const t = document.querySelector('#status textarea'); return t && new RegExp(p).test(t.value); }",
        arg=pattern, timeout=timeout)
    return page.input_value("#status textarea")


def test_click_shows_the_library_similarity_map(tiny_model_dir, tmp_path):
    from dinoscope.analyses import Pixel
    from dinoscope.features import Extractor
    from dinoscope.views import similarity_view

    quiet_gradio_env(tmp_path / "gradio")
    _, reference = None, Extractor(tiny_model_dir, device="cpu")
    image, feats = reference("sample:chelsea")
    with served(tiny_model_dir, device="cpu") as (app, url), browser() as b:
        page = b.new_page(viewport={"width": 1300, "height": 1250})
        page.goto(url)
        page.wait_for_selector("#image-a", timeout=30_000)
        assert page.query_selector("#sim-out img") is None  # nothing drawn before a click
        pick_sample(page, "a", "chelsea")
        _wait_status(page, r"ready: image A \(chelsea")

        shown = page.locator("#image-a img")
        box = shown.bounding_box()
        natural = page.evaluate("() => { const i = document.querySelector('#image-a img'); "
                                "return [i.naturalWidth, i.naturalHeight]; }")
        assert natural == [image.width, image.height]
        pictures = []
        for fx, fy in ((0.3, 0.4), (0.75, 0.6)):
            previous = page.input_value("#status textarea")
            shown.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
            page.wait_for_function("p => document.querySelector('#status textarea').value !== p", arg=previous,
                                   timeout=60_000)
            status = _wait_status(page, "similarity to pixel")
            x, y = _query_of(status)
            # the browser reports the clicked point in the photo's own pixels
            assert abs(x - fx * image.width) <= 2 and abs(y - fy * image.height) <= 2, (x, y)
            page.wait_for_function(
                "p => { const i = document.querySelector('#sim-out img'); return i && i.src && i.src !== p; }",
                arg=pictures[-1][0] if pictures else "", timeout=30_000)
            src, got = _shown(page, "#sim-out img")
            want = np.asarray(similarity_view(feats, Pixel(x, y), image))
            assert got.shape == want.shape
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.max() <= 2, f"page picture differs from the library's by up to {diff.max()}"
            pictures.append((src, got))
        assert not np.array_equal(pictures[0][1], pictures[1][1]), "the picture did not change with the click"
        assert app.dinoscope_engine.forward_passes == 1  # the second click ran no model
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)


def test_bad_upload_shows_a_message_and_the_page_keeps_working(tiny_model_dir, tmp_path):
    quiet_gradio_env(tmp_path / "gradio")
    junk = tmp_path / "photo.png"
    junk.write_text("this is not an image")
    with served(tiny_model_dir, device="cpu") as (app, url), browser() as b:
        page = b.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#image-a", timeout=30_000)
        with page.expect_file_chooser() as chooser:
            page.click("#upload-a")
        chooser.value.set_files(str(junk))
        status = _wait_status(page, "^error: ")
        assert "image" in status and "Traceback" not in status
        pick_sample(page, "a", "coffee")
        _wait_status(page, r"ready: image A \(coffee")
        page.get_by_role("button", name="CLS query (image A)").click()
        _wait_status(page, "similarity to the CLS token")
        assert page.query_selector("#sim-out img") is not None


# ---- one page shared by the tests below (they run in this order and build on each other)

MISSING = "vitl16 (not downloaded)"


@pytest.fixture(scope="module")
def chromium():
    """One browser for the tests below (Playwright's sync API allows one at a time in a thread)."""
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def shared(tiny_model_dir, tmp_path_factory, chromium):
    quiet_gradio_env(tmp_path_factory.mktemp("gradio"))
    models = {"tiny": str(tiny_model_dir), MISSING: str(tmp_path_factory.mktemp("nothing") / "absent")}
    with served(tiny_model_dir, device="cpu", models=models) as (app, url):
        page = chromium.new_page(viewport={"width": 1300, "height": 1250})
        page.goto(url)
        yield app, page


def _live(page, slot: str = "a"):
    page.wait_for_function(f"() => document.querySelector('#image-{slot}')?.dataset.live === 'browser'",
                           timeout=60_000)


def _canvas(page, slot: str = "a") -> np.ndarray:
    """The overlay canvas's pixels (RGBA)."""
    data = page.evaluate(f"""() => {{ const c = document.querySelector('#image-{slot} canvas.ds-canvas');
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }}""")
    return np.asarray(data[2], dtype=np.uint8).reshape(data[1], data[0], 4)


def _point(page, slot: str, fx: float, fy: float):
    box = page.locator(f"#image-{slot} img").bounding_box()
    return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy


def _readout(page, slot: str = "a") -> str:
    return page.inner_text(f"#readout-{slot} .ds-value")


def _settle(page, previous: str, pattern: str):
    page.wait_for_function("p => document.querySelector('#status textarea').value !== p", arg=previous,
                           timeout=60_000)
    return _wait_status(page, pattern)


def test_first_visit_shows_an_example_and_hover_draws_the_map_in_the_browser(shared, tiny_model_dir):
    from dinoscope.analyses import Pixel, similarity_map
    from dinoscope.features import Extractor

    app, page = shared
    _live(page)  # the example's features reached the page without any action
    assert page.input_value("#sample-a input") == "chelsea"
    assert "ready" in page.input_value("#status textarea")
    assert page.get_attribute("#ds-announce", "aria-live") == "polite"
    assert page.evaluate("() => document.querySelector('#image-a img').alt").startswith("image A")
    page.mouse.move(*_point(page, "a", 0.3, 0.4))
    page.wait_for_function("() => document.querySelector('#readout-a .ds-value').textContent.includes('row')")
    first, text1 = _canvas(page), _readout(page)
    assert first[..., 3].max() > 0, "hovering drew nothing over the photo"
    page.mouse.move(*_point(page, "a", 0.7, 0.6))
    page.wait_for_function("t => document.querySelector('#readout-a .ds-value').textContent !== t", arg=text1)
    assert not np.array_equal(first, _canvas(page)), "the overlay did not follow the pointer"
    # with the map pinned, the readout is the cosine the library computes between the two cells
    page.click("#follow input")
    page.mouse.click(*_point(page, "a", 0.25, 0.25))
    _wait_status(page, "similarity to pixel")
    qx, qy = _query_of(page.input_value("#status textarea"))
    page.mouse.move(*_point(page, "a", 0.75, 0.7))
    page.wait_for_function("() => document.querySelector('#readout-a .ds-value').dataset.value !== undefined")
    m = re.search(r"similarity (-?[\d.]+) at patch \(row (\d+), col (\d+)\)", _readout(page))
    assert m, _readout(page)
    _, feats = Extractor(tiny_model_dir, device="cpu")("sample:chelsea")
    want = float(similarity_map(feats, Pixel(qx, qy))[int(m.group(2)), int(m.group(3))])
    assert abs(float(m.group(1)) - want) < 3e-3, (m.group(0), want)
    page.click("#follow input")
    assert app.dinoscope_engine.forward_passes == 1


def test_arrow_keys_move_the_query_patch(shared):
    _, page = shared
    before = page.input_value("#status textarea")
    page.mouse.click(*_point(page, "a", 0.5, 0.5))
    status = _settle(page, before, "similarity to pixel")
    index = int(re.search(r"= patch (\d+)", status).group(1))
    page.focus("#image-a")
    page.keyboard.press("ArrowRight")
    status = _settle(page, status, f"= patch {index + 1} ")
    page.keyboard.press("ArrowDown")
    status = _settle(page, status, "similarity to pixel")
    cell = page.evaluate("() => window.dinoscope.pinned.cell")
    assert re.search(rf"\(row {cell[0]}, col {cell[1]}\)", status), (cell, status)
    assert _canvas(page)[..., 3].max() > 0


def test_leaving_the_sample_dropdown_without_choosing_loses_nothing(shared):
    _, page = shared
    before = page.input_value("#status textarea")
    page.click("#sample-b input")
    page.keyboard.press("Escape")
    page.mouse.click(*_point(page, "a", 0.2, 0.6))  # the next click must still count
    status = _settle(page, before, "similarity to pixel")
    assert "None" not in status and "unknown sample" not in status


def test_new_image_clears_old_views_and_redraws_open_ones(shared):
    _, page = shared
    page.get_by_role("tab", name="Norms").click()
    page.click("#norms-go")
    _wait_status(page, "feature norms")
    norms_src = page.evaluate("() => document.querySelector('#norms-out img').src")
    assert page.query_selector("#sim-out img") is not None
    pick_sample(page, "a", "coffee")
    page.wait_for_function("s => { const i = document.querySelector('#norms-out img'); return i && i.src !== s; }",
                           arg=norms_src, timeout=60_000)
    assert page.query_selector("#sim-out img") is None  # the old query's map is gone with the old image
    _live(page)
    assert page.evaluate("() => window.dinoscope.pinned") is None


def test_resolution_change_redraws_the_overlay_and_views(shared):
    _, page = shared
    meta = page.evaluate("() => window.dinoscope.live.A.meta")
    norms_src = page.evaluate("() => document.querySelector('#norms-out img').src")
    page.click("#resolution input")
    page.get_by_role("option", name="short:224", exact=True).click()
    page.wait_for_function("p => window.dinoscope.live.A && window.dinoscope.live.A.meta.path !== p",
                           arg=meta["path"], timeout=60_000)
    page.wait_for_function("s => document.querySelector('#norms-out img').src !== s", arg=norms_src, timeout=60_000)
    assert page.evaluate("() => window.dinoscope.live.A.meta.rows") != meta["rows"]
    page.click("#resolution input")
    page.get_by_role("option", name="native", exact=True).click()
    page.wait_for_function("r => window.dinoscope.live.A && window.dinoscope.live.A.meta.rows === r",
                           arg=meta["rows"], timeout=60_000)


def test_typing_top_k_redraws_the_matches(shared):
    _, page = shared
    pick_sample(page, "b", "astronaut")
    _live(page, "b")
    page.get_by_role("tab", name="Matching").click()
    page.click("#match-go")
    status = _wait_status(page, "matches between A and B; 50 drawn")
    number = page.locator("#top-k input[type=number]")
    number.fill("20")
    number.press("Enter")
    _settle(page, status, "; 20 drawn")


def test_large_upload_is_downscaled_with_a_notice(shared, tmp_path):
    from PIL import Image

    _, page = shared
    big = tmp_path / "big.png"
    Image.new("RGB", (2000, 1500), (90, 140, 200)).save(big)
    with page.expect_file_chooser() as chooser:
        page.click("#upload-a")
    chooser.value.set_files(str(big))
    _wait_status(page, r"ready: image A \(big, ")
    assert "downscaled from 2000x1500" in page.inner_text("#notice-a")
    w, h = page.evaluate("() => { const i = document.querySelector('#image-a img'); "
                         "return [i.naturalWidth, i.naturalHeight]; }")
    assert (w // 16) * (h // 16) <= 4096 and w < 2000


def test_a_model_that_is_not_here_is_refused_and_the_page_keeps_working(shared):
    _, page = shared
    page.click("#model input")
    page.get_by_role("option", name=MISSING, exact=True).click()
    status = _wait_status(page, "^error: ")
    assert "cannot be used" in status and "still using tiny" in status
    page.wait_for_function("() => document.querySelector('#model input').value === 'tiny'", timeout=30_000)
    _live(page)
    page.mouse.click(*_point(page, "a", 0.5, 0.5))
    _settle(page, status, "similarity to pixel")


def test_a_large_image_does_not_block_another_users_page_and_can_be_cancelled(tiny_model_dir, tmp_path, chromium):
    """Two browser contexts (two users): one's forward pass is held; the other's page loads, goes live, clicks."""
    import threading

    from PIL import Image

    from dinoscope import ui

    quiet_gradio_env(tmp_path / "gradio")
    release, held = threading.Event(), threading.Event()

    class HeldForBig(ui.Engine):
        def _forward(self, extractor, slot):
            if slot.label == "big":
                held.set()
                release.wait(90)
            return super()._forward(extractor, slot)

    engine = HeldForBig(tiny_model_dir, device="cpu", disk_cache=False)
    Image.new("RGB", (800, 600), (30, 60, 90)).save(tmp_path / "big.png")
    try:
        b = chromium
        with served(tiny_model_dir, engine=engine) as (_, url):
            first = b.new_context(viewport={"width": 1300, "height": 1100}).new_page()
            first.goto(url)
            _live(first)
            with first.expect_file_chooser() as chooser:
                first.click("#upload-a")
            chooser.value.set_files(str(tmp_path / "big.png"))
            assert held.wait(60)
            second = b.new_context(viewport={"width": 1300, "height": 1100}).new_page()
            second.goto(url)
            _live(second)  # the other user's example went live while the big pass is held
            second.mouse.click(*_point(second, "a", 0.4, 0.4))
            _wait_status(second, "similarity to pixel")
            first.click("#cancel")
            _wait_status(first, "^cancelled")
            assert not release.is_set()
    finally:
        release.set()
