"""Official DINOv3 checkpoints (facebookresearch/dinov3 layout) <-> transformers DINOv3 models.

The official ``.pth`` files hold a bare state dict of ``DinoVisionTransformer`` or ``ConvNeXt``.
Everything here works from the tensors alone (never from file names):

* :func:`read_checkpoint` reads a file without ever executing pickled code,
* :func:`detect_layout` tells official from transformers key layouts,
* :func:`infer_vit_config` / :func:`infer_convnext_config` recover the architecture,
* :func:`official_to_transformers` / :func:`transformers_to_official` rename and reshape weights,
* :func:`load_official_model` does all of it and returns a model in eval mode.

Facts about the official ViT layout used here (dinov3/models/vision_transformer.py, dinov3/layers/*):

* ``blocks.N.attn.qkv`` is one fused linear whose output rows are ``[q; k; v]`` (heads inside each third);
  with ``mask_k_bias`` its bias is multiplied by a persistent ``bias_mask`` buffer that zeroes the key third.
* ``rope_embed.periods`` has ``head_dim // 4`` entries, ``periods[i] = base ** (4 * i / head_dim)``;
  transformers uses ``inv_freq = 1 / rope_theta ** (4 * i / head_dim)``, so ``rope_theta == base``.
* ``storage_tokens`` (1, R, D) are the register tokens; ``mask_token`` is (1, D); ``cls_token`` is (1, 1, D).
* ``blocks.N.ls1.gamma`` / ``ls2.gamma`` exist only when layer scale is on (otherwise identity).
* ``blocks.N.mlp.fc1/fc2`` (GELU) or ``blocks.N.mlp.w1/w2/w3`` (SwiGLU: ``w3(silu(w1 x) * w2 x)``).
* The released ViTs use ``norm_layer="layernormbf16"``, i.e. LayerNorm eps 1e-5; eps is not stored in the
  weights, so 1e-5 is assumed.
* ``local_cls_norm`` is only used on local crops during training and is dropped.

ConvNeXt: ``downsample_layers.I.J``, ``stages.I.J.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``norm`` and
``norms.3`` (the same final norm registered twice), all LayerNorm eps 1e-6.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

LAYOUTS = ("official-vit", "official-convnext", "transformers-vit", "transformers-convnext")

VIT_LAYER_NORM_EPS = 1e-5  # "layernormbf16" of every released DINOv3 ViT
CONVNEXT_LAYER_NORM_EPS = 1e-6

_CONTAINER_KEYS = ("teacher", "model_ema", "ema", "state_dict", "model", "module", "net", "weights")
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


# --------------------------------------------------------------------------------------------------
# reading files


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` (weights-only unpickling) or ``.safetensors`` file into a flat state dict.

    Common wrappers are removed: ``{"model": ...}``, ``{"state_dict": ...}``, ``{"teacher": ...}``,
    ``module.`` / ``_orig_mod.`` prefixes and ``backbone.`` prefixes of training checkpoints.
    The file format is recognised from its first bytes, so a renamed file still loads.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"checkpoint {p} does not exist; check the path")
    if p.is_dir():
        raise ModelError(f"{p} is a folder, not a checkpoint file; pass the .pth or .safetensors file itself")
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ModelError(f"cannot read {p} ({exc.strerror or exc}); check that the file is readable") from exc
    if size == 0:
        raise ModelError(f"{p} is empty; download or export the checkpoint again")

    if _looks_like_safetensors(head, size):
        raw = _read_safetensors(p)
    elif head.startswith((b"PK", b"\x80")):  # torch.save zip archive, or a legacy pickle
        raw = _read_torch(p)
    elif p.suffix.lower() == ".safetensors":
        raw = _read_safetensors(p)  # damaged: let the safetensors reader say what is wrong
    else:
        raw = _read_torch(p)
    return _unwrap(raw, p.name)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(
            f"{p.name} is not a readable safetensors file ({_first_line(exc)}); download or export it again"
        ) from exc


def _read_torch(p: Path) -> Any:
    import pickle

    try:
        # an open file, not the path: torch.load would otherwise pick a reader from the file name
        with p.open("rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        match = re.search(r"GLOBAL\s+([\w.]+)", text) or re.search(r"global[:\s]+([\w.]+)", text, re.IGNORECASE)
        if match or "global" in text.lower():
            what = f" (it references {match.group(1)})" if match else ""
            raise ModelError(
                f"{p.name} contains pickled objects that are not plain tensors{what}; dinoscope refuses to "
                f"unpickle code from checkpoints; convert it to safetensors or use a trusted official checkpoint"
            ) from exc
        raise ModelError(
            f"{p.name} is not a readable PyTorch checkpoint ({_first_line(exc)}); download or export it again"
        ) from exc
    except Exception as exc:  # damaged archives fail in many ways (RuntimeError, EOFError, struct.error, ...)
        raise ModelError(
            f"{p.name} is not a readable PyTorch checkpoint ({_first_line(exc)}); download or export it again"
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _unwrap(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """Dig the state dict out of a training checkpoint container and strip wrapper prefixes."""
    for _ in range(6):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            mappings = [v for v in obj.values() if isinstance(v, Mapping)]
            inner = mappings[0] if len(mappings) == 1 else None
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ModelError(f"{name} holds a {type(obj).__name__}, not a state dict of tensors; pass a model checkpoint")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        seen = ", ".join(repr(k) for k in list(obj)[:5]) or "nothing"
        raise ModelError(f"{name} contains no weight tensors (top-level entries: {seen}); pass a model checkpoint")
    return strip_prefixes(tensors)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.``/``_orig_mod.`` wrappers and keep the ``teacher.``/``backbone.`` part when present."""
    sd = dict(state_dict)
    for _ in range(8):
        keys = list(sd)
        if not keys:
            break
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in keys):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
                break
        if changed:
            continue
        for prefix in ("teacher.", "backbone."):
            if any(k.startswith(prefix) for k in keys):
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                changed = True
                break
        if changed:
            continue
        if all(k.startswith("model.") for k in keys):
            sd = {k[len("model."):]: v for k, v in sd.items()}
            continue
        break
    return sd


# --------------------------------------------------------------------------------------------------
# layouts

_RE_OFFICIAL_VIT_QKV = re.compile(r"(?:^|\.)blocks\.\d+\.attn\.qkv\.weight$")
_RE_OFFICIAL_VIT_PATCH = re.compile(r"(?:^|\.)patch_embed\.proj\.weight$")
_RE_OFFICIAL_CNX_STEM = re.compile(r"(?:^|\.)downsample_layers\.0\.0\.weight$")
_RE_OFFICIAL_CNX_BLOCK = re.compile(r"(?:^|\.)stages\.\d+\.\d+\.dwconv\.weight$")
_RE_HF_VIT_PATCH = re.compile(r"(?:^|\.)embeddings\.patch_embeddings\.weight$")
_RE_HF_VIT_Q = re.compile(r"(?:^|\.)layer\.\d+\.attention\.q_proj\.weight$")
_RE_HF_CNX_BLOCK = re.compile(r"(?:^|\.)stages\.\d+\.layers\.\d+\.depthwise_conv\.weight$")
_RE_HF_CNX_STEM = re.compile(r"(?:^|\.)stages\.0\.downsample_layers\.0\.weight$")


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return one of :data:`LAYOUTS` for a state dict, judging by its key names only."""
    keys = [k for k in state_dict if isinstance(k, str)]

    def has(rx: re.Pattern) -> bool:
        return any(rx.search(k) for k in keys)

    if has(_RE_OFFICIAL_VIT_QKV) and has(_RE_OFFICIAL_VIT_PATCH):
        return "official-vit"
    if has(_RE_OFFICIAL_CNX_STEM) and has(_RE_OFFICIAL_CNX_BLOCK):
        return "official-convnext"
    if has(_RE_HF_VIT_PATCH) and has(_RE_HF_VIT_Q):
        return "transformers-vit"
    if has(_RE_HF_CNX_BLOCK) or has(_RE_HF_CNX_STEM):
        return "transformers-convnext"
    shown = ", ".join(keys[:6]) if keys else "none"
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    raise ModelError(
        f"unrecognised checkpoint layout (keys seen: {shown}{more}); pass an official DINOv3 ViT or ConvNeXt "
        f"checkpoint or a transformers DINOv3 state dict"
    )


def _key_problem(kind: str, missing: list[str], unexpected: list[str]) -> ModelError:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s) ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
    return ModelError(
        f"checkpoint does not fit a {kind}: {' and '.join(parts)}; it may be truncated, edited or from another model"
    )


def _few(keys: list[str], n: int = 4) -> str:
    keys = sorted(keys, key=_natural)
    text = ", ".join(keys[:n])
    return text + (", ..." if len(keys) > n else "")


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


# --------------------------------------------------------------------------------------------------
# ViT: inference of the architecture


class _VitArch:
    """What the tensors say about an official ViT, beyond what the transformers config holds."""

    def __init__(self) -> None:
        self.layerscale = False
        self.has_qkv_bias = False


def _block_indices(sd: Mapping[str, torch.Tensor], rx: re.Pattern) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


_RE_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _need(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise ModelError(f"checkpoint has no {key!r} ({what}); pass a complete official DINOv3 checkpoint")
    return sd[key]


def _analyse_vit(official_sd: Mapping[str, torch.Tensor], layer_norm_eps: float):
    from transformers import DINOv3ViTConfig

    sd = strip_prefixes(official_sd)
    if "pos_embed" in sd and "rope_embed.periods" not in sd:
        raise ModelError(
            "this checkpoint has a learned 'pos_embed' and no RoPE periods, so it is DINOv2-style, not DINOv3; "
            "load it as a DINOv2 model instead"
        )
    patch = _need(sd, "patch_embed.proj.weight", "patch embedding")
    if patch.ndim != 4:
        raise ModelError(f"patch_embed.proj.weight has shape {tuple(patch.shape)}, expected 4 dimensions; "
                         f"pass an official DINOv3 ViT checkpoint")
    hidden, channels, ph, pw = (int(s) for s in patch.shape)
    blocks = _block_indices(sd, _RE_BLOCK)
    if not blocks:
        raise ModelError("checkpoint has no 'blocks.N.*' weights; pass a complete official DINOv3 ViT checkpoint")
    depth = blocks[-1] + 1

    head_dim, theta = _vit_rope(sd, hidden)
    registers = _vit_registers(sd, hidden)

    keys = set(sd)
    arch = _VitArch()
    arch.layerscale = any(f"blocks.{i}.ls1.gamma" in keys or f"blocks.{i}.ls2.gamma" in keys for i in blocks)
    arch.has_qkv_bias = any(f"blocks.{i}.attn.qkv.bias" in keys for i in blocks)
    gated, intermediate, mlp_bias = _vit_mlp(sd, blocks)
    proj_bias = any(f"blocks.{i}.attn.proj.bias" in keys for i in blocks)
    rms = any(f"blocks.{i}.norm1.weight" in keys and f"blocks.{i}.norm1.bias" not in keys for i in blocks)
    if rms or ("norm.weight" in keys and "norm.bias" not in keys):
        raise ModelError("checkpoint uses RMSNorm (norm weights without biases); transformers' DINOv3ViTModel "
                         "only has LayerNorm, so it cannot be converted")

    key_bias = False
    if arch.has_qkv_bias:
        for i in blocks:
            bias = _effective_qkv_bias(sd, i)
            if bias is not None and bool(bias[hidden:2 * hidden].ne(0).any()):
                key_bias = True
                break

    config = DINOv3ViTConfig(
        patch_size=ph if ph == pw else (ph, pw),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=depth,
        num_attention_heads=hidden // head_dim,
        hidden_act="silu" if gated else "gelu",
        layer_norm_eps=float(layer_norm_eps),
        rope_theta=float(theta),
        num_channels=channels,
        query_bias=arch.has_qkv_bias,
        key_bias=key_bias,
        value_bias=arch.has_qkv_bias,
        proj_bias=proj_bias,
        mlp_bias=mlp_bias,
        layerscale_value=1.0,
        use_gated_mlp=gated,
        num_register_tokens=registers,
    )
    return sd, config, arch


def _vit_rope(sd: Mapping[str, torch.Tensor], hidden: int) -> tuple[int, float]:
    """Head width and RoPE base from the stored periods (the checkpoint names no head count)."""
    periods = _need(sd, "rope_embed.periods", "RoPE periods, needed to know the number of heads")
    n_periods = int(periods.numel())
    head_dim = 4 * n_periods
    if n_periods == 0 or hidden % head_dim:
        raise ModelError(
            f"rope_embed.periods has {n_periods} entries, so head_dim would be {head_dim}, which does not divide "
            f"the width {hidden}; the checkpoint is inconsistent"
        )
    if torch.arange(0, 1, 4 / head_dim, dtype=torch.float32).numel() != n_periods:
        raise ModelError(
            f"head_dim {head_dim} hits a rounding limit of transformers' DINOv3 RoPE, so this checkpoint cannot be "
            f"converted; use the official dinov3 code for it"
        )
    return head_dim, _rope_theta(periods)


def _vit_registers(sd: Mapping[str, torch.Tensor], hidden: int) -> int:
    if "storage_tokens" not in sd:
        return 0
    st = sd["storage_tokens"]
    if st.ndim != 3 or st.shape[0] != 1 or st.shape[2] != hidden:
        raise ModelError(f"storage_tokens has shape {tuple(st.shape)}, expected (1, R, {hidden}); "
                         f"the checkpoint is inconsistent")
    return int(st.shape[1])


def _vit_mlp(sd: Mapping[str, torch.Tensor], blocks: list[int]) -> tuple[bool, int, bool]:
    """(SwiGLU?, hidden width of the MLP, biases?) of the blocks' MLPs."""
    keys = set(sd)
    gated = any(f"blocks.{i}.mlp.w1.weight" in keys for i in blocks)
    plain = any(f"blocks.{i}.mlp.fc1.weight" in keys for i in blocks)
    if gated and plain:
        raise ModelError("checkpoint mixes SwiGLU (mlp.w1/w2/w3) and plain (mlp.fc1/fc2) blocks; it is inconsistent")
    if not gated and not plain:
        raise ModelError("checkpoint has neither mlp.fc1 nor mlp.w1 weights in its blocks; pass a complete "
                         "official DINOv3 ViT checkpoint")
    first = blocks[0]
    up = sd.get(f"blocks.{first}.mlp.w1.weight" if gated else f"blocks.{first}.mlp.fc1.weight")
    if up is None:
        name = "w1" if gated else "fc1"
        raise _key_problem("DINOv3 ViT", [f"blocks.{first}.mlp.{name}.weight"], [])
    mlp_names = ("w1", "w2", "w3") if gated else ("fc1", "fc2")
    return gated, int(up.shape[0]), any(f"blocks.{i}.mlp.{n}.bias" in keys for i in blocks for n in mlp_names)


def _rope_theta(periods: torch.Tensor) -> float:
    """The RoPE base whose periods ``base ** (i / n)`` match the stored ones (n = number of periods)."""
    p = periods.detach().to(torch.float64).flatten()
    n = p.numel()
    precise = periods.dtype in (torch.float32, torch.float64)
    tol = 1e-4 if precise else 2e-2
    if not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
        raise ModelError("rope_embed.periods holds non-positive or non-finite values; the checkpoint is damaged")
    if abs(float(p[0]) - 1.0) > tol:
        raise ModelError(
            f"rope_embed.periods starts at {float(p[0]):.4g} instead of 1 (min/max-period RoPE); transformers' "
            f"DINOv3ViTModel only supports a base (rope_theta) parametrisation, so it cannot be converted"
        )
    if n == 1:
        return 100.0  # a single period is always 1, whatever the base: keep the official default
    exps = torch.arange(n, dtype=torch.float64) / n
    theta = math.exp(float((exps * p.log()).sum() / (exps * exps).sum()))
    for digits in range(1, 8):  # prefer the roundest base that fits: 100, 1000, 10000 ...
        candidate = float(f"{theta:.{digits}g}")
        if abs(theta - candidate) <= tol * candidate:
            theta = candidate
            break
    expected = theta ** exps
    worst = float((p / expected - 1).abs().max())
    if worst > tol:
        raise ModelError(
            f"rope_embed.periods do not follow base ** (i / {n}) for any base (best base {theta:.4g} is off by "
            f"{worst:.2%}); transformers' DINOv3ViTModel cannot reproduce this RoPE"
        )
    return theta


def _effective_qkv_bias(sd: Mapping[str, torch.Tensor], i: int) -> torch.Tensor | None:
    bias = sd.get(f"blocks.{i}.attn.qkv.bias")
    if bias is None:
        return None
    mask = sd.get(f"blocks.{i}.attn.qkv.bias_mask")
    if mask is None:
        return bias
    if mask.shape != bias.shape:
        raise ModelError(f"blocks.{i}.attn.qkv.bias_mask has shape {tuple(mask.shape)} but the bias has "
                         f"{tuple(bias.shape)}; the checkpoint is inconsistent")
    if not bool(torch.isfinite(mask).all()):
        raise ModelError(f"blocks.{i}.attn.qkv.bias_mask was never initialised (it holds NaN); the checkpoint "
                         f"comes from a model that was not set up for inference")
    return bias * mask.to(bias.dtype)


def infer_vit_config(official_sd: Mapping[str, torch.Tensor], *, layer_norm_eps: float = VIT_LAYER_NORM_EPS):
    """A ``transformers.DINOv3ViTConfig`` for an official ViT state dict, read from tensor shapes and values.

    Heads come from the RoPE periods (``head_dim = 4 * len(periods)``), rope_theta from their values,
    registers from ``storage_tokens``, the MLP kind from ``fc1``/``w1``. LayerNorm eps is not stored in
    weights: it defaults to 1e-5, the value of every released DINOv3 ViT.
    """
    return _analyse_vit(official_sd, layer_norm_eps)[1]


def _official_vit_keys(config, arch: _VitArch) -> set[str]:
    keys = {"cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    if config.num_register_tokens:
        keys.add("storage_tokens")
    mlp = ("w1", "w2", "w3") if config.use_gated_mlp else ("fc1", "fc2")
    for i in range(config.num_hidden_layers):
        b = f"blocks.{i}."
        keys |= {b + "norm1.weight", b + "norm1.bias", b + "norm2.weight", b + "norm2.bias",
                 b + "attn.qkv.weight", b + "attn.proj.weight"}
        if arch.has_qkv_bias:
            keys.add(b + "attn.qkv.bias")
        if config.proj_bias:
            keys.add(b + "attn.proj.bias")
        if arch.layerscale:
            keys |= {b + "ls1.gamma", b + "ls2.gamma"}
        for name in mlp:
            keys.add(b + f"mlp.{name}.weight")
            if config.mlp_bias:
                keys.add(b + f"mlp.{name}.bias")
    return keys


def _optional_official_vit_keys(sd: Mapping[str, torch.Tensor]) -> set[str]:
    """Keys that may be present and are consumed or dropped on purpose."""
    optional = {"mask_token", "rope_embed.periods", "local_cls_norm.weight", "local_cls_norm.bias",
                "cls_norm.weight", "cls_norm.bias"}
    optional |= {k for k in sd if re.fullmatch(r"blocks\.\d+\.attn\.qkv\.bias_mask", k)}
    return optional


# --------------------------------------------------------------------------------------------------
# ViT: conversion


def official_to_transformers(official_sd: Mapping[str, torch.Tensor], *,
                             layer_norm_eps: float | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """Convert an official ViT or ConvNeXt state dict to ``(config, state_dict)`` for transformers.

    The returned state dict uses the key names of the installed transformers version and loads into
    ``DINOv3ViTModel(config)`` / ``DINOv3ConvNextModel(config)`` with ``strict=True``.
    """
    sd = strip_prefixes(official_sd)
    layout = detect_layout(sd)
    if layout == "official-convnext":
        return _convnext_official_to_transformers(sd, layer_norm_eps)
    if layout != "official-vit":
        raise ModelError(f"this state dict is already in the {layout} layout; load it with transformers "
                         f"(from_pretrained) instead of converting it")
    eps = VIT_LAYER_NORM_EPS if layer_norm_eps is None else layer_norm_eps
    sd, config, arch = _analyse_vit(sd, eps)

    expected = _official_vit_keys(config, arch)
    present = set(sd)
    missing = sorted(expected - present)
    unexpected = sorted(present - expected - _optional_official_vit_keys(sd))
    if missing or unexpected:
        raise _key_problem("DINOv3 ViT", missing, unexpected)
    if "cls_norm.weight" in sd and not (_same(sd, "cls_norm.weight", "norm.weight")
                                        and _same(sd, "cls_norm.bias", "norm.bias")):
        raise ModelError("checkpoint normalises CLS/register tokens with a separate cls_norm, which transformers' "
                         "DINOv3ViTModel cannot represent; use the official dinov3 code for it")

    hidden = config.hidden_size
    out: dict[str, torch.Tensor] = {}
    out["embeddings.cls_token"] = sd["cls_token"].reshape(1, 1, hidden)
    mask = sd.get("mask_token")
    out["embeddings.mask_token"] = (mask.reshape(1, 1, hidden) if mask is not None
                                    else torch.zeros(1, 1, hidden, dtype=sd["cls_token"].dtype))
    if config.num_register_tokens:
        out["embeddings.register_tokens"] = sd["storage_tokens"]
    else:
        out["embeddings.register_tokens"] = torch.zeros(1, 0, hidden, dtype=sd["cls_token"].dtype)
    out["embeddings.patch_embeddings.weight"] = sd["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.bias"] = sd["patch_embed.proj.bias"]

    mlp_map = ({"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"} if config.use_gated_mlp
               else {"fc1": "up_proj", "fc2": "down_proj"})
    for i in range(config.num_hidden_layers):
        b, h = f"blocks.{i}.", f"layer.{i}."
        for norm in ("norm1", "norm2"):
            out[h + f"{norm}.weight"] = sd[b + f"{norm}.weight"]
            out[h + f"{norm}.bias"] = sd[b + f"{norm}.bias"]
        qkv = sd[b + "attn.qkv.weight"]
        if qkv.shape[0] != 3 * hidden:
            raise ModelError(f"{b}attn.qkv.weight has shape {tuple(qkv.shape)}, expected ({3 * hidden}, {hidden}); "
                             f"the checkpoint is inconsistent")
        for name, part in zip(("q_proj", "k_proj", "v_proj"), qkv.chunk(3, dim=0)):
            out[h + f"attention.{name}.weight"] = part.clone()
        bias = _effective_qkv_bias(sd, i)
        if bias is not None:
            q_b, k_b, v_b = bias.chunk(3, dim=0)
            out[h + "attention.q_proj.bias"] = q_b.clone()
            if config.key_bias:
                out[h + "attention.k_proj.bias"] = k_b.clone()
            out[h + "attention.v_proj.bias"] = v_b.clone()
        out[h + "attention.o_proj.weight"] = sd[b + "attn.proj.weight"]
        if config.proj_bias:
            out[h + "attention.o_proj.bias"] = sd[b + "attn.proj.bias"]
        for ls, hf_ls in (("ls1", "layer_scale1"), ("ls2", "layer_scale2")):
            gamma = sd.get(b + f"{ls}.gamma")
            out[h + f"{hf_ls}.lambda1"] = gamma if gamma is not None else torch.ones(hidden, dtype=qkv.dtype)
        for off, hf in mlp_map.items():
            out[h + f"mlp.{hf}.weight"] = sd[b + f"mlp.{off}.weight"]
            if config.mlp_bias:
                out[h + f"mlp.{hf}.bias"] = sd[b + f"mlp.{off}.bias"]
    out["norm.weight"] = sd["norm.weight"]
    out["norm.bias"] = sd["norm.bias"]
    return config, _to_target_names(out, config, "DINOv3 ViT")


def _same(sd: Mapping[str, torch.Tensor], a: str, b: str) -> bool:
    return a in sd and b in sd and sd[a].shape == sd[b].shape and bool(torch.equal(sd[a], sd[b]))


def transformers_to_official(model_or_state_dict, config=None, *, layerscale: bool = True) -> dict[str, torch.Tensor]:
    """Export a transformers DINOv3 ViT or ConvNeXt (model or state dict) to the official key layout.

    ``config`` defaults to ``model.config``; a ViT state dict needs it (heads and rope_theta are not in
    the weights). With ``layerscale=False`` the ``ls1/ls2.gamma`` (ViT) or ``gamma`` (ConvNeXt) tensors
    are left out, as in an official model built without layer scale; they must then all be 1.
    The result can be saved with ``torch.save`` or ``safetensors.torch.save_file``.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        sd = model_or_state_dict.state_dict()
        config = config if config is not None else getattr(model_or_state_dict, "config", None)
    elif isinstance(model_or_state_dict, Mapping):
        sd = dict(model_or_state_dict)
    else:
        raise ModelError(f"expected a transformers model or a state dict, got {type(model_or_state_dict).__name__}")
    layout = detect_layout(sd)
    if layout == "transformers-convnext":
        return _convnext_transformers_to_official(sd, layerscale)
    if layout != "transformers-vit":
        raise ModelError(f"this state dict is in the {layout} layout, not a transformers one; nothing to export")
    if config is None:
        raise ModelError("exporting a transformers ViT state dict needs its DINOv3ViTConfig (heads and rope_theta "
                         "are not stored in the weights); pass config=model.config")
    sd = _canonical_hf_vit(sd)

    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = hidden // heads
    if hidden % heads or head_dim % 4:
        raise ModelError(f"the config's width {hidden} and {heads} heads give head_dim {hidden / heads:g}, which is "
                         f"not a multiple of 4 as DINOv3 RoPE needs; check the config")
    depth = int(config.num_hidden_layers)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise _key_problem("transformers DINOv3 ViT", [key], [])
        return sd[key]

    out["cls_token"] = take("embeddings.cls_token").reshape(1, 1, hidden)
    if "embeddings.mask_token" in sd:
        out["mask_token"] = sd["embeddings.mask_token"].reshape(1, hidden)
    registers = sd.get("embeddings.register_tokens")
    if registers is not None and registers.shape[1] > 0:
        out["storage_tokens"] = registers
    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.weight")
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.bias")
    n = head_dim // 4
    out["rope_embed.periods"] = float(config.rope_theta) ** (torch.arange(n, dtype=torch.float32) / n)

    gated = "layer.0.mlp.gate_proj.weight" in sd
    act = str(getattr(config, "hidden_act", "gelu"))
    if act != ("silu" if gated else "gelu"):
        kind = "SwiGLU (silu)" if gated else "GELU"
        raise ModelError(f"the official ViT only has {kind} MLPs for this layout, but the config uses hidden_act="
                         f"{act!r}; such a model cannot be exported to the official layout")
    mlp_map = ({"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"} if gated
               else {"up_proj": "fc1", "down_proj": "fc2"})
    for i in range(depth):
        b, h = f"blocks.{i}.", f"layer.{i}."
        for norm in ("norm1", "norm2"):
            out[b + f"{norm}.weight"] = take(h + f"{norm}.weight")
            out[b + f"{norm}.bias"] = take(h + f"{norm}.bias")
        out.update(_official_attention(sd, take, b, h, hidden))
        for ls, hf_ls in (("ls1", "layer_scale1"), ("ls2", "layer_scale2")):
            lam = take(h + f"{hf_ls}.lambda1")
            if layerscale:
                out[b + f"{ls}.gamma"] = lam
            elif not bool(torch.all(lam == 1)):
                raise ModelError(f"{h}{hf_ls}.lambda1 is not all ones, so the model needs layer scale; "
                                 f"export it with layerscale=True")
        for hf, off in mlp_map.items():
            out[b + f"mlp.{off}.weight"] = take(h + f"mlp.{hf}.weight")
            if h + f"mlp.{hf}.bias" in sd:
                out[b + f"mlp.{off}.bias"] = sd[h + f"mlp.{hf}.bias"]
    out["norm.weight"] = take("norm.weight")
    out["norm.bias"] = take("norm.bias")
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _official_attention(sd: Mapping[str, torch.Tensor], take, b: str, h: str, hidden: int) -> dict[str, torch.Tensor]:
    """One block's attention in the official layout: q/k/v fused into qkv, a missing key bias masked."""
    out = {}
    weights = [take(h + f"attention.{p}.weight") for p in ("q_proj", "k_proj", "v_proj")]
    out[b + "attn.qkv.weight"] = torch.cat(weights, dim=0)
    biases = [sd.get(h + f"attention.{p}.bias") for p in ("q_proj", "k_proj", "v_proj")]
    if any(x is not None for x in biases):
        like = next(x for x in biases if x is not None)
        filled = [x if x is not None else torch.zeros_like(like) for x in biases]
        out[b + "attn.qkv.bias"] = torch.cat(filled, dim=0)
        if biases[1] is None:  # official "mask_k_bias": a buffer zeroes the key third of the bias
            bias_mask = torch.ones(3 * hidden, dtype=like.dtype)
            bias_mask[hidden:2 * hidden] = 0
            out[b + "attn.qkv.bias_mask"] = bias_mask
    out[b + "attn.proj.weight"] = take(h + "attention.o_proj.weight")
    if h + "attention.o_proj.bias" in sd:
        out[b + "attn.proj.bias"] = sd[h + "attention.o_proj.bias"]
    return out


def _canonical_hf_vit(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViT keys as ``embeddings.*``, ``layer.N.*``, ``norm.*`` whatever the version or wrapper."""
    anchor = "embeddings.patch_embeddings.weight"
    prefix = next((k[: -len(anchor)] for k in sd if k.endswith(anchor)), "")
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue  # a head or other module around the backbone
        key = key[len(prefix):]
        if key.startswith("model.layer."):  # transformers >= 5 nests the blocks in an encoder called "model"
            key = key[len("model."):]
        if key.endswith("inv_freq"):
            continue
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# ConvNeXt

_RE_CNX_DOWN = re.compile(r"^downsample_layers\.(\d+)\.")
_RE_CNX_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.")


def infer_convnext_config(official_sd: Mapping[str, torch.Tensor]):
    """A ``transformers.DINOv3ConvNextConfig`` for an official ConvNeXt state dict, from tensor shapes."""
    return _analyse_convnext(official_sd)[1]


def _analyse_convnext(official_sd: Mapping[str, torch.Tensor]):
    from transformers import DINOv3ConvNextConfig

    sd = strip_prefixes(official_sd)
    stages = _block_indices(sd, _RE_CNX_DOWN)
    if not stages or stages != list(range(len(stages))):
        raise ModelError("checkpoint has no complete 'downsample_layers.N' sequence; pass a complete official "
                         "DINOv3 ConvNeXt checkpoint")
    stem = _need(sd, "downsample_layers.0.0.weight", "stem convolution")
    if stem.ndim != 4:
        raise ModelError(f"downsample_layers.0.0.weight has shape {tuple(stem.shape)}, expected 4 dimensions; "
                         f"the checkpoint is inconsistent")
    dims = [int(stem.shape[0])]
    for s in stages[1:]:
        dims.append(int(_need(sd, f"downsample_layers.{s}.1.weight", f"stage {s} downsampling").shape[0]))
    depths = [0] * len(stages)
    for key in sd:
        m = _RE_CNX_BLOCK.match(key)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            if s >= len(stages):
                raise _key_problem("DINOv3 ConvNeXt", [], [key])
            depths[s] = max(depths[s], j + 1)
    layerscale = any(k.endswith(".gamma") and _RE_CNX_BLOCK.match(k) for k in sd)
    config = DINOv3ConvNextConfig(
        num_channels=int(stem.shape[1]),
        hidden_sizes=dims,
        depths=depths,
        hidden_act="gelu",
        layer_norm_eps=CONVNEXT_LAYER_NORM_EPS,
        layer_scale_init_value=1e-6 if layerscale else 1.0,
    )
    return sd, config, layerscale


def _convnext_official_to_transformers(sd: Mapping[str, torch.Tensor], layer_norm_eps: float | None):
    sd, config, layerscale = _analyse_convnext(sd)
    if layer_norm_eps is not None:
        config.layer_norm_eps = float(layer_norm_eps)
    stages = len(config.depths)
    expected = {"norm.weight", "norm.bias"}
    for s in range(stages):
        expected |= {f"downsample_layers.{s}.{j}.{p}" for j in (0, 1) for p in ("weight", "bias")}
        for j in range(config.depths[s]):
            b = f"stages.{s}.{j}."
            expected |= {b + f"{m}.{p}" for m in ("dwconv", "norm", "pwconv1", "pwconv2") for p in ("weight", "bias")}
            if layerscale:
                expected.add(b + "gamma")
    last = f"norms.{stages - 1}"
    optional = {f"{last}.weight", f"{last}.bias"}
    present = set(sd)
    missing = sorted(expected - present)
    unexpected = sorted(present - expected - optional)
    if missing or unexpected:
        raise _key_problem("DINOv3 ConvNeXt", missing, unexpected)
    for p in ("weight", "bias"):
        if f"{last}.{p}" in sd and not _same(sd, f"{last}.{p}", f"norm.{p}"):
            raise ModelError(f"{last}.{p} differs from norm.{p}, but the official ConvNeXt shares one final norm; "
                             f"the checkpoint is inconsistent")

    out: dict[str, torch.Tensor] = {}
    names = {"dwconv": "depthwise_conv", "norm": "layer_norm", "pwconv1": "pointwise_conv1",
             "pwconv2": "pointwise_conv2"}
    for s in range(stages):
        for j in (0, 1):
            for p in ("weight", "bias"):
                out[f"stages.{s}.downsample_layers.{j}.{p}"] = sd[f"downsample_layers.{s}.{j}.{p}"]
        for j in range(config.depths[s]):
            b, h = f"stages.{s}.{j}.", f"stages.{s}.layers.{j}."
            for off, hf in names.items():
                for p in ("weight", "bias"):
                    out[h + f"{hf}.{p}"] = sd[b + f"{off}.{p}"]
            gamma = sd.get(b + "gamma")
            width = config.hidden_sizes[s]
            out[h + "gamma"] = gamma if gamma is not None else torch.ones(width, dtype=sd[b + "dwconv.weight"].dtype)
    out["layer_norm.weight"] = sd["norm.weight"]
    out["layer_norm.bias"] = sd["norm.bias"]
    return config, _to_target_names(out, config, "DINOv3 ConvNeXt")


def _canonical_hf_convnext(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ConvNeXt keys as ``stages.N.*`` and ``layer_norm.*`` whatever the version or wrapper."""
    canon: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = re.search(r"(?:^|\.)(stages\.\d+\..*)$", key)
        if m:
            canon[m.group(1)] = value
        elif re.search(r"(?:^|\.)layer_norm\.(weight|bias)$", key):
            canon["layer_norm." + key.rsplit(".", 1)[-1]] = value
    return canon


def _convnext_transformers_to_official(sd: Mapping[str, torch.Tensor], layerscale: bool) -> dict[str, torch.Tensor]:
    canon = _canonical_hf_convnext(sd)
    stages = sorted({int(m.group(1)) for k in canon if (m := re.match(r"stages\.(\d+)\.", k))})
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in canon:
            raise _key_problem("transformers DINOv3 ConvNeXt", [key], [])
        return canon[key]

    names = {"depthwise_conv": "dwconv", "layer_norm": "norm", "pointwise_conv1": "pwconv1",
             "pointwise_conv2": "pwconv2"}
    for s in stages:
        for j in (0, 1):
            for p in ("weight", "bias"):
                out[f"downsample_layers.{s}.{j}.{p}"] = take(f"stages.{s}.downsample_layers.{j}.{p}")
        blocks = sorted({int(m.group(1)) for k in canon if (m := re.match(rf"stages\.{s}\.layers\.(\d+)\.", k))})
        for j in blocks:
            h, b = f"stages.{s}.layers.{j}.", f"stages.{s}.{j}."
            for hf, off in names.items():
                for p in ("weight", "bias"):
                    out[b + f"{off}.{p}"] = take(h + f"{hf}.{p}")
            gamma = take(h + "gamma")
            if layerscale:
                out[b + "gamma"] = gamma
            elif not bool(torch.all(gamma == 1)):
                raise ModelError(f"{h}gamma is not all ones, so the model needs layer scale; export it with "
                                 f"layerscale=True")
    out["norm.weight"] = take("layer_norm.weight")
    out["norm.bias"] = take("layer_norm.bias")
    last = len(stages) - 1
    out[f"norms.{last}.weight"] = out["norm.weight"]  # the official model registers its final norm twice
    out[f"norms.{last}.bias"] = out["norm.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# matching the installed transformers version


def _model_class(config):
    from transformers import DINOv3ConvNextModel, DINOv3ViTModel

    return DINOv3ConvNextModel if "convnext" in str(config.model_type).lower() else DINOv3ViTModel


def _meta_model(config):
    with torch.device("meta"):
        return _model_class(config)(config)


def _to_target_names(canon: dict[str, torch.Tensor], config, kind: str) -> dict[str, torch.Tensor]:
    """Rename canonical keys (``layer.N.*``, ``stages.N.*``) to what the installed model's state_dict uses
    (e.g. ``model.layer.N.*`` in transformers 5), and check names and shapes against it."""
    target = {k: tuple(v.shape) for k, v in _meta_model(config).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in canon.items():
        name = key if key in target else ("model." + key if "model." + key in target else None)
        if name is None:
            ends = [t for t in target if t.endswith("." + key)]
            name = ends[0] if len(ends) == 1 else None
        if name is None:
            unexpected.append(key)
            continue
        out[name] = value
    missing = sorted(set(target) - set(out))
    if missing or unexpected:
        raise _key_problem(f"transformers {kind}", missing, unexpected)
    wrong = [(k, tuple(v.shape), target[k]) for k, v in out.items() if tuple(v.shape) != target[k]]
    if wrong:
        k, got, want = sorted(wrong, key=lambda w: _natural(w[0]))[0]
        extra = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ModelError(f"checkpoint tensor for {k} has shape {got} but the inferred {kind} needs {want}{extra}; "
                         f"the checkpoint is inconsistent")
    return out


# --------------------------------------------------------------------------------------------------
# one call


def load_official_model(path: str | Path, *, dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Read a checkpoint file, convert it if it is official, and return the transformers model in eval mode.

    Official ViT and ConvNeXt files need nothing else. A transformers-layout file needs the
    ``config.json`` that was saved next to it. Floating-point weights are cast to ``dtype``
    (``None`` keeps the file's dtypes).
    """
    p = Path(path).expanduser()
    sd = read_checkpoint(p)
    layout = detect_layout(sd)
    if layout.startswith("official"):
        config, hf_sd = official_to_transformers(sd)
    else:
        config = _sibling_config(p, layout)
        if layout == "transformers-vit":
            canon = _canonical_hf_vit(sd)
        else:
            canon = _canonical_hf_convnext(sd)
        hf_sd = _to_target_names(canon, config, "DINOv3 " + ("ViT" if layout.endswith("vit") else "ConvNeXt"))
    return build_model(config, hf_sd, dtype=dtype)


def _sibling_config(p: Path, layout: str):
    from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig

    cfg_path = p.parent / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{p.name} is a transformers ({layout}) state dict without a config.json beside it; load "
                         f"its folder with from_pretrained or pass an official checkpoint")
    cls = DINOv3ViTConfig if layout == "transformers-vit" else DINOv3ConvNextConfig
    try:
        return cls.from_json_file(str(cfg_path))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot read {cfg_path}: {_first_line(exc)}; fix or remove that config.json") from exc


def build_model(config, state_dict: Mapping[str, torch.Tensor], *,
                dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Instantiate ``DINOv3ViTModel``/``DINOv3ConvNextModel`` for ``config`` and load ``state_dict`` strictly.

    The model is built on the meta device and the tensors are assigned, so no random initialisation
    runs and the weights are not held twice (the model's parameters may share memory with
    ``state_dict``).
    """
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()}
    model = _meta_model(config)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"the converted weights do not load into {type(model).__name__}: "
                         f"{_first_line(exc)}") from exc
    if not _materialise_buffers(model, config):
        model = _model_class(config)(config)  # fall back: ordinary construction, then copy the weights in
        model.load_state_dict(sd, strict=True)
        if dtype is not None:
            model = model.to(dtype)
    return model.eval()


def _materialise_buffers(model: torch.nn.Module, config) -> bool:
    """Recreate non-persistent buffers (RoPE ``inv_freq``) left on the meta device. False if that fails."""
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        try:
            with torch.device("cpu"):
                fresh = type(owner)(config)
            value = dict(fresh.named_buffers())[attr]
        except Exception:  # an unknown module signature in another transformers version
            return False
        if value.is_meta:
            return False
        setattr(owner, attr, value)
    return not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
