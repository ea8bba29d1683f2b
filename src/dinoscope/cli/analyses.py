"""Commands that draw pictures of one image (or a pair): norms, pca, similarity, match, all, layers,
attention; and `models`. A collection of inputs is handed to `collections.run`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..files import after_writes
from . import options as o
from .collections import is_collection, run as run_collection, run_one
from .options import (BASIS, COLLECTION, EXTRACTION, INPUT, MODEL, PICTURE, VIEW, CellOpt, CmapOpt, ImageArg,
                      InputsArg, MaxLinesOpt, MethodOpt, Options, PatchOpt, PixelOpt, SeedOpt, TopKOpt, shared)
from .. import names
from .output import announce, check_file_target, check_pairs_path, save, stem, write_pairs


@shared(*EXTRACTION, *VIEW, *PICTURE, *COLLECTION)
def norms(
    images: InputsArg = None, cmap: CmapOpt = "inferno",
    alpha: Annotated[float, typer.Option(help="Blend the map over the photo with this opacity (0 = map only).")] = 0.0,
    *, opts: Options,
):
    """Feature-norm map: the L2 norm of every patch token, min-max scaled."""
    o.fraction(alpha, "--alpha")
    if is_collection(images):
        return run_collection("norms", images, dict(cmap=cmap, alpha=alpha, explained=not opts.bare), opts)
    run_one("norms", images, dict(cmap=cmap, alpha=alpha, explained=not opts.bare), opts)


@shared(*EXTRACTION, *VIEW, *BASIS, *PICTURE, *COLLECTION)
def pca(
    images: InputsArg = None, cmap: CmapOpt = "viridis",
    components: Annotated[str, typer.Option(help="Three components for RGB (e.g. 1,2,3) or one for a single map.")] = "1,2,3",
    foreground: Annotated[bool, typer.Option(help="Fit on foreground patches only; background drawn black.")] = False,
    smooth: Annotated[bool, typer.Option(help="Interpolate between patch centres.")] = False,
    *, opts: Options,
):
    """PCA of the patch tokens as colours.

    A collection gets one basis fitted over all its patches (streaming, bounded memory), so a colour
    means the same thing in every picture; it is saved to OUT/pca_basis.safetensors.
    """
    picked = o.components(components)
    check_file_target(opts.save_basis)
    if is_collection(images):
        if foreground:
            raise InputError("--foreground is not available for collections yet; fit on one image with --save-basis "
                             "and apply it with --pca-basis")
        return run_collection("pca", images, dict(cmap=cmap, components=picked, smooth=smooth,
                                                  explained=not opts.bare), opts)
    job = run_one("pca", images, dict(cmap=cmap, components=picked, smooth=smooth, foreground=foreground,
                                      basis_file=opts.basis, explained=not opts.bare), opts)
    if opts.save_basis is not None:
        job.fitted.save(opts.save_basis)
        announce(opts.save_basis)


@shared(*EXTRACTION, *VIEW, *PICTURE, *COLLECTION)
def similarity(
    images: InputsArg = None, cmap: CmapOpt = "turbo",
    patch: PatchOpt = None, cell: CellOpt = None, pixel: PixelOpt = None,
    cls: Annotated[bool, typer.Option("--cls", help="Query with the CLS token.")] = False,
    target: Annotated[Optional[str], typer.Option(help="Draw the map over this second image (cross-image similarity).")] = None,
    alpha: Annotated[float, typer.Option(help="Opacity of the map over the photo.")] = 0.55,
    *, opts: Options,
):
    """Cosine similarity between one query (a patch, a pixel or the CLS token) and every patch.

    Without a query, the centre patch is used.
    """
    from ..analyses import query_index
    from ..views import similarity_view

    query = o.query(patch, cell, pixel, cls)
    o.fraction(alpha, "--alpha")
    if is_collection(images):
        if target is not None:
            raise InputError("--target is for one image; a collection takes the query from each image itself")
        return run_collection("similarity", images, dict(cmap=cmap, alpha=alpha, query=query,
                                                         explained=not opts.bare), opts)
    if target is None:
        run_one("similarity", images, dict(cmap=cmap, alpha=alpha, query=query, explained=not opts.bare), opts)
        return
    image = images[0] if images else None
    extractor = o.reader(opts)
    img, feats = extractor(image or o.DEFAULT_SAMPLE)
    name = names.similarity_name(stem(image), query, stem(target))
    if query is None:
        query = feats.geometry.index(feats.geometry.rows // 2, feats.geometry.cols // 2)
    query_index(feats, query)  # out-of-range queries fail before any second forward pass
    timg, tfeats = extractor(target)
    picture = similarity_view(tfeats, query, timg, query_features=feats, query_image=img, cmap=cmap, alpha=alpha,
                              upsample=o.upsampling(opts), explained=not opts.bare)
    save(picture, opts.out, name)


@shared(*EXTRACTION, *PICTURE)
def match(
    image_a: Annotated[str, typer.Argument(help="First image.")],
    image_b: Annotated[str, typer.Argument(help="Second image.")],
    cmap: CmapOpt = "viridis", method: MethodOpt = "hungarian", top_k: TopKOpt = 50, max_lines: MaxLinesOpt = 800,
    seed: SeedOpt = 0,
    pairs: Annotated[Optional[Path], typer.Option(help="Also write the pairs to this .csv or .json file.")] = None,
    *, opts: Options,
):
    """Patch matching between two images, drawn side by side."""
    from ..views import matches_view

    check_pairs_path(pairs)
    check_matching(top_k, max_lines, seed)
    (img_a, fa), (img_b, fb) = o.extractor(opts).extract_many([image_a, image_b])  # same-size pairs share one pass
    picture, matches = matches_view(fa, fb, img_a, img_b, method=method, top_k=top_k, max_lines=max_lines, seed=seed,
                                    cmap=cmap, explained=not opts.bare)
    save(picture, opts.out, names.matches_name(stem(image_a), stem(image_b), method))
    if pairs is not None:
        write_pairs(matches, pairs)


# With no image, `all` draws these and matches each with the next (chelsea-coffee, coffee-astronaut).
DEMO_SOURCES = ["sample:chelsea", "sample:coffee", "sample:astronaut"]


@shared(*EXTRACTION, *VIEW, *BASIS, *PICTURE, *COLLECTION)
def run_all(
    context: typer.Context,
    images: InputsArg = None,
    match_with: Annotated[Optional[str], typer.Option("--match", help="Also match against this second image.")] = None,
    method: MethodOpt = "hungarian", top_k: TopKOpt = 50, max_lines: MaxLinesOpt = 800, seed: SeedOpt = 0,
    *, opts: Options,
):
    """Every analysis from one forward pass per image.

    With no image, runs on the bundled sample photos (chelsea, coffee, astronaut) and matches each
    with the next one (chelsea-coffee, coffee-astronaut); with --match, the image is matched against
    that second image. A collection gets norms, PCA (one basis for all), similarity to the centre
    patch and to CLS for every input, and no matching.
    """
    check_matching(top_k, max_lines, seed)
    if is_collection(images):
        if match_with is not None:
            raise InputError("--match is for one image; use `dinoscope match` for pairs")
        return run_collection("all", images, dict(explained=not opts.bare), opts)
    image = images[0] if images else None
    if opts.basis is not None or opts.save_basis is not None:
        raise InputError("--pca-basis and --save-pca-basis on `all` are for collections; use `dinoscope pca` for one image")
    upsample = o.upsampling(opts)  # bad values fail before the demo's model loads
    if image is None and _model_left_default(context):  # the demo: the only run that may fall back to random weights
        from ..models.loading import demo_backbone

        opts = dataclasses.replace(opts, model=demo_backbone(device=opts.device, dtype=opts.dtype))
    sources = [image] if image is not None else DEMO_SOURCES
    wanted = sources + ([match_with] if match_with and match_with not in sources else [])
    matching = bool(match_with) or image is None  # matching works on torch tensors: only drawing runs cache-first
    read = o.extractor(opts) if matching else o.reader(opts)
    seen = dict(zip(wanted, read.extract_many(wanted)))  # one batched pass per input size
    from ..jobs import Job

    job = Job("all", {"upsample": upsample, "explained": not opts.bare})  # each image's own PCA basis
    for source in sources:
        for rel in job.write(opts.out, stem(source), *seen[source]):
            announce(opts.out / rel)
    if match_with:
        pairs = [(source, match_with) for source in sources if source != match_with]
    else:
        pairs = list(zip(sources, sources[1:])) if image is None else []  # the samples, pairwise
    for a, b in pairs:
        _draw_matches(seen[a], seen[b], names.matches_name(stem(a), stem(b), method), opts.out,
                      method=method, top_k=top_k, max_lines=max_lines, seed=seed, explained=not opts.bare)
    after_writes(lambda: typer.echo(f"pictures are in {opts.out.resolve()}"))


def check_matching(top_k: int, max_lines: int, seed: int) -> None:
    o.at_least(top_k, 0, "--top-k")
    o.at_least(max_lines, 0, "--max-lines")
    o.at_least(seed, 0, "--seed")


def _model_left_default(context) -> bool:
    """Whether this command line left --model at its default (not given)."""
    source = context.get_parameter_source("model")  # typer may vendor click: compare the enum by name
    return source is not None and source.name == "DEFAULT"


def _draw_matches(a, b, name: str, out: Path, **how) -> None:
    from ..views import matches_view

    picture, _ = matches_view(a[1], b[1], a[0], b[0], **how)
    save(picture, out, name)


def models():
    """Known models: short names, patch size, width, parameters and the memory each needs."""
    from ..models.registry import HEADROOM, LOGIN_MARK, table

    typer.echo(table())
    typer.echo(f"\nMemory columns: weights x {HEADROOM} headroom. {LOGIN_MARK} needs a login: accept the DINOv3 licence "
               "on the hub page, then `hf auth login`; a short name falls back to the ungated copy (same weights, "
               "timm's layout) when the official one cannot be had. Pass a short name, either hub id, a folder "
               "or a .pth/.safetensors checkpoint to --model.")


@shared(*MODEL, *INPUT, "prenorm", "out")
def layers(
    image: ImageArg = None,
    layer_list: Annotated[str, typer.Option("--layers", help="Blocks to compare, e.g. 3,6,9,-1 (negative from the end).")] = "0,-1",
    cmap: CmapOpt = "inferno",
    show: Annotated[str, typer.Option("--show", help="pca (colours fitted per layer) or norms.")] = "pca",
    *, opts: Options,
):
    """Several layers side by side in one picture, from one forward pass."""
    from ..views import layers_view

    if show not in ("pca", "norms"):
        raise InputError(f"unknown --show {show!r}; use pca or norms")
    picked = o.layer_list(layer_list)
    img, feats = o.extractor(opts).layers(image or o.DEFAULT_SAMPLE, picked)
    save(layers_view(feats, img, kind=show, cmap=cmap), opts.out, f"{stem(image)}_layers_{show}.png")


@shared(*MODEL, *INPUT, "layer", *VIEW, "out")
def attention(
    image: ImageArg = None, cmap: CmapOpt = "inferno",
    patch: PatchOpt = None, cell: CellOpt = None, pixel: PixelOpt = None,
    cls: Annotated[bool, typer.Option("--cls", help="Query with the CLS token (the default).")] = False,
    heads: Annotated[bool, typer.Option(help="Draw a panel per head after the mean.")] = True,
    alpha: Annotated[float, typer.Option(help="Opacity of the maps over the photo.")] = 0.6,
    *, opts: Options,
):
    """Attention of the CLS token (or a query patch) to every patch in one block, per head and averaged.

    Also prints how much of the attention goes to the register tokens and to CLS.
    """
    from ..views import attention_view

    query = o.query(patch, cell, pixel, cls)
    o.fraction(alpha, "--alpha")
    img, att = o.extractor(opts).attention(image or o.DEFAULT_SAMPLE, -1 if query is None else query)
    shares = att.shares()
    who = "CLS" if att.query < 0 else f"patch {att.query}"
    typer.echo(f"layer {att.layer}, query {who}, {att.heads} heads: {shares['patches']:.1%} of the attention goes to "
               f"patches, {shares['registers']:.1%} to the {att.registers.shape[-1]} registers, {shares['cls']:.1%} to CLS")
    if att.registers.shape[-1]:
        per_head = ", ".join(f"{v:.0%}" for v in att.registers.sum(-1).tolist())
        typer.echo(f"register share per head: {per_head}")
    save(attention_view(att, img, heads=heads, cmap=cmap, alpha=alpha, upsample=o.upsampling(opts)), opts.out,
         f"{stem(image)}_attention_L{att.layer}.png")
