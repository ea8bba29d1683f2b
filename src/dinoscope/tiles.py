"""Large photos at full resolution in bounded memory: the patch grid computed in overlapping tiles.

Same callable contract as `dinoscope.dense`:

    forward(pixels (B, 3, h, w)) -> [(cls (B, D), registers (B, R, D), patches (B, h/p, w/p, D)), ...]

Tiles are `tile` x `tile` patches (smaller only when the grid is), stepping by tile - overlap
and with the last tile flush with the far edge, so every tile has the same size and tiles
batch together. Where tiles overlap, each patch is taken from the tile in which it lies
farthest from a cut (an edge of the tile that is not an edge of the image): "discard" keeps
only that tile's token, "blend" averages the tiles' tokens weighted by that distance. Tokens
near a cut see less context than in one full pass; `patch_agreement` measures the difference.

Memory bound (beyond the weights): the stitched output, rows * cols * D float32 per block plus
one float per patch of weights, and one batch of tiles: batch * tile^2 tokens of activations
(see `tiled_memory_bytes`). Whatever the photo size, no pass is larger than one tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dense import pass_activation_bytes
from .errors import InputError

BLENDS = ("discard", "blend")


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """First patch of each tile along an axis of `n` patches; the last tile ends at n."""
    if tile >= n:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def tile_layout(rows: int, cols: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles as (row0, col0, height, width) in patches, raster order."""
    if tile < 1 or not 0 <= overlap < tile:
        raise InputError(f"tiles of {tile} patches with an overlap of {overlap} are impossible; "
                         f"use a tile of at least 1 patch and an overlap from 0 to tile - 1")
    th, tw = min(tile, rows), min(tile, cols)
    return [(r, c, th, tw) for r in tile_starts(rows, tile, overlap) for c in tile_starts(cols, tile, overlap)]


def _edge_distance(start: int, size: int, n: int) -> torch.Tensor:
    """Per position in a tile, 1 + patches to the nearest cut (image edges are not cuts)."""
    i = torch.arange(size, dtype=torch.float32)
    before = i if start > 0 else torch.full_like(i, float(n))
    after = (size - 1 - i) if start + size < n else torch.full_like(i, float(n))
    return torch.minimum(before, after) + 1


def tiled_memory_bytes(rows: int, cols: int, dim: int, *, tile: int, batch_size: int = 4, blocks: int = 1,
                       patch_size: int = 16) -> int:
    """Peak bytes beyond the model's weights: output and weights, plus one batch of tiles (an estimate)."""
    tokens = min(tile, rows) * min(tile, cols)
    output = rows * cols * (dim * blocks + 1) * 4
    batch = batch_size * (pass_activation_bytes(tokens, dim) + tokens * 3 * patch_size * patch_size * 4)
    return output + batch


def tiled_tokens(forward: Callable, pixels: torch.Tensor, patch_size: int, *, tile: int = 32, overlap: int = 8,
                 batch_size: int = 4, blend: str = "discard") -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The tokens of `pixels` (3, H, W), H and W multiples of `patch_size`, computed tile by tile.

    Returns per block (cls, registers, patches (rows, cols, D)); cls and registers are the mean
    over tiles. `tile` and `overlap` count patches.
    """
    if blend not in BLENDS:
        raise InputError(f"unknown tile blending {blend!r}; use one of {', '.join(BLENDS)}")
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be at least 1")
    h, w = pixels.shape[-2:]
    if h % patch_size or w % patch_size:
        raise InputError(f"pixels of {h}x{w} are not a whole number of {patch_size}-pixel patches")
    rows, cols = h // patch_size, w // patch_size
    layout = tile_layout(rows, cols, tile, overlap)
    p = patch_size
    grids, weights, cls_sum, reg_sum = [], torch.zeros(rows, cols), [], []
    for start in range(0, len(layout), batch_size):
        chunk = layout[start:start + batch_size]
        batch = torch.stack([pixels[:, r * p:(r + th) * p, c * p:(c + tw) * p] for r, c, th, tw in chunk])
        outputs = forward(batch)
        for j, (r, c, th, tw) in enumerate(chunk):
            near = torch.minimum(_edge_distance(r, th, rows)[:, None], _edge_distance(c, tw, cols)[None, :])
            region = (slice(r, r + th), slice(c, c + tw))
            if blend == "discard":
                take = near > weights[region]
                weights[region] = torch.where(take, near, weights[region])
            for block, (cls_t, regs, patches) in enumerate(outputs):
                if block == len(grids):
                    grids.append(torch.zeros(rows, cols, patches.shape[-1], dtype=torch.float32))
                    cls_sum.append(torch.zeros_like(cls_t[0], dtype=torch.float32))
                    reg_sum.append(torch.zeros_like(regs[0], dtype=torch.float32))
                token = patches[j].float().cpu()
                if blend == "discard":
                    grids[block][region] = torch.where(take[..., None], token, grids[block][region])
                else:
                    grids[block][region] += near[..., None] * token
                cls_sum[block] += cls_t[j].float().cpu()
                reg_sum[block] += regs[j].float().cpu()
            if blend == "blend":
                weights[region] += near
    n = len(layout)
    if blend == "blend":
        grids = [g / weights[..., None] for g in grids]
    return [(c / n, r / n, g) for c, r, g in zip(cls_sum, reg_sum, grids)]


def patch_agreement(tiled: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per patch between two (rows, cols, D) grids of the same image: (rows, cols)."""
    if tiled.shape != full.shape:
        raise InputError(f"grids of shapes {tuple(tiled.shape)} and {tuple(full.shape)} cannot be compared")
    return torch.nn.functional.cosine_similarity(tiled.float(), full.float(), dim=-1)


def agreement_summary(cosines: torch.Tensor) -> dict[str, float]:
    """Mean, minimum and 5th percentile of a per-patch agreement map: the figures to report."""
    flat = cosines.reshape(-1).float()
    return {"mean": float(flat.mean()), "min": float(flat.min()), "p05": float(torch.quantile(flat, 0.05))}
