"""Shared by the benchmark scripts: random-weight models in an offline Hugging Face cache, test photos,
FLOP counts and timing helpers. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dinoscope.models.loading import vit_architecture

DEFAULT_ID = "facebook/dinov3-vitb16-pretrain-lvd1689m"
SMALL_ID = "facebook/dinov3-vits16-pretrain-lvd1689m"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
VITB16 = vit_architecture("vitb16")
VITS16 = vit_architecture("vits16")
MODELS = {DEFAULT_ID: VITB16, SMALL_ID: VITS16}


def make_hub(home: Path) -> Path:
    """A Hugging Face cache under `home` holding random ViT-B/16 and ViT-S/16 under their real ids."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    for i, (repo_id, cfg) in enumerate(MODELS.items()):
        repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / FAKE_COMMIT
        if (snapshot / "config.json").is_file():
            continue
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(FAKE_COMMIT)
        torch.manual_seed(i)
        DINOv3ViTModel(DINOv3ViTConfig(**cfg)).save_pretrained(snapshot)
        (snapshot / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return home


def offline_env(home: Path, **extra) -> dict:
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    env.pop("HF_HUB_CACHE", None)
    return env


def use_offline_hub(home: Path) -> None:
    """Point this process at the offline cache (before huggingface_hub is imported)."""
    os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.pop("HF_HUB_CACHE", None)


def photo(size: tuple[int, int], sample: str, path: Path) -> Path:
    """A bundled sample photo resized to `size` (w, h), saved as JPEG."""
    from dinoscope.images import load_image

    load_image(f"sample:{sample}").resize(size).save(path, quality=92)
    return path


def vit_flops(tokens: int, cfg: dict = VITB16, layers: int | None = None) -> float:
    """Multiply-adds x 2 of the transformer blocks: linear layers 2*N*(4D^2 + 2*D*I), attention 4*N^2*D."""
    d, i = cfg["hidden_size"], cfg["intermediate_size"]
    per_layer = 2 * tokens * (4 * d * d + 2 * d * i) + 4 * tokens * tokens * d
    return per_layer * (layers or cfg["num_hidden_layers"])


def tokens_for(width: int, height: int, cfg: dict = VITB16) -> int:
    p = cfg["patch_size"]
    return (width // p) * (height // p) + 1 + cfg["num_register_tokens"]


def best_of(fn, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def matmul_peak(dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of GFLOP/s of an n x n x n matrix product."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        a @ b
        sync()

    run()
    return 2 * n**3 / best_of(run, repeats) / 1e9


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
