"""timm's copies of the DINOv3 weights (the ungated `timm/...` repositories), loaded with dinoscope's own modules.

timm publishes every DINOv3 release without gating, in its own layout: a `config.json` naming the
timm `architecture` (with `model_args` and a `pretrained_cfg` holding mean/std) beside a
`model.safetensors` in timm's key names. Nothing here imports timm: the keys are renamed to the
layouts dinoscope already builds (transformers names for the torch-only ViT, the official layout
for ConvNeXt), and the architecture is read from the tensors, with the config for what tensors
cannot say (the number of heads, the RoPE base); :mod:`dinoscope.models.timm_config` reads that config.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import ModelError
from . import official, vit
from .timm_config import CONVNEXT_BLOCK_KEY, read_config

# heads per timm architecture (the RoPE buffer that would tell is not saved); `_qkvb` shares its base's entry
VIT_HEADS = {"vit_small_patch16_dinov3": 6, "vit_small_plus_patch16_dinov3": 6, "vit_base_patch16_dinov3": 12,
             "vit_large_patch16_dinov3": 16, "vit_huge_plus_patch16_dinov3": 20, "vit_7b_patch16_dinov3": 32}
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 20, 4096: 32}  # a bare file: the released widths
ROPE_THETA = 100.0

_RE_VIT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_VIT_BLOCK_NAMES = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
                    "norm2.bias": "norm2.bias", "attn.q_bias": "attention.q_proj.bias",
                    "attn.v_bias": "attention.v_proj.bias", "attn.proj.weight": "attention.o_proj.weight",
                    "attn.proj.bias": "attention.o_proj.bias", "gamma_1": "layer_scale1.lambda1",
                    "gamma_2": "layer_scale2.lambda1", "mlp.fc2.weight": "mlp.down_proj.weight",
                    "mlp.fc2.bias": "mlp.down_proj.bias", "mlp.fc1_g.weight": "mlp.gate_proj.weight",
                    "mlp.fc1_g.bias": "mlp.gate_proj.bias", "mlp.fc1_x.weight": "mlp.up_proj.weight",
                    "mlp.fc1_x.bias": "mlp.up_proj.bias", "mlp.fc1.weight": "mlp.up_proj.weight",
                    "mlp.fc1.bias": "mlp.up_proj.bias"}
_CNX_BLOCK_NAMES = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "pwconv1", "mlp.fc2": "pwconv2"}


def load_folder(folder: Path, source: str):
    """(module, config) from a folder in timm's hub layout."""
    config = read_config(folder)
    if config is None:
        raise ModelError(f"{source} has no timm config.json (with an 'architecture'); pass a timm hub folder")
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{source} has no model.safetensors (an interrupted download?); download it again or "
                         f"pass a complete folder")
    return build(_read(weights, source), config, source), config


def load_file(path: Path):
    """(module, config or None) from a single timm-layout .safetensors file (a config.json beside it is used)."""
    config = read_config(path.parent)
    return build(_read(path, path.name), config, path.name), config


def _read(path: Path, source: str) -> dict:
    from safetensors.torch import load_file as read_safetensors

    try:
        return read_safetensors(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelError(f"cannot read the weights of {source}: {str(exc).splitlines()[0]}; download them "
                         f"again") from exc


def build(state: dict, config: dict | None, source: str):
    """The dinoscope module holding a timm DINOv3 state dict (architecture from tensors and config)."""
    arch = (config or {}).get("architecture", "")
    if arch and "dinov3" not in arch and not arch.startswith("convnext"):
        raise ModelError(f"{source} is timm's {arch!r}, not a DINOv3 model; pass a DINOv3 model")
    state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}  # a classifier, if one was saved
    if "stem.0.weight" in state:
        return _convnext(state, source)
    if "patch_embed.proj.weight" not in state:
        raise ModelError(f"{source} is neither a timm DINOv3 ViT nor a ConvNeXt (no patch_embed or stem weights)")
    return _vit(state, config or {}, source)


def _vit_config(state: dict, config: dict, source: str) -> SimpleNamespace:
    hidden, channels, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max((int(m.group(1)) for k in state if (m := _RE_VIT_BLOCK.match(k))), default=-1)
    if depth == 0:
        raise ModelError(f"{source} has no 'blocks.N.*' weights; pass a complete timm DINOv3 ViT")
    args = config.get("model_args") or {}
    base = config.get("architecture", "").removesuffix("_qkvb")
    heads = args.get("num_heads") or VIT_HEADS.get(base) or HEADS_BY_WIDTH.get(int(hidden))
    if not heads or hidden % heads:
        raise ModelError(f"{source}: cannot tell the number of attention heads of a width-{hidden} ViT; put timm's "
                         f"config.json (with 'architecture') beside the weights")
    gated = "blocks.0.mlp.fc1_g.weight" in state
    up = state.get("blocks.0.mlp.fc1_x.weight" if gated else "blocks.0.mlp.fc1.weight")
    if up is None:
        raise ModelError(f"{source} has no MLP weights in block 0; the file is incomplete")
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    return SimpleNamespace(**{
        **vit.CONFIG_DEFAULTS, "model_type": "dinov3_vit", "hidden_size": int(hidden), "num_hidden_layers": depth, "num_attention_heads": int(heads),
        "intermediate_size": int(up.shape[0]), "num_register_tokens": int(registers), "patch_size": int(patch),
        "num_channels": int(channels), "use_gated_mlp": gated, "hidden_act": "silu" if gated else "gelu",
        "query_bias": "blocks.0.attn.q_bias" in state, "key_bias": False, "value_bias": "blocks.0.attn.v_bias" in state,
        "proj_bias": "blocks.0.attn.proj.bias" in state, "mlp_bias": "blocks.0.mlp.fc2.bias" in state,
        "rope_theta": float(args.get("rope_temperature", ROPE_THETA)), "layer_norm_eps": 1e-5,
        "_attn_implementation": "sdpa"})


def _vit(state: dict, config: dict, source: str):
    cfg = _vit_config(state, config, source)
    d = cfg.hidden_size
    out = {"embeddings.patch_embeddings.weight": state.pop("patch_embed.proj.weight"),
           "embeddings.cls_token": state.pop("cls_token", None),
           "embeddings.register_tokens": state.pop("reg_token", torch.zeros(1, 0, d)),
           "norm.weight": state.pop("norm.weight", None), "norm.bias": state.pop("norm.bias", None)}
    if "patch_embed.proj.bias" in state:
        out["embeddings.patch_embeddings.bias"] = state.pop("patch_embed.proj.bias")
    for i in range(cfg.num_hidden_layers):
        b, h = f"blocks.{i}.", f"layer.{i}."
        qkv = state.pop(b + "attn.qkv.weight", None)
        if qkv is None or qkv.shape[0] != 3 * d:
            raise ModelError(f"{source}: {b}attn.qkv.weight is missing or not ({3 * d}, {d}); the file is damaged")
        for name, part in zip(("q_proj", "k_proj", "v_proj"), qkv.chunk(3, dim=0), strict=True):
            out[h + f"attention.{name}.weight"] = part
        k_bias = state.pop(b + "attn.k_bias", None)  # timm keeps a zero key bias as a buffer
        if k_bias is not None and bool(k_bias.ne(0).any()):
            raise ModelError(f"{source}: {b}attn.k_bias is not zero, which DINOv3 never has; the file is not DINOv3")
        for timm_name, name in _VIT_BLOCK_NAMES.items():
            if b + timm_name in state:
                out[h + name] = state.pop(b + timm_name)
        for scale in ("layer_scale1.lambda1", "layer_scale2.lambda1"):  # a model without layer scale
            out.setdefault(h + scale, torch.ones(d))
    unused = ("rope.periods", "mask_token")  # a RoPE buffer and a pretraining token: nothing extraction needs
    leftover = sorted((k for k in state if not k.endswith(unused)), key=official._natural)
    if leftover or any(v is None for v in out.values()):
        missing = [k for k, v in out.items() if v is None]
        raise ModelError(f"{source} does not fit a timm DINOv3 ViT: missing {official._few(missing) or 'nothing'}, "
                         f"unexpected {official._few(leftover) or 'nothing'}; it may be another architecture")
    missing = _missing_vit_keys(out, cfg)
    if missing:
        raise ModelError(f"{source} does not fit a timm DINOv3 ViT: missing {official._few(missing)}; the file is "
                         f"incomplete or from another architecture")
    model = vit.from_state_dict(out, cfg)
    if model is None:
        raise ModelError(f"{source}: the renamed timm weights do not fit the inferred ViT; the file is inconsistent")
    return model


def to_official_convnext(state: dict) -> dict:
    """timm ConvNeXt keys renamed to the official DINOv3 layout (`downsample_layers`, `stages.S.B`, `norm`)."""
    out = {}
    for key, value in state.items():
        if key.startswith("stem."):
            out["downsample_layers.0." + key[len("stem."):]] = value
        elif m := re.match(r"^stages\.(\d+)\.downsample\.(.+)$", key):
            out[f"downsample_layers.{m.group(1)}.{m.group(2)}"] = value
        elif m := CONVNEXT_BLOCK_KEY.match(key):
            rest = m.group(3)
            for timm_name, name in _CNX_BLOCK_NAMES.items():
                if rest.startswith(timm_name + "."):
                    rest = name + rest[len(timm_name):]
                    break
            out[f"stages.{m.group(1)}.{m.group(2)}.{rest}"] = value
        elif key.startswith("head.norm."):
            out["norm." + key[len("head.norm."):]] = value
        else:
            out[key] = value  # left for the official converter to report
    return out


def _convnext(state: dict, source: str):
    try:
        config, hf_state = official.official_to_transformers(to_official_convnext(state))
    except ModelError as exc:
        raise ModelError(f"{source} does not fit a timm DINOv3 ConvNeXt: {exc}") from exc
    return official.build_model(config, hf_state, dtype=None)


def _missing_vit_keys(renamed: dict, cfg) -> list[str]:
    """timm names of the weights the inferred ViT needs but the file lacks."""
    with torch.device("meta"):
        needed = set(vit.DINOv3ViT(cfg).state_dict()) - {"embeddings.mask_token"}
    have = {("model." + k if k.startswith("layer.") else k) for k in renamed}
    back = {name: timm_name for timm_name, name in _VIT_BLOCK_NAMES.items()}
    back.update({"attention.q_proj.weight": "attn.qkv.weight", "attention.k_proj.weight": "attn.qkv.weight",
                 "attention.v_proj.weight": "attn.qkv.weight"})
    missing = set()
    for key in needed - have:
        m = re.match(r"^model\.layer\.(\d+)\.(.+)$", key)
        missing.add(f"blocks.{m.group(1)}.{back.get(m.group(2), m.group(2))}" if m else key)
    return sorted(missing, key=official._natural)
