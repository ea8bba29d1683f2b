"""Pure drawing: arrays in, RGB PIL images out. Nothing here reads or writes files.

Maps are placed through the Geometry: each patch's value is painted on exactly the
original pixels that patch covers, and the uncovered margin of a native-resolution
image stays background.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError

RED = (255, 0, 0)
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "jet", "gray", "coolwarm", "RdBu_r")


def as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def colorize(values, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a Matplotlib colormap; the range defaults to the data's."""
    try:
        lut = matplotlib.colormaps[cmap]
    except KeyError:
        raise InputError(f"unknown colormap {cmap!r}; try one of {', '.join(COLORMAPS)}") from None
    v = as_numpy(values).astype(np.float64)
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    scaled = np.zeros_like(v) if hi <= lo else np.clip((v - lo) / (hi - lo), 0, 1)
    return (lut(scaled)[..., :3] * 255 + 0.5).astype(np.uint8)


def gray(values01) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W) uint8."""
    return (np.clip(as_numpy(values01), 0, 1) * 255 + 0.5).astype(np.uint8)


def rgb(values01) -> np.ndarray:
    """(H, W, 3) values in [0, 1] -> uint8."""
    return (np.clip(as_numpy(values01), 0, 1) * 255 + 0.5).astype(np.uint8)


def place(grid: np.ndarray, geometry, *, smooth: bool = False, background=0) -> Image.Image:
    """Paint a per-patch array ((rows, cols) gray or (rows, cols, 3) RGB, uint8) at the original image size.

    `smooth` interpolates between patch centres instead of painting flat squares.
    """
    grid = np.ascontiguousarray(grid)
    mode = "L" if grid.ndim == 2 else "RGB"
    if grid.shape[:2] != geometry.grid:
        raise ValueError(f"map of shape {grid.shape[:2]} does not match the {geometry.grid} patch grid")
    cw, ch = geometry.covered
    small = Image.fromarray(grid, mode)
    painted = small.resize((cw, ch), Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST)
    if (cw, ch) == geometry.image_size:
        return painted
    fill = background if mode == "L" else (background,) * 3 if isinstance(background, int) else background
    canvas = Image.new(mode, geometry.image_size, fill)
    canvas.paste(painted, (0, 0))
    return canvas


def overlay(image: Image.Image, heat: Image.Image, alpha: float = 0.5) -> Image.Image:
    """Blend a map picture (same size as the photo) over the photo; alpha is the map's weight."""
    if not 0 <= alpha <= 1:
        raise InputError(f"opacity {alpha} must be between 0 and 1")
    return Image.blend(image.convert("RGB"), heat.convert("RGB"), alpha)


def _box(geometry, index: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = geometry.box(index)
    return round(x0), round(y0), round(x1) - 1, round(y1) - 1


def outline_patch(image: Image.Image, geometry, index: int, color=(255, 255, 255), width: int = 2,
                  edge=(0, 0, 0)) -> Image.Image:
    """A copy of `image` with patch `index` outlined in `color` inside a 1-pixel `edge` line on each side
    (white in black by default: visible on every colormap, turbo's reds included); a CLS query (-1) has no
    patch, so nothing is drawn."""
    out = image.convert("RGB").copy()
    if index < 0:
        return out
    x0, y0, x1, y1 = _box(geometry, index)
    draw = ImageDraw.Draw(out)
    if edge is not None:
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=edge, width=width + 2)
    draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
    return out


def fill_patch(image: Image.Image, geometry, index: int, color=RED) -> Image.Image:
    """A copy of `image` with patch `index` filled (the reference scripts' query marker); none for CLS."""
    out = image.convert("RGB").copy()
    if index < 0:
        return out
    ImageDraw.Draw(out).rectangle(_box(geometry, index), fill=color)
    return out


def side_by_side(images, gap: int = 0, background=(255, 255, 255)) -> Image.Image:
    """Images placed left to right, top-aligned."""
    images = [im.convert("RGB") for im in images]
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), background)
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def select_pairs(matches, *, top_k: int = 0, max_lines: int | None = None, seed: int = 0) -> np.ndarray:
    """Which pairs to draw: the `top_k` best by score if top_k > 0, else a seeded random sample of `max_lines`."""
    n = len(matches)
    if top_k and top_k > 0:
        return matches.order()[:top_k]
    if max_lines is not None and 0 < max_lines < n:
        return np.sort(np.random.default_rng(seed).choice(n, size=max_lines, replace=False))
    return np.arange(n)


def draw_matches(image_a: Image.Image, image_b: Image.Image, matches, *, top_k: int = 0, max_lines: int | None = 800,
                 seed: int = 0, cmap: str = "viridis", line_width: int = 1, gap: int = 0) -> Image.Image:
    """Both images side by side with a line per drawn pair from patch centre to patch centre, coloured by score."""
    canvas = side_by_side([image_a, image_b], gap=gap)
    keep = select_pairs(matches, top_k=top_k, max_lines=max_lines, seed=seed)
    if len(keep) == 0:
        return canvas
    keep = keep[np.argsort(matches.scores[keep], kind="stable")]  # best pairs drawn last, on top
    pa, pb = matches.points()
    scores = matches.scores[keep]
    colors = colorize(scores[None, :], cmap, vmin=float(matches.scores.min()), vmax=float(matches.scores.max()))[0]
    draw = ImageDraw.Draw(canvas)
    offset = image_a.width + gap
    for (xa, ya), (xb, yb), color in zip(pa[keep], pb[keep], colors):
        draw.line([(xa, ya), (xb + offset, yb)], fill=tuple(int(c) for c in color), width=line_width)
        r = max(1, line_width)
        draw.ellipse([xa - r, ya - r, xa + r, ya + r], fill=tuple(int(c) for c in color))
        draw.ellipse([xb + offset - r, yb - r, xb + offset + r, yb + r], fill=tuple(int(c) for c in color))
    return canvas


def captioned(image: Image.Image, text: str, height: int = 16, background=(255, 255, 255)) -> Image.Image:
    """`image` with a line of text in a white band above it."""
    image = image.convert("RGB")
    canvas = Image.new("RGB", (image.width, image.height + height), background)
    canvas.paste(image, (0, height))
    ImageDraw.Draw(canvas).text((2, 2), text, fill=(0, 0, 0))
    return canvas


def tile(images, columns: int, gap: int = 0, background=(255, 255, 255)) -> Image.Image:
    """Images in rows of `columns`, each row top-aligned, rows stacked."""
    images = [im.convert("RGB") for im in images]
    rows = [side_by_side(images[i:i + columns], gap=gap, background=background)
            for i in range(0, len(images), max(1, columns))]
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)),
                       background)
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + gap
    return canvas


RANDOM_WEIGHTS_LABEL = "random weights"


def label_random_weights(image: Image.Image, text: str = RANDOM_WEIGHTS_LABEL) -> Image.Image:
    """`image` with a small red tag in its top-left corner saying its features came from random weights.

    Same size as `image`, so layouts do not shift; the tag scales with the picture (about 1/20 of its
    shorter side) and covers only a corner.
    """
    picture = image.convert("RGB")
    size = max(10, min(picture.size) // 20)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(200, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return picture


# --------------------------------------------------------------------------- legends and captions
# Pure helpers that make a map explain itself: a colour bar with its value range, a PCA legend,
# a caption band, and the uncovered edge strip drawn as such. The CLI, collections and the explorer
# compose them through views.explain.

UNCOVERED_GREY = (150, 150, 150)
UNCOVERED_LABEL = "not covered by any patch"
INK = (0, 0, 0)


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def text_size(size: int) -> int:
    """A legible text size for a picture whose shorter side is `size` pixels."""
    return int(np.clip(size // 28, 11, 22))


def tick_labels(values) -> list[str]:
    """The shortest labels (3 to 10 significant digits) that tell the ticks apart."""
    for digits in range(3, 11):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def colorbar(cmap: str, vmin: float, vmax: float, height: int, *, bar_width: int = 16, label: str = "",
             text: int = 12, steps: int = 5) -> Image.Image:
    """A vertical colour bar (vmax at the top, vmin at the bottom) with `steps` value ticks and a title.

    Row y of the bar (from its top, `bar_top` pixels down) shows the colormap at
    vmax - (vmax - vmin) * y / (bar_height - 1), so the bar can be read like the map.
    """
    f = font(text)
    pad = text // 2
    title_h = text + pad if label else 0
    bar_top = title_h + pad
    bar_height = max(16, height - bar_top - pad)
    ramp = np.linspace(vmax, vmin, bar_height)[:, None].repeat(bar_width, 1)
    ticks = [vmin + (vmax - vmin) * i / (steps - 1) for i in range(steps)] if vmax > vmin else [vmin]
    labels = tick_labels(ticks)
    widest = max(f.getlength(t) for t in labels)
    width = int(max(bar_width + 6 + widest, f.getlength(label) if label else 0)) + 2 * pad
    canvas = Image.new("RGB", (width, bar_top + bar_height + pad), (255, 255, 255))
    canvas.paste(Image.fromarray(colorize(ramp, cmap, vmin, vmax)), (pad, bar_top))
    draw = ImageDraw.Draw(canvas)
    if label:
        draw.text((pad, pad // 2), label, fill=INK, font=f)
    for t, text_label in zip(ticks, labels):
        y = bar_top + (0 if vmax <= vmin else round((vmax - t) / (vmax - vmin) * (bar_height - 1)))
        draw.line([(pad + bar_width, y), (pad + bar_width + 3, y)], fill=INK)
        draw.text((pad + bar_width + 6, y), text_label, fill=INK, font=f, anchor="lm")
    return canvas


def colorbar_geometry(text: int = 12, label: str = "", bar_width: int = 16) -> tuple[int, int, int]:
    """(x, y, width) of the colour ramp inside a `colorbar` drawn with these settings (for tests and readers)."""
    pad = text // 2
    return pad, (text + pad if label else 0) + pad, bar_width


def pca_legend(components, height: int, *, text: int = 12) -> Image.Image:
    """A small legend saying which principal components are drawn as red, green and blue."""
    f = font(text)
    pad = text // 2
    lines = [(c, f"PC{i + 1}") for c, i in zip(("red", "green", "blue"), components)]
    width = int(max(f.getlength("PCA colours"), text + pad + max(f.getlength(t) for _, t in lines))) + 2 * pad
    canvas = Image.new("RGB", (width, max(height, (len(lines) + 1) * (text + pad) + 2 * pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), "PCA colours", fill=INK, font=f)
    for k, (colour, name) in enumerate(lines, start=1):
        y = pad + k * (text + pad)
        draw.rectangle([pad, y, pad + text, y + text], fill=colour)
        draw.text((2 * pad + text, y + text // 2), name, fill=INK, font=f, anchor="lm")
    return canvas


def wrap(text: str, width: float, f, separator: str = " | ") -> list[str]:
    """`text` split at `separator` into lines no wider than `width` where the parts allow."""
    lines: list[str] = []
    for part in text.split(separator):
        if lines and f.getlength(lines[-1] + separator + part) <= width:
            lines[-1] += separator + part
        else:
            lines.append(part)
    return lines


def caption_band(image: Image.Image, text: str, *, size: int = 12, background=(255, 255, 255)) -> Image.Image:
    """`image` with its caption in a band below it (never over the picture), wrapped to the picture's width."""
    image = image.convert("RGB")
    pad = size // 2
    f = font(size)
    lines = wrap(text, image.width - 2 * pad, f)
    line_height = size + size // 4
    canvas = Image.new("RGB", (image.width, image.height + len(lines) * line_height + 2 * pad), background)
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((pad, image.height + pad + k * line_height), line, fill=INK, font=f)
    return canvas


def mark_uncovered(image: Image.Image, geometry, *, color=UNCOVERED_GREY, spacing: int = 6) -> Image.Image:
    """A copy of `image` (at the photo's size) with the right/bottom strip no whole patch covers hatched grey."""
    out = image.convert("RGB").copy()
    cw, ch = geometry.covered
    w, h = out.size
    if (cw, ch) == (w, h):
        return out
    draw = ImageDraw.Draw(out)
    strips = [(cw, 0, w - 1, h - 1)] if cw < w else []
    strips += [(0, ch, cw - 1, h - 1)] if ch < h else []
    for x0, y0, x1, y1 in strips:
        draw.rectangle([x0, y0, x1, y1], fill=(225, 225, 225))
        for d in range(-(y1 - y0), x1 - x0 + 1, spacing):  # diagonal hatching clipped to the strip
            a = (x0 + max(d, 0), y0 + max(-d, 0))
            length = min(x1 - a[0], y1 - a[1])
            draw.line([a, (a[0] + length, a[1] + length)], fill=color)
    return out
