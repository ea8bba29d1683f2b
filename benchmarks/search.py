"""Search benchmark: seconds and peak memory to find the top hits for one query over 1,000 images'
features of ViT-B size (768-d tokens on a 30 x 40 grid, what ViT-B/16 gives for a 640 x 480 photo).

    PYTHONPATH=src python benchmarks/search.py                    # 1,000 images, in memory and from files
    PYTHONPATH=src python benchmarks/search.py --images 200 --block-patches 16384 --dtype float32 --threads 1

Two sources, each measured in its own process so peak memory (getrusage's max RSS) is its own:
- memory: Features built on the fly from a pool of 16 random grids (the arithmetic of 1,000 images,
  without 3.7 GB of them held at once);
- files: an `extract`-style folder of .safetensors files (float16 by default, 1.8 MB each), read one at
  a time through `saved_features`; the folder is written to a temporary directory first (not timed).
Times are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS, COLS, DIM = 30, 40, 768
POOL = 16


def geometry():
    from dinoscope.geometry import Geometry

    return Geometry(16, ROWS, COLS, (COLS * 16, ROWS * 16), (COLS * 16, ROWS * 16), False)


def pool(dtype):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(ROWS, COLS, DIM, generator=g).to(dtype) for _ in range(POOL)]


def features(patches):
    import torch

    from dinoscope.features import Features

    return Features(torch.zeros(DIM, dtype=patches.dtype), torch.zeros(0, DIM, dtype=patches.dtype), patches, geometry())


def in_memory(n, dtype):
    grids = pool(dtype)
    return ((f"img{i:05d}", features(grids[i % POOL])) for i in range(n))


def write_folder(folder: Path, n: int, dtype) -> None:
    grids = pool(dtype)
    for i in range(n):
        features(grids[i % POOL]).save(folder / f"img{i:05d}.safetensors")


def child(args) -> dict:
    import torch

    from dinoscope.analyses.search import saved_features, search

    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    query = torch.randn(DIM, generator=torch.Generator().manual_seed(1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sources = in_memory(args.images, dtype) if args.child == "memory" else saved_features(args.folder)
    start = time.perf_counter()
    hits = search(query, sources, top=args.top, block_patches=args.block_patches)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"source": args.child, "images": args.images, "patches": args.images * ROWS * COLS, "seconds": seconds,
            "images_per_s": args.images / seconds, "peak_rss_mib": peak / 1024,
            "growth_mib": (peak - before) / 1024, "best_score": hits[0].score, "torch_threads": torch.get_num_threads()}


def run_child(mode: str, args, folder: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--images", str(args.images), "--top", str(args.top),
               "--block-patches", str(args.block_patches), "--dtype", args.dtype, "--threads", str(args.threads)]
    if folder is not None:
        command += ["--folder", str(folder)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--block-patches", type=int, default=65536)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", choices=["memory", "files"])
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = [run_child("memory", args, None)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_folder(Path(tmp), args.images, __import__("torch").__dict__[args.dtype])
        print(f"wrote {args.images} {args.dtype} feature files in {time.perf_counter() - start:.1f} s (not timed below)")
        results.append(run_child("files", args, Path(tmp)))
    print(f"search for the top {args.top} of {args.images} images x {ROWS}x{COLS} patches x {DIM}-d, "
          f"blocks of {args.block_patches} patches, {args.dtype}")
    for r in results:
        print(f"  {r['source']:>6}: {r['seconds']:.2f} s ({r['images_per_s']:.0f} images/s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['growth_mib']:.0f} MiB during the search), "
              f"{r['torch_threads']} torch threads")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
