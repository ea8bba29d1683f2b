"""Collections benchmark: images/s over a generated collection with the local engine and with Ray on
this machine, and the memory ceiling of the streaming PCA fit.

    PYTHONPATH=src python benchmarks/collections.py            # 48 images, random ViT-S/16, 2 Ray CPUs
    PYTHONPATH=src python benchmarks/collections.py --images 96 --model facebook/dinov3-vitb16-pretrain-lvd1689m

Models are random weights under their real ids in an offline cache (nothing is downloaded), so the
speed is the real architecture's. Each figure is measured once after a warm-up; the memory figures
come from separate processes (peak RSS via getrusage), so they do not see each other's allocations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMALL_ID, make_hub  # noqa: E402

SIZES = [(320, 240), (256, 256), (240, 320)]


def make_photos(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1)
        noise = rng.integers(0, 60, (h, w, 3))
        sub = folder / f"set{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((base + noise).clip(0, 255).astype("uint8")).save(sub / f"img{i:03d}.jpg", quality=90)
    return folder


def engines(args, work: Path) -> dict:
    from dinoscope.collections import Job, expand_inputs, run_collection
    from dinoscope.features import Extractor
    from dinoscope.geometry import Resolution

    photos = make_photos(work / "photos", args.images)
    items = expand_inputs([str(photos)])
    make = lambda: Extractor(args.model, device="cpu", resolution=Resolution.parse("native"), batch_size=8)  # noqa: E731
    run_collection(items, make(), Job("extract"), work / "warm-up")  # untimed: weights, per-shape first-call costs
    results = {"images": len(items), "model": args.model, "cpus": os.cpu_count()}

    t = time.perf_counter()
    s = run_collection(items, make(), Job("extract"), work / "local-extract")
    results["local_extract_images_per_s"] = s.ok / (time.perf_counter() - t)
    t = time.perf_counter()
    s = run_collection(items, make(), Job("pca"), work / "local-pca")  # fit, range, write: 3 reads, 1 forward each
    results["local_pca_collection_images_per_s"] = s.ok / (time.perf_counter() - t)

    if args.no_ray:
        return results
    from dinoscope.ray_engine import ray_session, run_on_ray

    started = time.perf_counter()
    with ray_session(num_cpus=args.ray_cpus):
        results["ray_start_s"] = time.perf_counter() - started
        t = time.perf_counter()
        s = run_on_ray(items, make(), Job("extract"), work / "ray-extract")
        results["ray_extract_images_per_s"] = s.ok / (time.perf_counter() - t)
        t = time.perf_counter()
        s = run_on_ray(items, make(), Job("pca"), work / "ray-pca")
        results["ray_pca_collection_images_per_s"] = s.ok / (time.perf_counter() - t)
        t = time.perf_counter()
    results["ray_shutdown_s"] = time.perf_counter() - t
    return results


def _pca_child(mode: str, n_images: int, patches: int, dim: int) -> None:
    """Fit over n_images synthetic (patches, dim) images; print peak RSS in bytes (Linux reports KiB)."""
    import torch

    from dinoscope.analyses import PCABasis
    from dinoscope.analyses.streaming import fit_streaming

    def image(i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(patches, dim, generator=g)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    if mode == "stream":
        fit_streaming(lambda: (image(i) for i in range(n_images)), 3)
    else:
        PCABasis.fit([image(i) for i in range(n_images)], 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "before": base, "seconds": time.perf_counter() - t}))


def memory(args) -> list[dict]:
    rows = []
    for mode, n in [("stream", 16), ("stream", 128), ("stream", 512), ("all-at-once", 16), ("all-at-once", 128)]:
        r = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(args.patches), str(args.dim)],
                           capture_output=True, text=True, check=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append({"mode": mode, "images": n, "all_patches_MiB": n * args.patches * args.dim * 4 / 2**20,
                     "peak_rss_MiB": m["peak"] / 2**20, "rss_before_fit_MiB": m["before"] / 2**20,
                     "seconds": m["seconds"]})
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _pca_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--model", default=SMALL_ID)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--patches", type=int, default=1024, help="patches per synthetic image for the memory test")
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="dsbench") as tmp:
        work = Path(tmp)
        os.environ["HF_HOME"] = str(work / "hf")  # before anything imports huggingface_hub
        os.environ["HF_HUB_OFFLINE"] = "1"
        make_hub(work / "hf")
        os.environ["DINOSCOPE_CACHE"] = str(work / "cache")
        speed = engines(args, work)
    print(json.dumps(speed, indent=1))
    print(f"\n{speed['images']} images ({', '.join(f'{w}x{h}' for w, h in SIZES)}), {speed['model']}, "
          f"{speed['cpus']} CPUs")
    for key, value in speed.items():
        if key.endswith("_per_s") or key.endswith("_s"):
            print(f"  {key:36s} {value:8.2f}")
    print(f"\nstreaming PCA memory ({args.patches} patches x {args.dim} dims per image, float32):")
    print(f"  {'mode':12s} {'images':>6s} {'all patches MiB':>16s} {'RSS before MiB':>15s} {'peak RSS MiB':>13s} "
          f"{'seconds':>8s}")
    for row in memory(args):
        print(f"  {row['mode']:12s} {row['images']:6d} {row['all_patches_MiB']:16.0f} {row['rss_before_fit_MiB']:15.0f} "
              f"{row['peak_rss_MiB']:13.0f} {row['seconds']:8.2f}")


if __name__ == "__main__":
    main()
