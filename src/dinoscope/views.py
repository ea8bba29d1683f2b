"""What each analysis looks like: Features in, finished RGB pictures (PIL images) out.

The CLI, the reference-compatible scripts, the web explorer and notebooks all draw through
these, so a picture is the same wherever it is made (norms, PCA and similarity without torch, for
cached reruns; attention and matching load torch when drawn). Nothing here touches files. The photo
is found on the Features (`features.image`, set by extraction) unless one is passed; pass
`image=None` for a bare map. `explained=True` makes a picture explain itself (colour bar or
legend, caption, the photo beside norm and PCA maps): see `explain`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import analyses, render
from .analyses import CLS, Patch, PCABasis, Pixel, minmax, patch_norms, query_index, similarity_map
from .errors import InputError

RANDOM_PREFIX = "random:"


def finished(picture: Image.Image, *made_from) -> Image.Image:
    """The picture as shown: tagged "random weights" when any of its features came from a random model."""
    if any(str(getattr(f, "model", "")).startswith(RANDOM_PREFIX) for f in made_from if f is not None):
        return render.label_random_weights(picture)
    return picture


class _FromFeatures:
    def __repr__(self) -> str:
        return "the image on the Features"


FROM_FEATURES = _FromFeatures()  # default photo argument: the one the Features (or Attention) carry, if any


def _photo(image, owner):
    return getattr(owner, "image", None) if image is FROM_FEATURES else image


def _guide(image, owner):
    """The photo that guides upsampling: the one given, else the one the Features (or Attention) carry."""
    return image if image is not None else getattr(owner, "image", None)


def upsampled(values, geometry, guide, *, method: str):
    """`analyses.upsample.upsample`, imported on first use: guided upsampling runs in torch, and views must
    import without it (cached reruns draw norms, PCA and similarity torch-free; "nearest" never gets here)."""
    from .analyses.upsample import upsample

    return upsample(values, geometry, guide, method=method)


def painted(values, geometry, colour, *, upsample: str = "nearest", guide=None) -> Image.Image:
    """A grid map at the photo's pixels: `colour` turns values into uint8 RGB. "nearest" paints each cell's
    square (`render.place`); "bilinear" or "guided" (by the photo `guide`) upsample the few drawn channels
    first (`analyses.upsample`), then colour them; the uncovered margin stays black either way."""
    if upsample == "nearest":
        return render.place(colour(values), geometry)
    full = upsampled(render.as_numpy(values), geometry, guide, method=upsample)
    return _coloured(full, np.isnan(full) if full.ndim == 2 else np.isnan(full).any(-1), colour)


def painted_maps(maps, geometry, colour, *, upsample: str = "nearest", guide=None) -> list[Image.Image]:
    """`painted` for several single-channel maps of one grid: upsampled together (guided weights computed once)."""
    if upsample == "nearest":
        return [render.place(colour(values), geometry) for values in maps]
    full = upsampled(np.stack([render.as_numpy(v) for v in maps], axis=-1), geometry, guide, method=upsample)
    outside = np.isnan(full[..., 0])
    return [_coloured(full[..., i], outside, colour) for i in range(full.shape[-1])]


def _coloured(full, outside, colour) -> Image.Image:
    picture = colour(np.nan_to_num(full))
    picture[outside] = 0
    return Image.fromarray(picture)


def describe_query(query) -> str:
    """The query in words, for captions."""
    if isinstance(query, Pixel):
        return f"pixel ({query.x:g}, {query.y:g})"
    if isinstance(query, Patch):
        return f"cell (row {query.row}, col {query.col})"
    return "CLS token" if query == CLS else f"patch {query}"


def caption(features, query=None) -> str:
    """One line saying what a picture shows: model, layer, query and resolution."""
    g = features.geometry
    layer = "last layer" if features.layer == -1 else f"layer {features.layer}"
    parts = [features.model or "model", layer + ("" if features.normed else " (pre-norm)")]
    if query is not None:
        parts.append("query " + describe_query(query))
    w, h = g.input_size
    parts.append(f"{w}x{h} input, {g.rows}x{g.cols} cells")
    return " | ".join(parts)


def explain(picture: Image.Image, features, *, scale=None, components=None, text: str = "",
            photo: Image.Image | None = None) -> Image.Image:
    """A map made to explain itself: [photo |] map [| colour bar or PCA legend] above a caption line.

    `scale` is (cmap, vmin, vmax, label) for a colour bar; `components` (three 0-based indices) asks for
    the PCA legend instead. The uncovered right/bottom strip of the map is hatched grey.
    """
    size = render.text_size(min(picture.size))
    g = features.geometry
    hatched = picture.size == g.image_size and g.covered != g.image_size
    picture = render.mark_uncovered(picture, g) if hatched else picture
    panels = [photo.convert("RGB")] if photo is not None else []
    panels.append(picture)
    if components is not None:
        panels.append(render.pca_legend(components, picture.height, text=size))
    elif scale is not None:
        cmap, lo, hi, label = scale
        panels.append(render.colorbar(cmap, lo, hi, picture.height, label=label, text=size))
    composed = render.side_by_side(panels, gap=8)
    note = text + (f" | hatched: {render.UNCOVERED_LABEL}" if hatched else "")
    return render.caption_band(composed, note, size=size)


def norms_view(features, image=FROM_FEATURES, *, cmap: str = "inferno", alpha: float = 0.0,
               upsample: str = "nearest", explained: bool = False) -> Image.Image:
    """Feature-norm map at the photo's size; with alpha > 0 it is blended over the photo.

    `upsample` (here and in the other map views): nearest (cells as squares), bilinear, or guided by the photo.
    `explained` adds the photo beside the map, a colour bar of the norms' real range and a caption.
    """
    image = _photo(image, features)
    norms = patch_norms(features)
    heat = painted(minmax(norms), features.geometry, lambda v: render.colorize(v, cmap, 0.0, 1.0),
                   upsample=upsample, guide=_guide(image, features))
    picture = render.overlay(image, heat, alpha) if image is not None and alpha > 0 else heat
    if explained:
        lo, hi = float(norms.min()), float(norms.max())
        picture = explain(picture, features, scale=(cmap, lo, hi, "feature norm"), text=caption(features),
                          photo=image if image is not None and alpha == 0 else None)
    return finished(picture, features)


def pca_view(features, basis: PCABasis | None = None, *, components=(0, 1, 2), foreground_only: bool = False,
             cmap: str = "viridis", smooth: bool = False, upsample: str = "nearest", guide=None,
             explained: bool = False, image=FROM_FEATURES) -> Image.Image:
    """Three components as RGB, or one component through a colormap (`guide`: the photo for guided
    upsampling, by default the one the Features carry).

    `explained` adds the photo (`image`) beside the map, a legend (which components are red, green,
    blue, or a colour bar for one component) and a caption.
    """
    basis = basis or PCABasis.fit([features], max(3, max(components) + 1), foreground_only=foreground_only)
    values = basis.transform(features, list(components))
    if len(components) not in (1, 3):
        raise InputError("give one PCA component (a single map) or three (red, green, blue)")
    if len(components) == 1:
        values, colour = values[..., 0], (lambda v: render.colorize(v, cmap, 0.0, 1.0))
        legend = dict(scale=(cmap, 0.0, 1.0, f"PC{components[0] + 1} (scaled)"))
    else:
        colour = render.rgb
        legend = dict(components=list(components))
    if smooth:  # bilinear between patch centres on the coloured grid, as before --upsample existed
        picture = render.place(colour(values), features.geometry, smooth=True)
    else:
        picture = painted(values, features.geometry, colour, upsample=upsample, guide=_guide(guide, features))
    if explained:
        picture = explain(picture, features, **legend, text=caption(features), photo=_photo(image, features))
    return finished(picture, features)


def similarity_view(features, query, image=FROM_FEATURES, *, query_features=None, cmap: str = "turbo",
                    alpha: float = 0.55, mark=True, query_image: Image.Image | None = None,
                    upsample: str = "nearest", explained: bool = False) -> Image.Image:
    """Similarity map over the photo (full [-1, 1] range on a fixed scale), query patch outlined (white in black).

    `query` is a patch index, `Patch(row, col)`, `Pixel(x, y)` or `CLS`. For a cross-image query
    (`query_features`), a `query_image` (e.g. ``query_features.image``) with its outlined patch is
    placed on the left. A CLS query has no patch and gets no box. `explained` adds the [-1, 1]
    colour bar and a caption.
    """
    image = _photo(image, features)
    sims = similarity_map(features, query, query_features=query_features)
    heat = painted(sims, features.geometry, lambda v: render.colorize(v, cmap, -1.0, 1.0), upsample=upsample,
                   guide=_guide(image, features))
    picture = render.overlay(image, heat, alpha) if image is not None else heat
    source = features if query_features is None else query_features
    index = query_index(source, query)
    legend = dict(scale=(cmap, -1.0, 1.0, "cosine similarity"), text=caption(source, query))
    if query_features is None:
        picture = render.outline_patch(picture, features.geometry, index) if mark else picture
        return finished(explain(picture, features, **legend) if explained else picture, features)
    marked = None
    if query_image is not None:
        marked = render.outline_patch(query_image, source.geometry, index) if mark else query_image
    if explained:
        return finished(explain(picture, features, **legend, photo=marked), features, query_features)
    if marked is None:
        return finished(picture, features, query_features)
    return finished(render.side_by_side([marked, picture], gap=8), features, query_features)


def matches_view(features_a, features_b, image_a=FROM_FEATURES, image_b=FROM_FEATURES, *, method: str = "hungarian",
                 top_k: int = 0, max_lines: int | None = 800, seed: int = 0, cmap: str = "viridis", matches=None,
                 explained: bool = False):
    """(picture, matches): both photos side by side with lines between matched patch centres, coloured by score.

    `explained` adds a colour bar of the scores and a caption saying how many pairs are drawn.
    """
    image_a, image_b = _photo(image_a, features_a), _photo(image_b, features_b)
    if image_a is None or image_b is None:
        raise InputError("matches_view draws over both photos: pass image_a and image_b, or Features that carry them")
    matches = matches or analyses.match_patches(features_a, features_b, method)
    picture = render.draw_matches(image_a, image_b, matches, top_k=top_k, max_lines=max_lines, seed=seed, cmap=cmap,
                                  gap=8)
    if explained and len(matches):
        shown = len(render.select_pairs(matches, top_k=top_k, max_lines=max_lines, seed=seed))
        which = f"best {shown}" if top_k and top_k > 0 else f"{shown} sampled"
        text = f"{which} of {len(matches)} {method} pairs | " + caption(features_a)
        lo, hi = float(matches.scores.min()), float(matches.scores.max())
        picture = explain(picture, features_a, scale=(cmap, lo, hi, "match score"), text=text)
    return finished(picture, features_a, features_b), matches


def attention_view(attention, image=FROM_FEATURES, *, heads: bool = True, cmap: str = "inferno",
                   alpha: float = 0.6, columns: int = 4, upsample: str = "nearest") -> Image.Image:
    """The head-averaged attention map over the photo, then (with `heads`) one panel per head.

    Each panel is scaled to its own maximum, so a head that spends most of its attention on
    the registers still shows where the rest goes; the query patch is outlined (white in black).
    """
    image = _photo(image, attention)
    g = attention.geometry
    maps = [("mean of heads", analyses.attention_map(attention))]
    if heads:
        maps += [(f"head {h}", analyses.attention_map(attention, h)) for h in range(attention.heads)]
    heats = painted_maps([minmax(values) for _, values in maps], g, lambda v: render.colorize(v, cmap, 0.0, 1.0),
                         upsample=upsample, guide=_guide(image, attention))
    panels = []
    for (title, _), heat in zip(maps, heats, strict=True):
        picture = render.overlay(image, heat, alpha) if image is not None else heat
        panels.append(render.captioned(render.outline_patch(picture, g, attention.query), title))
    return finished(render.tile(panels, min(columns, len(panels)) if len(panels) > 1 else 1, gap=4), attention)


def layers_view(features_list, image=FROM_FEATURES, *, kind: str = "pca", cmap: str = "inferno",
                columns: int = 0) -> Image.Image:
    """The photo, then one panel per layer (PCA colours fitted per layer, or norm maps), each captioned."""
    image = _photo(image, features_list[0] if features_list else None)
    if kind not in ("pca", "norms"):
        raise InputError(f"unknown layer picture {kind!r}; use pca or norms")
    panels = [render.captioned(image.convert("RGB"), "image")] if image is not None else []
    for f in features_list:
        picture = pca_view(f) if kind == "pca" else norms_view(f, cmap=cmap)
        panels.append(render.captioned(picture, f"layer {f.layer}" + ("" if f.normed else " (pre-norm)")))
    return render.tile(panels, columns or len(panels), gap=4)  # each panel carries its own tag
