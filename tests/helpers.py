"""Shared by the tests: small random DINOv3 models, a fake Hugging Face cache, and one way to run
the CLI (or any Python) in a subprocess on this worktree's code. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dinoscope.models.loading import vit_architecture

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TESTS = ROOT / "tests"

DEFAULT_ID = "facebook/dinov3-vitb16-pretrain-lvd1689m"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

VITB16 = vit_architecture("vitb16")
TINY = dict(VITB16, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)


def build_vit(seed: int = 0, **overrides):
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(**{**TINY, **overrides})).eval()
    # random init leaves layer-scale at 1 and norms at identity; perturb them so every weight matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "lambda" in name or "layer_scale" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def build_pixel_vit():
    """A one-block DINOv3 ViT whose patch tokens are the (normalised) pixels of their own patch.

    The patch embedding is an identity over the 3x16x16 patch, the block's residual branches are
    scaled to zero, and extraction without the final norm returns the embeddings: a model whose
    features have a known answer, run through the real extraction path.
    """
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(hidden_size=768, intermediate_size=8, num_attention_heads=12, num_hidden_layers=1,
                          num_register_tokens=4, patch_size=16)
    model = DINOv3ViTModel(cfg).eval()
    with torch.no_grad():
        conv = model.embeddings.patch_embeddings
        conv.weight.zero_()
        conv.bias.zero_()
        for k in range(768):
            c, rest = divmod(k, 256)
            i, j = divmod(rest, 16)
            conv.weight[k, c, i, j] = 1.0
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.zero_()
    return model


def fake_hf_cache(home: Path, config: dict, seed: int = 1) -> Path:
    """A Hugging Face cache under `home` holding a random DINOv3 ViT with `config` under DEFAULT_ID."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    repo = home / "hub" / ("models--" + DEFAULT_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    torch.manual_seed(seed)
    DINOv3ViTModel(DINOv3ViTConfig(**config)).save_pretrained(snapshot)
    (snapshot / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return home


def cli_env(hf_home: Path | None = None, *, offline: bool = True, drop_hf: bool = False, **extra) -> dict:
    """This process's environment for a child running the worktree's code (PYTHONPATH=src unless given).

    offline sets HF_HUB_OFFLINE=1; drop_hf removes every HF_*/HUGGING* variable first (for tests that
    point the child at their own hub); extra variables are set last.
    """
    env = {k: v for k, v in os.environ.items() if not (drop_hf and k.startswith(("HF_", "HUGGING")))}
    env.pop("HF_HUB_CACHE", None)
    env.update(PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    env.update(extra)
    return env


def run_cli(*args, hf_home: Path | None = None, env: dict | None = None, cwd=None, timeout: float = 600,
            module: str | None = "dinoscope") -> subprocess.CompletedProcess:
    """`python -m <module> args...` in a subprocess, output captured as text.

    module=None runs `python args...` (a script path or `-c code`); env defaults to cli_env(hf_home).
    """
    command = [sys.executable, *(["-m", module] if module else []), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(hf_home) if env is None else env,
                          cwd=cwd, timeout=timeout, check=False)


def assert_clean_failure(result, *words):
    """Exit code 2 and exactly one stderr line (no traceback) holding every word."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
