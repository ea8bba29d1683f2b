"""PCA of patch tokens: a fitted basis that colours patches, reusable across images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..files import atomic_path
from .threads import one_thread


@dataclass
class PCABasis:
    """Standardise, project on the top components, scale each to [0, 1] with the fit's range.

    The scaling range comes from the fit, so the same basis gives the same colours to the
    same feature on any image. Each component's sign is fixed so that its largest loading is
    positive: the fit is deterministic and the colours do not flip between runs.
    """

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,) standard deviation per dimension
    components: torch.Tensor  # (k, D), rows are unit vectors
    low: torch.Tensor  # (k,) projection range over the fit data
    high: torch.Tensor
    variance: torch.Tensor  # (k,) explained variance of each component
    foreground: torch.Tensor | None = None  # (D,) PC1 direction and threshold used for a foreground-only fit
    threshold: float = 0.0

    @classmethod
    def fit(cls, samples, n_components: int = 3, *, foreground_only: bool = False) -> "PCABasis":
        """Fit on Features objects or (N, D) tensors.

        With `foreground_only`, a first fit on all patches splits them on the first component
        (the side that holds fewer patches on the image border is foreground); the basis is
        then refitted on foreground patches only and `transform` draws background black.
        """
        data = _stack(samples)
        basis = cls._fit_tensor(data, n_components)
        if not foreground_only:
            return basis
        first = PCABasis._fit_tensor(data, 1)
        score = first.project(data)[:, 0]
        border = _border_mask(samples)
        if border is not None and border.any() and (score[border] > 0).float().mean() > (score[~border] > 0).float().mean():
            score = -score
            direction = -first.components[0]
        else:
            direction = first.components[0]
        mask = score > 0
        if mask.sum() < max(n_components + 1, 2):
            raise InputError("too few foreground patches to fit a PCA; drop the foreground-only option")
        basis = cls._fit_tensor(data[mask], n_components)
        basis.foreground = torch.cat([first.mean, first.scale, direction])
        return basis

    @classmethod
    def _fit_tensor(cls, data, n_components: int) -> "PCABasis":
        n, d = data.shape
        if n_components < 1 or n_components > d:
            raise InputError(f"number of PCA components must be between 1 and {d}")
        if n < 2:
            raise InputError("PCA needs at least two patches; use a larger image")
        x = data.double()
        mean = x.mean(0)
        scale = x.std(0, unbiased=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        z = (x - mean) / scale
        cov = z.T @ z / (n - 1)
        basis = cls.from_covariance(mean, scale, cov, n_components)
        proj = z @ basis.components.double().T
        basis.low, basis.high = proj.min(0).values.float(), proj.max(0).values.float()
        return basis

    @classmethod
    def from_covariance(cls, mean, scale, cov, n_components: int) -> "PCABasis":
        """The basis of standardised data from its moments: mean (D,), scale (D,) and the (D, D) covariance
        of the standardised data, all float64. `low`/`high` are left empty (NaN) for the caller to fill:
        `PCABasis.fit` takes them from its data, a streaming fit from a second pass over the projections."""
        d = cov.shape[0]
        if n_components < 1 or n_components > d:
            raise InputError(f"number of PCA components must be between 1 and {d}")
        # ascending; exact even on flat spectra. One thread: this 768 x 768 float64 problem is too small to
        # split, and on a busy 2-core CPU the threaded LAPACK took 1-4 s instead of 0.1-0.3 s
        with one_thread():
            values, vectors = torch.linalg.eigh(cov)
        order = torch.argsort(values, descending=True)[:n_components]
        components = vectors[:, order].T
        peak = components.abs().argmax(dim=1)
        signs = torch.sign(components[torch.arange(n_components), peak])
        components = components * signs[:, None]
        empty = torch.full((n_components,), float("nan"))
        return cls(mean.float(), scale.float(), components.float(), empty, empty.clone(), values[order].float())

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def project(self, data) -> torch.Tensor:
        """Raw component scores of (N, D) tokens."""
        z = (data.double() - self.mean.double()) / self.scale.double()
        return (z @ self.components.double().T).float()

    def foreground_mask(self, features) -> torch.Tensor | None:
        if self.foreground is None:
            return None
        d = self.mean.shape[0]
        mean, scale, direction = self.foreground[:d], self.foreground[d:2 * d], self.foreground[2 * d:]
        z = (features.flat.double() - mean.double()) / scale.double()
        return (z @ direction.double() > 0).reshape(features.patches.shape[:2])

    def transform(self, features, components=None) -> torch.Tensor:
        """(rows, cols, k) values in [0, 1]; `components` picks which ones (0-based), default all."""
        idx = list(range(self.n_components)) if components is None else list(components)
        for c in idx:
            if not 0 <= c < self.n_components:
                raise InputError(f"PCA component {c + 1} does not exist; this basis has {self.n_components}")
        proj = self.project(features.flat)[:, idx]
        low, high = self.low[idx], self.high[idx]
        span = torch.where(high > low, high - low, torch.ones_like(high))
        out = ((proj - low) / span).clamp(0, 1).reshape(*features.patches.shape[:2], len(idx))
        mask = self.foreground_mask(features)
        if mask is not None:
            out = out * mask[..., None]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {"mean": self.mean, "scale": self.scale, "components": self.components, "low": self.low,
                   "high": self.high, "variance": self.variance}
        if self.foreground is not None:
            tensors["foreground"] = self.foreground
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.fspath(tmp), metadata={"kind": "dinoscope-pca"})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCABasis":
        try:
            t = load_file(os.fspath(path))
            return cls(t["mean"], t["scale"], t["components"], t["low"], t["high"], t["variance"], t.get("foreground"))
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
            raise InputError(f"{path} is not a PCA basis file ({type(exc).__name__}); "
                             "save one with `dinoscope pca --save-pca-basis FILE`") from exc


def pca_rgb(features, basis: PCABasis | None = None, *, foreground_only: bool = False) -> torch.Tensor:
    """(rows, cols, 3) colours in [0, 1]: fit on this image unless a basis is given."""
    basis = basis or PCABasis.fit([features], 3, foreground_only=foreground_only)
    if basis.n_components < 3:
        raise InputError("an RGB PCA picture needs a basis with at least 3 components")
    return basis.transform(features, [0, 1, 2])


def _stack(samples):
    if isinstance(samples, torch.Tensor):
        samples = [samples]
    parts = [s if isinstance(s, torch.Tensor) else s.flat for s in samples]
    parts = [p.reshape(-1, p.shape[-1]).float() for p in parts]
    if not parts:
        raise InputError("PCA needs at least one image")
    return torch.cat(parts)


def _border_mask(samples):
    """True for patches on the outer ring of each image's grid (None for raw tensors)."""
    masks = []
    for s in samples if isinstance(samples, (list, tuple)) else [samples]:
        if isinstance(s, torch.Tensor):
            return None
        rows, cols = s.patches.shape[:2]
        m = torch.zeros(rows, cols, dtype=torch.bool)
        m[0, :] = m[-1, :] = True
        m[:, 0] = m[:, -1] = True
        masks.append(m.reshape(-1))
    return torch.cat(masks)
