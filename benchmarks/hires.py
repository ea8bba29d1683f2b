"""High-resolution features: seconds and peak memory for native, density 2 and 4 (shift-and-stitch), guided
upsampling and tiles, on 640x480 and 4000x3000 photos, random-weight ViT-S/16 and ViT-B/16 (nothing downloaded).

    python benchmarks/hires.py                    # what is feasible on this machine (see --all)
    python benchmarks/hires.py --models vits16 --sizes 640x480
    python benchmarks/hires.py --all --device cuda

Every case runs in a fresh subprocess so its peak memory is its own: "peak" is the process's peak
resident memory (CPU) or peak allocated CUDA memory, "above model" what the case added beyond the
loaded model and the photo. Without --all, full passes with more than --max-cpu-tokens tokens per
pass are skipped on the CPU (a single 4000x3000 pass is 46,750 tokens: quadratic attention makes
it many minutes on a few cores); tiles keep every pass at one tile, so they always run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CASES = ("native", "density2", "density4", "guided", "tiles")
TILE, OVERLAP = 32, 8  # patches


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(model: str, size: str, case: str, device: str) -> dict:
    """One measurement in this process; returns seconds, peak and baseline memory (MB), and notes."""
    import numpy as np
    import torch

    from dinoscope.analyses.upsample import upsample
    from dinoscope.dense import shift_and_stitch
    from dinoscope.features import forward_tokens, preprocess
    from dinoscope.geometry import Geometry, Resolution
    from dinoscope.images import load_image
    from dinoscope.models import load_model
    from dinoscope.tiles import agreement_summary, patch_agreement, tiled_tokens

    w, h = map(int, size.split("x"))
    photo = load_image("sample:chelsea").resize((w, h))
    geometry, _ = Geometry.for_image(w, h, 16, Resolution(max_tokens=None))
    cuda = device.startswith("cuda")
    note = ""
    if case == "guided":  # model-free: a 3-channel (PCA-like) map of the native grid to every pixel
        grid = np.random.default_rng(0).random(geometry.grid + (3,), dtype=np.float32)
        base = rss_mb()
        start = time.perf_counter()
        upsample(grid, geometry, photo, method="guided")
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak": rss_mb(), "base": base,
                "note": f"3 channels, joint bilateral, torch, strips over {torch.get_num_threads()} threads"}
    backbone = load_model(f"random:{model}", device=device)
    pixels = preprocess(photo, geometry, backbone.mean, backbone.std).to(backbone.device)
    forward = lambda x: forward_tokens(backbone, x, [backbone.num_layers - 1], True)
    forward(pixels[None, :, :64, :64])  # warm-up: first-call allocations and kernel selection
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mb()
    start = time.perf_counter()
    if case == "native":
        result = forward(pixels[None])[0][2][0]
    elif case.startswith("density"):
        _, [(_c, _r, result)] = shift_and_stitch(forward, pixels, geometry, int(case[-1]), batch_size=4)
        note = f"grid {tuple(result.shape[:2])}"
    else:
        [(_c, _r, result)] = tiled_tokens(forward, pixels, 16, tile=TILE, overlap=OVERLAP, batch_size=4)
        note = f"{TILE}x{TILE}-patch tiles, overlap {OVERLAP}"
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb()
    if case == "tiles" and geometry.num_patches <= 20000:  # agreement to one full pass, after the measurement
        summary = agreement_summary(patch_agreement(result, forward(pixels[None])[0][2][0]))
        note += ", cosine to full pass: mean {mean:.4f}, 5th pct {p05:.4f}, min {min:.4f}".format(**summary)
    return {"seconds": seconds, "peak": peak, "base": base, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vits16,vitb16")
    parser.add_argument("--sizes", default="640x480,4000x3000")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--all", action="store_true", help="also run full passes above --max-cpu-tokens on the CPU")
    parser.add_argument("--max-cpu-tokens", type=int, default=5000)
    parser.add_argument("--case", nargs=3, metavar=("MODEL", "SIZE", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, args.device)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"sample:chelsea resized; random weights", flush=True)
    print(f"{'model':<7} {'size':<10} {'case':<9} {'seconds':>8} {'peak MB':>8} {'above model':>11}  note")
    done_guided = set()
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        tokens = (w // 16) * (h // 16)
        for model in args.models.split(","):
            for case in args.cases.split(","):
                if case == "guided":  # independent of the model: once per size
                    if size in done_guided:
                        continue
                    done_guided.add(size)
                full_pass = case in ("native", "density2", "density4")
                if full_pass and args.device == "cpu" and not args.all and tokens > args.max_cpu_tokens:
                    print(f"{model:<7} {size:<10} {case:<9} {'skipped':>8}  one pass is {tokens} tokens, above "
                          f"--max-cpu-tokens {args.max_cpu_tokens} on the CPU (use --all or a GPU)", flush=True)
                    continue
                out = subprocess.run([sys.executable, __file__, "--device", args.device, "--case", model, size, case],
                                     capture_output=True, text=True, check=False)
                if out.returncode:
                    print(f"{model:<7} {size:<10} {case:<9} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                label = "-" if case == "guided" else model
                print(f"{label:<7} {size:<10} {case:<9} {r['seconds']:>8.2f} {r['peak']:>8.0f} "
                      f"{r['peak'] - r['base']:>11.0f}  {r['note']}", flush=True)


if __name__ == "__main__":
    main()
