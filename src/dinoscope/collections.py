"""The collection runner: one job over one input or a million, on a local or a Ray engine.

``run_collection(items, extractor, job, out)`` is the one path: it cleans what a killed run left
in OUT (`files.clean_leftovers`), reads the manifest (`--resume`: an input is skipped only when its
last record is ok, its outputs exist and it was made from this very model, settings and input
content; the others are redone and the run says how many and why), fits the collection's PCA
basis when the job draws one (`StreamingPCA`, two passes, a private scratch cache in front of the
user's so no image is computed more than once), writes every input's outputs as one transaction
and appends one manifest line per input (see :mod:`dinoscope.manifest`). An input that fails (it
does not load, or an OS error while writing its outputs: no space, read-only, a folder in the way,
a name too long) is recorded with its one-line error and the run goes on; the exit code is 1 at the
end. A `ModelError` or a basis that cannot fit stops the run as one error.

The engine does the per-input work: `LocalEngine` here, `RayEngine` in :mod:`dinoscope.ray_engine`;
both run `process` (the same code) on batches of inputs.

Inputs (folders, globs, @lists) are expanded by :mod:`dinoscope.inputs`; jobs live in
:mod:`dinoscope.jobs`. Both are re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from . import analyses
from .analyses import PCABasis
from .cache import scratch_layer
from .errors import DinoscopeError, ModelError, redact
from .files import clean_leftovers
from .inputs import IMAGE_SUFFIXES, Item, expand_inputs, is_collection
from .jobs import KINDS, BasisMismatch, Job
from .manifest import MANIFEST, ManifestLog, explain, input_digest, log, read_manifest, why_redo

if TYPE_CHECKING:
    from .analyses.streaming import StreamingPCA

BASIS_FILE = "pca_basis.safetensors"

__all__ = ["BASIS_FILE", "IMAGE_SUFFIXES", "KINDS", "MANIFEST", "BasisMismatch", "Item", "Job", "LocalEngine",
           "Summary", "expand_inputs", "is_collection", "read_manifest", "run_collection"]


def check_basis(basis, job: Job, where) -> None:
    """One InputError when a saved `basis` has fewer components than `job` draws."""
    have = int(basis.components.shape[0])
    if have < job.n_components:
        raise BasisMismatch(f"the saved PCA basis {where} has {have} components, this run needs {job.n_components}; "
                            "delete it (or run without --resume) to fit a new one")


def resumed_basis(job: Job, out: Path, basis_path, resume: bool):
    """(where the collection's basis is saved, the saved basis to reuse on --resume or None)."""
    target = Path(basis_path) if basis_path is not None else out / BASIS_FILE
    if resume and target.is_file():
        basis = PCABasis.load(target)
        check_basis(basis, job, target)
        return target, basis
    return target, None


def recipe(extractor, job: Job) -> dict:
    """What this run's outputs are made from, apart from the input itself (see :mod:`dinoscope.manifest`)."""
    model = extractor.model_source
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        model = os.path.abspath(text) if os.path.exists(text) else text
        identity = extractor._model_identity()
    else:  # a loaded model object
        model, identity = model.source, (model.source, model.revision, model.patch_size)
    return {"model": model, "revision": identity[1] if identity else None, "resolution": str(extractor.resolution),
            "layer": extractor.layer, "normed": extractor.normed, "dtype": str(extractor.dtype),
            "max_pixels": extractor.max_pixels,
            **({"sampling": extractor.sampling.key()} if extractor.sampling.key() else {}), **job.recipe()}


def ok_record(item: Item, outputs: list[str], features, image, made: dict | None = None) -> dict:
    g = features.geometry
    record = {"source": redact(item.source), "name": item.name, "status": "ok", "outputs": outputs, "grid": [g.rows, g.cols],
              "size": list(image.size)}
    if made is not None:
        record["made_from"] = {**made, "input": input_digest(item.source)}
    return record


def failed_record(item: Item, message: str) -> dict:
    return {"source": redact(item.source), "name": item.name, "status": "failed", "outputs": [], "grid": None,
            "error": redact(" ".join(str(message).split()))}


# --------------------------------------------------------------------------- the work on one batch (every engine)


_RETRIED = (DinoscopeError, ValueError, RuntimeError)  # what one input can cause (RuntimeError: out of memory too)


def stream_features(extractor, items: Sequence[Item], on_error: Callable[[Item, str], None] | None,
                    window: int = 32) -> Iterator[tuple[Item, object, object]]:
    """(item, image, features) for every input that loads and extracts; failures go to `on_error`
    (None: they raise, as for a single image).

    Loads `window` images at a time, extracts them in batches; a batch that fails (a bad input, or a
    batch too big for memory) is retried one image at a time so a single bad input never costs the
    others. A `ModelError` (the model cannot be loaded) is no input's fault: it stops the run.
    """
    for start in range(0, len(items), window):
        loaded = []
        for item in items[start:start + window]:
            try:
                loaded.append((item, extractor.load(item.source)))
            except DinoscopeError as exc:
                if on_error is None:
                    raise
                on_error(item, str(exc))
        if not loaded:
            continue
        try:
            results = extractor.features_of([im for _, im in loaded])
        except ModelError:
            raise
        except _RETRIED:
            results = None
        if results is not None:
            yield from ((item, image, feats) for (item, image), feats in zip(loaded, results))
            continue
        for item, image in loaded:
            try:
                feats = extractor.features_of([image])[0]
            except ModelError:
                raise
            except _RETRIED as exc:
                if on_error is None:
                    raise
                on_error(item, str(exc) if isinstance(exc, DinoscopeError) else f"{type(exc).__name__}: {exc}")
                continue
            yield item, image, feats


def process(extractor, job: Job, out: Path, items: Sequence[Item], *, accumulator: StreamingPCA | None = None,
            made: dict | None = None, strict: bool = False) -> Iterator[dict]:
    """One record per input of `items`: with `accumulator`, the features are observed (a PCA pass);
    else the job writes each input's outputs. The same code runs in-process and on Ray workers.
    `strict`: a failing input raises instead of giving a failed record (a single image)."""
    errors: list[dict] = []
    found = stream_features(extractor, items, None if strict else
                            lambda item, message: errors.append(failed_record(item, message)))
    if accumulator is None and getattr(job, "batched", False):  # one file for the whole batch
        done = list(found)
        yield from errors
        for (item, image, feats), outputs in zip(done, job.write_batch(out, done)):
            yield ok_record(item, outputs, feats, image, made)
        return
    for item, image, feats in found:
        yield from errors
        errors.clear()
        if accumulator is not None:
            accumulator.observe(feats)
            yield {"source": redact(item.source), "name": item.name, "status": "ok"}
            continue
        try:
            outputs = job.write(out, item.name, image, feats)
        except (ModelError, BasisMismatch):
            raise
        except DinoscopeError as exc:
            if strict:
                raise
            yield failed_record(item, str(exc))
            continue
        yield ok_record(item, outputs, feats, image, made)
    yield from errors


# --------------------------------------------------------------------------- engines


@contextlib.contextmanager
def scratch_extractor(extractor, folder: Path) -> Iterator[object]:
    """For runs that read every image more than once (a collection's PCA fit, a video): a copy of
    `extractor` (the same model) built on `cache.scratch_layer`, a private scratch cache in `folder` in
    front of the extractor's own cache, so no pass recomputes an image however small the user's cache
    is; the caller's extractor keeps its cache, and the copy's forward passes are added to its count."""
    with scratch_layer(Path(folder), extractor.cache) as layered:
        copied = copy.copy(extractor)
        copied.cache, copied.forward_passes = layered, 0
        try:
            yield copied
        finally:
            extractor.forward_passes += copied.forward_passes


class LocalEngine:
    """Runs `process` in this process, with the caller's extractor (a scratch cache in front of its own
    cache while a run reads every image more than once)."""

    name = "local"

    def __init__(self):
        self.extractor = self.out = None
        self._before = 0

    def adapt(self, job: Job) -> Job:
        return job

    @contextlib.contextmanager
    def session(self, extractor, out: Path, job: Job, scratch: bool):
        self.out = out
        with scratch_extractor(extractor, out) if scratch else contextlib.nullcontext(extractor) as chosen:
            self.extractor, self._before = chosen, chosen.forward_passes
            yield self

    @property
    def forward_passes(self) -> int:
        """Images run through the model in this session."""
        return self.extractor.forward_passes - self._before

    def map(self, items: Sequence[Item], job: Job, accumulator: StreamingPCA | None = None,
            made: dict | None = None) -> Iterator[dict]:
        return process(self.extractor, job, self.out, items, accumulator=accumulator, made=made)


# --------------------------------------------------------------------------- the runner


def run_one(source, name: str, extractor, job: Job, out: str | os.PathLike) -> list[Path]:
    """A collection of one, for the single-image commands: the same extraction and job (a PCA basis, when
    the job has none, is fitted on this image), no manifest; a failure raises its one-line error and
    leaves no output. Returns the paths written."""
    out = Path(out)
    if out.is_dir():
        clean_leftovers(out, recursive=False)
    for record in process(extractor, job, out, [Item(source, name)], strict=True):
        return [out / rel for rel in record["outputs"]]
    return []


@dataclass
class Summary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # complete from an earlier run (resume)
    seconds: float = 0.0
    computed: int = 0  # forward passes (an image fitted and drawn without a cache counts more than once)
    basis_path: str | None = None
    manifest: str | None = None
    failures: list = field(default_factory=list)  # (source, error) of every failed input
    redone: dict = field(default_factory=dict)  # why --resume redid inputs that had a record: reason -> count

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def plan(out: Path, items: Sequence[Item], job: Job, previous: dict[str, dict], made: dict) -> tuple[list[Item], Counter]:
    """The inputs to (re)do and, for those with a record, why."""
    todo, reasons = [], Counter()
    for item in items:
        why = why_redo(out, item.name, item.source, job.outputs(item.name), previous.get(item.name), made)
        if why is not None:
            todo.append(item)
            reasons[why] += 1
    return todo, reasons


def fit_basis(engine, items: Sequence[Item], job: Job, manifest: ManifestLog, progress=None) -> PCABasis:
    """The two streaming passes over the collection; failures of the first are recorded."""
    accumulator = analyses.StreamingPCA(job.n_components)  # named here: streaming imports torch, a rerun need not
    for phase in ("fitting PCA", "PCA colour range"):
        chosen = [it for it in items if it.name not in manifest.failed]
        for done, record in enumerate(engine.map(chosen, job, accumulator), 1):
            if record["status"] != "ok":
                manifest.add(record)
            if progress:
                progress(phase + ("" if engine.name == "local" else f" ({engine.name})"), done, len(chosen))
        if not accumulator.ranging:
            accumulator.fix_directions()
    return accumulator.finish()


def run_collection(items: Sequence[Item], extractor, job: Job, out: str | os.PathLike, *, resume: bool = False,
                   basis_path: str | os.PathLike | None = None, progress=None, engine=None) -> Summary:
    """Run `job` over `items` with `extractor` on `engine` (default local), writing under `out`.

    `basis_path`: for pca/all jobs without `job.basis`, where the fitted collection basis is saved
    (default OUT/pca_basis.safetensors); with `resume` an existing basis there is reused, so outputs
    written before and after an interruption share one colour scheme.
    `progress(phase, done, total)` is called as inputs complete.
    """
    engine = engine or LocalEngine()
    job = engine.adapt(job)
    out = Path(out)
    started = time.perf_counter()
    if out.is_dir():
        clean_leftovers(out)
    fitting, target = False, None
    if job.needs_basis and job.basis is None:
        target, job.basis = resumed_basis(job, out, basis_path, resume)
        fitting = job.basis is None
    previous = read_manifest(out) if resume else {}
    todo, reasons = plan(out, items, job, previous, recipe(extractor, job))
    notice = explain(reasons, len(items)) if resume else None
    if notice:
        log.info(notice)
    summary = Summary(total=len(items), manifest=os.fspath(out / MANIFEST), skipped=len(items) - len(todo),
                      redone={k: n for k, n in reasons.items() if k != "not done yet"})
    with ManifestLog(out, [it.name for it in todo]) as manifest:
        with engine.session(extractor, out, job, scratch=fitting and bool(todo)) as run:
            if target is not None and todo:
                if fitting:
                    job.basis = fit_basis(run, items, job, manifest, progress)
                    job.basis.save(target)
                summary.basis_path = os.fspath(target)
            made = recipe(extractor, job)
            live = [it for it in todo if it.name not in manifest.failed]
            for done, record in enumerate(run.map(live, job, made=made), 1):
                manifest.add(record)
                if progress:
                    progress("writing" + ("" if run.name == "local" else f" ({run.name})"), done, len(live))
            summary.computed = run.forward_passes
    outcomes = manifest.outcomes
    summary.failures = [(source, error) for status, source, error in outcomes.values() if status != "ok"]
    summary.failed = len(summary.failures)
    summary.ok = summary.skipped + sum(1 for status, _, _ in outcomes.values() if status == "ok")
    summary.seconds = time.perf_counter() - started
    return summary
