"""Short names for every DINOv3 release (and DINOv2 for comparison), with what each needs.

Plain data: no torch here, so `dinoscope models` answers at once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)
DEFAULT_MODEL = "facebook/dinov3-vitb16-pretrain-lvd1689m"  # plain data here, so the CLI reads it without torch

HEADROOM = 1.2  # weights plus buffers and activations of a modest image
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class ModelSpec:
    """One released backbone: where it lives and its architecture."""

    name: str  # the short name users type
    hub_id: str
    family: str  # "dinov3-vit", "dinov3-convnext", "dinov2"
    patch_size: int  # pixels per grid cell of the output map (32 for ConvNeXt: its last stage's stride)
    width: int  # token dimension (ConvNeXt: channels of the last stage)
    depth: int  # blocks (ConvNeXt: stages)
    heads: int  # attention heads (0 for ConvNeXt)
    registers: int
    params: int  # parameter count
    data: str = "LVD-1689M"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    open_id: str = ""  # timm's ungated copy of the same weights ("" if none)
    also_open: tuple[str, ...] = ()  # other ungated copies accepted by id (timm's variant without qkv biases)
    gated: bool = True  # the official repository needs an accepted licence and a login

    @property
    def ids(self) -> tuple[str, ...]:
        """Every hub id that holds this release."""
        return tuple(i for i in (self.hub_id, self.open_id, *self.also_open) if i)

    def memory(self, dtype: str = "float32") -> int:
        """Bytes of the weights in `dtype`."""
        return self.params * DTYPE_BYTES[dtype]


def _v3(name, hub, width, depth, heads, params, data="LVD-1689M", mean=IMAGENET_MEAN, std=IMAGENET_STD, timm=""):
    # timm's `_qkvb` copies keep the released query/value biases, so they compute the official tokens exactly;
    # the plain copies drop them (all zero in the distilled B, L and H+); 7B has no biases and no `_qkvb` copy
    tag = "sat493m" if data == "SAT-493M" else "lvd1689m"
    plain = f"timm/{timm}_patch16_dinov3.{tag}"
    exact = plain if timm == "vit_7b" else f"timm/{timm}_patch16_dinov3_qkvb.{tag}"
    return ModelSpec(name, hub, "dinov3-vit", 16, width, depth, heads, 4, params, data, mean, std, exact,
                     (plain,) if plain != exact else ())


def _cnx(name, hub, width, params):
    size = name.removeprefix("convnext-")
    return ModelSpec(name, hub, "dinov3-convnext", 32, width, 4, 0, 0, params, open_id=f"timm/convnext_{size}.dinov3_lvd1689m")


def _v2(name, hub, width, depth, heads, registers, params):
    return ModelSpec(name, hub, "dinov2", 14, width, depth, heads, registers, params, "LVD-142M", gated=False)


_LVD = "pretrain-lvd1689m"
MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    _v3("vits16", f"facebook/dinov3-vits16-{_LVD}", 384, 12, 6, 21_600_000, timm="vit_small"),
    _v3("vits16plus", f"facebook/dinov3-vits16plus-{_LVD}", 384, 12, 6, 28_700_000, timm="vit_small_plus"),
    _v3("vitb16", f"facebook/dinov3-vitb16-{_LVD}", 768, 12, 12, 85_700_000, timm="vit_base"),
    _v3("vitl16", f"facebook/dinov3-vitl16-{_LVD}", 1024, 24, 16, 303_000_000, timm="vit_large"),
    _v3("vith16plus", f"facebook/dinov3-vith16plus-{_LVD}", 1280, 32, 20, 840_000_000, timm="vit_huge_plus"),
    _v3("vit7b16", f"facebook/dinov3-vit7b16-{_LVD}", 4096, 40, 32, 6_716_000_000, timm="vit_7b"),
    _cnx("convnext-tiny", f"facebook/dinov3-convnext-tiny-{_LVD}", 768, 27_800_000),
    _cnx("convnext-small", f"facebook/dinov3-convnext-small-{_LVD}", 768, 49_500_000),
    _cnx("convnext-base", f"facebook/dinov3-convnext-base-{_LVD}", 1024, 87_600_000),
    _cnx("convnext-large", f"facebook/dinov3-convnext-large-{_LVD}", 1536, 198_000_000),
    _v3("vitl16-sat", "facebook/dinov3-vitl16-pretrain-sat493m", 1024, 24, 16, 303_000_000, "SAT-493M", SAT_MEAN,
        SAT_STD, timm="vit_large"),
    _v3("vit7b16-sat", "facebook/dinov3-vit7b16-pretrain-sat493m", 4096, 40, 32, 6_716_000_000, "SAT-493M", SAT_MEAN,
        SAT_STD, timm="vit_7b"),
    _v2("dinov2-small", "facebook/dinov2-small", 384, 12, 6, 0, 22_100_000),
    _v2("dinov2-base", "facebook/dinov2-base", 768, 12, 12, 0, 86_600_000),
    _v2("dinov2-large", "facebook/dinov2-large", 1024, 24, 16, 0, 304_000_000),
    _v2("dinov2-giant", "facebook/dinov2-giant", 1536, 40, 24, 0, 1_136_000_000),
    _v2("dinov2-small-reg", "facebook/dinov2-with-registers-small", 384, 12, 6, 4, 22_100_000),
    _v2("dinov2-base-reg", "facebook/dinov2-with-registers-base", 768, 12, 12, 4, 86_600_000),
    _v2("dinov2-large-reg", "facebook/dinov2-with-registers-large", 1024, 24, 16, 4, 304_000_000),
    _v2("dinov2-giant-reg", "facebook/dinov2-with-registers-giant", 1536, 40, 24, 4, 1_136_000_000),
]}
BY_HUB_ID: dict[str, ModelSpec] = {i.lower(): m for m in MODELS.values() for i in m.ids}
LOGIN_MARK = "*"


def lookup(text: str) -> ModelSpec | None:
    """The spec a short name or a known hub id (official or ungated copy; `hf-hub:` prefix allowed) names
    (case-insensitive), else None."""
    key = text.strip().lower().removeprefix("hf-hub:")
    return MODELS.get(key) or BY_HUB_ID.get(key)


def closest(text: str, n: int = 3) -> list[str]:
    """Known short names (or hub ids) that look most like `text`."""
    key = text.strip().lower()
    names = difflib.get_close_matches(key, list(MODELS), n=n, cutoff=0.5)
    ids = difflib.get_close_matches(key, list(BY_HUB_ID), n=n, cutoff=0.6)
    picked = names + [BY_HUB_ID[i].hub_id for i in ids]
    if not picked:  # nothing close: still point somewhere useful
        picked = difflib.get_close_matches(key, list(MODELS), n=n, cutoff=0.0)
    return list(dict.fromkeys(picked))[:n]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.1f}M"


def table() -> str:
    """The registry as a fixed-width text table (what `dinoscope models` prints)."""
    head = ("name", "patch", "width", "depth", "regs", "params", "float32", "bfloat16", "data", "official id",
            "ungated copy (no login)")
    rows = [head]
    for m in MODELS.values():
        depth = f"{m.depth} st" if m.family == "dinov3-convnext" else str(m.depth)
        rows.append((m.name, str(m.patch_size), str(m.width), depth, str(m.registers), human_count(m.params),
                     human_bytes(m.memory("float32") * HEADROOM), human_bytes(m.memory("bfloat16") * HEADROOM),
                     m.data, m.hub_id + (f" {LOGIN_MARK}" if m.gated else ""), m.open_id or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
