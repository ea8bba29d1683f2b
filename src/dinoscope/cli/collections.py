"""Commands over many inputs: `extract`, `video`, and any command given a collection of images."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..files import after_writes
from . import options as o
from .options import BASIS, CACHE, COLLECTION, EXTRACTION, MODEL, VIEW, Options, shared
from .errors import say
from .output import PhaseBars, announce, stem

MAX_FAILURES_SHOWN = 20


def is_collection(images) -> bool:
    from ..collections import is_collection as names_a_collection

    return bool(images) and names_a_collection(images)


def run(kind: str, images: list[str], job_options: dict, opts: Options) -> int:
    """Run a command over a collection; prints the summary line and returns the exit code (1 if any input failed)."""
    from ..collections import Job, expand_inputs, run_collection

    o.check_batch_size(opts)
    engine = (opts.engine or "local").strip().lower()
    if engine not in ("local", "ray"):
        raise InputError(f"unknown --engine {engine!r}; use local or ray")
    items = expand_inputs(images, exclude=opts.out)
    if not items:
        raise InputError("the inputs name no images; give files, a folder, a glob or @LIST.txt")
    job = Job(kind, with_upsampling(job_options, opts))
    if opts.basis is not None:
        from ..analyses import PCABasis

        job.basis = PCABasis.load(opts.basis)
    extractor = o.extractor(opts)
    extractor.status = None  # the collection's progress bars say what is under way
    bars = PhaseBars(opts.progress)
    try:
        if engine == "ray":
            from ..ray_engine import run_on_ray as runner
        else:
            runner = run_collection
        summary = runner(items, extractor, job, Path(opts.out), resume=opts.resume, basis_path=opts.save_basis,
                         progress=bars)
    finally:
        bars.close()
    hits = extractor.cache.hits if extractor.cache is not None and engine == "local" else 0
    _report(summary, kind, Path(opts.out), "on Ray" if engine == "ray" else f"{summary.computed} computed, "
            f"{hits} from the cache")
    return summary.exit_code


def with_upsampling(job_options: dict, opts: Options) -> dict:
    """The job's options plus --upsample / --sharpen (only when not nearest, so default recipes stay as they were)."""
    method = o.upsampling(opts)
    return {**job_options, "upsample": method} if method != "nearest" else dict(job_options)


def run_one(kind: str, images: list[str] | None, job_options: dict, opts: Options):
    """A single image (the default sample when none) through the collection runner's one-input path: prints
    "wrote PATH" for each output and returns the job (a PCA job keeps the basis it fitted)."""
    from ..analyses import PCABasis
    from ..collections import Job, run_one as run_single

    image = images[0] if images else None
    basis = PCABasis.load(opts.basis) if opts.basis is not None and kind in ("pca", "all") else None
    job = Job(kind, with_upsampling(job_options, opts), basis=basis)
    for path in run_single(image or o.DEFAULT_SAMPLE, stem(image), o.reader(opts), job, opts.out):
        announce(path)
    return job


def _report(summary, kind: str, out: Path, how: str) -> None:
    for source, error in summary.failures[:MAX_FAILURES_SHOWN]:
        say(f"failed: {error}" if source in error else f"failed: {source}: {error}", "dinoscope")
    if len(summary.failures) > MAX_FAILURES_SHOWN:
        print(f"dinoscope: ... and {len(summary.failures) - MAX_FAILURES_SHOWN} more failures (see the manifest)",
              file=sys.stderr)
    if summary.basis_path:
        typer.echo(f"PCA basis: {summary.basis_path}")
    verb = "extracted" if kind == "extract" else "processed"
    rate = (summary.ok - summary.skipped) / summary.seconds if summary.seconds > 0 else 0.0
    skipped = f", {summary.skipped} already complete" if summary.skipped else ""
    typer.echo(f"{verb} {summary.ok} of {summary.total} input(s) into {out} in {summary.seconds:.2f} s: {rate:.2f} "
               f"images/s ({how}); {summary.failed} failed{skipped}; manifest {summary.manifest}")


@shared(*EXTRACTION, *COLLECTION)
def extract(
    images: Annotated[list[str], typer.Argument(
        help="Images to extract (paths, URLs or sample:NAME); a folder, a quoted glob or @LIST.txt runs a collection "
             "(see `dinoscope pca --help`).")],
    *, opts: Options,
):
    """Write each image's tokens to OUT/<name>.safetensors (keys cls, registers, patches; geometry in the metadata);
    with one image, `-o FILE.safetensors` writes that file.

    Images of the same input size are batched; throughput is reported at the end. Several images, a
    folder, a glob or @LIST.txt also write OUT/manifest.jsonl; with --engine ray the features are
    written as Parquet shards under OUT/features/.
    """
    from ..collections import Job, run_one as run_single

    o.check_batch_size(opts)
    if is_collection(images):
        return run("extract", images, {}, opts)
    extractor = o.extractor(opts)
    started = time.perf_counter()
    # one image (several make a collection); -o FILE.safetensors names the file itself
    to_file = opts.out.suffix.lower() == ".safetensors" and not opts.out.is_dir()
    out, name = (opts.out.parent, opts.out.stem) if to_file else (opts.out, stem(images[0]))
    for path in run_single(images[0], name, extractor, Job("extract"), out):
        announce(path)
    elapsed = time.perf_counter() - started
    hits = extractor.cache.hits if extractor.cache is not None else 0
    after_writes(lambda: typer.echo(f"extracted {len(images)} image(s) into {opts.out} in {elapsed:.2f} s: "
                                    f"{len(images) / elapsed:.2f} images/s ({extractor.forward_passes} computed, "
                                    f"{hits} from the cache)"))


@shared(*MODEL, "resolution", "max_tokens", "density", "tiles", "layer", "prenorm", *CACHE, "out", *BASIS, "batch_size",
        "progress", *VIEW)
def video(
    clip: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, webm, mov, avi...).", show_default=False)],
    stride: Annotated[int, typer.Option(help="Use every Nth frame.")] = 1,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Stop after this many frames (0 = all).")] = 0,
    patch: Annotated[Optional[int], typer.Option(help="Query patch index on the first frame (-1 = CLS).")] = None,
    cell: Annotated[Optional[str], typer.Option(help="Query patch on the first frame as ROW,COL.")] = None,
    pixel: Annotated[Optional[str], typer.Option(help="Query point on the first frame as X,Y in pixels.")] = None,
    cls: Annotated[bool, typer.Option("--cls", help="Query with the first frame's CLS token.")] = False,
    *, opts: Options,
):
    """PCA colours beside every frame (one basis for the whole clip) and a query point from the first frame
    followed through the clip; writes OUT/<name>_pca.mp4/.gif and OUT/<name>_similarity.mp4/.gif.

    Needs PyAV: pip install "dinoscope\\[video]". Without a query, the centre patch is used.
    """
    from ..video import require_av, run_video

    require_av()
    o.check_batch_size(opts)
    o.at_least(stride, 1, "--stride")
    o.at_least(max_frames, 0, "--max-frames")
    query = o.query(patch, cell, pixel, cls)
    fitted = None
    if opts.basis is not None:
        from ..analyses import PCABasis

        fitted = PCABasis.load(opts.basis)
    extractor = o.extractor(opts)
    extractor.max_pixels = None  # frames come decoded, not from files
    bars = PhaseBars(opts.progress)
    try:
        result = run_video(clip, extractor, opts.out, stride=stride, max_frames=max_frames or None, query=query,
                           basis=fitted, basis_path=opts.save_basis, progress=bars, upsample=o.upsampling(opts))
    finally:
        bars.close()
    for path in result.outputs:
        announce(path)
    if result.basis_path:
        typer.echo(f"PCA basis: {result.basis_path}")
    typer.echo(f"{result.frames} frame(s) of {result.size[0]}x{result.size[1]} at {result.fps:.2f} fps")
