"""Streaming PCA: one accumulator for any number of patches, in bounded memory, mergeable in any order.

A fit over data too large to hold takes two passes over it: the first gathers the moments
(count, mean and centred scatter, float64, merged exactly with Chan, Golub and LeVeque's
pairwise update), from which the directions follow; the second gathers each component's
minimum and maximum projection (the colour range). `StreamingPCA` holds both:

    acc = StreamingPCA(3)
    for x in data(): acc.observe(x)        # pass 1: moments
    acc.fix_directions()
    for x in data(): acc.observe(x)        # pass 2: projection range
    basis = acc.finish()                   # == PCABasis.fit(all data, 3), to float rounding

Partial accumulators (one per batch, process or cluster worker) travel as `state()` (plain
numpy) and `merge` in any order. Memory is O(D^2) whatever the number of patches: 4.7 MB for
D = 768.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..errors import InputError
from .pca import PCABasis


def _rows(data) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        data = data.flat  # Features
    return data.reshape(-1, data.shape[-1]).double()


class Moments:
    """Count, mean (D,) and centred scatter matrix M2 (D, D) of patch tokens, in float64."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None

    def update(self, data) -> "Moments":
        """Add (N, D) tokens (or a Features' patches)."""
        x = _rows(data)
        if x.shape[0] == 0:
            return self
        other = Moments()
        other.n, other.mean = x.shape[0], x.mean(0)
        centred = x - other.mean
        other.m2 = centred.T @ centred
        return self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        """Combine with another Moments (in place); the result does not depend on the order of merging."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return self
        if other.mean.shape != self.mean.shape:
            raise InputError(f"cannot combine {self.mean.shape[0]}-dim and {other.mean.shape[0]}-dim features in one "
                             "PCA; use one model and layer for the whole collection")
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta[:, None] * delta[None, :] * (self.n * other.n / n)
        self.n = n
        return self

    def state(self) -> dict:
        """Plain numpy arrays (for pickling across processes or Ray workers)."""
        return {"n": self.n, "mean": None if self.mean is None else self.mean.numpy(),
                "m2": None if self.m2 is None else self.m2.numpy()}

    @classmethod
    def from_state(cls, state: dict) -> "Moments":
        m = cls()
        if state["n"]:
            m.n = int(state["n"])
            m.mean = torch.tensor(state["mean"], dtype=torch.float64)
            m.m2 = torch.tensor(state["m2"], dtype=torch.float64)
        return m

    def basis(self, n_components: int = 3) -> PCABasis:
        """The fitted basis without its colour range (low/high are NaN until a `Range` pass fills them)."""
        if self.n < 2:
            raise InputError("PCA needs at least two patches; the collection gave fewer")
        cov = self.m2 / (self.n - 1)
        scale = cov.diagonal().clamp_min(0).sqrt()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        cov_z = cov / (scale[:, None] * scale[None, :])
        return PCABasis.from_covariance(self.mean, scale, cov_z, n_components)


class Range:
    """Per-component minimum and maximum of projections on a basis."""

    def __init__(self, low=None, high=None):
        self.low, self.high = low, high

    def update(self, basis: PCABasis, data) -> "Range":
        x = _rows(data)
        if x.shape[0] == 0:
            return self
        z = (x - basis.mean.double()) / basis.scale.double()
        proj = z @ basis.components.double().T
        return self.merge(Range(proj.min(0).values, proj.max(0).values))

    def merge(self, other: "Range") -> "Range":
        if other.low is None:
            return self
        if self.low is None:
            self.low, self.high = other.low.clone(), other.high.clone()
        else:
            self.low, self.high = torch.minimum(self.low, other.low), torch.maximum(self.high, other.high)
        return self

    def state(self) -> dict:
        return {"low": None if self.low is None else self.low.numpy(),
                "high": None if self.high is None else self.high.numpy()}

    @classmethod
    def from_state(cls, state: dict) -> "Range":
        if state["low"] is None:
            return cls()
        return cls(torch.tensor(state["low"], dtype=torch.float64), torch.tensor(state["high"], dtype=torch.float64))

    def apply(self, basis: PCABasis) -> PCABasis:
        if self.low is None:
            raise InputError("no patches to take the PCA colour range from")
        basis.low, basis.high = self.low.float(), self.high.float()
        return basis


class StreamingPCA:
    """The two-pass streaming PCA fit: `observe` gathers moments until `fix_directions`, then the
    projection range; `finish` gives the PCABasis. `state`/`from_state`/`merge` combine partial
    accumulators of the same pass (an empty one made by `spawn` for each worker) in any order."""

    def __init__(self, n_components: int = 3, directions: PCABasis | None = None):
        self.n_components = n_components
        self.directions = directions  # the basis without its range, once the first pass is done
        self.moments = Moments()
        self.range = Range()

    @property
    def ranging(self) -> bool:
        """True in the second pass (the directions are fixed, observations give the colour range)."""
        return self.directions is not None

    def observe(self, data) -> "StreamingPCA":
        """Add (N, D) tokens or a Features' patches to the current pass."""
        if self.ranging:
            self.range.update(self.directions, data)
        else:
            self.moments.update(data)
        return self

    def fix_directions(self) -> PCABasis:
        """End the first pass: the directions from the moments (raises InputError with fewer than two patches)."""
        self.directions = self.moments.basis(self.n_components)
        return self.directions

    def finish(self) -> PCABasis:
        """End the second pass: the complete basis."""
        if not self.ranging:
            raise InputError("the PCA colour range needs a second pass over the data; call fix_directions first")
        return self.range.apply(self.directions)

    def spawn(self) -> "StreamingPCA":
        """An empty accumulator for the same pass (what a worker fills and sends back as `state`)."""
        return StreamingPCA(self.n_components, self.directions)

    def state(self) -> dict:
        """This pass's partial result as plain numpy (the directions travel with the job, not here)."""
        return {"n_components": self.n_components, "ranging": self.ranging, "moments": self.moments.state(),
                "range": self.range.state()}

    def merge(self, other: "StreamingPCA | dict") -> "StreamingPCA":
        """Combine another accumulator of the same pass (or its `state`) into this one; order does not matter."""
        if isinstance(other, dict):
            if other["ranging"] != self.ranging:
                raise InputError("cannot merge PCA accumulators from different passes")
            self.moments.merge(Moments.from_state(other["moments"]))
            self.range.merge(Range.from_state(other["range"]))
            return self
        self.moments.merge(other.moments)
        self.range.merge(other.range)
        return self


def fit_streaming(batches: Callable[[], Iterable], n_components: int = 3) -> PCABasis:
    """Fit a PCA basis over everything `batches()` yields ((N, D) tensors or Features), in bounded memory.

    `batches` is called twice (moments, then the projection range), so it must give the same data each
    time, in any order.
    """
    acc = StreamingPCA(n_components)
    for data in batches():
        acc.observe(data)
    acc.fix_directions()
    for data in batches():
        acc.observe(data)
    return acc.finish()
