"""Take docs/ui.png: the explorer in headless Chromium after picking two samples and clicking on one.

Usage: python benchmarks/ui_screenshot.py [--model FOLDER_OR_NAME] [--out docs/ui.png]
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dinoscope-shot-"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
    from ui_helpers import browser, pick_sample, served

    model = args.model or random_vitb16(work / "model", tiny=True)
    with served(model, device="cpu") as (_app, url), browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#image-a", timeout=30_000)
        pick_sample(page, "a", "chelsea")
        pick_sample(page, "b", "astronaut")
        shown = page.locator("#image-a img")
        box = shown.bounding_box()
        shown.click(position={"x": box["width"] * 0.58, "y": box["height"] * 0.33})
        page.wait_for_selector("#sim-out img", timeout=60_000)
        page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('similarity')")
        page.screenshot(path=args.out, full_page=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
