"""Shared by the explorer benchmarks: a random-weight DINOv3 ViT-B/16 saved to a folder, and a 640x480 photo."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def random_vitb16(folder: Path, tiny: bool = False) -> Path:
    """Random weights with the real ViT-B/16 shapes (or the tests' tiny model), saved in save_pretrained layout."""
    from helpers import TINY, VITB16, build_vit

    if not (folder / "config.json").exists():
        build_vit(0, **(TINY if tiny else VITB16)).save_pretrained(folder)
    return folder


def photo_640x480(name: str = "chelsea"):
    from PIL import Image

    from dinoscope.images import load_image

    return load_image(f"sample:{name}").resize((640, 480), Image.Resampling.BICUBIC)


def percentiles(values_ms):
    import numpy as np

    v = np.asarray(values_ms, dtype=float)
    return {p: float(np.percentile(v, p)) for p in (50, 95, 99)} if len(v) else {50: float("nan"), 95: float("nan"),
                                                                                   99: float("nan")}
