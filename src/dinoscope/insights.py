"""Segments and search as finished pictures and tables: what the command line and the explorer both show.

Analyses (`analyses.segments`, `analyses.search`) in, drawings (`sheets`) out, nothing read or written
here, so `dinoscope segments` and the explorer's Segments tab give the same picture for the same input.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .analyses import query_index, query_vector
from .analyses.search import Hit, search
from .analyses.segments import BACKGROUND, Segments, cosegment
from .analyses.upsample import upsample
from .errors import InputError
from .sheets import mask_view, palette, search_sheet, segments_view
from .views import finished

HIT_COLUMNS = ("image", "row", "col", "x0", "y0", "x1", "y1", "score")
MISSING_PHOTO = (128, 128, 128)


def check_k(k) -> int:
    """The number of segments as a whole number of at least 1 (more than the patches fails in k-means)."""
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise InputError(f"the number of segments must be a whole number, not {k!r}") from None
    if value != k and not isinstance(k, str) or value < 1:
        raise InputError(f"the number of segments must be a whole number of at least 1, not {k}")
    return value


def segments_pictures(features: Sequence, images: Sequence[Image.Image], k: int = 6, *, seed: int = 0,
                      foreground: bool = False, alpha: float = 0.6, sharpen: bool = False
                      ) -> tuple[Segments, list[Image.Image]]:
    """One k-means over the patches of every image (co-segmentation when several), drawn over each photo
    in one palette, so a colour is the same segment in every picture. `sharpen` draws the boundaries at
    pixel level, following the photo's edges (`sharp_labels`), instead of patch squares."""
    segments = cosegment(list(features), check_k(k), seed=seed, foreground_only=foreground)
    colours = palette(segments.k)
    if sharpen:
        pictures = [mask_view(sharp_labels(labels, f.geometry, image, segments.k), colours, image, alpha=alpha,
                              background=BACKGROUND) for labels, f, image in zip(segments.labels, features, images)]
    else:
        pictures = [segments_view(labels, f.geometry, image, alpha=alpha, colours=colours)
                    for labels, f, image in zip(segments.labels, features, images)]
    return segments, [finished(picture, f) for picture, f in zip(pictures, features)]


def sharp_labels(labels, geometry, photo: Image.Image, k: int) -> np.ndarray:
    """Pixel labels (H, W) from a (rows, cols) label grid: each label's indicator upsampled guided by the photo
    (joint bilateral, `analyses.upsample`), the most likely label kept; BACKGROUND (-1) where no label wins
    (foreground-only background, and the margin a native grid leaves uncovered)."""
    grid = np.asarray(labels)
    channels = np.stack([grid == BACKGROUND] + [grid == i for i in range(k)], axis=-1).astype(np.float32)
    probs = upsample(channels, geometry, photo, method="guided", fill=0.0)
    out = probs.argmax(-1).astype(np.int64) - 1  # channel 0 is the background
    out[probs.max(-1) <= 0] = BACKGROUND
    return out


def segments_summary(segments: Segments, names: Sequence[str]) -> str:
    """One line: how many patches each image gives to each segment."""
    parts = []
    for name, labels in zip(names, segments.labels):
        counts = [int((labels == i).sum()) for i in range(segments.k)]
        parts.append(f"{name}: " + " ".join(str(c) for c in counts))
    return f"{segments.k} segments (patches per segment, largest first) - " + "; ".join(parts)


def search_hits(query_features, query, sources: Iterable, *, top: int = 20, exclude: Iterable[str] = ()
                ) -> tuple[int, list[Hit]]:
    """(query patch index, best hits) of one patch of `query_features` over (name, Features) `sources`."""
    index = query_index(query_features, query)
    if index < 0:
        raise InputError("search looks for a patch: give --pixel, --cell or --patch, not the CLS token")
    hits = search(query_vector(query_features, index), sources, top=top, exclude=exclude)
    if not hits:
        raise InputError("the collection gave no features to search; check that its images load")
    return index, hits


def hits_sheet(hits: Sequence[Hit], photo_of: Callable[[str], Image.Image | None], *, query=None, columns: int = 5,
               tile: int = 160, made_from: Sequence = ()) -> Image.Image:
    """The contact sheet of `hits`: each photo is asked for once; a hit whose photo is unknown is drawn on
    grey at the image's size (the box still shows where it matched). `query` is (photo, box) or None;
    `made_from` are the Features behind it (a random model's sheet is tagged)."""
    photos: dict[str, Image.Image] = {}
    for hit in hits:
        if hit.name not in photos:
            photo = photo_of(hit.name)
            photos[hit.name] = photo if photo is not None else Image.new("RGB", hit.geometry.image_size, MISSING_PHOTO)
    return finished(search_sheet(hits, photos, columns=columns, tile=tile, query=query), *made_from)


def hits_table(hits: Sequence[Hit]) -> list[list]:
    """The hits as rows of HIT_COLUMNS, best first."""
    return [[hit.as_row()[c] for c in HIT_COLUMNS] for hit in hits]


def hits_csv(hits: Sequence[Hit]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HIT_COLUMNS)
    writer.writerows(hits_table(hits))
    return buffer.getvalue()
