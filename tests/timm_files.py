"""Files in timm's hub layout written without timm, for tests: a tiny model's weights renamed to timm's keys.

The renaming goes from the official DINOv3 layout to timm's, the opposite direction from the
loader's (timm -> transformers names), so a loader mistake does not cancel out here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from dinoscope.models import official

OFFICIAL_TO_TIMM_BLOCK = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2", "mlp.w1.": "mlp.fc1_g.",
                          "mlp.w2.": "mlp.fc1_x.", "mlp.w3.": "mlp.fc2."}


def timm_state(transformers_model) -> dict[str, torch.Tensor]:
    """A transformers DINOv3 ViT's weights under timm's key names (`_qkvb` layout when it has q/v biases)."""
    out = {}
    for key, value in official.transformers_to_official(transformers_model).items():
        if key in ("mask_token", "rope_embed.periods") or key.endswith("qkv.bias_mask"):
            continue
        if key == "storage_tokens":
            key = "reg_token"
        if key.endswith("attn.qkv.bias"):
            q, _k, v = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q.clone(), v.clone()
            continue
        for old, new in OFFICIAL_TO_TIMM_BLOCK.items():
            key = key.replace(old, new)
        out[key] = value.contiguous()
    return out


def write_timm_folder(folder: Path, transformers_model, architecture: str, *, num_heads: int | None = None,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> Path:
    """`folder` with config.json and model.safetensors as timm's save_for_hf writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(timm_state(transformers_model), str(folder / "model.safetensors"))
    config = {"architecture": architecture, "num_classes": 0, "global_pool": "avg",
              "pretrained_cfg": {"tag": "lvd1689m", "mean": list(mean), "std": list(std), "license": "dinov3-license"}}
    if num_heads is not None:
        config["model_args"] = {"num_heads": num_heads}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
