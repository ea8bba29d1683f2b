"""GPU benchmark: bf16 matmul peak, batched ViT-B/16 extraction throughput, end-to-end CLI time.

Random weights in a private offline Hugging Face cache; nothing is downloaded. Run from the
repository root after `pip install -e .` (or through benchmarks/gpu.sh):

    python benchmarks/gpu.py [--compile] [--budget-s 420]

Prints a markdown table. Each measurement is skipped (with a note) if the time budget
is used up, so the script always finishes and prints what it has.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

ROWS = []
STARTED = time.perf_counter()


def row(what, figure, note=""):
    ROWS.append((what, figure, note))
    print(f"  {what:<58} {figure:>24}  {note}", flush=True)


def cuda_time(fn, repeats: int) -> float:
    import torch

    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow first call)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; this script is for a GPU machine")
    work = Path(tempfile.mkdtemp(prefix="dinoscope-gpu-"))
    common.use_offline_hub(work / "hf-home")  # before huggingface_hub is imported: it reads HF_HOME once
    home = common.make_hub(work / "hf-home")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)

    peak16 = max(common.matmul_peak(torch.bfloat16, 8192, 10, "cuda") for _ in range(2))
    peak32 = common.matmul_peak(torch.float32, 8192, 5, "cuda")
    row("matmul peak bf16 8192^3", f"{peak16 / 1000:.0f} TFLOP/s")
    row("matmul peak fp32 (TF32 allowed) 8192^3", f"{peak32 / 1000:.0f} TFLOP/s")

    import dinoscope.features as F
    from dinoscope.features import forward_tokens
    from dinoscope.models import load_model

    backbone = load_model(common.DEFAULT_ID, device="cuda", dtype="bfloat16")
    variants = [("eager python blocks", backbone)]
    for (w, h), batch in (((224, 224), 256), ((640, 480), 32)):
        tokens = common.tokens_for(w, h)
        px = torch.randn(batch, 3, h, w, device="cuda", dtype=torch.bfloat16)
        for name, b in variants:
            if time.perf_counter() - STARTED > args.budget_s:
                row(f"{w}x{h} batch {batch} {name}", "skipped", "time budget used")
                continue
            def on_gpu(b=b):
                with torch.inference_mode():
                    return b.module.norm(F._vit_block_outputs(b.module, px, [11])[11])

            on_gpu()
            t = cuda_time(on_gpu, 5)
            rate = common.vit_flops(tokens) * batch / t / 1e12
            row(f"ViT-B/16 bf16 SDPA {w}x{h}, batch {batch}", f"{batch / t:.0f} img/s, {rate:.0f} TFLOP/s",
                f"{100 * rate * 1000 / peak16:.0f}% of bf16 peak (target >= 50% at 224)")
            full = lambda b=b: forward_tokens(b, px, [11], True)  # noqa: E731
            t = cuda_time(full, 3)
            row("  same, tokens copied to the CPU as float32 (extract_batch)", f"{batch / t:.0f} img/s")
        if args.compile and time.perf_counter() - STARTED < args.budget_s:
            try:
                compiled = torch.compile(F._vit_block_outputs, dynamic=False)
                blocks = [11]

                def run_c():
                    with torch.inference_mode():
                        return compiled(backbone.module, px, blocks)

                t0 = time.perf_counter()
                run_c()
                first = time.perf_counter() - t0
                t = cuda_time(run_c, 5)
                rate = common.vit_flops(tokens) * batch / t / 1e12
                row(f"  same, torch.compile (first call {first:.0f} s)", f"{batch / t:.0f} img/s, {rate:.0f} TFLOP/s",
                    f"{100 * rate * 1000 / peak16:.0f}% of bf16 peak")
            except Exception as exc:  # compile support varies by platform: report, do not fail
                row("  torch.compile", "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")

    env = common.offline_env(home, PYTHONPATH=str(ROOT / "src"))
    a = common.photo((640, 480), "astronaut", work / "a.jpg")
    b = common.photo((640, 480), "coffee", work / "b.jpg")
    for label, extra in (("float32", []), ("bfloat16", ["--dtype", "bfloat16"])):
        if time.perf_counter() - STARTED > args.budget_s:
            break
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "dinoscope", "all", str(a), "--match", str(b), "--no-cache",
                            "-o", str(work / "out"), *extra], capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - t
        row(f"dinoscope all --match 640x480 {label} (CLI, end to end)", f"{elapsed:.1f} s",
            "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    print("\n| measurement | figure | note |\n|---|---|---|")
    for what, figure, note in ROWS:
        print(f"| {what} | {figure} | {note} |")


if __name__ == "__main__":
    main()
