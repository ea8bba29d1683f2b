"""Bounded load test of the explorer: N simulated users against a local server for S seconds.

Each user is its own Gradio session (gradio_client): it uploads its own 640x480 photo (a
forward pass, serialised with everyone else's by the model lock), then clicks at random
points, with a PCA or a norms picture every tenth action and a new photo every fortieth.
Prints latency percentiles per action and overall, and the error count.

Usage: python benchmarks/ui_load.py [--users 8] [--seconds 60] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from _ui_common import percentiles, photo_640x480, random_vitb16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tiny", action="store_true", help="use the tests' tiny model instead of ViT-B/16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dinoscope-load-"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
    import numpy as np
    from gradio_client import Client, handle_file

    from dinoscope import ui
    from ui_helpers import served

    model = random_vitb16(work / "model", tiny=args.tiny)
    base = np.asarray(photo_640x480(), dtype=np.int16)

    def new_photo(user: int, n: int) -> str:
        from PIL import Image

        rng = np.random.default_rng(user * 1000 + n)  # a distinct image each time: a real forward pass
        pixels = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        path = work / f"user{user}-{n}.png"
        Image.fromarray(pixels).save(path)
        return str(path)

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()

    with served(model, device="cpu") as (app, url):
        label = app.dinoscope_engine.default_label
        common = (label, "native", -1, "patch grid")
        start = time.monotonic()
        stop_at = start + args.seconds

        def timed(kind, fn):
            t = time.perf_counter()
            try:
                out = fn()
                status = out[-1] if isinstance(out, (tuple, list)) else ""
                if isinstance(status, str) and status.startswith(("error", "internal error")):
                    raise RuntimeError(status)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with lock:
                    errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
                return
            with lock:
                latencies[kind].append((time.perf_counter() - t) * 1000)

        def user(i: int) -> None:
            rng = random.Random(i)
            client = Client(url, verbose=False)
            photos = 0
            timed("new photo (+ forward)", lambda: client.predict(handle_file(new_photo(i, photos)), *common, api_name="/upload_a"))
            step = 0
            while time.monotonic() < stop_at:
                step += 1
                if step % 40 == 0:
                    photos += 1
                    timed("new photo (+ forward)",
                          lambda: client.predict(handle_file(new_photo(i, photos)), *common, api_name="/upload_a"))
                elif step % 10 == 0:
                    if rng.random() < 0.5:
                        timed("pca", lambda: client.predict(*common, "1,2,3", False, False, "viridis", api_name="/pca"))
                    else:
                        timed("norms", lambda: client.predict(*common, "A", 0.0, "inferno", api_name="/norms"))
                else:
                    x, y = rng.uniform(0, 639), rng.uniform(0, 479)
                    timed("click", lambda: client.predict("A", x, y, *common, ui.SAME, 0.55, "turbo",
                                                          api_name="/similarity_at"))

        threads = [threading.Thread(target=user, args=(i,)) for i in range(args.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        engine = app.dinoscope_engine
        # the server still answers after the run
        t = time.perf_counter()
        Client(url, verbose=False).predict("chelsea", *common, api_name="/sample_a")
        after_ms = (time.perf_counter() - t) * 1000
        passes = engine.forward_passes

    everything = [v for values in latencies.values() for v in values]
    total = len(everything) + len(errors)
    print(f"{args.users} users, {elapsed:.0f} s, {'tiny' if args.tiny else 'ViT-B/16'} random weights, "
          f"{os.cpu_count()} CPU cores; {total} requests ({total / elapsed:.1f}/s), {passes} forward passes")
    for kind in sorted(latencies):
        p = percentiles(latencies[kind])
        print(f"  {kind:<22} n={len(latencies[kind]):5d}  p50 {p[50]:7.0f} ms  p95 {p[95]:7.0f} ms  p99 {p[99]:7.0f} ms")
    p = percentiles(everything)
    print(f"  {'all':<22} n={len(everything):5d}  p50 {p[50]:7.0f} ms  p95 {p[95]:7.0f} ms  p99 {p[99]:7.0f} ms")
    print(f"errors: {len(errors)}" + ("" if not errors else " e.g. " + "; ".join(errors[:3])))
    print(f"server answered a new request after the run in {after_ms:.0f} ms")


if __name__ == "__main__":
    main()
