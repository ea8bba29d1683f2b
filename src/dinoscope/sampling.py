"""Extraction settings that change how the token grid is sampled: density (shift-and-stitch, see
`dinoscope.dense`) and tiles (see `dinoscope.tiles`), applied around any model's forward.

`Sampling` is what an Extractor holds, what goes into the cache key and what a Features records;
`grid_tokens` runs a batch of same-size inputs through a forward callable under it. The token
budget applies per pass: the resolution policy sizes each pass within it (with tiles, each tile is
at most the budget and the photo keeps its full resolution); the denser grid a density gives is
bounded by the free-memory check instead (`dense.check_dense_cost` with the model's width).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .dense import PAD_MODES, shift_and_stitch
from .errors import InputError
from .geometry import DENSITIES, Geometry, Resolution
from .tiles import tiled_tokens

TILE, OVERLAP = 32, 8  # patches: a tile's side and the overlap between neighbouring tiles


@dataclass(frozen=True)
class Sampling:
    """`density` cells per patch along each axis (1, 2 or 4) and/or `tiles` (overlapping tiles of at most
    `tile` x `tile` patches); `pad` is how shifted passes fill the border (replicate, reflect, constant)."""

    density: int = 1
    tiles: bool = False
    pad: str = "replicate"
    tile: int = TILE
    overlap: int = OVERLAP

    def __post_init__(self):
        if self.density not in DENSITIES:
            raise InputError(f"density {self.density} is not supported; use one of {', '.join(map(str, DENSITIES))}")
        if self.pad not in PAD_MODES:
            raise InputError(f"unknown padding {self.pad!r}; use one of {', '.join(PAD_MODES)}")

    @classmethod
    def within(cls, max_tokens: int | None, *, density: int = 1, tiles: bool = False, pad: str = "replicate"):
        """Settings whose tiles (when `tiles`) hold at most `max_tokens` patches."""
        tile = TILE if max_tokens is None else max(1, min(TILE, math.isqrt(max_tokens)))
        return cls(density, tiles, pad, tile, min(OVERLAP, tile // 4))

    @property
    def plain(self) -> bool:
        """One pass per image on the patch grid: nothing to record, nothing added to cache keys."""
        return self.density == 1 and not self.tiles

    def key(self) -> str:
        """What these settings add to a cache key ("" for plain sampling, so older entries stay valid)."""
        if self.plain:
            return ""
        tiles = f"{self.tile}/{self.overlap}" if self.tiles else "no"
        return f"density={self.density};pad={self.pad if self.density > 1 else '-'};tiles={tiles}"

    def record(self) -> dict:
        """Provenance for Features.extra (saved with the features)."""
        if self.plain:
            return {}
        found = {"density": self.density}
        if self.density > 1:
            found["pad"] = self.pad
        if self.tiles:
            found["tiles"] = {"tile": self.tile, "overlap": self.overlap}
        return found

    def sizing(self, resolution: Resolution) -> Resolution:
        """The resolution policy for the photo: with tiles the budget bounds each tile, not the photo."""
        return replace(resolution, max_tokens=None) if self.tiles else resolution


def grid_tokens(forward: Callable, pixels: torch.Tensor, geometries: list[Geometry], sampling: Sampling, *,
                dim: int | None = None, batch_size: int = 4):
    """`forward` (see `dinoscope.dense`) over a batch of same-size inputs (B, 3, H, W) under `sampling`.

    Returns (per block (cls (B, D), registers (B, R, D), patches (B, rows, cols, D)), the geometries of
    those grids), the same shape `forward` gives, so callers treat every sampling alike.
    """
    if sampling.tiles:
        forward = _tiled(forward, geometries[0].patch_size, sampling, batch_size)
    if sampling.density == 1:
        return forward(pixels), geometries
    dense = [shift_and_stitch(forward, pixels[i], g, sampling.density, batch_size=batch_size, pad=sampling.pad,
                              dim=dim) for i, g in enumerate(geometries)]
    blocks = len(dense[0][1])
    outputs = [tuple(torch.stack([d[1][b][part] for d in dense]) for part in range(3)) for b in range(blocks)]
    return outputs, [d[0] for d in dense]


def _tiled(forward: Callable, patch_size: int, sampling: Sampling, batch_size: int) -> Callable:
    """A forward that runs each image of its batch tile by tile."""
    def tiled(batch):
        per_image = [tiled_tokens(forward, image, patch_size, tile=sampling.tile, overlap=sampling.overlap,
                                  batch_size=batch_size) for image in batch]
        return [tuple(torch.stack([found[b][part] for found in per_image]) for part in range(3))
                for b in range(len(per_image[0]))]

    return tiled
