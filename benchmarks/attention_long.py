"""Forward pass of a random-weight ViT-B/16 (dinoscope's torch-only ViT) on a 1242x2436 phone portrait at
native size (11,704 patches + 5 prefix tokens), against the machine's measured matmul peak.

    python benchmarks/attention_long.py                       # all 12 blocks, float32, SDPA
    python benchmarks/attention_long.py --dtype bfloat16 --attention blocked --layers 2
    python benchmarks/attention_long.py --kernels             # one attention call per kernel, 1 thread, CPU time
    python benchmarks/attention_long.py --error               # bf16 error vs float32, 1 block

Prints: peak (2048^3 matmul, best of 3) for the dtype, FLOPs (linear layers + attention matmuls), wall
time, GFLOP/s, ratio to the FLOP floor, peak RSS of the process. Run two configurations back to back
(or interleaved by an outside timer) on a shared machine and compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "experimental"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common  # noqa: E402
import blocked_attention as attention_kernel  # noqa: E402
from dinoscope.models import vit  # noqa: E402

WIDTH, HEIGHT = 1242, 2436
KERNELS = {"sdpa": F.scaled_dot_product_attention, "blocked": attention_kernel.blocked_attention}


def model(layers: int, dtype: torch.dtype) -> vit.DINOv3ViT:
    cfg = SimpleNamespace(**{**vit.CONFIG_DEFAULTS, **common.VITB16, "num_hidden_layers": layers})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return vit.DINOv3ViT(cfg).eval().to(dtype)


def pixels(dtype: torch.dtype) -> torch.Tensor:
    p = common.VITB16["patch_size"]
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, HEIGHT // p * p, WIDTH // p * p, generator=g).to(dtype)


def forward(args) -> None:
    dtype = getattr(torch, args.dtype)
    vit.nn.functional.scaled_dot_product_attention = KERNELS[args.attention]  # the ViT's attention call
    peak = common.matmul_peak(dtype, 2048, 3)
    net, x = model(args.layers, dtype), pixels(dtype)
    tokens = common.tokens_for(WIDTH, HEIGHT)
    flops = common.vit_flops(tokens, layers=args.layers)
    with torch.inference_mode():
        start = time.perf_counter()
        net(x)
        seconds = time.perf_counter() - start
    floor = flops / (peak * 1e9)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.attention:8s} {args.dtype:9s} {args.layers:2d} blocks, {tokens} tokens, {torch.get_num_threads()} threads: "
          f"{seconds:6.1f} s, {flops / seconds / 1e9:5.0f} GFLOP/s, {flops / 1e12:.2f} TFLOP, "
          f"peak {peak:.0f} GFLOP/s, floor {floor:.1f} s, {seconds / floor:.2f}x floor, peak RSS {rss:.0f} MiB",
          flush=True)


def kernels(args) -> None:
    """Each kernel once on the portrait's q, k, v (12 heads of 64), one thread, CPU time (robust to sharing)."""
    torch.set_num_threads(1)
    heads, dim = common.VITB16["num_attention_heads"], common.VITB16["hidden_size"] // common.VITB16["num_attention_heads"]
    tokens = common.tokens_for(WIDTH, HEIGHT)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, dim, generator=g) for _ in range(3))
    flops = 4 * tokens * tokens * dim * heads
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1536, 1536, dtype=dtype), torch.randn(1536, 1536, dtype=dtype)
        peak = 2 * 1536**3 / common.best_of(lambda: a @ b, 5, time.thread_time) / 1e9
        qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
        for name in ("sdpa", "blocked"):
            with torch.inference_mode():
                seconds = common.best_of(lambda: KERNELS[name](qd, kd, vd), 1, time.thread_time)
            print(f"attention {name:8s} {str(dtype)[6:]:9s} 1 thread: {seconds:5.2f} s CPU, "
                  f"1-thread peak {peak:.0f} GFLOP/s, floor {flops / peak / 1e9:.2f} s, "
                  f"{seconds * peak * 1e9 / flops:.2f}x floor", flush=True)


def error(args) -> None:
    """Largest deviation of one block's output from float32 SDPA, relative to the output's largest value."""
    results = {}
    for dtype, name in ((torch.float32, "sdpa"), (torch.bfloat16, "sdpa"), (torch.bfloat16, "blocked")):
        vit.nn.functional.scaled_dot_product_attention = KERNELS[name]
        with torch.inference_mode():
            results[dtype, name] = model(1, dtype)(pixels(dtype)).last_hidden_state.float()
    exact = results[torch.float32, "sdpa"]
    for (dtype, name), out in results.items():
        if dtype != torch.float32:
            dev = (out - exact).abs()
            print(f"bfloat16 {name:8s} vs float32 (1 block): max |error| {dev.max():.3g} "
                  f"({dev.max() / exact.abs().max():.2%} of max |output|), mean {dev.mean():.3g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="sdpa", choices=sorted(KERNELS))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--kernels", action="store_true", help="time each attention kernel alone")
    parser.add_argument("--error", action="store_true", help="bf16 error vs float32")
    args = parser.parse_args()
    if args.kernels:
        kernels(args)
    elif args.error:
        error(args)
    else:
        forward(args)


if __name__ == "__main__":
    main()
