"""Jobs: what one command makes from each image, as one small object per command.

A job knows the names of its outputs (`outputs(name)`), how to draw them (`render`), which of
its options change them (`recipe`, recorded in the manifest so `--resume` can tell outputs made
another way) and writes them as one transaction (`write`: every file prepared under a temporary
name, all renamed into place only when all succeeded). Jobs are plain picklable objects, so the
Ray engine ships them to its workers and runs the very same code.

``Job(kind, options)`` builds the job of that kind: extract (features .safetensors), norms, pca,
similarity or all (norms, pca, similarity to the centre patch and to CLS); `options` holds the
command's drawing options (cmap, alpha, components, query, smooth).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from . import names, views
from .analyses import CLS, PCABasis, query_index
from .analyses.arrays import as_array
from .errors import InputError
from .files import atomic_paths, write_error

KINDS = ("extract", "norms", "pca", "similarity", "all")


class BasisMismatch(InputError):
    """The PCA basis does not fit the job or the features: every input would fail, so the run stops."""


def basis_digest(basis: PCABasis | None) -> str | None:
    """A short digest of a basis's numbers: outputs drawn with another basis are another picture."""
    if basis is None:
        return None
    h = hashlib.sha256()
    for t in (basis.mean, basis.scale, basis.components, basis.low, basis.high):
        h.update(as_array(t).tobytes())  # tensors or arrays: the same float32 bytes
    return h.hexdigest()[:16]


class Job:
    """Base of every job; ``Job("pca", {...})`` gives a PcaJob. Subclasses set `kind` and `drawn` (the
    options that change their pictures, with defaults) and implement `outputs` and `render`."""

    kind = ""
    drawn: dict = {}
    needs_basis = False

    def __new__(cls, kind: str | None = None, options: dict | None = None, basis=None):
        if cls is Job:
            if kind not in JOBS:
                raise InputError(f"unknown collection job {kind!r}; use one of {', '.join(KINDS)}")
            cls = JOBS[kind]
        return super().__new__(cls)

    def __init__(self, kind: str | None = None, options: dict | None = None, basis=None):
        self.options = dict(options or {})
        self.basis = basis

    def __getnewargs__(self):  # pickling: rebuild the same subclass
        return (self.kind,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    def option(self, name: str):
        value = self.options.get(name)
        return self.drawn[name] if value is None and name in self.drawn else value

    @property
    def upsample(self) -> str:
        """How maps reach the photo's pixels (nearest, bilinear, guided); recorded only when not nearest."""
        return self.options.get("upsample") or "nearest"

    @property
    def n_components(self) -> int:
        return max(3, max(self.option("components") or (0, 1, 2)) + 1)

    def recipe(self) -> dict:
        """Everything of the job that changes its outputs (with the defaults filled in), for the manifest."""
        found = {"job": self.kind, **{k: _plain(self.option(k)) for k in sorted(self.drawn)}}
        if self.upsample != "nearest":
            found["upsample"] = self.upsample
        if self.needs_basis:
            found["basis"] = basis_digest(self.basis)
        return found

    def outputs(self, name: str) -> list[str]:
        """Output paths, relative to the output folder, for an input named `name`."""
        raise NotImplementedError

    def render(self, image, features) -> list:
        """The objects to write, in the order of `outputs`: PIL pictures, or Features."""
        raise NotImplementedError

    def write(self, out: Path, name: str, image, features) -> list[str]:
        """Render, then write every output as one transaction; returns their relative paths. An OS error
        is one InputError naming the path and the cause, and leaves none of this input's files behind."""
        rels = self.outputs(name)
        objects = self.render(image, features)
        with atomic_paths([Path(out) / rel for rel in rels]) as temps:
            for obj, tmp, rel in zip(objects, temps, rels):
                try:
                    write_object(obj, tmp)
                except OSError as exc:
                    raise write_error(Path(out) / rel, exc) from exc
        return rels

    def check_basis(self, features) -> None:
        if self.basis is not None and self.basis.mean.shape[0] != features.dim:
            where = f" in {self.options['basis_file']}" if self.options.get("basis_file") else ""
            raise BasisMismatch(f"the PCA basis{where} is for {self.basis.mean.shape[0]}-dim features, this model "
                                f"gives {features.dim}; fit a new one or use the model it was fitted with")


def write_object(obj, tmp: Path) -> None:
    """Write a picture or Features to the (temporary) path `tmp` in the format its final name asks for."""
    if isinstance(obj, Image.Image):
        obj.save(tmp, format={".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(tmp.suffix.lower(), "PNG"))
    else:
        tmp.write_bytes(obj.to_bytes())  # Features; `tmp` is already temporary, so no second atomic write


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


class ExtractJob(Job):
    kind = "extract"

    def outputs(self, name: str) -> list[str]:
        return [f"{name}.safetensors"]

    def render(self, image, features) -> list:
        return [features]


class NormsJob(Job):
    kind = "norms"
    drawn = {"cmap": "inferno", "alpha": 0.0, "explained": False}

    def outputs(self, name: str) -> list[str]:
        return [names.norms_name(name)]

    def render(self, image, features) -> list:
        return [views.norms_view(features, image, cmap=self.option("cmap"), alpha=self.option("alpha"),
                                 upsample=self.upsample, explained=self.option("explained"))]


class PcaJob(Job):
    """PCA colours with the job's basis (a collection's), or, without one, a basis fitted on each image
    (`fitted` keeps the last one, for --save-pca-basis)."""

    kind = "pca"
    drawn = {"cmap": "viridis", "components": (0, 1, 2), "smooth": False, "foreground": False, "explained": False}
    needs_basis = True
    fitted = None

    def outputs(self, name: str) -> list[str]:
        return [names.pca_name(name, self.option("components"), self.option("foreground"))]

    def render(self, image, features) -> list:
        self.check_basis(features)
        self.fitted = self.basis if self.basis is not None else PCABasis.fit(
            [features], self.n_components, foreground_only=self.option("foreground"))
        return [views.pca_view(features, self.fitted, components=list(self.option("components")),
                               cmap=self.option("cmap"), smooth=self.option("smooth"), upsample=self.upsample,
                               guide=image, explained=self.option("explained"), image=image)]


def _centre(features) -> int:
    g = features.geometry
    return g.index(g.rows // 2, g.cols // 2)


class SimilarityJob(Job):
    kind = "similarity"
    drawn = {"cmap": "turbo", "alpha": 0.55, "query": None, "explained": False}

    def outputs(self, name: str) -> list[str]:
        return [names.similarity_name(name, self.option("query"))]

    def recipe(self) -> dict:
        found = super().recipe()
        found["query"] = repr(self.option("query"))  # a Patch/Pixel/index: its repr says which
        return found

    def render(self, image, features) -> list:
        query = self.option("query")
        query = _centre(features) if query is None else query
        query_index(features, query)
        return [views.similarity_view(features, query, image, cmap=self.option("cmap"), alpha=self.option("alpha"),
                                      upsample=self.upsample, explained=self.option("explained"))]


class AllJob(Job):
    kind = "all"
    drawn = {"explained": False}
    needs_basis = True

    def outputs(self, name: str) -> list[str]:
        return names.all_names(name)

    def render(self, image, features) -> list:
        self.check_basis(features)
        up, told = self.upsample, self.option("explained")
        return [views.norms_view(features, image, upsample=up, explained=told),
                views.pca_view(features, self.basis, upsample=up, guide=image, explained=told, image=image),
                views.similarity_view(features, _centre(features), image, upsample=up, explained=told),
                views.similarity_view(features, CLS, image, upsample=up, explained=told)]


JOBS = {job.kind: job for job in (ExtractJob, NormsJob, PcaJob, SimilarityJob, AllJob)}
