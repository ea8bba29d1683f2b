"""Segments: k-means over patch features, of one image or of several at once (co-segmentation).

Clustering runs on L2-normalised features (spherical k-means: a patch joins the centroid it has
the highest cosine similarity with), so segments follow the direction of a token, not its norm:
high-norm artifact tokens do not form clusters of their own just by being long.

One clustering over all images' patches is what makes co-segmentation: label 3 is the same
centroid, hence the same part, in every image. Labels are numbered by cluster size (0 the
largest), so the numbering and the colours drawn from it do not depend on the initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError
from .pca import PCABasis

BACKGROUND = -1  # the label of patches left out by foreground-only clustering


@dataclass
class Segments:
    """One clustering of the patches of one or more images.

    `labels[i]` is a (rows, cols) int64 grid for image i, values in 0..k-1 (BACKGROUND, -1,
    where foreground-only clustering left the patch out). `centroids` are unit vectors (k, D).
    """

    labels: list[torch.Tensor]
    centroids: torch.Tensor
    inertia: float  # sum over clustered patches of (1 - cosine similarity to their centroid)
    foreground: list[torch.Tensor] | None = None  # (rows, cols) bool per image when foreground-only

    @property
    def k(self) -> int:
        return self.centroids.shape[0]


def kmeans(data: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 100, restarts: int = 3
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Spherical k-means of (N, D) rows: (labels (N,), unit centroids (k, D), inertia).

    k-means++ initialisation on cosine distance, drawn from a generator seeded with `seed`
    (no global random state is touched), `restarts` initialisations, the lowest inertia kept.
    Labels are renumbered by cluster size, largest first (ties by first patch).
    """
    n = data.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"cannot make {k} segments from {n} patches; choose k between 1 and {n}")
    if restarts < 1 or iterations < 1:
        raise InputError("k-means needs at least one restart and one iteration")
    x = torch.nn.functional.normalize(data.float(), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        centroids = _kmeans_pp(x, k, generator)
        labels, centroids, inertia = _lloyd(x, centroids, iterations)
        if best is None or inertia < best[2] - 1e-9:
            best = (labels, centroids, inertia)
    return _by_size(*best)


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++: each new centre drawn with probability proportional to its squared cosine distance."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    chosen = [first]
    distance = (1 - x @ x[first]).clamp_min(0) ** 2
    for _ in range(1, k):
        total = distance.sum()
        if total <= 0:  # fewer distinct directions than k: the rest are duplicates, any will do
            pick = int(torch.randint(x.shape[0], (1,), generator=generator))
        else:
            pick = int(torch.multinomial(distance / total, 1, generator=generator))
        chosen.append(pick)
        distance = torch.minimum(distance, (1 - x @ x[pick]).clamp_min(0) ** 2)
    return x[chosen].clone()


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    labels = None
    for _ in range(iterations):
        new_labels = (x @ centroids.T).argmax(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        norms = sums.norm(dim=1, keepdim=True)
        # an emptied cluster keeps its old centre rather than becoming NaN
        centroids = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centroids)
    labels = (x @ centroids.T).argmax(1)
    inertia = float((1 - (x * centroids[labels]).sum(1)).sum())
    return labels, centroids, inertia


def _by_size(labels: torch.Tensor, centroids: torch.Tensor, inertia: float):
    k = centroids.shape[0]
    counts = torch.bincount(labels, minlength=k)
    first_seen = torch.full((k,), labels.numel(), dtype=torch.long)
    first_seen.scatter_reduce_(0, labels, torch.arange(labels.numel()), reduce="amin")
    order = sorted(range(k), key=lambda c: (-int(counts[c]), int(first_seen[c])))
    rename = torch.empty(k, dtype=torch.long)
    rename[torch.tensor(order)] = torch.arange(k)
    return rename[labels], centroids[order], inertia


def segment(features, k: int = 6, *, seed: int = 0, foreground_only: bool = False, iterations: int = 100,
            restarts: int = 3) -> Segments:
    """k-means segments of one image's patches; see `cosegment`."""
    return cosegment([features], k, seed=seed, foreground_only=foreground_only, iterations=iterations,
                     restarts=restarts)


def cosegment(features: Sequence, k: int = 6, *, seed: int = 0, foreground_only: bool = False,
              iterations: int = 100, restarts: int = 3) -> Segments:
    """One k-means over the patches of all `features` (one per image, same model and layer):
    the same label is the same part in every image.

    With `foreground_only` the foreground is found as in PCA's foreground-only fit (the side of
    the first principal component that holds fewer border patches, over all images at once);
    background patches get the label BACKGROUND (-1) and do not take part in the clustering.
    """
    features = list(features)
    if not features:
        raise InputError("segments need at least one image")
    dims = {f.dim for f in features}
    if len(dims) > 1:
        raise InputError(f"images have features of different sizes {sorted(dims)}; use one model and layer for all")
    masks = _foreground_masks(features) if foreground_only else None
    keep = [m.reshape(-1) if masks else torch.ones(f.geometry.num_patches, dtype=torch.bool)
            for f, m in zip(features, masks or [None] * len(features))]
    data = torch.cat([f.flat[m] for f, m in zip(features, keep)])
    labels, centroids, inertia = kmeans(data, k, seed=seed, iterations=iterations, restarts=restarts)
    grids, start = [], 0
    for f, m in zip(features, keep):
        grid = torch.full((f.geometry.num_patches,), BACKGROUND, dtype=torch.long)
        count = int(m.sum())
        grid[m] = labels[start:start + count]
        start += count
        grids.append(grid.reshape(f.geometry.grid))
    return Segments(grids, centroids, inertia, masks)


def _foreground_masks(features: list) -> list[torch.Tensor]:
    basis = PCABasis.fit(features, 1, foreground_only=True)
    return [basis.foreground_mask(f) for f in features]
