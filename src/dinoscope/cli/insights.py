"""Commands that look across images, layers, models and frames: segments, search, atlas, propagate.

Every command computes all its outputs before writing any, and writes them together (`save_together`):
bad input fails before a file appears, and an interrupted write leaves none of them behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..files import atomic_path
from . import options as o
from .options import EXTRACTION, INPUT, MODEL, CellOpt, ImageArg, Options, PatchOpt, PixelOpt, shared
from .output import PhaseBars, stem

ImagesArg = Annotated[list[str] | None, typer.Argument(
    help=f"{o.SAMPLE_HELP}; default {o.DEFAULT_SAMPLE}. Several images (or a folder, a quoted glob, @LIST.txt) are "
         "segmented together: one clustering, the same colour for the same part in every picture.",
    show_default=False)]
AlphaOpt = Annotated[float, typer.Option(help="Opacity of the colours over the photo (0..1).")]


def _unit(value: float, flag: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{flag} must be between 0 and 1, not {value}")
    return value


def save_together(outputs: dict, out: Path) -> list[Path]:
    """Write {relative name: PIL picture or text} under `out`: all appear, or (on any failure) none."""
    paths = []
    with contextlib.ExitStack() as stack:
        for name, content in outputs.items():
            target = out / name
            tmp = stack.enter_context(atomic_path(target))
            if isinstance(content, str):
                tmp.write_text(content, encoding="utf-8")
            else:
                content.save(tmp, format="PNG")
            paths.append(target)
    for path in paths:
        typer.echo(f"wrote {path}")
    return paths


@shared(*EXTRACTION, "batch_size")
def segments(
    images: ImagesArg = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Number of segments (k-means clusters).")] = 6,
    foreground: Annotated[bool, typer.Option(
        help="Cluster foreground patches only (the side of the first principal component with fewer border "
             "patches); background left uncoloured.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the k-means initialisation (same seed, same segments).")] = 0,
    alpha: AlphaOpt = 0.6,
    sharpen: Annotated[bool, typer.Option(help="Draw boundaries at pixel level, following the photo's edges (guided "
                                               "upsampling) instead of patch squares.")] = False,
    *, opts: Options,
):
    """k-means segments of the patch features; several images are co-segmented (one clustering).

    Writes OUT/<name>_segments_k<K>.png (one image) or OUT/<name>_cosegments_k<K>.png for each image
    (several); "_fg" is added with --foreground, "_sharp" with --sharpen.
    """
    from ..collections import expand_inputs
    from ..insights import check_k, segments_pictures, segments_summary

    check_k(k)
    _unit(alpha, "--alpha")
    items = expand_inputs(images or [o.DEFAULT_SAMPLE], exclude=opts.out)
    if not items:
        raise InputError("the inputs name no images; give files, a folder, a glob or @LIST.txt")
    found = o.extractor(opts).extract_many([it.source for it in items])
    result, pictures = segments_pictures([f for _, f in found], [im for im, _ in found], k, seed=seed,
                                         foreground=foreground, alpha=alpha, sharpen=sharpen)
    kind = "segments" if len(items) == 1 else "cosegments"
    suffix = f"_{kind}_k{k}" + ("_fg" if foreground else "") + ("_sharp" if sharpen else "")
    save_together({f"{it.name}{suffix}.png": picture for it, picture in zip(items, pictures)}, opts.out)
    typer.echo(segments_summary(result, [it.name for it in items]))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@shared(*EXTRACTION, "batch_size")
def search(
    query_image: Annotated[str, typer.Argument(help=f"The image the query patch is in ({o.SAMPLE_HELP}).",
                                               show_default=False)],
    inside: Annotated[str, typer.Option(
        "--in", help="Where to search: a folder of images (searched recursively), a quoted glob, @LIST.txt, or the "
                     "output folder of `dinoscope extract` (.safetensors, or Parquet shards from --engine ray).",
        show_default=False)],
    patch: PatchOpt = None, cell: CellOpt = None, pixel: PixelOpt = None,
    top: Annotated[int, typer.Option(help="Number of hits.")] = 20,
    columns: Annotated[int, typer.Option(help="Tiles per row of the contact sheet.")] = 5,
    include_query: Annotated[bool, typer.Option(
        "--include-query", help="Also search the query image itself when the collection holds it.")] = False,
    *, opts: Options,
):
    """The patches most similar to one patch of QUERY_IMAGE across a collection (cosine similarity).

    Writes OUT/<query>_search_sheet.png (the query first, outlined in blue, then each hit's
    surroundings with the matched patch outlined in red) and OUT/<query>_search_hits.csv
    (image,row,col,x0,y0,x1,y1,score, best first; boxes in original-image pixels). Without a
    query, the centre patch is used.
    """
    from ..insights import hits_csv, hits_sheet, search_hits
    from ..search_sources import open_collection

    query = o.query(patch, cell, pixel, False)
    if top < 1 or columns < 1:
        raise InputError("--top and --columns must be at least 1")
    collection = open_collection(inside, exclude=opts.out, max_pixels=opts.max_pixels)
    extractor = o.extractor(opts)
    image, feats = extractor(query_image)
    if query is None:
        query = feats.geometry.index(feats.geometry.rows // 2, feats.geometry.cols // 2)
    exclude = [] if include_query else [n for n, s in collection.sources.items() if _same_file(s, query_image)]
    index, hits = search_hits(feats, query, collection.features(extractor), top=top, exclude=exclude)
    sheet = hits_sheet(hits, collection.photo, query=(image, feats.geometry.box(index)), columns=columns,
                       made_from=[feats])
    name = stem(query_image)
    save_together({f"{name}_search_sheet.png": sheet, f"{name}_search_hits.csv": hits_csv(hits)}, opts.out)
    best = hits[0]
    typer.echo(f"{len(hits)} hits for patch {index} of {name} in {collection.kind} {inside}; best: {best.name} "
               f"(row {best.row}, col {best.col}) {best.score:.3f}")
    if collection.failures:
        typer.echo(f"{len(collection.failures)} image(s) of the collection could not be read (see the notices above)")


@shared(*MODEL, *INPUT, "prenorm", "out")
def atlas(
    image: ImageArg = None,
    layer_list: Annotated[str, typer.Option("--layers", help="Blocks to compare, e.g. 0,3,6,9,-1 (negative from the "
                                                             "end), or all.")] = "all",
    models: Annotated[str | None, typer.Option(
        "--models", help="Several models, one row each, e.g. vits16,vitb16 (default: --model).",
        show_default=False)] = None,
    debiased: Annotated[bool, typer.Option("--debiased", help="Debiased CKA (Song et al. 2012) instead of the "
                                                              "standard estimator.")] = False,
    outlier_k: Annotated[float, typer.Option("--outlier-k", help="A token is a high-norm outlier above median + K "
                                                                 "robust sigmas (1.4826 MAD).")] = 5.0,
    attention: Annotated[bool, typer.Option(help="Measure the CLS token's attention to registers per layer "
                                                 "(one pass per layer; ViT models).")] = True,
    *, opts: Options,
):
    """Layers and models side by side in PCA colours, with CKA, token-norm and attention numbers.

    Layers are columns, models rows (one PCA basis per row); the numbers: linear CKA between layers
    and between models, token-norm statistics with high-norm outliers, and
    the register share of CLS attention per layer.

    Writes OUT/<name>_atlas.png, OUT/<name>_cka.png, OUT/<name>_atlas.json and OUT/<name>_atlas.csv.
    """
    from ..analyses.atlas import cka_matrix
    from ..sheets import atlas_sheet, cka_heatmap, labelled_grid
    from ..views import finished

    if outlier_k <= 0:
        raise InputError(f"--outlier-k must be positive, not {outlier_k}")
    wanted = None if layer_list.strip().lower() == "all" else o.layer_list(layer_list)
    names = [m.strip() for m in (models.split(",") if models else [opts.model]) if m.strip()]
    if not names:
        raise InputError("--models names no model; give short names separated by commas, e.g. vits16,vitb16")
    source = image or o.DEFAULT_SAMPLE
    rows = [_atlas_row(replace(opts, model=name), source, wanted, outlier_k, attention) for name in names]
    labels = [_short_model(name) for name in names]
    columns = _column_labels(rows)
    every = [f for r in rows for f in r["features"]]
    sheet = finished(atlas_sheet([r["features"] for r in rows], labels, columns), *every)
    for r in rows:
        r["cka"] = cka_matrix(r["features"], debiased=debiased)
    heatmaps = [cka_heatmap(r["cka"], [f"{b}" for b in r["blocks"]]) for r in rows]
    titles = [f"{label} blocks" for label in labels]
    model_cka = None
    if len(rows) > 1:
        model_cka = cka_matrix([r["features"][-1] for r in rows], debiased=debiased)
        heatmaps.append(cka_heatmap(model_cka, labels))
        titles.append("models, last block")
    picture = finished(labelled_grid([heatmaps], [""], titles), *every)
    numbers = _atlas_numbers(source, rows, labels, model_cka, debiased, outlier_k)
    name = stem(image)
    save_together({f"{name}_atlas.png": sheet, f"{name}_cka.png": picture,
                   f"{name}_atlas.json": json.dumps(numbers, indent=1) + "\n",
                   f"{name}_atlas.csv": _atlas_csv(numbers)}, opts.out)


def _short_model(name: str) -> str:
    return Path(name.rstrip("/")).name or name


def _column_labels(rows: list[dict]) -> list[str]:
    """Block numbers when every row has the same ones, else the positions asked for."""
    longest = max(rows, key=lambda r: len(r["blocks"]))
    if all(r["blocks"] == longest["blocks"][:len(r["blocks"])] for r in rows):
        return [f"block {b}" for b in longest["blocks"]]
    return [f"block {w}" for w in longest["asked"]]


def _atlas_row(opts: Options, source: str, wanted, outlier_k: float, attention: bool) -> dict:
    """One model's features at the wanted blocks, token-norm statistics and CLS attention shares."""
    from ..analyses.atlas import attention_shares, norm_stats
    from ..features import extract_attention

    extractor = o.extractor(opts)
    backbone = extractor.backbone
    asked = list(range(backbone.num_layers)) if wanted is None else wanted
    image, features = extractor.layers(source, asked)
    blocks = [backbone.layer_index(b) for b in asked]
    shares = None
    if attention and backbone.kind != "convnext":
        rows = [extract_attention(backbone, image, layer=b, resolution=extractor.resolution) for b in blocks]
        shares = {k: v.tolist() for k, v in attention_shares(rows, backbone.num_registers).per_layer().items()}
    return {"model": opts.model, "source": backbone.source, "kind": backbone.kind, "registers": backbone.num_registers,
            "asked": asked, "blocks": blocks, "features": features, "size": list(image.size),
            "norms": [norm_stats(f, k=outlier_k) for f in features], "attention": shares}


def _atlas_numbers(source: str, rows: list[dict], labels: list[str], model_cka, debiased: bool, k: float) -> dict:
    models = []
    for label, r in zip(labels, rows):
        per_block = []
        for i, (block, stats) in enumerate(zip(r["blocks"], r["norms"])):
            entry = {"block": block, "grid": list(r["features"][i].geometry.grid), "norm_median": stats.median,
                     "norm_mad": stats.mad, "norm_threshold": stats.threshold, "norm_mean": stats.mean,
                     "norm_max": stats.max, "outliers": stats.outlier_count, "outlier_share": stats.outlier_share,
                     "outlier_cells": stats.outliers.nonzero().tolist()}
            if r["attention"] is not None:
                entry.update({f"cls_attention_to_{part}": r["attention"][part][i]
                              for part in ("cls", "registers", "patches")})
            per_block.append(entry)
        models.append({"model": label, "source": r["source"], "kind": r["kind"], "registers": r["registers"],
                       "blocks": r["blocks"], "cka_between_blocks": r["cka"].tolist(), "per_block": per_block})
    numbers = {"image": source, "size": rows[0]["size"], "cka": "debiased" if debiased else "standard",
               "outlier_rule": f"norm > median + {k:g} * 1.4826 * MAD", "models": models}
    if model_cka is not None:
        numbers["cka_between_models"] = {"models": labels, "blocks": [r["blocks"][-1] for r in rows],
                                         "cka": model_cka.tolist()}
    return numbers


ATLAS_COLUMNS = ("model", "block", "norm_median", "norm_mad", "norm_threshold", "norm_mean", "norm_max", "outliers",
                 "outlier_share", "cls_attention_to_cls", "cls_attention_to_registers", "cls_attention_to_patches")


def _atlas_csv(numbers: dict) -> str:
    lines = [",".join(ATLAS_COLUMNS)]
    for m in numbers["models"]:
        for entry in m["per_block"]:
            row = {"model": m["model"], **entry}
            lines.append(",".join(_cell(row.get(c, "")) for c in ATLAS_COLUMNS))
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text}"' if "," in text else text


@shared(*MODEL, "resolution", "max_tokens", "layer", "prenorm", "out", "batch_size", "progress")
def propagate(
    clip: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, webm, mov, avi...).", show_default=False)],
    mask: Annotated[Path, typer.Option("--mask", help="PNG of the first frame's labels: one flat colour per object, "
                                                      "black background, the frame's size.", show_default=False)],
    stride: Annotated[int, typer.Option(help="Use every Nth frame.")] = 1,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Stop after this many frames (0 = all).")] = 0,
    top_k: Annotated[int, typer.Option("--top-k", help="Neighbours each patch takes its label from.")] = 5,
    window: Annotated[int, typer.Option(help="Recent frames in the context besides the first.")] = 7,
    radius: Annotated[int, typer.Option(help="Neighbours only within this many patches (0 = anywhere).")] = 12,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the affinities.")] = 0.1,
    alpha: AlphaOpt = 0.5,
    *, opts: Options,
):
    """Follow a first-frame mask through a video by feature similarity (k-NN label propagation).

    The protocol of the DINO papers. Writes OUT/<name>_propagated.mp4 (the masks over the frames) and
    OUT/<name>_masks/frame_NNNNN.png
    (palette PNGs in the mask's colours, numbered by video frame from 1).

    Needs PyAV: pip install "dinoscope[video]".
    """
    from ..analyses.propagation import PropagationSettings
    from ..video import probe, require_av

    require_av()
    settings = PropagationSettings(top_k=top_k, window=window, radius=radius, temperature=temperature)
    _unit(alpha, "--alpha")
    o.check_batch_size(opts)
    if stride < 1 or max_frames < 0:
        raise InputError("--stride must be at least 1 and --max-frames at least 0")
    info = probe(clip)
    labels, colours = _read_mask(mask, (info.width, info.height))
    extractor = o.extractor(opts)
    extractor.max_pixels = None  # frames come decoded, not from files
    extractor.cache = None  # each frame is read once: caching frames would only evict the user's images
    bars = PhaseBars(opts.progress)
    total = _expected(info, stride, max_frames)
    try:
        frames = _propagate_video(clip, labels, colours, extractor, settings, opts.out, stride=stride,
                                  max_frames=max_frames or None, alpha=alpha, fps=info.fps / stride,
                                  progress=lambda done: bars("frames: propagating", done, total or done))
    finally:
        bars.close()
    typer.echo(f"{frames} frame(s) of {info.width}x{info.height}, {len(colours)} labels (background included)")


def _expected(info, stride: int, max_frames: int) -> int:
    total = -(-info.frames // stride) if info.frames else 0
    return min(total, max_frames) if max_frames and total else (max_frames or total)


def _read_mask(path: Path, frame_size: tuple[int, int]):
    """(labels (H, W), colours (C, 3)) of a mask picture, checked against the frame size."""
    import numpy as np

    from ..analyses.propagation import decode_mask
    from ..images import load_image

    picture = load_image(os.fspath(path))
    if picture.size != frame_size:
        raise InputError(f"the mask {path} is {picture.width}x{picture.height} pixels but the video's frames are "
                         f"{frame_size[0]}x{frame_size[1]}; draw the mask on the first frame at its own size")
    labels, colours = decode_mask(np.asarray(picture.convert("RGB")))
    if len(colours) < 2:
        raise InputError(f"the mask {path} has one colour only; paint each object in its own flat colour on a black "
                         "background")
    return labels, colours


def _propagate_video(clip: Path, labels, colours, extractor, settings, out: Path, *, stride: int, max_frames,
                     alpha: float, fps: float, progress) -> int:
    """Propagate, writing the overlay video and the mask PNGs (all renamed into place at the end)."""
    from itertools import chain

    from PIL import Image

    from ..analyses.propagation import grid_to_pixels, iter_propagation, mask_grid
    from ..files import safe_name
    from ..sheets import mask_view
    from ..views import finished
    from ..video import VideoWriter, _features, iter_frames

    name = safe_name(clip.stem, "video")
    pairs = _features(extractor, iter_frames(clip, stride=stride, max_frames=max_frames), extractor.batch_size)
    first = next(pairs, None)
    if first is None:
        raise InputError(f"{clip} gave no frames; check the video")
    first_grid = mask_grid(labels, first[1].geometry, len(colours))
    shown = {}

    def features():  # remembers the frame whose features iter_propagation is working on
        for frame, feats in chain([first], pairs):
            shown["frame"], shown["features"] = frame, feats
            yield feats

    palette = colours.astype("uint8").reshape(-1).tolist()
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(VideoWriter(out / f"{name}_propagated.mp4", fps))
        for i, probs in enumerate(iter_propagation(features(), first_grid, settings)):
            predicted = labels if i == 0 else grid_to_pixels(probs, shown["features"].geometry)
            video.write(finished(mask_view(predicted, colours, shown["frame"], alpha=alpha), shown["features"]))
            png = Image.fromarray(predicted.astype("uint8"), "P")
            png.putpalette(palette)
            png.save(stack.enter_context(atomic_path(out / f"{name}_masks" / f"frame_{i * stride + 1:05d}.png")),
                     format="PNG")
            progress(i + 1)
        frames = video.frames
    typer.echo(f"wrote {out / f'{name}_propagated.mp4'}")
    typer.echo(f"wrote {frames} masks in {out / f'{name}_masks'}")
    return frames
