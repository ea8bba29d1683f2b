"""Search: the patches most similar to one query vector across many images' features.

The features arrive as an iterable of (name, Features), so they can come from anything that
yields them one at a time: the feature cache, the .safetensors files of an `extract` collection
(`saved_features`), or a Ray collection's shards. Each image is scored as it arrives and the scores
are merged into a running top-k every `block_patches` patches, so memory holds one image's features,
one block of scores and the k best hits, whatever the number of images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..errors import InputError
from .threads import one_thread

BASIS_FILE = "pca_basis.safetensors"  # what an extract collection writes next to its features


@dataclass(frozen=True)
class Hit:
    """One found patch: which image, which grid cell, which original-image pixels, how similar."""

    name: str
    index: int  # row-major patch index
    row: int
    col: int
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) original pixels, x1/y1 exclusive
    score: float  # cosine similarity to the query, in [-1, 1]
    geometry: object = None

    def as_row(self) -> dict:
        """A flat record for a table or CSV."""
        x0, y0, x1, y1 = self.box
        return {"image": self.name, "row": self.row, "col": self.col, "x0": round(x0, 2), "y0": round(y0, 2),
                "x1": round(x1, 2), "y1": round(y1, 2), "score": round(self.score, 6)}


def search(query: torch.Tensor, sources: Iterable, *, top: int = 20, block_patches: int = 65536,
           exclude: Iterable[str] = ()) -> list[Hit]:
    """The `top` patches with the highest cosine similarity to `query` (D,), best first.

    `sources` yields (name, Features) pairs, consumed one at a time; names in `exclude` are skipped
    (e.g. the query's own image). The scores of up to `block_patches` patches are merged into the
    running top-k at once. Equal scores keep the order the patches arrived in.
    """
    if top < 1:
        raise InputError(f"the number of hits must be at least 1, not {top}")
    if block_patches < 1:
        raise InputError("a search block must hold at least one patch")
    q = query.detach().float().reshape(-1)
    q = q / q.norm().clamp_min(1e-12)
    excluded = set(exclude)
    best = _TopK(top)
    block: list[tuple[str, object, torch.Tensor]] = []
    size = 0
    buffer = None
    for name, features in sources:
        if name in excluded:
            continue
        if features.dim != q.numel():
            raise InputError(f"{name} has {features.dim}-d features but the query is {q.numel()}-d; "
                             "search features of the model and layer the query came from")
        flat = features.flat
        with one_thread():  # about 1 ms of work per image: threads cost more than they save (see .threads)
            if flat.dtype != torch.float32:
                # converting into one reused buffer: a fresh float32 copy per image cost more than the scoring
                if buffer is None or buffer.shape != flat.shape:
                    buffer = torch.empty(flat.shape)
                flat = buffer.copy_(flat)
            scores = ((flat @ q) / torch.linalg.vector_norm(flat, dim=1).clamp_min(1e-12)).clamp(-1, 1)
        block.append((name, features.geometry, scores))
        size += scores.numel()
        if size >= block_patches:
            with one_thread():
                best.add(block)
            block, size = [], 0
    if block:
        with one_thread():
            best.add(block)
    return best.hits()


class _TopK:
    """The k best (score, arrival order) so far, with the name and geometry of the images they came from."""

    def __init__(self, k: int):
        self.k = k
        self.scores = torch.empty(0)
        self.order = torch.empty(0, dtype=torch.long)  # global arrival order of the patch: the tie-break
        self.patch = torch.empty(0, dtype=torch.long)
        self.image = torch.empty(0, dtype=torch.long)
        self.images: dict[int, tuple[str, object]] = {}
        self.seen_images = 0
        self.seen_patches = 0

    def add(self, block: list) -> None:
        """Merge a block of (name, geometry, scores (N,)) into the running top-k."""
        scores = torch.cat([s for _, _, s in block])
        counts = torch.tensor([s.numel() for _, _, s in block])
        image = torch.repeat_interleave(torch.arange(len(block)) + self.seen_images, counts)
        patch = torch.arange(scores.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        order = torch.arange(scores.numel()) + self.seen_patches
        for i, (name, geometry, _) in enumerate(block):
            self.images[self.seen_images + i] = (name, geometry)
        self.seen_images += len(block)
        self.seen_patches += scores.numel()
        self._merge(torch.cat([self.scores, scores]), torch.cat([self.order, order]),
                    torch.cat([self.patch, patch]), torch.cat([self.image, image]))

    def _merge(self, scores, order, patch, image) -> None:
        # sort by order first, then a stable sort by score: ties keep arrival order
        by_order = torch.argsort(order)
        keep = by_order[torch.sort(scores[by_order], descending=True, stable=True).indices[:self.k]]
        self.scores, self.order, self.patch, self.image = scores[keep], order[keep], patch[keep], image[keep]
        alive = set(self.image.tolist())
        self.images = {i: v for i, v in self.images.items() if i in alive}

    def hits(self) -> list[Hit]:
        out = []
        for score, patch, image in zip(self.scores.tolist(), self.patch.tolist(), self.image.tolist()):
            name, geometry = self.images[image]
            row, col = geometry.cell(patch)
            out.append(Hit(name, patch, row, col, geometry.box(patch), score, geometry))
        return out


def saved_features(folder: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """(name, Features) for every .safetensors features file under `folder` (an `extract` collection),
    in sorted path order, loaded one at a time; the name is the path relative to the folder, without
    the suffix, as `extract` named it. The collection's PCA basis file is skipped."""
    from ..features import Features  # features.py is being split; a top import would pin its location

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the output folder of `dinoscope extract`")
    paths = sorted(p for p in root.rglob("*.safetensors") if p.name != BASIS_FILE)
    if not paths:
        raise InputError(f"{root} holds no .safetensors features; write them with `dinoscope extract IMAGES --out {root}`")
    for path in paths:
        yield path.relative_to(root).with_suffix("").as_posix(), Features.load(path)
