"""Take docs/ui.png: the explorer in headless Chromium with the example photo, a second sample, a click on
the first and the pointer resting on it (the map drawn over the photo); and docs/ui-phone.png, the same
page in a phone-sized window (390x844).

Usage: python benchmarks/ui_screenshot.py [--model FOLDER_OR_NAME] [--out docs/ui.png] [--phone docs/ui-phone.png]
(default model: the tests' tiny random-weight ViT, so the maps show noise, not semantics)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from _ui_common import ROOT, random_vitb16


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=str(ROOT / "docs" / "ui.png"))
    parser.add_argument("--phone", default=str(ROOT / "docs" / "ui-phone.png"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dinoscope-shot-"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
    from ui_helpers import browser, pick_sample, served

    model = args.model or random_vitb16(work / "model", tiny=True)
    with served(model, device="cpu") as (_app, url), browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        _ready(page, "a")  # the example photo of a first visit
        pick_sample(page, "b", "astronaut")
        _ready(page, "b")
        shown = page.locator("#image-a img")
        box = shown.bounding_box()
        shown.click(position={"x": box["width"] * 0.58, "y": box["height"] * 0.33})
        page.wait_for_selector("#sim-out img", timeout=60_000)
        page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('similarity')")
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.36)
        page.wait_for_timeout(300)
        page.screenshot(path=args.out, full_page=True)
        phone = b.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
        phone.goto(url)
        _ready(phone, "a")
        shown = phone.locator("#image-a img")
        shown.scroll_into_view_if_needed()
        box = shown.bounding_box()
        shown.click(position={"x": box["width"] * 0.58, "y": box["height"] * 0.33})
        phone.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('similarity')")
        phone.wait_for_timeout(300)
        phone.screenshot(path=args.phone, full_page=False)
    print(f"wrote {args.out} and {args.phone}")


def _ready(page, slot: str) -> None:
    page.wait_for_function(f"() => document.querySelector('#image-{slot}')?.dataset.live === 'browser'",
                           timeout=120_000)


if __name__ == "__main__":
    main()
