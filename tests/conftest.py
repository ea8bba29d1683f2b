"""Fixtures: small random-weight DINOv3 models built from configs, and a Hugging Face cache
holding a random ViT-B/16 under the real default id, so nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dinoscope.models.loading import vit_architecture

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-dinov3")
    build_vit(0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    from dinoscope.models import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """A Hugging Face cache with a random ViT-B/16 stored under the real default model id."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    import torch

    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / ("models--" + DEFAULT_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    torch.manual_seed(1)
    DINOv3ViTModel(DINOv3ViTConfig(**VITB16)).save_pretrained(snapshot)
    (snapshot / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return home


@pytest.fixture
def offline_hub(hf_home, monkeypatch):
    """Point this process at the fake cache, offline, as a user's machine without network would be."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hf_home / "hub"), raising=False)
    return hf_home


def cli_env(hf_home: Path | None = None, **extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    env.pop("HF_HUB_CACHE", None)
    return env


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


@pytest.fixture(scope="session")
def pixel_backbone():
    from dinoscope.models.loading import describe

    return describe(build_pixel_vit(), source="pixel-model", revision="test")


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    """Keep the CLI's default feature cache out of the user's home during tests."""
    monkeypatch.setenv("DINOSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "dinoscope-cache"))
