"""The options every command shares, defined once: their flags and help, their defaults (read from the
library), the one object they are gathered into, and the small parsers of option text.

A command names the shared options it offers (`@shared(...)`) and receives them as one `Options`;
its own options stay in its signature.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..files import check_writable_folder, transaction
from ..geometry import DEFAULT_MAX_PIXELS, DEFAULT_MAX_TOKENS, DENSITIES, UPSAMPLE_METHODS
from ..models import DEFAULT_MODEL

DEFAULT_SAMPLE = "sample:chelsea"
SAMPLE_HELP = "Image path, http(s) URL or sample:NAME (chelsea, coffee, astronaut)"

ImageArg = Annotated[Optional[str], typer.Argument(help=f"{SAMPLE_HELP}. Default: {DEFAULT_SAMPLE}.",
                                                   show_default=False)]
InputsArg = Annotated[Optional[list[str]], typer.Argument(
    help=f"{SAMPLE_HELP}; default {DEFAULT_SAMPLE}. "
         "Several images, a folder (searched recursively), a quoted glob ('photos/**/*.jpg') or @LIST.txt "
         "(one path or URL per line) run as a collection: one output per input under --out, mirroring "
         "folders, plus OUT/manifest.jsonl.", show_default=False)]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Matplotlib colormap name.")]
PatchOpt = Annotated[Optional[int], typer.Option(help="Query patch index (row-major; -1 = CLS token).")]
CellOpt = Annotated[Optional[str], typer.Option(help="Query patch as ROW,COL.")]
PixelOpt = Annotated[Optional[str], typer.Option(help="Query point as X,Y in original-image pixels.")]
MethodOpt = Annotated[str, typer.Option(help="hungarian (exact one-to-one) or mnn (mutual nearest neighbours).")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Draw only the K best pairs (0 = a random sample of --max-lines).")]
MaxLinesOpt = Annotated[int, typer.Option("--max-lines", help="Draw at most this many pairs, sampled at random.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the line sampling.")]


@dataclass
class Options:
    """What the shared options say, in one object; the defaults are the library's."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    resolution: str = "native"
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_pixels: int = DEFAULT_MAX_PIXELS
    density: int = 1
    tiles: bool = False
    upsample: str = "nearest"
    sharpen: bool = False
    layer: int = -1
    prenorm: bool = False
    no_cache: bool = False
    cache_dir: Optional[Path] = None
    out: Path = Path("dinoscope-out")
    basis: Optional[Path] = None
    save_basis: Optional[Path] = None
    resume: bool = False
    progress: Optional[bool] = None
    engine: str = "local"
    batch_size: int = 8
    debug: bool = False
    bare: bool = False


# The flag and help of each field of Options.
FLAGS = dict(
    model=Annotated[str, typer.Option("--model", "-m", help="Short name (see `dinoscope models`), hub id (official, "
                                      "or the ungated timm/... copy), save_pretrained or timm folder, or "
                                      ".pth/.safetensors checkpoint.")],
    device=Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")],
    dtype=Annotated[str, typer.Option(
        "--dtype", help="float32 or bfloat16 (float16 is not offered: DINOv3 overflows in it).")],
    resolution=Annotated[str, typer.Option(
        "--resolution", "-r", help="native (no resizing), short:N or long:N (side length, rounded to the patch size).")],
    max_tokens=Annotated[int, typer.Option("--max-tokens", help="Downscale inputs above this many patches "
                                                                "(0 = no limit).")],
    max_pixels=Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")],
    density=Annotated[int, typer.Option("--density", help="Grid cells per patch along each axis: 1 (the patch grid), "
                                                          "2 or 4 (shift-and-stitch: density^2 passes).")],
    tiles=Annotated[bool, typer.Option("--tiles", help="Full resolution in overlapping tiles of at most --max-tokens "
                                                       "patches each, instead of downscaling a large photo.")],
    upsample=Annotated[str, typer.Option("--upsample", help="How maps reach the photo's pixels: nearest (cells as "
                                                            "squares), bilinear, or guided (edges follow the photo).")],
    sharpen=Annotated[bool, typer.Option("--sharpen", help="Same as --upsample guided.")],
    layer=Annotated[int, typer.Option("--layer", help="Block to read (0-based; negative counts from the end).")],
    prenorm=Annotated[bool, typer.Option("--prenorm", help="Use the block output before the final norm.")],
    no_cache=Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the on-disk feature cache (also: DINOSCOPE_CACHE=off).")],
    cache_dir=Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="Feature cache folder (default $DINOSCOPE_CACHE, else $XDG_CACHE_HOME/dinoscope or "
                            "~/.cache/dinoscope; size bound $DINOSCOPE_CACHE_SIZE, default 2G).", show_default=False)],
    out=Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    basis=Annotated[Optional[Path], typer.Option(
        "--pca-basis", "--basis", help="Apply this saved PCA basis (same colours across images and runs).",
        show_default=False)],
    save_basis=Annotated[Optional[Path], typer.Option(
        "--save-pca-basis", "--save-basis", help="Save the fitted PCA basis to this .safetensors file (a collection "
                                                 "always saves it, by default to OUT/pca_basis.safetensors).",
        show_default=False)],
    resume=Annotated[bool, typer.Option(
        "--resume", help="Collections: skip inputs whose outputs are complete and recorded as ok in "
                         "OUT/manifest.jsonl.")],
    progress=Annotated[Optional[bool], typer.Option(
        "--progress/--no-progress", help="Show a status line (model load, forward passes; for collections a "
                                         "progress bar in images/s) and a closing summary on stderr (default: when "
                                         "stderr is a terminal).", show_default=False)],
    engine=Annotated[str, typer.Option(
        "--engine", help="Collections: local (this process) or ray (Ray Data; RAY_ADDRESS picks a cluster, else a "
                         "local one is started). Needs pip install \"dinoscope\\[ray]\".")],
    batch_size=Annotated[int, typer.Option("--batch-size", "-b", help="Images of one input size per forward pass.")],
    debug=Annotated[bool, typer.Option("--debug", help="Show tracebacks.")],
    bare=Annotated[bool, typer.Option("--bare", help="Write the bare map at the photo's size (no colour bar, caption "
                                                     "or photo beside it), for composing your own figures.")],
)
assert set(FLAGS) == {f.name for f in fields(Options)}

# The usual sets of shared options.
MODEL = ("model", "device", "dtype")
INPUT = ("resolution", "max_tokens", "max_pixels", "density", "tiles")
VIEW = ("upsample", "sharpen")
READ = ("layer", "prenorm")
CACHE = ("no_cache", "cache_dir")
EXTRACTION = MODEL + INPUT + READ + CACHE + ("out",)
BASIS = ("basis", "save_basis")
COLLECTION = ("resume", "progress", "engine", "batch_size")
PICTURE = ("bare",)
_DEFAULTS = Options()


def shared(*names: str):
    """Give a command the shared options `names` (and --debug); it receives them as `opts: Options`.

    Typer reads a command's signature, so the wrapper shows the command's own parameters followed by
    the shared ones, each with its flag, help and the library's default.
    """
    names = tuple(dict.fromkeys((*names, "debug")))

    def decorate(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(_DEFAULTS, name),
                                   annotation=FLAGS[name]) for name in names]

        @functools.wraps(command)
        def run(**given):
            opts = Options(**{name: given.pop(name) for name in names})
            check(opts, names)
            if "out" not in names:
                return command(**given, opts=opts)
            check_writable_folder(opts.out)  # before the model loads and before any forward pass
            if _names_a_collection(given.get("images")):
                return command(**given, opts=opts)  # a collection commits each input on its own
            with transaction():  # one command's outputs appear together or not at all
                return command(**given, opts=opts)

        del run.__wrapped__  # typer must see the signature below, not the command's own
        run.__signature__ = inspect.Signature(own + extra)
        run.__annotations__ = {p.name: p.annotation for p in own + extra}
        return run

    return decorate


def pair(text: str, what: str, kind=int) -> tuple:
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return kind(parts[0]), kind(parts[1])
    except ValueError:
        raise InputError(f"cannot read {what} {text!r}; write it as two numbers separated by a comma, e.g. 3,5") from None


def query(patch: Optional[int], cell: Optional[str], pixel: Optional[str], cls: bool):
    """The one query given by --patch, --cell, --pixel or --cls (None when none is)."""
    from ..analyses import CLS, Patch, Pixel

    given = [q for q in (patch is not None, cell is not None, pixel is not None, cls) if q]
    if len(given) > 1:
        raise InputError("give only one of --patch, --cell, --pixel or --cls")
    if cls:
        return CLS
    if cell is not None:
        return Patch(*pair(cell, "cell (row,col)"))
    if pixel is not None:
        return Pixel(*pair(pixel, "pixel (x,y)", float))
    return patch


def components(text: str) -> list[int]:
    """--components as 0-based indices: one (a single map) or three (red, green, blue)."""
    try:
        picked = [int(c) - 1 for c in text.replace(" ", "").split(",") if c]
    except ValueError:
        raise InputError(f"cannot read components {text!r}; write 1-based numbers like 1,2,3 or 4") from None
    if len(picked) not in (1, 3) or min(picked, default=0) < 0:
        raise InputError(f"--components takes one or three 1-based numbers, got {text!r}")
    return picked


def layer_list(text: str) -> list[int]:
    try:
        picked = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"cannot read layers {text!r}; write block indices separated by commas, e.g. 3,6,9,-1") from None
    if not picked:
        raise InputError("give at least one layer, e.g. --layers 3,6,9,-1")
    return picked


def _names_a_collection(images) -> bool:
    from ..collections import is_collection

    return bool(images) and is_collection(images)


def check(opts: Options, names=None) -> None:
    """The shared options that can be checked without a model, checked now (flag names in every message)."""
    names = set(names or FLAGS)
    if "resolution" in names:
        from ..geometry import Resolution

        Resolution.parse(opts.resolution)
    if "max_tokens" in names:
        at_least(opts.max_tokens, 0, "--max-tokens")
    if "max_pixels" in names:
        at_least(opts.max_pixels, 1, "--max-pixels")
    if "batch_size" in names:
        check_batch_size(opts)
    if "device" in names:
        from ..models.loading import dtype_name, resolve_device

        if (opts.device or "auto").lower() not in ("auto", "cpu"):  # those always exist: no torch import needed
            resolve_device(opts.device)  # (a cached rerun stays torch-free)
        dtype_name(opts.dtype)


def at_least(value, low, flag: str) -> None:
    if value < low:
        raise InputError(f"{flag} must be at least {low}, got {value}")


def fraction(value: float, flag: str) -> float:
    """A number from 0 to 1 (an opacity); NaN is refused."""
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise InputError(f"{flag} must be between 0 and 1, got {value}")
    return value


def check_batch_size(opts: Options) -> None:
    if opts.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {opts.batch_size}")


def upsampling(opts: Options) -> str:
    """The --upsample method (--sharpen meaning guided); --density is checked too, so a command that loads a
    model before building its extractor can call this first and fail before any model loads."""
    if opts.density not in DENSITIES:
        raise InputError(f"--density {opts.density} is not offered; use {', '.join(map(str, DENSITIES))}")
    method = opts.upsample.strip().lower()
    if method not in UPSAMPLE_METHODS:
        raise InputError(f"unknown --upsample {opts.upsample!r}; use {', '.join(UPSAMPLE_METHODS)} "
                         "(or --sharpen for guided)")
    if opts.sharpen and method not in ("guided", "nearest"):
        raise InputError(f"--sharpen means --upsample guided; drop one of --sharpen and --upsample {method}")
    return "guided" if opts.sharpen else method


def extractor(opts: Options):
    """The Extractor the options describe; an unusable device or dtype fails now, even when every image is cached."""
    from ..cache import FeatureCache, cache_disabled_by_env
    from ..features import Extractor
    from ..geometry import Resolution
    from ..models.loading import resolve_device, resolve_dtype

    policy = Resolution.parse(opts.resolution, max_tokens=opts.max_tokens or None)
    upsampling(opts)
    resolve_device(opts.device)
    resolve_dtype(opts.dtype)
    off = opts.no_cache or (opts.cache_dir is None and cache_disabled_by_env())
    from .output import RUN

    made = Extractor(opts.model, device=opts.device, dtype=opts.dtype, resolution=policy, layer=opts.layer,
                     normed=not opts.prenorm, max_pixels=opts.max_pixels, cache=None if off else FeatureCache(opts.cache_dir),
                     batch_size=opts.batch_size, density=opts.density, tiles=opts.tiles)
    RUN.watch(made, opts.progress)
    return made


def reader(opts: Options):
    """What a single-image command reads features through: with the disk cache on, a CachedReader (images all
    in the cache are read and drawn without importing torch), else the Extractor itself. A device other than
    auto or cpu goes to the Extractor, which checks it now even when every image is cached, and so do a
    density or tiles other than the plain patch grid."""
    from ..cache import FeatureCache, cache_disabled_by_env
    from ..cached import CachedReader
    from ..geometry import Resolution

    off = opts.no_cache or (opts.cache_dir is None and cache_disabled_by_env())
    if off or str(opts.device).lower() not in ("auto", "cpu") or opts.density != 1 or opts.tiles:
        return extractor(opts)
    policy = Resolution.parse(opts.resolution, max_tokens=opts.max_tokens or None)
    return CachedReader(opts.model, resolution=policy, layer=opts.layer, normed=not opts.prenorm, dtype=opts.dtype,
                        max_pixels=opts.max_pixels, cache=FeatureCache(opts.cache_dir), fallback=lambda: extractor(opts))
