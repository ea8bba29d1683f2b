"""What each analysis looks like: Features (and the photo) in, finished RGB pictures out.

The CLI, the reference-compatible scripts and the web explorer all draw through these,
so a picture is the same wherever it is made. Nothing here touches files.
"""

from __future__ import annotations

from PIL import Image

from . import render
from .analyses import PCABasis, attention_map, match_patches, minmax, patch_norms, query_index, similarity_map

RANDOM_PREFIX = "random:"


def finished(picture: Image.Image, *made_from) -> Image.Image:
    """The picture as shown: tagged "random weights" when any of its features came from a random model."""
    if any(str(getattr(f, "model", "")).startswith(RANDOM_PREFIX) for f in made_from if f is not None):
        return render.label_random_weights(picture)
    return picture


def norms_view(features, image: Image.Image | None = None, *, cmap: str = "inferno", alpha: float = 0.0) -> Image.Image:
    """Feature-norm map at the photo's size; with alpha > 0 it is blended over the photo."""
    heat = render.place(render.colorize(minmax(patch_norms(features)), cmap, 0.0, 1.0), features.geometry)
    return finished(render.overlay(image, heat, alpha) if image is not None and alpha > 0 else heat, features)


def pca_view(features, basis: PCABasis | None = None, *, components=(0, 1, 2), foreground_only: bool = False,
             cmap: str = "viridis", smooth: bool = False) -> Image.Image:
    """Three components as RGB, or one component through a colormap."""
    basis = basis or PCABasis.fit([features], max(3, max(components) + 1), foreground_only=foreground_only)
    values = basis.transform(features, list(components))
    if len(components) == 1:
        picture = render.place(render.colorize(values[..., 0], cmap, 0.0, 1.0), features.geometry, smooth=smooth)
        return finished(picture, features)
    if len(components) != 3:
        from .errors import InputError

        raise InputError("give one PCA component (a single map) or three (red, green, blue)")
    return finished(render.place(render.rgb(values), features.geometry, smooth=smooth), features)


def similarity_view(features, query, image: Image.Image | None = None, *, query_features=None, cmap: str = "turbo",
                    alpha: float = 0.55, mark=True, query_image: Image.Image | None = None) -> Image.Image:
    """Similarity map over the photo (full [-1, 1] range on a fixed scale), query patch outlined in red.

    For a cross-image query, the query image with its outlined patch is placed on the left.
    A CLS query has no patch and gets no box.
    """
    sims = similarity_map(features, query, query_features=query_features)
    heat = render.place(render.colorize(sims, cmap, -1.0, 1.0), features.geometry)
    picture = render.overlay(image, heat, alpha) if image is not None else heat
    source = features if query_features is None else query_features
    index = query_index(source, query)
    if query_features is None:
        return finished(render.outline_patch(picture, features.geometry, index) if mark else picture, features)
    if query_image is None:
        return finished(picture, features, query_features)
    marked = render.outline_patch(query_image, source.geometry, index) if mark else query_image
    return finished(render.side_by_side([marked, picture], gap=8), features, query_features)


def matches_view(features_a, features_b, image_a: Image.Image, image_b: Image.Image, *, method: str = "hungarian",
                 top_k: int = 0, max_lines: int | None = 800, seed: int = 0, cmap: str = "viridis", matches=None):
    """(picture, matches): both photos side by side with lines between matched patch centres, coloured by score."""
    matches = matches or match_patches(features_a, features_b, method)
    picture = render.draw_matches(image_a, image_b, matches, top_k=top_k, max_lines=max_lines, seed=seed, cmap=cmap,
                                  gap=8)
    return finished(picture, features_a, features_b), matches


def attention_view(attention, image: Image.Image | None = None, *, heads: bool = True, cmap: str = "inferno",
                   alpha: float = 0.6, columns: int = 4) -> Image.Image:
    """The head-averaged attention map over the photo, then (with `heads`) one panel per head.

    Each panel is scaled to its own maximum, so a head that spends most of its attention on
    the registers still shows where the rest goes; the query patch is outlined in red.
    """
    g = attention.geometry
    maps = [("mean of heads", attention_map(attention))]
    if heads:
        maps += [(f"head {h}", attention_map(attention, h)) for h in range(attention.heads)]
    panels = []
    for title, values in maps:
        heat = render.place(render.colorize(minmax(values), cmap, 0.0, 1.0), g)
        picture = render.overlay(image, heat, alpha) if image is not None else heat
        panels.append(render.captioned(render.outline_patch(picture, g, attention.query), title))
    return finished(render.tile(panels, min(columns, len(panels)) if len(panels) > 1 else 1, gap=4), attention)


def layers_view(features_list, image: Image.Image | None = None, *, kind: str = "pca", cmap: str = "inferno",
                columns: int = 0) -> Image.Image:
    """One panel per layer side by side (PCA colours fitted per layer, or norm maps), each captioned."""
    if kind not in ("pca", "norms"):
        from .errors import InputError

        raise InputError(f"unknown layer picture {kind!r}; use pca or norms")
    panels = [render.captioned(image.convert("RGB"), "image")] if image is not None else []
    for f in features_list:
        picture = pca_view(f) if kind == "pca" else norms_view(f, cmap=cmap)
        panels.append(render.captioned(picture, f"layer {f.layer}" + ("" if f.normed else " (pre-norm)")))
    return render.tile(panels, columns or len(panels), gap=4)  # each panel carries its own tag
