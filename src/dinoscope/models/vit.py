"""DINOv3 ViT in plain torch, for loading without importing transformers.

Importing transformers and building its model costs about 2 s per process, more than a 640x480
forward pass; the command line starts a new process for every run, so the common case (a DINOv3 ViT
in safetensors with SDPA attention) is built here. Module and parameter names mirror transformers'
DINOv3ViTModel (5.x layout), so the same state dict loads, and extraction, layers and attention
code (models/adapters.py) reaches the same attributes. Equality with transformers is checked in tests/test_vit_lite.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from torch import nn

CONFIG_DEFAULTS = dict(hidden_act="gelu", layer_norm_eps=1e-5, layerscale_value=1.0, query_bias=True, key_bias=False,
                       value_bias=True, proj_bias=True, mlp_bias=True, use_gated_mlp=False, rope_theta=100.0,
                       num_register_tokens=0, num_channels=3, patch_size=16)


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
        self.patch_embeddings = nn.Conv2d(cfg.num_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels):
        patches = self.patch_embeddings(pixels.to(self.patch_embeddings.weight.dtype)).flatten(2).transpose(1, 2)
        n = pixels.shape[0]
        return torch.cat([self.cls_token.expand(n, -1, -1), self.register_tokens.expand(n, -1, -1), patches], dim=1)


class Rope(nn.Module):
    """(cos, sin) of the 2-D rotary embedding of each patch centre, coordinates in [-1, 1]."""

    def __init__(self, cfg):
        super().__init__()
        self.patch_size = cfg.patch_size
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        exponents = torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device="cpu")  # also when built on meta
        self.register_buffer("inv_freq", 1 / cfg.rope_theta ** exponents, persistent=False)

    def forward(self, pixels):
        rows, cols = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        ys = (torch.arange(rows, dtype=torch.float32, device=pixels.device) + 0.5) / rows
        xs = (torch.arange(cols, dtype=torch.float32, device=pixels.device) + 0.5) / cols
        centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2 - 1  # (N, 2) as (y, x)
        angles = (2 * math.pi * centres[:, :, None] * self.inv_freq[None, None, :]).flatten(1, 2).tile(2)
        return angles.cos().to(pixels.dtype), angles.sin().to(pixels.dtype)


def rotate(x, cos, sin):
    """Rotary embedding on the last dim: x * cos + rotate_half(x) * sin (halves swapped, first negated)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(d, d, bias=cfg.query_bias)
        self.k_proj = nn.Linear(d, d, bias=cfg.key_bias)
        self.v_proj = nn.Linear(d, d, bias=cfg.value_bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.proj_bias)

    def forward(self, x, position):
        n, t, d = x.shape
        q, k, v = (proj(x).view(n, t, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = position
        prefix = t - cos.shape[-2]  # CLS and registers are not rotated
        q = torch.cat([q[:, :, :prefix], rotate(q[:, :, prefix:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :prefix], rotate(k[:, :, prefix:], cos, sin)], dim=2)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(n, t, d))


class LayerScale(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((cfg.hidden_size,), float(cfg.layerscale_value)))

    def forward(self, x):
        return x * self.lambda1


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, hidden = cfg.hidden_size, cfg.intermediate_size
        self.gated = cfg.use_gated_mlp
        if self.gated:
            self.gate_proj = nn.Linear(d, hidden, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(d, hidden, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(hidden, d, bias=cfg.mlp_bias)
        self.act = {"gelu": nn.functional.gelu, "silu": nn.functional.silu, "swish": nn.functional.silu}[cfg.hidden_act]

    def forward(self, x):
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg)
        self.layer_scale1 = LayerScale(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.layer_scale2 = LayerScale(cfg)

    def forward(self, x, position_embeddings):
        x = x + self.layer_scale1(self.attention(self.norm1(x), position_embeddings))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))


class DINOv3ViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.rope_embeddings = Rope(cfg)
        self.model = Encoder(cfg)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values, output_hidden_states: bool = False, **_):
        """Like transformers' model: last_hidden_state (normed), pooler_output (CLS) and, if asked,
        hidden_states (embeddings, then each block's output before the final norm)."""
        hidden = self.embeddings(pixel_values)
        position = self.rope_embeddings(pixel_values)
        states = [hidden]
        for block in self.model.layer:
            hidden = block(hidden, position)
            states.append(hidden)
        last = self.norm(hidden)
        return SimpleNamespace(last_hidden_state=last, pooler_output=last[:, 0],
                               hidden_states=tuple(states) if output_hidden_states else None)


SUPPORTED_ACTIVATIONS = ("gelu", "silu", "swish")


def read_config(folder: Path):
    """The folder's config.json as attributes, if it describes a DINOv3 ViT this module can build; else None."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if raw.get("model_type") != "dinov3_vit" or raw.get("hidden_act", "gelu") not in SUPPORTED_ACTIVATIONS:
        return None
    patch = raw.get("patch_size", 16)
    if not isinstance(patch, int):
        return None
    return SimpleNamespace(**{**CONFIG_DEFAULTS, **raw, "_attn_implementation": "sdpa"})


def load_folder(folder: Path, config):
    """Build the model from a save_pretrained folder's safetensors, or None when the files do not fit
    (the caller then uses transformers). Accepts transformers 4.56 and 5.x key layouts."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return from_state_dict(state, config)


def from_state_dict(state: dict, config):
    """The model holding `state` (transformers key names), or None when the keys do not fit `config`."""
    state = {("model." + k if k.startswith("layer.") else k): v for k, v in state.items()}
    with torch.device("meta"):
        model = DINOv3ViT(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "embeddings.mask_token"]
    if missing or unexpected:
        return None
    if any(p.is_meta for p in model.parameters()):  # mask_token absent from the file
        model.embeddings.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
    model.rope_embeddings = Rope(config)  # its buffer is not in the state dict: rebuild it off the meta device
    return model.eval()
