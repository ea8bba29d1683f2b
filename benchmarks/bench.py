"""dinoscope benchmarks: figures and ratios measured side by side in one run.

Random-weight DINOv3 ViT-B/16 (and ViT-S/16) in a private offline Hugging Face cache;
nothing is downloaded. Run from the repository root:

    python benchmarks/bench.py                       # every section (about 10-15 min on 2 cores)
    python benchmarks/bench.py --only forward,cache  # some sections
    python benchmarks/bench.py --quick               # fewer repeats, 640x480 only where optional

Sections: forward (matmul peak, forward GFLOP/s and % of peak, SDPA vs eager, float32 vs
bfloat16), reference (the reference way of working vs `dinoscope all`), cache (second
run vs first), matching (lapjvr vs SciPy, the beyond-budget path), help (`dinoscope
--help` time), big (a 4000x3000 photo at native resolution).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (section: what, figure, target / note)


def row(what: str, figure: str, note: str = "") -> None:
    ROWS.append((what, figure, note))
    print(f"  {what:<62} {figure:>22}  {note}", flush=True)


def machine() -> str:
    import torch

    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"{torch.backends.cpu.get_cpu_capability()}), Python {platform.python_version()}, "
            f"load average at start {common.load_average()}")


# ---------------------------------------------------------------------------------------------- forward


def section_forward(args, home: Path) -> None:
    import torch

    from dinoscope.features import forward_tokens, preprocess
    from dinoscope.geometry import Geometry, Resolution
    from dinoscope.images import load_image
    from dinoscope.models import load_model

    print("\n[forward] ViT-B/16 forward pass (blocks 0-11 + final norm), best of", args.repeats, flush=True)
    sizes = [(640, 480)] if args.quick else [(640, 480), (1024, 1024)]
    photo = load_image("sample:astronaut")

    def pixels_for(b, w, h):
        g, _ = Geometry.for_image(w, h, b.patch_size, Resolution("short", min(w, h), None))
        return preprocess(photo.resize((w, h)), g, b.mean, b.std)[None]

    f32 = load_model(common.DEFAULT_ID, device="cpu", dtype="float32")
    peak32 = common.matmul_peak(torch.float32, 2048, 5)
    peak16 = common.matmul_peak(torch.bfloat16, 2048, 5)
    results = {}
    for w, h in sizes:
        px = pixels_for(f32, w, h)
        run = lambda: forward_tokens(f32, px, [11], True)  # noqa: E731
        run()
        t = common.best_of(run, args.repeats)
        peak32 = max(peak32, common.matmul_peak(torch.float32, 2048, 3))  # peak measured beside each forward
        results[(w, h)] = (t, run()[0][2])
    row("matmul peak, float32, 2048^3 (best seen)", f"{peak32:.0f} GFLOP/s")
    row("matmul peak, bfloat16, 2048^3", f"{peak16:.0f} GFLOP/s", f"{peak16 / peak32:.2f}x float32")
    for (w, h), (t, _) in results.items():
        flops = common.vit_flops(common.tokens_for(w, h))
        rate = flops / t / 1e9
        row(f"forward float32 SDPA {w}x{h} ({flops / 1e9:.0f} GFLOP)", f"{t:.2f} s, {rate:.0f} GFLOP/s",
            f"{100 * rate / peak32:.0f}% of peak (target >= 75%)")

    # one thread, CPU time: immune to other processes on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    px = pixels_for(f32, 640, 480)
    one_peak = max(common.matmul_peak(torch.float32, 1536, 3) for _ in range(1))
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    one_peak = 2 * 1536**3 / common.best_of(lambda: a @ b, 3, time.thread_time) / 1e9
    t1 = common.best_of(lambda: forward_tokens(f32, px, [3], True), 2, time.thread_time)
    rate1 = common.vit_flops(common.tokens_for(640, 480), layers=4) / t1 / 1e9
    torch.set_num_threads(threads)
    row("1 thread, CPU time: matmul peak float32", f"{one_peak:.0f} GFLOP/s")
    row("1 thread, CPU time: forward 640x480 (4 blocks)", f"{rate1:.0f} GFLOP/s", f"{100 * rate1 / one_peak:.0f}% of 1-thread peak")

    eager = load_model(common.DEFAULT_ID, device="cpu", dtype="float32", attention="eager")
    for w, h in sizes:
        px = pixels_for(eager, w, h)
        te = common.best_of(lambda: forward_tokens(eager, px, [11], True), 1)  # noqa: F821 (del after the loop)
        row(f"eager attention {w}x{h}", f"{te:.2f} s", f"SDPA is {te / results[(w, h)][0]:.2f}x faster")
    del eager

    bf = load_model(common.DEFAULT_ID, device="cpu", dtype="bfloat16")
    for w, h in sizes:
        px = pixels_for(bf, w, h)
        run = lambda: forward_tokens(bf, px, [11], True)  # noqa: E731, F821 (del after the loop)
        run()
        tb = common.best_of(run, args.repeats)
        ref = results[(w, h)][1]
        got = run()[0][2]
        diff = (got - ref).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1]),
                                                    dim=-1).min().item()
        row(f"bfloat16 weights {w}x{h}", f"{tb:.2f} s",
            f"{results[(w, h)][0] / tb:.2f}x float32 speed; max |diff| {diff:.3f} (max |x| {ref.abs().max():.1f}), "
            f"min cosine {cos:.4f}")
    del bf

    small = load_model(common.SMALL_ID, device="cpu", dtype="float32")
    px = pixels_for(small, 640, 480)
    run = lambda: forward_tokens(small, px, [11], True)  # noqa: E731
    run()
    ts = common.best_of(run, args.repeats)
    rate = common.vit_flops(common.tokens_for(640, 480), common.VITS16) / ts / 1e9
    row("ViT-S/16 forward float32 SDPA 640x480", f"{ts:.2f} s, {rate:.0f} GFLOP/s", f"{100 * rate / peak32:.0f}% of peak")


# ---------------------------------------------------------------------------------------------- CLI runs


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return elapsed, r


def dinoscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "dinoscope", *args]


def section_reference(args, home: Path, work: Path) -> None:
    print("\n[reference] 4 analyses + matching on one photo: reference way (4 processes) vs `dinoscope all`", flush=True)
    env = common.offline_env(home, PYTHONPATH=str(ROOT / "src"), DINOSCOPE_CACHE=str(work / "unused-cache"))
    sizes = [(640, 480)] if args.quick else [(640, 480), (1024, 1024)]
    for (w, h), target in zip(sizes, (4, 6)):
        a = common.photo((w, h), "astronaut", work / f"a_{w}x{h}.jpg")
        b = common.photo((w, h), "coffee", work / f"b_{w}x{h}.jpg")
        ref_total = 0.0
        for analysis in ("norms", "pca", "similarity", "match"):
            images = [str(a), str(b)] if analysis == "match" else [str(a)]
            t, _ = timed([sys.executable, str(ROOT / "benchmarks" / "reference.py"), analysis, *images,
                          str(work / "ref-out")], env, work)
            ref_total += t
            print(f"    reference {analysis}: {t:.1f} s", flush=True)
        ours, _ = timed(dinoscope("all", str(a), "--match", str(b), "--no-cache", "-o", str(work / "out")), env, work)
        row(f"reference way, 4 processes, {w}x{h} (5 eager fwd, 4 loads)", f"{ref_total:.1f} s")
        row(f"dinoscope all --match, {w}x{h}, no cache", f"{ours:.1f} s",
            f"{ref_total / ours:.1f}x faster (target >= {target}x)")


def section_cache(args, home: Path, work: Path) -> None:
    print("\n[cache] second run on images already seen", flush=True)
    env = common.offline_env(home, PYTHONPATH=str(ROOT / "src"))
    a = common.photo((640, 480), "astronaut", work / "ca.jpg")
    b = common.photo((640, 480), "coffee", work / "cb.jpg")
    cache = work / "feature-cache"
    cmd = dinoscope("all", str(a), "--match", str(b), "--cache-dir", str(cache), "-o", str(work / "out-cache"))
    first, _ = timed(cmd, env, work)
    second = min(timed(cmd, env, work)[0] for _ in range(args.repeats))
    row("dinoscope all --match 640x480, first run (cold cache)", f"{first:.2f} s")
    row("dinoscope all --match 640x480, second run (cache hits)", f"{second:.2f} s",
        f"{first / second:.1f}x faster end to end (process start + imports + drawing included)")

    # the extraction step alone, in one process: what the cache replaces
    common.use_offline_hub(home)
    from dinoscope.cache import FeatureCache
    from dinoscope.features import Extractor

    lib_cache = FeatureCache(work / "lib-cache")
    t = time.perf_counter()
    Extractor(common.DEFAULT_ID, device="cpu", cache=lib_cache)(str(a))
    cold = time.perf_counter() - t
    def hit():
        ex = Extractor(common.DEFAULT_ID, device="cpu", cache=lib_cache)
        ex(str(a))
        assert ex.forward_passes == 0
    warm = common.best_of(hit, 3)
    row("Extractor 640x480: first call (load model + forward)", f"{cold:.2f} s")
    row("Extractor 640x480: new Extractor, cache hit", f"{warm * 1000:.0f} ms",
        f"{cold / warm:.0f}x faster (target >= 20x)")


def section_matching(args, work: Path) -> None:
    import numpy as np
    import torch

    from dinoscope.analyses.matching import _assign, match_patches
    from dinoscope.features import Features
    from dinoscope.geometry import Geometry

    print("\n[matching] exact assignment: lapjvr (float32 JV) vs scipy.optimize.linear_sum_assignment", flush=True)
    from scipy.optimize import linear_sum_assignment

    def feats(n, dim, seed, base=None):
        g = torch.Generator().manual_seed(seed)
        side = 64 if n % 64 == 0 and n <= 8192 else int(np.sqrt(n))
        x = torch.randn(n, dim, generator=g) if base is None else base[torch.randperm(n, generator=g)] + 0.7 * torch.randn(n, dim, generator=g)
        geom = Geometry(16, side, n // side, (16 * (n // side), 16 * side), (16 * (n // side), 16 * side), False)
        return Features(torch.zeros(dim), torch.zeros(0, dim), x.reshape(side, n // side, dim), geom)

    for n in ((4096,) if args.quick else (4096, 8192)):
        fa = feats(n, 768, 0)
        fb = feats(n, 768, 1, fa.flat)
        fa_n = torch.nn.functional.normalize(fa.flat, dim=-1)
        fb_n = torch.nn.functional.normalize(fb.flat, dim=-1)
        sims = (fa_n @ fb_n.T).numpy()
        t_lap = common.best_of(lambda: _assign(sims), 1)
        t_sp = common.best_of(lambda: linear_sum_assignment(sims, maximize=True), 1)
        r1, c1 = _assign(sims)
        r2, c2 = linear_sum_assignment(sims, maximize=True)
        gap = float(sims[r2, c2].astype(np.float64).sum() - sims[r1, c1].astype(np.float64).sum())
        t_full = common.best_of(lambda: match_patches(fa, fb), 1)
        row(f"exact assignment {n}x{n}: lapjvr", f"{t_lap:.2f} s",
            f"SciPy {t_sp:.2f} s ({t_sp / t_lap:.1f}x); total-score gap {gap:.2e}; "
            f"match_patches incl. similarities {t_full:.2f} s (target <= 1 s at 4096)")

    n = 40_000
    fa = feats(n, 64, 2)
    fb = feats(n, 64, 3, fa.flat)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    m = match_patches(fa, fb)
    elapsed = time.perf_counter() - t
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max(before, 0)) / 1024
    row(f"{n}x{n} patches (dense: {n * n * 4 / 2**30:.1f} GiB): {m.method}", f"{elapsed:.1f} s",
        f"{len(m)} mutual pairs; peak RSS grew by {grown:.0f} MiB")


def section_help(args, work: Path) -> None:
    print("\n[help] start-up time", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t_help = common.best_of(lambda: subprocess.run(dinoscope("--help"), capture_output=True, env=env), 3)
    t_err = common.best_of(lambda: subprocess.run(dinoscope("norms", "--layer", "x"), capture_output=True, env=env), 3)
    t_py = common.best_of(lambda: subprocess.run([sys.executable, "-c", "pass"], capture_output=True), 3)
    row("dinoscope --help", f"{t_help * 1000:.0f} ms", f"target < 1 s (bare python start {t_py * 1000:.0f} ms)")
    row("dinoscope norms --layer x (argument error)", f"{t_err * 1000:.0f} ms", "target < 1 s")


def section_big(args, home: Path, work: Path) -> None:
    print("\n[big] a 4000x3000 photo at native resolution (46,750 patches > budget of 16,384)", flush=True)
    from dinoscope.images import load_image

    big = work / "big.jpg"
    load_image("sample:astronaut").resize((4000, 3000)).save(big, quality=90)
    env = common.offline_env(home, PYTHONPATH=str(ROOT / "src"))
    layer = [] if args.big_full else ["--layer", "0"]
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
               "print(r.stderr, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", wrapper, *dinoscope("norms", str(big), "--no-cache", "-o",
                                                                     str(work / "out-big"), *layer)],
                       capture_output=True, text=True, env=env)
    seconds, rss_kib, rc = r.stdout.split()
    notice = next((l for l in r.stderr.splitlines() if "budget" in l), "(no notice)")
    what = "all 12 blocks" if args.big_full else "block 0 only; memory as for all 12, time about x12"
    row(f"4000x3000 native, dinoscope norms ({what})", f"{float(seconds):.1f} s, {int(rss_kib) / 1024**2:.2f} GiB RSS",
        f"exit {rc}; {notice.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="forward,reference,cache,matching,help,big")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--big-full", action="store_true", help="run all 12 blocks on the 4000x3000 photo (slow)")
    parser.add_argument("--work", type=Path, default=None, help="keep models and outputs here")
    args = parser.parse_args()
    sections = args.only.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="dinoscope-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    common.use_offline_hub(work / "hf-home")  # before huggingface_hub is imported: it reads HF_HOME once
    home = common.make_hub(work / "hf-home")
    print("machine:", machine(), flush=True)
    if "help" in sections:
        section_help(args, work)
    if "forward" in sections:
        section_forward(args, home)
    if "reference" in sections:
        section_reference(args, home, work)
    if "cache" in sections:
        section_cache(args, home, work)
    if "matching" in sections:
        section_matching(args, work)
    if "big" in sections:
        section_big(args, home, work)
    print(f"\nload average at end: {common.load_average()}\n")
    print("| measurement | figure | ratio / note |\n|---|---|---|")
    for what, figure, note in ROWS:
        print(f"| {what} | {figure} | {note} |")


if __name__ == "__main__":
    main()
