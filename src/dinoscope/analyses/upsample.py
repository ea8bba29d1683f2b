"""Maps at the photo's own pixels: a grid map (rows, cols) or (rows, cols, C) upsampled to the image,
placed through its Geometry, nearest, bilinear, or guided by the photo so map edges follow object edges.

Upsample the few channels that are drawn (a norm or similarity map, three PCA channels), not the
D-dimensional features: the cost is a few float32 images of the photo's size, built in row strips.

Placement is the one `render.place` uses: the grid spans the covered area (the whole image when
resized, the top-left whole-patch area at native resolution; cells of a dense grid tile it the same
way), cell (r, c) owns the pixels `geometry.patch_at` maps to it, and pixels outside the covered
area (the right/bottom strip a native grid leaves) get `fill`. "nearest" paints each pixel with its
own cell's value; "bilinear" interpolates between cell centres (clamped at the borders); "guided" is
joint bilateral upsampling (Kopf, Cohen, Lischinski and Uyttendaele, SIGGRAPH 2007) with the photo
as guide: each pixel averages nearby cells, favouring cells whose mean colour matches its own, so a
map edge that sits on a colour edge comes out as sharp as the photo. (He et al.'s guided filter was
tried first: fed the blurred bilinear map it only halved the edge error, while this cuts it >10x.)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import InputError

METHODS = ("guided", "bilinear", "nearest")
STRIP_ROWS = 512
RANGE_FLOOR = np.float32(1e-12)  # a pixel unlike every nearby cell falls back to spatial weights, not to 0/0


def upsample(values, geometry, guide=None, *, method: str = "guided", sigma_space: float = 1.0,
             sigma_colour: float = 0.1, fill: float = np.nan) -> np.ndarray:
    """A grid map at the image's pixels: float32 (height, width) or (height, width, C) of `geometry.image_size`.

    `guide` is the photo (PIL image or (height, width, 3) uint8 array of the original size), needed
    for "guided" (see `joint_bilateral` for `sigma_space`, in cells, and `sigma_colour`).
    """
    grid = _as_grid(values, geometry)
    if method not in METHODS:
        raise InputError(f"unknown upsampling {method!r}; use one of {', '.join(METHODS)}")
    cw, ch = geometry.covered
    w, h = geometry.image_size
    out = np.full((h, w) + grid.shape[2:], fill, dtype=np.float32)
    if method == "nearest":
        rows = (np.arange(ch) * grid.shape[0]) // ch
        cols = (np.arange(cw) * grid.shape[1]) // cw
        out[:ch, :cw] = grid[rows][:, cols]
    elif method == "bilinear":
        for y0 in range(0, ch, STRIP_ROWS):
            y1 = min(ch, y0 + STRIP_ROWS)
            out[y0:y1, :cw] = resample(grid, ch, cw, y0, y1)
    else:
        joint_bilateral(grid, _guide_array(guide, geometry), sigma_space=sigma_space, sigma_colour=sigma_colour,
                        out=out[:ch, :cw])
    return out if np.ndim(values) == 3 else out[..., 0]


def resample(grid: np.ndarray, out_h: int, out_w: int, y0: int = 0, y1: int | None = None) -> np.ndarray:
    """Rows y0..y1 of `grid` (h, w, C) resized to (out_h, out_w) bilinearly with cell centres aligned."""
    i0, i1, wy = _axis(grid.shape[0], out_h)
    sl = slice(y0, out_h if y1 is None else y1)
    wy = wy[sl, None, None]
    tmp = grid[i0[sl]] * (1 - wy) + grid[i1[sl]] * wy
    j0, j1, wx = _axis(grid.shape[1], out_w)
    wx = wx[None, :, None]
    return (tmp[:, j0] * (1 - wx) + tmp[:, j1] * wx).astype(np.float32)


def joint_bilateral(grid: np.ndarray, photo: np.ndarray, *, sigma_space: float = 1.0, sigma_colour: float = 0.1,
                    reach: int = 2, out: np.ndarray | None = None) -> np.ndarray:
    """Joint bilateral upsampling of `grid` (rows, cols, C) to the pixels of `photo` (h, w, 3) uint8.

    Each pixel averages the cells within `reach` cells of it, weighted by distance to the
    cell's centre (Gaussian, `sigma_space` cells) and by how close the pixel's colour is to
    the cell's mean colour (Gaussian, `sigma_colour` on colours in [0, 1]): cells on the
    pixel's side of an edge outweigh the cells across it, so the map's edge moves onto the
    photo's. Written in row strips into `out` (h, w, C) float32.
    """
    rows, cols, channels = grid.shape
    h, w = photo.shape[:2]
    out = np.empty((h, w, channels), np.float32) if out is None else out
    means = np.asarray(Image.fromarray(photo).resize((cols, rows), Image.Resampling.BOX), np.float32) / 255
    cells = np.concatenate([means, grid], axis=2)  # one gather per neighbour fetches colour and value
    u = (np.arange(w) + 0.5) * cols / w - 0.5  # pixel centres in cell coordinates
    v = (np.arange(h) + 0.5) * rows / h - 0.5
    near_u, near_v = np.floor(u + 0.5).astype(np.int64), np.floor(v + 0.5).astype(np.int64)
    offsets = range(-reach, reach + 1)
    col_idx = [np.clip(near_u + d, 0, cols - 1) for d in offsets]
    col_w = [_gaussian(u - (near_u + d), sigma_space) * (near_u + d == i) for d, i in zip(offsets, col_idx)]
    scale = np.float32(-0.5 / sigma_colour ** 2)
    for y0 in range(0, h, STRIP_ROWS):
        y1 = min(h, y0 + STRIP_ROWS)
        colours = photo[y0:y1].astype(np.float32) / 255
        total = np.zeros((y1 - y0, w, channels), np.float32)
        weight = np.zeros((y1 - y0, w), np.float32)
        for dy in offsets:
            j = near_v[y0:y1] + dy
            row_idx = np.clip(j, 0, rows - 1)
            row_w = _gaussian(v[y0:y1] - j, sigma_space) * (j == row_idx)
            row_cells = cells[row_idx]
            for ci, cwt in zip(col_idx, col_w):
                near = row_cells[:, ci]
                diff = np.subtract(colours, near[..., :3])
                wgt = np.einsum("hwc,hwc->hw", diff, diff)
                np.multiply(wgt, scale, out=wgt)
                np.exp(wgt, out=wgt)
                wgt += RANGE_FLOOR
                wgt *= row_w[:, None]
                wgt *= cwt[None, :]
                total += wgt[..., None] * near[..., 3:]
                weight += wgt
        out[y0:y1] = total / np.maximum(weight, 1e-30)[..., None]
    return out


def _gaussian(d: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-(d ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _axis(n_in: int, n_out: int):
    """Source indices and weights for centre-aligned linear interpolation along one axis, clamped at the ends."""
    u = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (u - i0).astype(np.float32)


def _as_grid(values, geometry) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    grid = np.asarray(values, dtype=np.float32)
    if grid.ndim not in (2, 3) or grid.shape[:2] != geometry.grid:
        raise InputError(f"a map of shape {grid.shape} does not fit the {geometry.rows}x{geometry.cols} grid; "
                         f"pass (rows, cols) or (rows, cols, C) values of that grid")
    return grid if grid.ndim == 3 else grid[..., None]


def _guide_array(guide, geometry) -> np.ndarray:
    """The photo's covered area as (ch, cw, 3) uint8."""
    if guide is None:
        raise InputError("guided upsampling needs the photo as guide; pass the image, or use bilinear or nearest")
    if isinstance(guide, Image.Image):
        guide = np.asarray(guide.convert("RGB"))
    guide = np.asarray(guide)
    if guide.ndim != 3 or guide.shape[2] != 3 or guide.shape[1::-1] != tuple(geometry.image_size):
        raise InputError(f"the guide of shape {guide.shape} is not the {geometry.image_size[0]}x"
                         f"{geometry.image_size[1]} RGB photo the map belongs to")
    cw, ch = geometry.covered
    return np.ascontiguousarray(guide[:ch, :cw], dtype=np.uint8)
