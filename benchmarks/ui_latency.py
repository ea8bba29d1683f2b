"""Explorer click-to-updated-picture latency on this machine (server side), ViT-B/16 random weights, 640x480 image.

Measures, after the first forward pass:
  * callback: the click handler (cached features -> similarity map -> overlay picture)
  * callback + PNG: plus writing the PNG the page receives (zlib level 1, as the app does)
  * HTTP: a full round trip through a local Gradio server (queue, encoding, result file), via gradio_client
  * browser (headless Chromium, --browser): time to first picture on page load (the example image shown
    and its features in the page), hover latency (pointer move -> overlay redrawn, computed in the page;
    measured inside the page and from Playwright), click -> Similarity-tab picture shown

Usage: python benchmarks/ui_latency.py [--clicks 50] [--tiny] [--browser] [--no-http]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from _ui_common import percentiles, photo_640x480, random_vitb16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="use the tests' tiny model instead of ViT-B/16")
    parser.add_argument("--no-http", action="store_true", help="skip the round trip through a local server")
    parser.add_argument("--browser", action="store_true", help="also measure in headless Chromium")
    parser.add_argument("--browser-only", action="store_true", help="only the browser figures")
    args = parser.parse_args()
    if args.browser_only:
        work = Path(tempfile.mkdtemp(prefix="dinoscope-bench-"))
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
        browser_figures(random_vitb16(work / "model", tiny=args.tiny), photo_640x480(), work, args.clicks)
        return
    work = Path(tempfile.mkdtemp(prefix="dinoscope-bench-"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
    import torch

    from dinoscope import ui
    from dinoscope.images import image_digest

    model = random_vitb16(work / "model", tiny=args.tiny)
    image = photo_640x480()
    engine = ui.Engine(model, device="cpu", disk_cache=False, workdir=work)
    session = ui.Session()
    session.slots["A"] = ui.Slot(image, image_digest(image), "photo")
    settings = ui.Settings(engine.default_label)
    rng = random.Random(0)
    t = time.perf_counter()
    engine.backbone(settings.model)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    ui.similarity(engine, session, settings, "A", 320, 240)
    first_s = time.perf_counter() - t
    cb, cb_png = [], []
    for _ in range(args.clicks):
        x, y = rng.uniform(0, 639), rng.uniform(0, 479)
        t = time.perf_counter()
        _, picture, _ = ui.similarity(engine, session, settings, "A", x, y)
        mid = time.perf_counter()
        ui.deliver(engine, session, (picture,))  # the PNG the page receives (what the app does)
        end = time.perf_counter()
        cb.append((mid - t) * 1000)
        cb_png.append((end - t) * 1000)
    assert engine.forward_passes == 1
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {'tiny' if args.tiny else 'ViT-B/16'} random weights; image 640x480, native resolution "
          f"({image.width // 16}x{image.height // 16} patches)")
    print(f"model load {load_s:.2f} s; first click (forward pass) {first_s * 1000:.0f} ms")
    for name, values in (("callback", cb), ("callback + PNG", cb_png)):
        p = percentiles(values)
        print(f"{name:<16} mean {statistics.mean(values):6.1f} ms  p50 {p[50]:6.1f}  p95 {p[95]:6.1f}  p99 {p[99]:6.1f}  "
              f"({len(values)} clicks)")
    engine.close()
    if args.no_http:
        return
    from gradio_client import Client, handle_file
    from ui_helpers import served

    photo = work / "photo.png"
    image.save(photo)
    with served(model, device="cpu", warm=False) as (app, url):
        client = Client(url, verbose=False)
        label = app.dinoscope_engine.default_label
        client.predict(handle_file(str(photo)), label, "native", -1, "patch grid", api_name="/upload_a")
        client.predict("A", 320, 240, label, "native", -1, "patch grid", ui.SAME, 0.55, "turbo",
                       api_name="/similarity_at")
        http_ms = []
        for _ in range(args.clicks):
            x, y = rng.uniform(0, 639), rng.uniform(0, 479)
            t = time.perf_counter()
            client.predict("A", x, y, label, "native", -1, "patch grid", ui.SAME, 0.55, "turbo",
                           api_name="/similarity_at")
            http_ms.append((time.perf_counter() - t) * 1000)
        assert app.dinoscope_engine.forward_passes == 1
        p = percentiles(http_ms)
        print(f"{'HTTP round trip':<16} mean {statistics.mean(http_ms):6.1f} ms  p50 {p[50]:6.1f}  p95 {p[95]:6.1f}  "
              f"p99 {p[99]:6.1f}  ({len(http_ms)} clicks, gradio_client against 127.0.0.1)")
        client.close() if hasattr(client, "close") else None
    if args.browser:
        browser_figures(model, image, work, args.clicks)


def _summary(name: str, values) -> None:
    p = percentiles(values)
    print(f"{name:<34} p50 {p[50]:7.1f} ms  p95 {p[95]:7.1f}  ({len(values)} samples)")


def browser_figures(model, image, work: Path, n: int) -> None:
    """The page as a user meets it: load, hover, click (headless Chromium on this machine)."""
    from ui_helpers import browser, served

    photo = work / "photo.png"
    image.save(photo)
    rng = random.Random(1)
    started = time.perf_counter()
    with served(model, device="cpu", warm=False) as (_app, url), browser() as b:
        page = b.new_page(viewport={"width": 1300, "height": 1100})
        t = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("#image-a img", timeout=300_000)
        shown = time.perf_counter() - t
        page.wait_for_function("() => document.querySelector('#image-a')?.dataset.live === 'browser'",
                               timeout=300_000)
        live = time.perf_counter() - t
        print(f"page load -> example photo shown {shown:.2f} s; -> map live under the pointer {live:.2f} s "
              f"(server started {t - started:.1f} s earlier; includes the model load and the example's pass)")
        with page.expect_file_chooser() as chooser:
            page.click("#upload-a")
        chooser.value.set_files(str(photo))
        page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('ready')",
                               timeout=300_000)
        page.wait_for_function("() => window.dinoscope.live.A?.meta.cols === 40 && window.dinoscope.live.A.feats",
                               timeout=300_000)
        box = page.locator("#image-a img").bounding_box()
        page.evaluate("() => { window.dinoscope.drawMs = []; }")
        hover = []
        for _ in range(n):
            x, y = box["x"] + box["width"] * rng.uniform(0.05, 0.95), box["y"] + box["height"] * rng.uniform(0.05, 0.95)
            before = page.inner_text("#readout-a .ds-value")
            t = time.perf_counter()
            page.mouse.move(x, y)
            page.wait_for_function("b => document.querySelector('#readout-a .ds-value').textContent !== b",
                                   arg=before, timeout=10_000, polling="raf")
            hover.append((time.perf_counter() - t) * 1000)
        inside = page.evaluate("() => window.dinoscope.drawMs")
        clicks = []
        for _ in range(n):
            src = page.evaluate("() => document.querySelector('#sim-out img')?.src || ''")
            x, y = box["x"] + box["width"] * rng.uniform(0.05, 0.95), box["y"] + box["height"] * rng.uniform(0.05, 0.95)
            t = time.perf_counter()
            page.mouse.click(x, y)
            page.wait_for_function("s => { const i = document.querySelector('#sim-out img'); "
                                   "return i && i.src !== s && i.complete; }", arg=src, timeout=30_000)
            clicks.append((time.perf_counter() - t) * 1000)
        print(f"image 640x480 at native resolution (40x30 = 1200 patches, features sent once: "
              f"{page.evaluate('() => window.dinoscope.live.A.meta.bytes') / 1e6:.1f} MB)")
        _summary("hover: compute + draw in the page", inside)
        _summary("hover: pointer move -> readout (Playwright)", hover)
        _summary("click -> Similarity picture shown", clicks)


if __name__ == "__main__":
    main()
