"""Streaming PCA over any number of images in bounded memory.

`Moments` keeps the count, mean and the centred sum of outer products (float64) of the
patches seen so far and merges with another `Moments` exactly (Chan, Golub and LeVeque's
pairwise update), so partial results from batches, processes or cluster workers combine in
any order. Memory is O(D^2) whatever the number of images: 4.7 MB for D = 768.

`Range` keeps the per-component minimum and maximum of the projections; a fit over a
collection therefore takes two passes: moments, then the range of the projections on the
fitted basis. `fit_streaming` does both and gives what `PCABasis.fit` would give on all
patches at once (to float rounding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from .analyses.pca import PCABasis
from .errors import InputError

if TYPE_CHECKING:
    import torch


def _rows(data) -> "torch.Tensor":
    import torch

    if not isinstance(data, torch.Tensor):
        data = data.flat  # Features
    return data.reshape(-1, data.shape[-1]).double()


class Moments:
    """Count, mean (D,) and centred scatter matrix M2 (D, D) of patch tokens, in float64."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.mean = None
        self.m2 = None
        self.dim = dim

    def update(self, data) -> "Moments":
        """Add (N, D) tokens (or a Features' patches)."""
        x = _rows(data)
        if x.shape[0] == 0:
            return self
        mean = x.mean(0)
        centred = x - mean
        other = Moments(x.shape[1])
        other.n, other.mean, other.m2 = x.shape[0], mean, centred.T @ centred
        return self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        """Combine with another Moments (in place); the result does not depend on the order of merging."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2, self.dim = other.n, other.mean.clone(), other.m2.clone(), other.mean.shape[0]
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
        import torch

        m = cls()
        if state["n"]:
            m.n = int(state["n"])
            m.mean = torch.as_tensor(state["mean"], dtype=torch.float64)
            m.m2 = torch.as_tensor(state["m2"], dtype=torch.float64)
            m.dim = m.mean.shape[0]
        return m

    def basis(self, n_components: int = 3) -> PCABasis:
        """The fitted basis without its scaling range (low/high are NaN until a `Range` pass fills them)."""
        import torch

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
        import torch

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
        import torch

        if state["low"] is None:
            return cls()
        return cls(torch.as_tensor(state["low"], dtype=torch.float64), torch.as_tensor(state["high"], dtype=torch.float64))

    def apply(self, basis: PCABasis) -> PCABasis:
        if self.low is None:
            raise InputError("no patches to take the PCA colour range from")
        basis.low, basis.high = self.low.float(), self.high.float()
        return basis


def fit_streaming(batches: Callable[[], Iterable], n_components: int = 3) -> PCABasis:
    """Fit a PCA basis over everything `batches()` yields ((N, D) tensors or Features), in bounded memory.

    `batches` is called twice (moments, then the projection range), so it must give the same
    data each time, in any order.
    """
    moments = Moments()
    for data in batches():
        moments.update(data)
    basis = moments.basis(n_components)
    span = Range()
    for data in batches():
        span.update(basis, data)
    return span.apply(basis)
