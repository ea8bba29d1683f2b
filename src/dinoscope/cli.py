"""The `dinoscope` command line: each command parses, calls the library, saves.

Torch and transformers are imported only inside commands, so --help and argument
errors answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import DinoscopeError, InputError

app = typer.Typer(
    name="dinoscope",
    help="See what a DINOv3 vision transformer sees: feature norms, PCA colours, similarity maps, patch matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by every command, defined once.
ImageArg = Annotated[Optional[str], typer.Argument(
    help="Image path, http(s) URL or sample:NAME (chelsea, coffee, astronaut). Default: sample:chelsea.",
    show_default=False)]
InputsArg = Annotated[Optional[list[str]], typer.Argument(
    help="Image path, http(s) URL or sample:NAME (chelsea, coffee, astronaut); default sample:chelsea. "
         "Several images, a folder (searched recursively), a quoted glob ('photos/**/*.jpg') or @LIST.txt "
         "(one path or URL per line) run as a collection: one output per input under --out, mirroring "
         "folders, plus OUT/manifest.jsonl.", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Collections: skip inputs whose outputs are complete and recorded as ok in OUT/manifest.jsonl.")]
ProgressOpt = Annotated[Optional[bool], typer.Option(
    "--progress/--no-progress", help="Collections: show a progress bar (images/s) on stderr (default: when stderr is a "
    "terminal).", show_default=False)]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="Collections: local (this process) or ray (Ray Data; RAY_ADDRESS picks a cluster, else a "
                     "local one is started). Needs pip install \"dinoscope[ray]\".")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images of one input size per forward pass.")]
PCABasisOpt = Annotated[Optional[Path], typer.Option(
    "--pca-basis", "--basis", help="Apply this saved PCA basis (same colours across images and runs).",
    show_default=False)]
SavePCABasisOpt = Annotated[Optional[Path], typer.Option(
    "--save-pca-basis", "--save-basis", help="Save the fitted PCA basis to this .safetensors file (a collection "
                                             "always saves it, by default to OUT/pca_basis.safetensors).",
    show_default=False)]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="Short name (see `dinoscope models`), hub id, save_pretrained folder, or .pth/.safetensors checkpoint.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 or bfloat16 (float16 is not offered: DINOv3 overflows in it).")]
ResolutionOpt = Annotated[str, typer.Option(
    "--resolution", "-r", help="native (no resizing), short:N or long:N (side length, rounded to the patch size).")]
MaxTokensOpt = Annotated[int, typer.Option(
    "--max-tokens", help="Downscale inputs above this many patches (0 = no limit).")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
LayerOpt = Annotated[int, typer.Option("--layer", help="Block to read (0-based; negative counts from the end).")]
PrenormOpt = Annotated[bool, typer.Option("--prenorm", help="Use the block output before the final norm.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Matplotlib colormap name.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Neither read nor write the on-disk feature cache (also: DINOSCOPE_CACHE=off).")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Feature cache folder (default $DINOSCOPE_CACHE, else $XDG_CACHE_HOME/dinoscope or "
                        "~/.cache/dinoscope; size bound $DINOSCOPE_CACHE_SIZE, default 2G).", show_default=False)]

DEFAULTS = dict(model="facebook/dinov3-vitb16-pretrain-lvd1689m", device="auto", dtype="float32",
                resolution="native", max_tokens=16384, max_pixels=100_000_000, layer=-1, out=Path("dinoscope-out"))


def _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache=False,
               cache_dir=None, batch_size=8):
    from .features import Extractor
    from .geometry import Resolution
    from .models.loading import resolve_device, resolve_dtype

    policy = Resolution.parse(resolution, max_tokens=max_tokens or None)
    resolve_device(device)  # an unusable device or dtype fails now, even when every image is in the cache
    resolve_dtype(dtype)
    return Extractor(model, device=device, dtype=dtype, resolution=policy, layer=layer, normed=not prenorm,
                     max_pixels=max_pixels, cache=_cache(no_cache, cache_dir), batch_size=batch_size)


def _cache(no_cache: bool, cache_dir: Optional[Path]):
    from .cache import FeatureCache, cache_disabled_by_env

    if no_cache or (cache_dir is None and cache_disabled_by_env()):
        return None
    return FeatureCache(cache_dir)


def _stem(source: str | None) -> str:
    from .files import output_stem

    return "chelsea" if source is None else output_stem(source)


def _save(picture, out: Path, name: str) -> Path:
    from .files import save_image

    path = save_image(picture, out / name)
    typer.echo(f"wrote {path}")
    return path


def _pair(text: str, what: str, kind=int) -> tuple:
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return kind(parts[0]), kind(parts[1])
    except ValueError:
        raise InputError(f"cannot read {what} {text!r}; write it as two numbers separated by a comma, e.g. 3,5") from None


def _query(patch: Optional[int], cell: Optional[str], pixel: Optional[str], cls: bool):
    from .analyses import CLS, Patch, Pixel

    given = [q for q in (patch is not None, cell is not None, pixel is not None, cls) if q]
    if len(given) > 1:
        raise InputError("give only one of --patch, --cell, --pixel or --cls")
    if cls:
        return CLS
    if cell is not None:
        return Patch(*_pair(cell, "cell (row,col)"))
    if pixel is not None:
        return Pixel(*_pair(pixel, "pixel (x,y)", float))
    if patch is not None:
        return patch
    return None


@app.command()
def norms(
    images: InputsArg = None, model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None, out: OutOpt = DEFAULTS["out"], cmap: CmapOpt = "inferno",
    alpha: Annotated[float, typer.Option(help="Blend the map over the photo with this opacity (0 = map only).")] = 0.0,
    resume: ResumeOpt = False, progress: ProgressOpt = None, engine: EngineOpt = "local", batch_size: BatchOpt = 8,
    debug: DebugOpt = False,
):
    """Feature-norm map: the L2 norm of every patch token, min-max scaled."""
    from .views import norms_view

    if _is_collection(images):
        return _collection("norms", images, dict(cmap=cmap, alpha=alpha), locals())
    image = images[0] if images else None

    img, feats = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache, cache_dir)(image or "sample:chelsea")
    _save(norms_view(feats, img, cmap=cmap, alpha=alpha), out, f"{_stem(image)}_norms.png")


@app.command()
def pca(
    images: InputsArg = None, model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None, out: OutOpt = DEFAULTS["out"], cmap: CmapOpt = "viridis",
    components: Annotated[str, typer.Option(help="Three components for RGB (e.g. 1,2,3) or one for a single map.")] = "1,2,3",
    foreground: Annotated[bool, typer.Option(help="Fit on foreground patches only; background drawn black.")] = False,
    basis: PCABasisOpt = None, save_basis: SavePCABasisOpt = None,
    smooth: Annotated[bool, typer.Option(help="Interpolate between patch centres.")] = False,
    resume: ResumeOpt = False, progress: ProgressOpt = None, engine: EngineOpt = "local", batch_size: BatchOpt = 8,
    debug: DebugOpt = False,
):
    """PCA of the patch tokens as colours.

    A collection gets one basis fitted over all its patches (streaming, bounded memory), so a colour
    means the same thing in every picture; it is saved to OUT/pca_basis.safetensors.
    """
    from .analyses import PCABasis
    from .views import pca_view

    try:
        picked = [int(c) - 1 for c in components.replace(" ", "").split(",") if c]
    except ValueError:
        raise InputError(f"cannot read components {components!r}; write 1-based numbers like 1,2,3 or 4") from None
    if len(picked) not in (1, 3) or min(picked, default=0) < 0:
        raise InputError(f"--components takes one or three 1-based numbers, got {components!r}")
    if _is_collection(images):
        if foreground:
            raise InputError("--foreground is not available for collections yet; fit on one image with --save-basis "
                             "and apply it with --pca-basis")
        return _collection("pca", images, dict(cmap=cmap, components=picked, smooth=smooth), locals())
    image = images[0] if images else None
    fitted = PCABasis.load(basis) if basis is not None else None
    img, feats = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache, cache_dir)(image or "sample:chelsea")
    if fitted is None:
        fitted = PCABasis.fit([feats], max(3, max(picked) + 1), foreground_only=foreground)
    elif fitted.mean.shape[0] != feats.dim:
        raise InputError(f"the basis in {basis} is for {fitted.mean.shape[0]}-dim features, this model gives {feats.dim}")
    suffix = "pca" if len(picked) == 3 else f"pca{picked[0] + 1}"
    _save(pca_view(feats, fitted, components=picked, cmap=cmap, smooth=smooth), out, f"{_stem(image)}_{suffix}.png")
    if save_basis is not None:
        fitted.save(save_basis)
        typer.echo(f"wrote {save_basis}")


@app.command()
def similarity(
    images: InputsArg = None, model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None, out: OutOpt = DEFAULTS["out"], cmap: CmapOpt = "turbo",
    patch: Annotated[Optional[int], typer.Option(help="Query patch index (row-major; -1 = CLS token).")] = None,
    cell: Annotated[Optional[str], typer.Option(help="Query patch as ROW,COL.")] = None,
    pixel: Annotated[Optional[str], typer.Option(help="Query point as X,Y in original-image pixels.")] = None,
    cls: Annotated[bool, typer.Option("--cls", help="Query with the CLS token.")] = False,
    target: Annotated[Optional[str], typer.Option(help="Draw the map over this second image (cross-image similarity).")] = None,
    alpha: Annotated[float, typer.Option(help="Opacity of the map over the photo.")] = 0.55,
    resume: ResumeOpt = False, progress: ProgressOpt = None, engine: EngineOpt = "local", batch_size: BatchOpt = 8,
    debug: DebugOpt = False,
):
    """Cosine similarity between one query (a patch, a pixel or the CLS token) and every patch.

    Without a query, the centre patch is used.
    """
    from .views import similarity_view

    query = _query(patch, cell, pixel, cls)
    if _is_collection(images):
        if target is not None:
            raise InputError("--target is for one image; a collection takes the query from each image itself")
        return _collection("similarity", images, dict(cmap=cmap, alpha=alpha, query=query), locals())
    image = images[0] if images else None
    extractor = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache, cache_dir)
    img, feats = extractor(image or "sample:chelsea")
    if query is None:
        query = feats.geometry.index(feats.geometry.rows // 2, feats.geometry.cols // 2)
    from .analyses import query_index

    query_index(feats, query)  # out-of-range queries fail before any second forward pass
    if target is None:
        picture = similarity_view(feats, query, img, cmap=cmap, alpha=alpha)
        name = f"{_stem(image)}_similarity.png"
    else:
        timg, tfeats = extractor(target)
        picture = similarity_view(tfeats, query, timg, query_features=feats, query_image=img, cmap=cmap, alpha=alpha)
        name = f"{_stem(image)}_to_{_stem(target)}_similarity.png"
    _save(picture, out, name)


def _write_pairs(matches, path: Path) -> None:
    from .files import write_text

    if path.suffix.lower() not in (".csv", ".json"):
        raise InputError(f"cannot tell the format of {path}; name it .csv or .json")
    write_text(matches.to_csv() if path.suffix.lower() == ".csv" else matches.to_json(), path)
    typer.echo(f"wrote {path}")


MethodOpt = Annotated[str, typer.Option(help="hungarian (exact one-to-one) or mnn (mutual nearest neighbours).")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Draw only the K best pairs (0 = use --max-lines).")]
MaxLinesOpt = Annotated[int, typer.Option("--max-lines", help="Draw at most this many pairs, sampled at random.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the line sampling.")]
PairsOpt = Annotated[Optional[Path], typer.Option(help="Also write the pairs to this .csv or .json file.")]


@app.command()
def match(
    image_a: Annotated[str, typer.Argument(help="First image.")],
    image_b: Annotated[str, typer.Argument(help="Second image.")],
    model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None, out: OutOpt = DEFAULTS["out"], cmap: CmapOpt = "viridis",
    method: MethodOpt = "hungarian", top_k: TopKOpt = 0, max_lines: MaxLinesOpt = 800, seed: SeedOpt = 0,
    pairs: PairsOpt = None, debug: DebugOpt = False,
):
    """Patch matching between two images, drawn side by side."""
    from .views import matches_view

    if pairs is not None and pairs.suffix.lower() not in (".csv", ".json"):
        raise InputError(f"cannot tell the format of {pairs}; name it .csv or .json")
    extractor = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache, cache_dir)
    (img_a, fa), (img_b, fb) = extractor.extract_many([image_a, image_b])  # same-size pairs share one pass
    picture, matches = matches_view(fa, fb, img_a, img_b, method=method, top_k=top_k, max_lines=max_lines, seed=seed,
                                    cmap=cmap)
    _save(picture, out, f"{_stem(image_a)}_{_stem(image_b)}_matches.png")
    if pairs is not None:
        _write_pairs(matches, pairs)


@app.command(name="all")
def run_all(
    images: InputsArg = None,
    match_with: Annotated[Optional[str], typer.Option("--match", help="Also match against this second image.")] = None,
    model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None, out: OutOpt = DEFAULTS["out"],
    method: MethodOpt = "hungarian", top_k: TopKOpt = 0, max_lines: MaxLinesOpt = 800, seed: SeedOpt = 0,
    basis: PCABasisOpt = None, save_basis: SavePCABasisOpt = None,
    resume: ResumeOpt = False, progress: ProgressOpt = None, engine: EngineOpt = "local", batch_size: BatchOpt = 8,
    debug: DebugOpt = False,
):
    """Every analysis from one forward pass per image.

    With no image, runs on the bundled sample photos and matches them pairwise. A collection gets
    norms, PCA (one basis for all), similarity to the centre patch and to CLS for every input.
    """
    if _is_collection(images):
        if match_with is not None:
            raise InputError("--match is for one image; use `dinoscope match` for pairs")
        return _collection("all", images, {}, locals())
    image = images[0] if images else None
    if basis is not None or save_basis is not None:
        raise InputError("--pca-basis and --save-pca-basis on `all` are for collections; use `dinoscope pca` for one image")
    from .analyses import CLS
    from .views import matches_view, norms_view, pca_view, similarity_view

    extractor = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache, cache_dir)
    sources = [image] if image is not None else ["sample:chelsea", "sample:coffee", "sample:astronaut"]
    wanted = sources + ([match_with] if match_with and match_with not in sources else [])
    seen = dict(zip(wanted, extractor.extract_many(wanted)))  # one batched pass per input size
    for source in sources:
        img, feats = seen[source]
        stem, g = _stem(source), feats.geometry
        centre = g.index(g.rows // 2, g.cols // 2)
        _save(norms_view(feats, img), out, f"{stem}_norms.png")
        _save(pca_view(feats), out, f"{stem}_pca.png")
        _save(similarity_view(feats, centre, img), out, f"{stem}_similarity.png")
        _save(similarity_view(feats, CLS, img), out, f"{stem}_similarity_cls.png")
    if match_with:
        pairs = [(source, match_with) for source in sources if source != match_with]
    else:
        pairs = list(zip(sources, sources[1:])) if image is None else []  # the samples, pairwise
    for a, b in pairs:
        (img_a, fa), (img_b, fb) = seen[a], seen[b]
        picture, _ = matches_view(fa, fb, img_a, img_b, method=method, top_k=top_k, max_lines=max_lines, seed=seed)
        _save(picture, out, f"{_stem(a)}_{_stem(b)}_matches.png")
    typer.echo(f"pictures are in {out.resolve()}")


@app.command()
def extract(
    images: Annotated[list[str], typer.Argument(
        help="Images to extract (paths, URLs or sample:NAME); a folder, a quoted glob or @LIST.txt runs a collection "
             "(see `dinoscope pca --help`).")],
    model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None,
    out: OutOpt = DEFAULTS["out"], batch_size: BatchOpt = 8,
    progress: ProgressOpt = None,
    resume: ResumeOpt = False, engine: EngineOpt = "local",
    debug: DebugOpt = False,
):
    """Write each image's tokens to OUT/<name>.safetensors (keys cls, registers, patches; geometry in the metadata).

    Images of the same input size are batched; throughput is reported at the end. Several images, a
    folder, a glob or @LIST.txt also write OUT/manifest.jsonl; with --engine ray the features are
    written as Parquet shards under OUT/features/.
    """
    import time

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if _is_collection(images):
        return _collection("extract", images, {}, locals())
    extractor = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, prenorm, no_cache,
                           cache_dir, batch_size)
    started = time.perf_counter()
    for source, (_, feats) in zip(images, extractor.iter_many(images)):  # one image: several make a collection
        typer.echo(f"wrote {feats.save(out / f'{_stem(source)}.safetensors')}")
    elapsed = time.perf_counter() - started
    hits = extractor.cache.hits if extractor.cache is not None else 0
    typer.echo(f"extracted {len(images)} image(s) into {out} in {elapsed:.2f} s: {len(images) / elapsed:.2f} images/s "
               f"({extractor.forward_passes} computed, {hits} from the cache)")


@app.command()
def video(
    clip: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, webm, mov, avi...).", show_default=False)],
    model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, layer: LayerOpt = -1,
    prenorm: PrenormOpt = False, no_cache: NoCacheOpt = False, cache_dir: CacheDirOpt = None,
    out: OutOpt = DEFAULTS["out"],
    stride: Annotated[int, typer.Option(help="Use every Nth frame.")] = 1,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Stop after this many frames (0 = all).")] = 0,
    patch: Annotated[Optional[int], typer.Option(help="Query patch index on the first frame (-1 = CLS).")] = None,
    cell: Annotated[Optional[str], typer.Option(help="Query patch on the first frame as ROW,COL.")] = None,
    pixel: Annotated[Optional[str], typer.Option(help="Query point on the first frame as X,Y in pixels.")] = None,
    cls: Annotated[bool, typer.Option("--cls", help="Query with the first frame's CLS token.")] = False,
    basis: PCABasisOpt = None, save_basis: SavePCABasisOpt = None, batch_size: BatchOpt = 8,
    progress: ProgressOpt = None, debug: DebugOpt = False,
):
    """PCA colours beside every frame (one basis for the whole clip) and a query point from the first frame
    followed through the clip; writes OUT/<name>_pca.mp4/.gif and OUT/<name>_similarity.mp4/.gif.

    Needs PyAV: pip install "dinoscope[video]". Without a query, the centre patch is used.
    """
    from .video import require_av, run_video

    require_av()
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    query = _query(patch, cell, pixel, cls)
    fitted = None
    if basis is not None:
        from .analyses import PCABasis

        fitted = PCABasis.load(basis)
    extractor = _extractor(model, device, dtype, resolution, max_tokens, 0, layer, prenorm, no_cache, cache_dir,
                           batch_size)
    extractor.max_pixels = None  # frames come decoded, not from files
    bars = _PhaseBars(progress)
    try:
        result = run_video(clip, extractor, out, stride=stride, max_frames=max_frames or None, query=query,
                           basis=fitted, basis_path=save_basis, progress=bars)
    finally:
        bars.close()
    for path in result.outputs:
        typer.echo(f"wrote {path}")
    if result.basis_path:
        typer.echo(f"PCA basis: {result.basis_path}")
    typer.echo(f"{result.frames} frame(s) of {result.size[0]}x{result.size[1]} at {result.fps:.2f} fps")


def _is_collection(images) -> bool:
    from .collections import is_collection

    return bool(images) and is_collection(images)


class _PhaseBars:
    """One progress bar per phase of a collection run (fitting PCA, colour range, writing)."""

    def __init__(self, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.phase, self.bar = None, None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase, self.bar = phase, _progress_bar(total, phase)
        self.bar.update_to(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _collection(kind: str, images: list[str], options: dict, given: dict) -> int:
    """Run a command over a collection; prints the summary line and returns the exit code (1 if any input failed)."""
    from .collections import Job, expand_inputs, run_collection

    g = given
    batch_size = g.get("batch_size", 8)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    engine = (g.get("engine") or "local").strip().lower()
    if engine not in ("local", "ray"):
        raise InputError(f"unknown --engine {engine!r}; use local or ray")
    items = expand_inputs(images, exclude=g["out"])
    if not items:
        raise InputError("the inputs name no images; give files, a folder, a glob or @LIST.txt")
    job = Job(kind, options)
    if g.get("basis") is not None:
        from .analyses import PCABasis

        job.basis = PCABasis.load(g["basis"])
    out = Path(g["out"])
    extractor = _extractor(g["model"], g["device"], g["dtype"], g["resolution"], g["max_tokens"], g["max_pixels"],
                           g.get("layer", -1), g.get("prenorm", False), g.get("no_cache", False), g.get("cache_dir"),
                           batch_size)
    bars = _PhaseBars(g.get("progress"))
    try:
        if engine == "ray":
            from .ray_engine import run_on_ray

            summary = run_on_ray(items, extractor, job, out, resume=g.get("resume", False),
                                 basis_path=g.get("save_basis"), progress=bars)
        else:
            summary = run_collection(items, extractor, job, out, resume=g.get("resume", False),
                                     basis_path=g.get("save_basis"), progress=bars)
    finally:
        bars.close()
    for source, error in summary.failures[:20]:
        print(f"dinoscope: failed: {error}" if source in error else f"dinoscope: failed: {source}: {error}",
              file=sys.stderr)
    if len(summary.failures) > 20:
        print(f"dinoscope: ... and {len(summary.failures) - 20} more failures (see the manifest)", file=sys.stderr)
    if summary.basis_path:
        typer.echo(f"PCA basis: {summary.basis_path}")
    hits = extractor.cache.hits if extractor.cache is not None and engine == "local" else 0
    verb = "extracted" if kind == "extract" else "processed"
    rate = (summary.ok - summary.skipped) / summary.seconds if summary.seconds > 0 else 0.0
    skipped = f", {summary.skipped} already complete" if summary.skipped else ""
    how = "on Ray" if engine == "ray" else f"{summary.computed} computed, {hits} from the cache"
    typer.echo(f"{verb} {summary.ok} of {summary.total} input(s) into {out} in {summary.seconds:.2f} s: {rate:.2f} "
               f"images/s ({how}); {summary.failed} failed{skipped}; manifest {summary.manifest}")
    return summary.exit_code


class _Bar:
    """A minimal stderr progress bar (tqdm when installed), driven by progress(done, total) calls."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label
        self._started = time.perf_counter()
        try:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self._tqdm = None

    def update_to(self, done: int, total: int | None = None) -> None:
        if done <= self.done:
            return
        if self._tqdm is not None:
            self._tqdm.update(done - self.done)
        else:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            print(f"\rdinoscope: {self.label} {done}/{self.total} ({done / elapsed:.2f} images/s)", end="",
                  file=sys.stderr, flush=True)
        self.done = done

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.done:
            print(file=sys.stderr)


def _progress_bar(total: int, label: str) -> _Bar:
    return _Bar(total, label)


@app.command()
def models():
    """Known models: short names, patch size, width, parameters and the memory each needs."""
    from .models.registry import HEADROOM, table

    typer.echo(table())
    typer.echo(f"\nMemory columns: weights x {HEADROOM} headroom. Pass a short name, a hub id, a save_pretrained folder "
               "or an official .pth/.safetensors checkpoint to --model.")


def _layer_list(text: str) -> list[int]:
    try:
        picked = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"cannot read layers {text!r}; write block indices separated by commas, e.g. 3,6,9,-1") from None
    if not picked:
        raise InputError("give at least one layer, e.g. --layers 3,6,9,-1")
    return picked


@app.command()
def layers(
    image: ImageArg = None, model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer_list: Annotated[str, typer.Option("--layers", help="Blocks to compare, e.g. 3,6,9,-1 (negative from the end).")] = "0,-1",
    prenorm: PrenormOpt = False, out: OutOpt = DEFAULTS["out"], cmap: CmapOpt = "inferno",
    show: Annotated[str, typer.Option("--show", help="pca (colours fitted per layer) or norms.")] = "pca",
    debug: DebugOpt = False,
):
    """Several layers side by side in one picture, from one forward pass."""
    from .views import layers_view

    if show not in ("pca", "norms"):
        raise InputError(f"unknown --show {show!r}; use pca or norms")
    picked = _layer_list(layer_list)
    extractor = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, -1, prenorm)
    img, feats = extractor.layers(image or "sample:chelsea", picked)
    _save(layers_view(feats, img, kind=show, cmap=cmap), out, f"{_stem(image)}_layers_{show}.png")


@app.command()
def attention(
    image: ImageArg = None, model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    resolution: ResolutionOpt = "native", max_tokens: MaxTokensOpt = 16384, max_pixels: MaxPixelsOpt = 100_000_000,
    layer: LayerOpt = -1, out: OutOpt = DEFAULTS["out"], cmap: CmapOpt = "inferno",
    patch: Annotated[Optional[int], typer.Option(help="Query patch index (row-major; -1 = CLS token).")] = None,
    cell: Annotated[Optional[str], typer.Option(help="Query patch as ROW,COL.")] = None,
    pixel: Annotated[Optional[str], typer.Option(help="Query point as X,Y in original-image pixels.")] = None,
    cls: Annotated[bool, typer.Option("--cls", help="Query with the CLS token (the default).")] = False,
    heads: Annotated[bool, typer.Option(help="Draw a panel per head after the mean.")] = True,
    alpha: Annotated[float, typer.Option(help="Opacity of the maps over the photo.")] = 0.6,
    debug: DebugOpt = False,
):
    """Attention of the CLS token (or a query patch) to every patch in one block, per head and averaged.

    Also prints how much of the attention goes to the register tokens and to CLS.
    """
    from .views import attention_view

    query = _query(patch, cell, pixel, cls)
    extractor = _extractor(model, device, dtype, resolution, max_tokens, max_pixels, layer, False)
    img, att = extractor.attention(image or "sample:chelsea", -1 if query is None else query)
    shares = att.shares()
    who = "CLS" if att.query < 0 else f"patch {att.query}"
    typer.echo(f"layer {att.layer}, query {who}, {att.heads} heads: {shares['patches']:.1%} of the attention goes to "
               f"patches, {shares['registers']:.1%} to the {att.registers.shape[-1]} registers, {shares['cls']:.1%} to CLS")
    if att.registers.shape[-1]:
        per_head = ", ".join(f"{v:.0%}" for v in att.registers.sum(-1).tolist())
        typer.echo(f"register share per head: {per_head}")
    _save(attention_view(att, img, heads=heads, cmap=cmap, alpha=alpha), out, f"{_stem(image)}_attention_L{att.layer}.png")


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on. 127.0.0.1 keeps it on this machine; anything else "
                                           "exposes it (a warning is printed).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 7860,
    model: ModelOpt = DEFAULTS["model"], device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    allow_urls: Annotated[bool, typer.Option("--allow-urls", help="Let users load images from public http(s) URLs "
                                                                  "(never local or private addresses).")] = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted, in MB.")] = 20.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")] = 40_000_000,
    debug: DebugOpt = False,
):
    """Interactive explorer in the browser: click a patch and see its similarity map, PCA, norms, attention, matches.

    Needs the ui extra: pip install 'dinoscope[ui]'.
    """
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, not {port}")
    if max_upload_mb <= 0 or max_pixels <= 0:
        raise InputError("--max-upload-mb and --max-pixels must be positive")
    try:
        import gradio  # noqa: F401  (checked here so a missing extra gets a one-line message)
    except ImportError:
        raise InputError("the explorer needs Gradio; install it with: pip install 'dinoscope[ui]'") from None
    from . import ui as webui

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app_, url = webui.launch(model, host=host, port=port, allow_urls=allow_urls, block=False, device=device,
                             dtype=dtype, max_upload_bytes=int(max_upload_mb * 1_000_000), max_pixels=max_pixels)
    typer.echo(f"dinoscope explorer: {url}  (Ctrl+C to stop)", err=False)
    sys.stdout.flush()
    webui.serve_until_interrupted(app_)


@contextlib.contextmanager
def _notices_on_stderr():
    """Library notices (logger "dinoscope") as "dinoscope: ..." lines on stderr for the run, then as before."""
    logger = logging.getLogger("dinoscope")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dinoscope: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and exit code 2 for bad input; tracebacks only with --debug.

    Notices go to stderr for the run only (`_notices_on_stderr` restores the "dinoscope" logger), so
    calling main() in-process (tests, notebooks) leaves logging as it found it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DINOSCOPE_DEBUG") == "1"
    from .files import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt(), _notices_on_stderr():
            code = typer.main.get_command(app).main(args=args, prog_name="dinoscope", standalone_mode=False)
        # typer reports Ctrl-C (and explicit exits) as a returned exit code when not standalone
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                print("dinoscope: interrupted", file=sys.stderr)
            return code
    except DinoscopeError as exc:
        if debug:
            raise
        print(f"dinoscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dinoscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # typer vendors click in recent releases, so its exceptions are recognised by shape, not class
        name = type(exc).__name__
        if name == "Exit":
            return getattr(exc, "exit_code", 0)
        if name == "Abort":
            print("dinoscope: interrupted", file=sys.stderr)
            return 130
        if name == "NoArgsIsHelpError":
            typer.main.get_command(app).main(args=["--help"], prog_name="dinoscope", standalone_mode=False)
            return 0
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            known = typer.main.get_command(app).commands if hasattr(typer.main.get_command(app), "commands") else {}
            hint = f"dinoscope {args[0]} --help" if args and args[0] in known else "dinoscope --help"
            print(f"dinoscope: error: {exc.format_message()} (see {hint})", file=sys.stderr)
            return exc.exit_code
        if debug:
            raise
        print(f"dinoscope: internal error: {name}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
