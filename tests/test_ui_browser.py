"""The explorer in a real browser: headless Chromium (Debian's package) driven by Playwright.

Starts the server on a free local port with a tiny random-weight model, picks a sample,
clicks on it, and checks that the similarity picture shown in the page is the one the
library draws for the clicked point. Saves a screenshot to test-artifacts/ui.png.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ui_helpers import browser, chromium_available, pick_sample, quiet_gradio_env, served

pytestmark = pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")  # inside Gradio, with pandas 3
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
        _wait_status(page, "sample chelsea")

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
        _wait_status(page, "sample coffee")
        page.get_by_role("button", name="CLS query (image A)").click()
        _wait_status(page, "similarity to the CLS token")
        assert page.query_selector("#sim-out img") is not None
