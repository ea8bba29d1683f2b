"""Exact patch matching: dense solvers (lap.lapjvr, SciPy's linear_sum_assignment) against dinoscope's
sparse, certified solver, on random and near-degenerate similarity matrices, in one run.

    python benchmarks/matching_fast.py                 # 1k and 4k all solvers, 16k the new solver only
    python benchmarks/matching_fast.py --sizes 1024 4096 --no-16k

Near-degenerate matrices are built like real ViT features: one shared mean direction plus small noise,
normalised, 768 dimensions, mean cosine about 0.56 (as random-weight ViT-B/16 features of two photos).
The 16k case computes similarity blocks from the features on the fly (the 16k x 16k matrix, 1 GiB,
is never built); its peak RSS growth is printed. Every total is checked against the dense optimum
where one was computed.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import lap
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "experimental"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common  # noqa: E402

from certified_assignment import max_similarity_assignment, max_similarity_assignment_features  # noqa: E402

DIM = 768
NOISE = 0.032  # per-dimension noise around a unit mean: mean cosine ~0.56 at 768 dimensions


def features(n: int, seed: int, degenerate: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = np.random.default_rng(99).normal(size=DIM)
    f = (mean / np.linalg.norm(mean) + rng.normal(scale=NOISE, size=(n, DIM))) if degenerate else rng.normal(size=(n, DIM))
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)


def vit_features(size: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Last-layer patch features of two bundled photos at size x size under a random-weight ViT-B/16
    (dinoscope's torch-only ViT): the similarity matrix that makes dense JV solvers crawl."""
    if cache.is_file():
        saved = np.load(cache)
        return saved["a"], saved["b"]
    from dinoscope.images import load_image
    from dinoscope.models.registry import IMAGENET_MEAN, IMAGENET_STD

    net = vit_model()
    out = []
    for sample in ("astronaut", "coffee"):
        rgb = np.asarray(load_image(f"sample:{sample}").convert("RGB").resize((size, size)), dtype=np.float32) / 255
        x = torch.from_numpy((rgb - IMAGENET_MEAN) / IMAGENET_STD).float().permute(2, 0, 1)[None]
        with torch.inference_mode():
            tokens = net(x).last_hidden_state[0, 1 + common.VITB16["num_register_tokens"]:]
        out.append(torch.nn.functional.normalize(tokens, dim=-1).numpy())
    np.savez(cache, a=out[0], b=out[1])
    return out[0], out[1]


def vit_model():
    from types import SimpleNamespace

    from dinoscope.models import vit

    cfg = SimpleNamespace(**{**vit.CONFIG_DEFAULTS, **common.VITB16})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return vit.DINOv3ViT(cfg).eval()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def dense_lapjvr(sims):
    rows, cols = lap.lapjvr(-sims.astype(np.float64), extend_cost=True, return_cost=False)
    return np.asarray(rows), np.asarray(cols)


def total(sims, pair) -> float:
    return float(sims[pair[0], pair[1]].astype(np.float64).sum())


def compare(n: int, degenerate: bool, given=None, kind: str = "") -> None:
    fa, fb = given if given is not None else (features(n, 1, degenerate), features(n, 2, degenerate))
    sims = fa @ fb.T
    kind = kind or ("near-degenerate" if degenerate else "random")
    t_new, new = timed(lambda: max_similarity_assignment(sims))
    t_lap, dense = timed(lambda: dense_lapjvr(sims))
    t_scipy, ref = timed(lambda: linear_sum_assignment(sims, maximize=True))
    same = abs(total(sims, new) - total(sims, ref)) <= 1e-9 * abs(total(sims, ref)) + 1e-6
    print(f"{n:6d} x {n:<6d} {kind:16s} mean cos {sims.mean():.2f}  lapjvr {t_lap:7.2f} s  scipy {t_scipy:7.2f} s  "
          f"new {t_new:6.2f} s  ({min(t_lap, t_scipy) / t_new:5.1f}x the faster dense)  "
          f"total {'== dense optimum' if same else 'DIFFERS from dense optimum'} "
          f"(lapjvr {total(sims, dense) - total(sims, ref):+.1e})", flush=True)


def big(n: int, degenerate: bool) -> None:
    fa, fb = (torch.from_numpy(features(n, s, degenerate)) for s in (1, 2))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_new, (rows, cols) = timed(lambda: max_similarity_assignment_features(fa, fb))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    score = float((fa[rows] * fb[cols]).sum())
    kind = "near-degenerate" if degenerate else "random"
    print(f"{n:6d} x {n:<6d} {kind:16s} new (similarities from features, blockwise) {t_new:7.2f} s, "
          f"peak RSS grew {grown:.0f} MiB (the full matrix would be {n * n * 4 / 2**20:.0f} MiB), "
          f"total {score:.3f}, {len(np.unique(cols))} distinct columns", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--big", type=int, default=16384)
    parser.add_argument("--no-16k", action="store_true")
    parser.add_argument("--vit", type=Path, metavar="NPZ",
                        help="also the 4096 x 4096 matrix of two photos at 1024x1024 under a random-weight ViT-B/16 "
                             "(features computed once and kept in NPZ)")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}; times are wall seconds of one solve from the similarity matrix")
    for n in args.sizes:
        for degenerate in (False, True):
            compare(n, degenerate)
    if args.vit:
        a, b = vit_features(1024, args.vit)
        compare(len(a), True, (a, b), "random-ViT photos")
    if not args.no_16k:
        for degenerate in (False, True):
            big(args.big, degenerate)


if __name__ == "__main__":
    main()
