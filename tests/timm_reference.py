"""Reference tokens from timm's own DINOv3 models (run as a subprocess with timm on sys.path).

Usage: python timm_reference.py OUT_FOLDER. For each tiny architecture below it writes
OUT_FOLDER/NAME/ in timm's hub layout (save_for_hf) plus reference.safetensors: the input
pixels and timm's tokens after the final norm. Only timm's data code needs torchvision, so a
stand-in module is put in its place before timm is imported.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

# tiny random versions of each released architecture: (timm architecture, arguments)
ARCHITECTURES = {
    "vit": ("vit_small_patch16_dinov3", dict(embed_dim=64, depth=2, num_heads=4)),
    "vit_qkvb": ("vit_base_patch16_dinov3_qkvb", dict(embed_dim=64, depth=2, num_heads=4)),
    "vit_splus": ("vit_small_plus_patch16_dinov3", dict(embed_dim=64, depth=2, num_heads=4)),
    "vit_hplus_qkvb": ("vit_huge_plus_patch16_dinov3_qkvb", dict(embed_dim=80, depth=2, num_heads=5)),
    "vit_7b": ("vit_7b_patch16_dinov3", dict(embed_dim=128, depth=2, num_heads=4)),
    "convnext": ("convnext_tiny", dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48))),
}
PRETRAINED_TAG = {"convnext": "dinov3_lvd1689m"}


def install_torchvision_stand_in() -> None:
    class AnyAttribute(type):
        def __getattr__(cls, name):
            return cls

    class Dummy(metaclass=AnyAttribute):
        def __init__(self, *args, **kwargs):
            pass

    class StandIn(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Dummy

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.transforms.v2",
             "torchvision.ops", "torchvision.ops.misc", "torchvision.datasets", "torchvision.io"]
    for name in names:
        module = StandIn(name)
        module.__path__ = []
        sys.modules[name] = module
    for name in names[1:]:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])

    class InterpolationMode:
        NEAREST, NEAREST_EXACT, BILINEAR, BICUBIC = "nearest", "nearest-exact", "bilinear", "bicubic"
        BOX, HAMMING, LANCZOS = "box", "hamming", "lanczos"

    sys.modules["torchvision"].__version__ = "0.0"
    sys.modules["torchvision.transforms"].InterpolationMode = InterpolationMode
    sys.modules["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.BatchNorm2d,), {})


def perturb(model) -> None:
    """Random init leaves norms at identity, layer scale tiny and biases at zero: move them so every weight counts."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "token" in name:
                p.copy_(p + 0.3 * torch.randn_like(p))


def tokens(model, name: str, pixels):
    with torch.no_grad():
        if name == "convnext":
            fmap = model.forward_features(pixels)  # (1, C, h, w) before the head's norm
            pooled = model.head.norm(fmap.mean((2, 3), keepdim=True)).flatten(1)
            patches = model.head.norm(fmap).flatten(2).transpose(1, 2)
            return torch.cat([pooled[:, None], patches], dim=1)
        return model.forward_features(pixels)  # [CLS, registers, patches row-major], after the final norm


def main(out: Path) -> None:
    install_torchvision_stand_in()
    import timm
    from safetensors.torch import save_file
    from timm.models._hub import save_for_hf

    for name, (arch, args) in ARCHITECTURES.items():
        torch.manual_seed(len(name))
        tag = PRETRAINED_TAG.get(name, "lvd1689m")
        extra = {} if name == "convnext" else {"dynamic_img_size": True}
        model = timm.create_model(f"{arch}.{tag}", pretrained=False, num_classes=0, **extra, **args).eval()
        perturb(model)
        folder = out / name
        save_for_hf(model, folder, safe_serialization=True)
        pixels = torch.randn(1, 3, 64, 96)  # not square: rows and columns must not be swapped
        save_file({"pixels": pixels, "tokens": tokens(model, name, pixels).contiguous()},
                  str(folder / "reference.safetensors"))
        print(name, arch, folder)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
