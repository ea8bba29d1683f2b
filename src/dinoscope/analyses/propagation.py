"""Video mask propagation by feature similarity: the k-nearest-neighbour protocol of the DINO papers.

Each new frame's patches take the labels of their most similar patches in the context: the first
frame (whose labels are given) and a window of the most recent frames (whose labels were predicted).
For every target patch, affinities exp(cos / temperature) to the context patches within a square
spatial radius (in patches) are kept for the top-k only, normalised to sum to 1, and used to average
the context's label distributions. The defaults are the DINO evaluation's (top-k 5, 7 recent frames,
radius 12, temperature 0.1).

Labels travel as per-patch distributions (rows, cols, C); a pixel mask becomes one by area-averaging
its one-hot labels over each patch's pixels (`mask_grid`), and a prediction becomes pixels again by
upsampling the distributions through the geometry and taking the most likely label (`grid_to_pixels`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .. import render
from ..errors import InputError

MAX_LABELS = 64  # a mask with more colours than this is not a label mask (a photo, a JPEG, antialiased edges)


@dataclass(frozen=True)
class PropagationSettings:
    top_k: int = 5
    window: int = 7  # recent frames in the context besides the first
    radius: int = 12  # square neighbourhood in patches; 0 or None: no restriction
    temperature: float = 0.1

    def __post_init__(self):
        if self.top_k < 1 or self.window < 0 or self.temperature <= 0 or (self.radius is not None and self.radius < 0):
            raise InputError("propagation needs top-k >= 1, a window >= 0, a radius >= 0 and a positive temperature")


def decode_mask(mask) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) int64 and their colours (C, 3) uint8 from a mask picture.

    An (H, W) array (a palette PNG's indices, or a grey mask) is taken as labels as it is, with
    grey colours. An (H, W, 3/4) RGB(A) array gets one label per distinct colour, numbered in
    colour order, so black (the usual background) is label 0 when present; alpha is ignored.
    """
    array = np.asarray(mask)
    if array.ndim == 2:
        if array.min() < 0:
            raise InputError("a label mask cannot hold negative values")
        labels = array.astype(np.int64)
        values = np.arange(int(labels.max()) + 1)
        return labels, np.repeat(np.clip(values, 0, 255).astype(np.uint8)[:, None], 3, axis=1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(f"a mask must be a grey, palette or RGB picture; got an array of shape {array.shape}")
    colours, labels = np.unique(array[..., :3].reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) > MAX_LABELS:
        raise InputError(f"the mask has {len(colours)} colours; draw it with flat colours (one per object, "
                         "black background) and save it as PNG, not JPEG")
    return labels.reshape(array.shape[:2]).astype(np.int64), colours.astype(np.uint8)


def mask_grid(labels: np.ndarray, geometry, num_labels: int | None = None) -> torch.Tensor:
    """(rows, cols, C) share of each label among the original pixels each patch covers."""
    labels = np.asarray(labels)
    if labels.shape != (geometry.image_size[1], geometry.image_size[0]):
        w, h = geometry.image_size
        raise InputError(f"the mask is {labels.shape[1]}x{labels.shape[0]} pixels but the frame is {w}x{h}; "
                         "draw the mask on the first frame at its own size")
    c = int(labels.max()) + 1 if num_labels is None else num_labels
    cw, ch = geometry.covered
    covered = labels[:ch, :cw]
    channels = [np.asarray(Image.fromarray((covered == i).astype(np.float32), "F")
                           .resize((geometry.cols, geometry.rows), Image.Resampling.BOX)) for i in range(c)]
    grid = torch.from_numpy(np.stack(channels, axis=-1)).clamp_min(0)
    return grid / grid.sum(-1, keepdim=True).clamp_min(1e-12)


def grid_to_pixels(grid: torch.Tensor, geometry, *, smooth: bool = True) -> np.ndarray:
    """(H, W) int64 labels at the original image size from (rows, cols, C) label distributions.

    `smooth` interpolates the distributions between patch centres before choosing, which gives
    boundaries finer than a patch; the uncovered margin of a native-resolution frame is label 0.
    """
    probs = render.as_numpy(grid).astype(np.float64)
    layers = [np.asarray(render.place(render.gray(probs[..., i]), geometry, smooth=smooth)) for i in range(probs.shape[-1])]
    return np.stack(layers, axis=-1).argmax(-1).astype(np.int64)


def neighbourhood(grid: tuple[int, int], radius: int | None) -> torch.Tensor | None:
    """(N, N) bool: True where two patches are within `radius` rows and cols of each other."""
    if not radius:
        return None
    rows, cols = grid
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    return ((r[:, None] - r[None]).abs() <= radius) & ((c[:, None] - c[None]).abs() <= radius)


def propagate_step(target: torch.Tensor, context: list[tuple[torch.Tensor, torch.Tensor]],
                   settings: PropagationSettings, near: torch.Tensor | None, *, chunk: int = 1024) -> torch.Tensor:
    """Label distributions (N, C) of one target frame's unit features (N, D) from context frames'
    (unit features (N, D), distributions (N, C)); `chunk` target patches at a time bound the memory."""
    keys = torch.stack([f for f, _ in context])  # (F, N, D)
    labels = torch.cat([p for _, p in context])  # (F * N, C)
    out = []
    for start in range(0, target.shape[0], chunk):
        rows = slice(start, start + chunk)
        affinity = torch.exp(torch.einsum("nd,fmd->nfm", target[rows], keys) / settings.temperature)
        if near is not None:
            affinity = affinity * near[rows, None, :]
        affinity = affinity.reshape(affinity.shape[0], -1)
        values, index = affinity.topk(min(settings.top_k, affinity.shape[1]), dim=1)
        weights = values / values.sum(1, keepdim=True).clamp_min(1e-30)
        out.append((weights[..., None] * labels[index]).sum(1))
    return torch.cat(out)


def iter_propagation(frames: Iterable, first_grid: torch.Tensor, settings: PropagationSettings = PropagationSettings()
                     ) -> Iterator[torch.Tensor]:
    """Yield (rows, cols, C) label distributions for each frame, the first frame's being `first_grid`.

    `frames` yields Features (or (rows, cols, D) tensors) of the same grid, first frame first; one
    frame at a time is held besides the context, so a long video streams.
    """
    first, near, recent = None, None, deque(maxlen=settings.window)
    for frame in frames:
        patches = frame.patches if hasattr(frame, "patches") else frame
        grid = tuple(patches.shape[:2])
        unit = torch.nn.functional.normalize(patches.float().reshape(-1, patches.shape[-1]), dim=-1)
        if first is None:
            if tuple(first_grid.shape[:2]) != grid:
                raise InputError(f"the first-frame labels are on a {tuple(first_grid.shape[:2])} grid "
                                 f"but the frame's features are {grid}")
            first = (unit, first_grid.float().reshape(-1, first_grid.shape[-1]))
            near = neighbourhood(grid, settings.radius)
            yield first_grid.float()
            continue
        if grid != tuple(first_grid.shape[:2]):
            raise InputError(f"a frame has a {grid} patch grid, the first {tuple(first_grid.shape[:2])}; "
                             "give every frame the same size and resolution")
        probs = propagate_step(unit, [first, *recent], settings, near)
        if settings.window:
            recent.append((unit, probs))
        yield probs.reshape(*grid, -1)


def propagate(frames: Iterable, first_labels: np.ndarray, geometry,
              settings: PropagationSettings = PropagationSettings()) -> list[torch.Tensor]:
    """(rows, cols) int64 label grids, one per frame, from the first frame's pixel labels (H, W).

    For pixel-accurate masks, keep the distributions instead: `iter_propagation` with
    `mask_grid(first_labels, geometry)`, then `grid_to_pixels` per frame.
    """
    first_grid = mask_grid(first_labels, geometry)
    return [probs.argmax(-1) for probs in iter_propagation(frames, first_grid, settings)]
