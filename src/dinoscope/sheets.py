"""Pictures for segments, search hits, layer/model atlases and CKA matrices: arrays in, RGB PIL out.

Like render.py, nothing here reads or writes files; per-patch maps are placed on the original
pixels through the Geometry with `render.place`.
"""

from __future__ import annotations

import colorsys
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import render
from .analyses.pca import PCABasis
from .errors import InputError
from .views import pca_view

# Kelly's colours of maximum contrast, white and black left out (black is the background)
KELLY = ("#F3C300", "#875692", "#F38400", "#A1CAF1", "#BE0032", "#C2B280", "#848482", "#008856", "#E68FAC",
         "#0067A5", "#F99379", "#604E97", "#F6A600", "#B3446C", "#DCD300", "#882D17", "#8DB600", "#654522",
         "#E25822", "#2B3D26")
BACKGROUND = (0, 0, 0)
HIT = (255, 0, 0)
QUERY = (0, 120, 255)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours: Kelly's 20, then hues a golden angle apart."""
    colours = [tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in KELLY[:n]]
    for i in range(len(colours), n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


def colour_labels(labels, colours=None) -> np.ndarray:
    """(..., 3) uint8 colours for an int label array; negative labels (background) are black."""
    labels = render.as_numpy(labels).astype(np.int64)
    colours = palette(max(int(labels.max()) + 1, 1)) if colours is None else np.asarray(colours, dtype=np.uint8)
    if labels.max() >= len(colours):
        raise InputError(f"label {int(labels.max())} has no colour; give at least {int(labels.max()) + 1} colours")
    out = colours[np.clip(labels, 0, None)]
    out[labels < 0] = BACKGROUND
    return out


def segments_view(labels, geometry, image: Image.Image | None = None, *, alpha: float = 0.6, colours=None
                  ) -> Image.Image:
    """A (rows, cols) label grid coloured on the pixels its patches cover, blended over the photo when
    given; background patches (-1) and the uncovered margin show the photo unchanged."""
    grid = render.as_numpy(labels).astype(np.int64)
    painted = render.place(colour_labels(grid, colours), geometry)
    if image is None:
        return painted
    photo = image.convert("RGB")
    inside = render.place(((grid >= 0) * 255).astype(np.uint8), geometry)
    return Image.composite(render.overlay(photo, painted, alpha), photo, inside)


def mask_view(labels, colours, image: Image.Image | None = None, *, alpha: float = 0.5, background: int = 0
              ) -> Image.Image:
    """A pixel label map (H, W) in its colours (e.g. a propagated mask in the first mask's colours); over
    the photo when given, where label `background` shows the photo."""
    labels = render.as_numpy(labels).astype(np.int64)
    painted = Image.fromarray(colour_labels(labels, colours), "RGB")
    if image is None:
        return painted
    photo = image.convert("RGB")
    if photo.size != painted.size:
        raise InputError(f"the mask is {painted.size[0]}x{painted.size[1]} but the frame {photo.size[0]}x{photo.size[1]}")
    inside = Image.fromarray(((labels != background) * 255).astype(np.uint8), "L")
    return Image.composite(render.overlay(photo, painted, alpha), photo, inside)


def _font(size: int = 11):
    return ImageFont.load_default(size)


def _image_of(images) -> Callable[[str], Image.Image]:
    if callable(images):
        return images
    if isinstance(images, Mapping):
        return lambda name: images[name]
    raise InputError("give the hit images as a mapping or a function from image name to PIL image")


def hit_tile(image: Image.Image, box, caption: str, *, tile: int = 160, context: float = 1.5, colour=HIT
             ) -> Image.Image:
    """A square tile: the part of `image` around `box` (x0, y0, x1, y1), `context` box sizes of margin
    on each side, scaled to `tile` pixels with the box outlined, and a caption band below."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * context)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = max(0.0, min(cx - side / 2, image.width - side)), max(0.0, min(cy - side / 2, image.height - side))
    crop_box = (round(left), round(top), round(min(left + side, image.width)), round(min(top + side, image.height)))
    crop = image.convert("RGB").crop(crop_box)
    scale = tile / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (tile, tile + 14), (255, 255, 255))
    canvas.paste(crop, (0, 0))
    draw = ImageDraw.Draw(canvas)
    bx = [(x0 - crop_box[0]) * scale, (y0 - crop_box[1]) * scale, (x1 - crop_box[0]) * scale - 1,
          (y1 - crop_box[1]) * scale - 1]
    draw.rectangle([round(v) for v in bx], outline=colour, width=2)
    draw.text((2, tile + 1), caption, fill=(0, 0, 0), font=_font(10))
    return canvas


def search_sheet(hits: Sequence, images, *, columns: int = 5, tile: int = 160, context: float = 1.5,
                 query: tuple[Image.Image, tuple] | None = None) -> Image.Image:
    """A contact sheet of search hits, best first: each a crop around the hit with the matched patch
    outlined in red and "name (row,col) score" below. `images` maps a hit's name to its photo (a mapping
    or a function). `query` (photo, box) puts the query patch first, outlined in blue."""
    image_of = _image_of(images)
    tiles = []
    if query is not None:
        tiles.append(hit_tile(query[0], query[1], "query", tile=tile, context=context, colour=QUERY))
    for hit in hits:
        caption = f"{_short(hit.name, tile)} ({hit.row},{hit.col}) {hit.score:.3f}"
        tiles.append(hit_tile(image_of(hit.name), hit.box, caption, tile=tile, context=context))
    if not tiles:
        raise InputError("no hits to draw")
    return render.tile(tiles, columns, gap=4)


def _short(name: str, tile: int) -> str:
    room = max(4, tile // 6 - 14)
    return name if len(name) <= room else "…" + name[-(room - 1):]


def labelled_grid(cells: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str],
                  *, gap: int = 4) -> Image.Image:
    """Pictures in rows and columns with the row labels on the left and the column labels on top
    (turned upright when one is wider than its column)."""
    font = _font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max((measure.textlength(t, font=font) for t in row_labels), default=0)) + 8
    heights = [max(c.height for c in row) for row in cells]
    widths = [max(row[j].width for row in cells if j < len(row)) for j in range(max(len(r) for r in cells))]
    lengths = [int(measure.textlength(t, font=font)) + 4 for t in column_labels[:len(widths)]]
    upright = any(n > w for n, w in zip(lengths, widths))
    top = max(lengths, default=0) + 4 if upright else 18
    canvas = Image.new("RGB", (left + sum(widths) + gap * len(widths), top + sum(heights) + gap * len(heights)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = left
    for w, text, n in zip(widths, column_labels, lengths):
        if upright:
            label = Image.new("RGB", (n, 16), (255, 255, 255))
            ImageDraw.Draw(label).text((2, 1), text, fill=(0, 0, 0), font=font)
            label = label.rotate(90, expand=True)
            canvas.paste(label, (x + max(0, (w - label.width) // 2), top - 2 - label.height))
        else:
            draw.text((x + 2, 2), text, fill=(0, 0, 0), font=font)
        x += w + gap
    y = top
    for i, row in enumerate(cells):
        if i < len(row_labels):
            draw.text((2, y + heights[i] // 2 - 6), row_labels[i], fill=(0, 0, 0), font=font)
        x = left
        for j, cell in enumerate(row):
            canvas.paste(cell.convert("RGB"), (x, y))
            x += widths[j] + gap
        y += heights[i] + gap
    return canvas


def atlas_sheet(rows: Sequence[Sequence], row_labels: Sequence[str], column_labels: Sequence[str], *,
                height: int = 160, foreground_only: bool = False) -> Image.Image:
    """PCA colours of Features laid out in rows (models or images) and columns (layers), one PCA basis
    fitted per row over all its cells, so colours compare along a row; each cell scaled to `height`.
    A row needs features of one size (one model); `row_labels` gives one label per row."""
    if len(row_labels) != len(rows):
        raise InputError(f"{len(rows)} atlas rows but {len(row_labels)} row labels")
    cells = []
    for label, row in zip(row_labels, rows):
        row = list(row)
        if len({f.dim for f in row}) > 1:
            raise InputError(f"row {label!r} mixes features of different sizes; one row shares one PCA basis, "
                             "so put one model in a row (models as rows, layers or images as columns)")
        basis = PCABasis.fit(row, 3, foreground_only=foreground_only)
        pictures = [pca_view(f, basis) for f in row]
        cells.append([p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.NEAREST)
                      for p in pictures])
    return labelled_grid(cells, row_labels, column_labels)


def cka_heatmap(matrix, row_labels: Sequence[str], column_labels: Sequence[str] | None = None, *, cell: int = 44,
                cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0) -> Image.Image:
    """A CKA (or any) matrix as coloured cells with the value written in each; rows top to bottom."""
    values = render.as_numpy(matrix).astype(np.float64)
    if values.ndim != 2:
        raise InputError(f"a heatmap needs a 2-D matrix; got shape {values.shape}")
    column_labels = row_labels if column_labels is None else column_labels
    colours = render.colorize(values, cmap, vmin, vmax)
    font = _font(11)
    cells = []
    for i in range(values.shape[0]):
        row = []
        for j in range(values.shape[1]):
            square = Image.new("RGB", (cell, cell), tuple(int(c) for c in colours[i, j]))
            luminance = colours[i, j] @ np.array([0.299, 0.587, 0.114])
            ImageDraw.Draw(square).text((cell / 2, cell / 2), f"{values[i, j]:.2f}", anchor="mm", font=font,
                                        fill=(0, 0, 0) if luminance > 128 else (255, 255, 255))
            row.append(square)
        cells.append(row)
    return labelled_grid(cells, row_labels, column_labels, gap=1)
