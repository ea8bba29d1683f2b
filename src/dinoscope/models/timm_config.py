"""What timm's hub layout says without reading any tensors: torch-free, so identifying a model stays cheap.

timm's copies of DINOv3 (the ungated `timm/...` repositories) carry a `config.json` naming the timm
`architecture`, its `model_args` and a `pretrained_cfg` with the normalisation. The weights
themselves are read by :mod:`dinoscope.models.timm_layout`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CONVNEXT_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")


def is_timm_state(keys) -> bool:
    """Whether state-dict keys are in timm's DINOv3 layout (ViT/Eva or ConvNeXt)."""
    keys = set(keys)
    if "patch_embed.proj.weight" in keys and "rope_embed.periods" not in keys and "storage_tokens" not in keys:
        return any(k in keys for k in ("reg_token", "blocks.0.gamma_1", "blocks.0.attn.q_bias",
                                       "blocks.0.mlp.fc1_g.weight")) or "blocks.0.attn.qkv.weight" in keys
    return "stem.0.weight" in keys and any(CONVNEXT_BLOCK_KEY.match(k) for k in keys)


def read_config(folder: Path) -> dict | None:
    """A folder's config.json when timm wrote it (it names an `architecture`), else None."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("architecture"), str) else None


def patch_size(config: dict) -> int | None:
    """Grid cell size in pixels of the model a timm config describes (None if not DINOv3)."""
    arch = config.get("architecture", "")
    if arch.startswith("convnext"):
        return 32
    found = re.search(r"patch(\d+)", arch)
    return int(found.group(1)) if found and "dinov3" in arch else None


def mean_std(config: dict | None):
    """(mean, std) from a timm config's pretrained_cfg, or None when it has none."""
    cfg = (config or {}).get("pretrained_cfg") or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3:
        return tuple(float(x) for x in mean), tuple(float(x) for x in std)
    return None
