"""Collections: the same analysis over many images, one output per input, a manifest, resume.

Inputs (`expand_inputs`): a folder (searched recursively for image files), a glob pattern
(``photos/**/*.jpg``), ``@list.txt`` (a text file with one path, URL or sample:NAME per line;
blank lines and lines starting with # are skipped; relative paths are read relative to the
list file's folder), or any number of single files, URLs and samples.

Each input gets a name: its path relative to the folder or the glob's fixed prefix, without
the extension (``cats/tom.jpg`` -> ``cats/tom``); outputs go to ``OUT/<name>_<what>.png``
(so the output folder mirrors the input folder). Names that would collide get ``_2``, ``_3``.

The runner (`run_collection`) extracts in batches, writes every output atomically, records
one JSON line per input in ``OUT/manifest.jsonl`` (rewritten atomically as it goes), skips
inputs that fail (recording the one-line error) and, with `resume`, skips inputs whose
outputs are complete and recorded as ok. PCA pictures share one basis fitted over the whole
collection with the streaming accumulator in :mod:`dinoscope.streaming`.

The job (`Job`) is plain data, so the Ray engine (:mod:`dinoscope.ray_engine`) ships it to
workers and runs the very same per-image code.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .cache import scratch_cache
from .errors import DinoscopeError, InputError, ModelError
from .files import output_stem, safe_name

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm",
                            ".pgm", ".pbm", ".tga", ".ico", ".avif", ".heic"})
MANIFEST = "manifest.jsonl"
BASIS_FILE = "pca_basis.safetensors"
KINDS = ("extract", "norms", "pca", "similarity", "all")


@dataclass(frozen=True)
class Item:
    """One input: where it comes from and the relative output name (posix, no extension)."""

    source: str
    name: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_remote(text: str) -> bool:
    return "://" in text or text.lower().startswith("sample:")


def is_collection(specs: Sequence[str]) -> bool:
    """True when the inputs name more than one image or a folder, glob or @list (the single-image commands
    keep their own behaviour otherwise)."""
    if len(specs) != 1:
        return len(specs) > 1
    spec = specs[0]
    if spec.startswith("@"):
        return True
    if _is_remote(spec):
        return False
    return os.path.isdir(spec) or (_is_glob(spec) and not os.path.exists(spec))


def _inside(path: Path | str, folder: Path | None) -> bool:
    """True when `path` is `folder` or lies under it (both resolved; None excludes nothing)."""
    if folder is None:
        return False
    try:
        Path(path).resolve().relative_to(folder)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _walk(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under `folder`, recursively, skipping hidden entries and the folder `exclude` (the output
    folder: a second run must not read its own pictures) unless `folder` itself lies inside it."""
    if exclude is not None and _inside(folder, exclude):
        exclude = None  # the user named the output folder (or a folder in it) on purpose
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(Path(root) / d, exclude))
        for f in files:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root) / f)
    return sorted(found)


def _rel_name(path: Path, base: Path) -> str:
    rel = path.relative_to(base) if base is not None else Path(path.name)
    parts = [safe_name(p) for p in rel.parent.parts if p not in ("", ".")]
    return "/".join([*parts, safe_name(rel.stem)])


def _read_list(spec: str) -> list[str]:
    path = Path(spec[1:]).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"no such list file: {path}; give @FILE with one image path or URL per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list file {path} ({exc}); give a UTF-8 text file, one path per line") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _is_remote(line) and not os.path.isabs(os.path.expanduser(line)):
            line = os.path.normpath(os.path.join(path.parent, line))
        out.append(line)
    return out


def expand_inputs(specs: Sequence[str], exclude: str | os.PathLike | None = None) -> list[Item]:
    """The inputs a command line names, in a stable order, each with a unique output name.

    `exclude`: the output folder; folders and globs skip it and everything under it (files named one by one
    are kept).
    """
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    raw: list[tuple[str, str]] = []
    for spec in specs:
        if spec.startswith("@"):
            for line in _read_list(spec):
                raw.extend(_expand_one(line, in_list=True, exclude=skip))
        else:
            raw.extend(_expand_one(spec, exclude=skip))
    return [Item(source, name) for (source, _), name in zip(raw, _unique_names([name for _, name in raw]))]


def _unique_names(names: Sequence[str]) -> list[str]:
    """`names` with repeats (case-insensitive) renamed NAME_2, NAME_3...: never a name taken by any other input."""
    taken = {n.lower() for n in names}
    used: set[str] = set()
    counters: dict[str, int] = {}
    out = []
    for name in names:
        key = name.lower()
        if key not in used:
            used.add(key)
            out.append(name)
            continue
        n = counters.get(key, 1)
        while True:
            n += 1
            candidate = f"{name}_{n}"
            if candidate.lower() not in taken:
                break
        counters[key] = n
        taken.add(candidate.lower())
        used.add(candidate.lower())
        out.append(candidate)
    return out


def _expand_one(spec: str, in_list: bool = False, exclude: Path | None = None) -> list[tuple[str, str]]:
    if _is_remote(spec):
        return [(spec, output_stem(spec))]
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _walk(path, exclude)
        if not files and not in_list:
            raise InputError(f"the folder {spec} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")
        return [(os.fspath(f), _rel_name(f, path)) for f in files]
    if _is_glob(spec) and not path.exists():
        matches = sorted(p for p in globmod.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
        fixed = []
        for part in Path(os.path.expanduser(spec)).parts:
            if _is_glob(part):
                break
            fixed.append(part)
        base = Path(*fixed) if fixed else Path(".")
        if exclude is not None and not _inside(base, exclude):
            matches = [m for m in matches if not _inside(m, exclude)]
        if not matches and not in_list:
            raise InputError(f"no files match {spec}; check the pattern (quote it so the shell does not expand it)")
        return [(m, _rel_name(Path(m), base)) for m in matches]
    return [(spec, safe_name(path.stem))]  # a file (or a missing one: its error is recorded when it is loaded)


# --------------------------------------------------------------------------- jobs


class BasisMismatch(InputError):
    """The PCA basis does not fit the job or the features: every input would fail, so the run stops."""


def check_basis(basis, job: "Job", where) -> None:
    """One InputError when a saved `basis` has fewer components than `job` draws."""
    have = int(basis.components.shape[0])
    if have < job.n_components:
        raise BasisMismatch(f"the saved PCA basis {where} has {have} components, this run needs {job.n_components}; "
                            "delete it (or run without --resume) to fit a new one")


def resumed_basis(job, out: Path, basis_path, resume: bool):
    """(where the collection's basis is saved, the saved basis to reuse on --resume or None)."""
    from .analyses import PCABasis

    target = Path(basis_path) if basis_path is not None else out / BASIS_FILE
    if resume and target.is_file():
        basis = PCABasis.load(target)
        check_basis(basis, job, target)
        return target, basis
    return target, None


@dataclass
class Job:
    """What to make from each image. Plain data (picklable) so cluster workers run the same code.

    kind: extract (features .safetensors), norms, pca, similarity or all (norms, pca, similarity to the
    centre patch and to CLS). `options` holds the command's drawing options (cmap, alpha, components,
    query, smooth).
    """

    kind: str
    options: dict = field(default_factory=dict)
    basis: object = None  # PCABasis for pca/all

    @property
    def needs_basis(self) -> bool:
        return self.kind in ("pca", "all")

    @property
    def n_components(self) -> int:
        return max(3, max(self.options.get("components", (0, 1, 2))) + 1)

    def outputs(self, name: str) -> list[str]:
        """Output paths, relative to the output folder, for an input named `name`."""
        if self.kind == "extract":
            return [f"{name}.safetensors"]
        if self.kind == "norms":
            return [f"{name}_norms.png"]
        if self.kind == "pca":
            picked = self.options.get("components", (0, 1, 2))
            return [f"{name}_pca.png" if len(picked) == 3 else f"{name}_pca{picked[0] + 1}.png"]
        if self.kind == "similarity":
            return [f"{name}_similarity.png"]
        if self.kind == "all":
            return [f"{name}_norms.png", f"{name}_pca.png", f"{name}_similarity.png", f"{name}_similarity_cls.png"]
        raise InputError(f"unknown collection job {self.kind!r}; use one of {', '.join(KINDS)}")

    def render(self, image, features) -> list:
        """The objects to write, in the order of `outputs`: PIL pictures, or Features for extract."""
        from . import views
        from .analyses import CLS, query_index

        o = self.options
        if self.kind == "extract":
            return [features]
        if self.kind == "norms":
            return [views.norms_view(features, image, cmap=o.get("cmap", "inferno"), alpha=o.get("alpha", 0.0))]
        if self.basis is not None and self.basis.mean.shape[0] != features.dim:
            raise BasisMismatch(f"the PCA basis is for {self.basis.mean.shape[0]}-dim features, this model gives "
                                f"{features.dim}; fit a new one (delete it, or run without --resume) or use the "
                                "model it was fitted with")
        if self.kind == "pca":
            return [views.pca_view(features, self.basis, components=list(o.get("components", (0, 1, 2))),
                                   cmap=o.get("cmap", "viridis"), smooth=o.get("smooth", False))]
        g = features.geometry
        centre = g.index(g.rows // 2, g.cols // 2)
        if self.kind == "similarity":
            query = o.get("query")
            query = centre if query is None else query
            query_index(features, query)
            return [views.similarity_view(features, query, image, cmap=o.get("cmap", "turbo"),
                                          alpha=o.get("alpha", 0.55))]
        return [views.norms_view(features, image), views.pca_view(features, self.basis),
                views.similarity_view(features, centre, image), views.similarity_view(features, CLS, image)]

    def write(self, out: Path, name: str, image, features) -> list[str]:
        """Render and write every output atomically; returns their relative paths."""
        from .files import save_image

        rels = self.outputs(name)
        for rel, obj in zip(rels, self.render(image, features)):
            if self.kind == "extract":
                obj.save(out / rel)
            else:
                save_image(obj, out / rel)
        return rels


# --------------------------------------------------------------------------- manifest


def read_manifest(out: Path) -> dict[str, dict]:
    """Records of a previous run by input name; unreadable lines are ignored."""
    records = {}
    path = Path(out) / MANIFEST
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "name" in rec and "source" in rec:
            records[rec["name"]] = rec
    return records


def write_manifest(out: Path, records: Iterable[dict]) -> Path:
    from .files import write_text

    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    return write_text(text, Path(out) / MANIFEST)


def complete(out: Path, item: Item, job: Job, record: dict | None) -> bool:
    """True when `record` says ok for this very input and every output the job would write exists."""
    if not record or record.get("status") != "ok" or record.get("source") != item.source:
        return False
    if job.options.get("format") == "parquet":  # Ray shards: names are known only once written
        wanted = list(record.get("outputs", ()))
        return bool(wanted) and all((Path(out) / rel).is_file() for rel in wanted)
    wanted = job.outputs(item.name)
    return set(wanted) <= set(record.get("outputs", ())) and all((Path(out) / rel).is_file() for rel in wanted)


def ok_record(item: Item, outputs: list[str], features, image) -> dict:
    g = features.geometry
    return {"source": item.source, "name": item.name, "status": "ok", "outputs": outputs, "grid": [g.rows, g.cols],
            "size": list(image.size)}


def failed_record(item: Item, message: str) -> dict:
    return {"source": item.source, "name": item.name, "status": "failed", "outputs": [], "grid": None,
            "error": " ".join(str(message).split())}


# --------------------------------------------------------------------------- the local engine


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

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


_RETRIED = (DinoscopeError, ValueError, RuntimeError)  # what one input can cause (RuntimeError: out of memory too)


def stream_features(extractor, items: Sequence[Item], on_error: Callable[[Item, str], None],
                    window: int = 32) -> Iterator[tuple[Item, object, object]]:
    """(item, image, features) for every input that loads and extracts; failures go to `on_error`.

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
            for (item, image), feats in zip(loaded, results):
                yield item, image, feats
            continue
        for item, image in loaded:
            try:
                feats = extractor.features_of([image])[0]
            except ModelError:
                raise
            except _RETRIED as exc:
                on_error(item, str(exc) if isinstance(exc, DinoscopeError) else f"{type(exc).__name__}: {exc}")
                continue
            yield item, image, feats


def fit_collection_basis(extractor, items: Sequence[Item], n_components: int, on_error, progress=None):
    """Two streaming passes (moments, then projection range) over the collection; returns the basis."""
    from .streaming import Moments, Range

    state = {"done": 0}

    def tick(phase: str) -> None:
        state["done"] += 1
        if progress:
            progress(phase, state["done"], len(items))

    def failed(item: Item, message: str) -> None:
        on_error(item, message)
        tick("fitting PCA")

    moments = Moments()
    for _, _, feats in stream_features(extractor, items, failed):
        moments.update(feats.flat)
        tick("fitting PCA")
    basis = moments.basis(n_components)
    span = Range()
    state["done"] = 0
    for _, _, feats in stream_features(extractor, items, lambda item, message: tick("PCA colour range")):
        span.update(basis, feats.flat)
        tick("PCA colour range")
    return span.apply(basis)


class _ManifestWriter:
    """Records in input order, rewritten atomically at most every `every` seconds and at the end."""

    def __init__(self, out: Path, items: Sequence[Item], previous: dict[str, dict], every: float = 2.0):
        self.out, self.items, self.every = out, items, every
        self.records: dict[str, dict] = {it.name: previous[it.name] for it in items
                                         if it.name in previous and previous[it.name].get("source") == it.source}
        self._last = 0.0

    def add(self, record: dict) -> None:
        self.records[record["name"]] = record
        if time.monotonic() - self._last > self.every:
            self.flush()

    def flush(self) -> Path:
        self._last = time.monotonic()
        return write_manifest(self.out, (self.records[it.name] for it in self.items if it.name in self.records))


def run_collection(items: Sequence[Item], extractor, job: Job, out: str | os.PathLike, *, resume: bool = False,
                   basis_path: str | os.PathLike | None = None, progress=None) -> Summary:
    """Run `job` over `items` with `extractor`, writing under `out`; see the module docstring.

    `basis_path`: for pca/all jobs without `job.basis`, where the fitted collection basis is saved
    (default OUT/pca_basis.safetensors); with `resume` an existing basis there is reused, so outputs
    written before and after an interruption share one colour scheme.
    `progress(phase, done, total)` is called as inputs complete.
    """
    out = Path(out)
    started = time.perf_counter()
    previous = read_manifest(out) if resume else {}
    manifest = _ManifestWriter(out, items, previous)
    manifest.flush()  # fails at once (one line, exit 2) when the output folder cannot be written
    summary = Summary(total=len(items), manifest=os.fspath(out / MANIFEST))
    todo = [it for it in items if not (resume and complete(out, it, job, previous.get(it.name)))]
    summary.skipped = len(items) - len(todo)
    failed: dict[str, str] = {}

    def on_error(item: Item, message: str) -> None:
        if item.name not in failed:
            failed[item.name] = message
            manifest.add(failed_record(item, message))

    # the fit reads every image twice before writing: a private cache saves two of the three forward passes
    fitting = job.needs_basis and job.basis is None and bool(todo)
    passes_before = extractor.forward_passes
    try:
        with scratch_cache(extractor, out) if fitting else contextlib.nullcontext():
            if fitting:
                target, job.basis = resumed_basis(job, out, basis_path, resume)
                if job.basis is None:
                    job.basis = fit_collection_basis(extractor, items, job.n_components, on_error, progress)
                    job.basis.save(target)
                summary.basis_path = os.fspath(target)
            live = [it for it in todo if it.name not in failed]
            processed = 0

            def step() -> None:
                nonlocal processed
                processed += 1
                if progress:
                    progress("writing", processed, len(live))

            def on_write_error(item: Item, message: str) -> None:
                on_error(item, message)
                step()

            for item, image, feats in stream_features(extractor, live, on_write_error):
                try:
                    outputs = job.write(out, item.name, image, feats)
                except (ModelError, BasisMismatch):
                    raise
                except DinoscopeError as exc:
                    on_write_error(item, str(exc))
                    continue
                manifest.add(ok_record(item, outputs, feats, image))
                step()
            summary.computed = extractor.forward_passes - passes_before
    finally:
        manifest.flush()
    summary.failures = [(r["source"], r.get("error", "")) for r in manifest.records.values() if r.get("status") != "ok"]
    summary.failed = sum(1 for r in manifest.records.values() if r.get("status") != "ok")
    summary.ok = sum(1 for r in manifest.records.values() if r.get("status") == "ok")
    summary.seconds = time.perf_counter() - started
    return summary
