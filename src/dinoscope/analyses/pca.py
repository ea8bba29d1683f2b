"""PCA of patch tokens: a fitted basis that colours patches, reusable across images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..errors import InputError
from ..files import atomic_path
from .arrays import as_array, is_tensor, like, sigmoid
from .threads import one_blas_thread

if TYPE_CHECKING:
    import torch


@dataclass
class PCABasis:
    """Standardise, project on the top components, scale each to [0, 1] with the fit's range.

    The scaling range comes from the fit, so the same basis gives the same colours to the
    same feature on any image. The "paper" style is the official DINOv3 notebooks' recipe instead:
    the tokens are only centred, each component is whitened (divided by the square root of its
    explained variance, as scikit-learn's `PCA(whiten=True)`) and coloured sigmoid(2 x score).
    Each component's sign is fixed so that its largest loading is positive: the fit is deterministic and the colours do not flip between runs.

    Computed in NumPy (float64 where it matters); the fields are torch tensors when the basis was
    fitted on (or loaded as) tensors and NumPy arrays when fitted on NumPy-backed Features.
    """

    mean: "torch.Tensor"  # (D,)
    scale: "torch.Tensor"  # (D,) standard deviation per dimension
    components: "torch.Tensor"  # (k, D), rows are unit vectors
    low: "torch.Tensor"  # (k,) projection range over the fit data
    high: "torch.Tensor"
    variance: "torch.Tensor"  # (k,) explained variance of each component
    foreground: "torch.Tensor | None" = None  # (D,) PC1 direction and threshold used for a foreground-only fit
    threshold: float = 0.0
    style: str = "plain"  # "paper": centred, not standardised; colours sigmoid(2 x whitened projection)

    @classmethod
    def fit(cls, samples, n_components: int = 3, *, foreground_only: bool = False, style: str = "plain",
            masks=None) -> "PCABasis":
        """Fit on Features objects or (N, D) tensors or arrays.

        With `foreground_only`, a first fit on all patches splits them on the first component
        (the side that holds fewer patches on the image border is foreground); the basis is
        then refitted on foreground patches only and `transform` draws background black.
        `masks` (one (rows, cols) bool grid per sample, e.g. a foreground probe's) fits on the
        patches they mark instead; `transform(..., mask=)` then blackens the rest.
        """
        style = check_style(style)
        data, reference = _stack(samples)
        if masks is not None:
            basis = cls._fit_selected(data, _stack_masks(masks, len(data)), n_components, style,
                                      "check the foreground mask or probe")
        elif foreground_only:
            basis = cls._fit_foreground(data, n_components, _border_mask(samples), style)
        else:
            basis = cls._fit_array(data, n_components, style)
        return basis._as_kind_of(reference)

    @classmethod
    def _fit_foreground(cls, data: np.ndarray, n_components: int, border, style: str = "plain") -> "PCABasis":
        first = PCABasis._fit_array(data, 1)
        score = first._project(data)[:, 0]
        if border is not None and border.any() and (score[border] > 0).mean() > (score[~border] > 0).mean():
            score = -score
            direction = -first.components[0]
        else:
            direction = first.components[0]
        basis = cls._fit_selected(data, score > 0, n_components, style, "drop the foreground-only option")
        basis.foreground = np.concatenate([first.mean, first.scale, direction])
        return basis

    @classmethod
    def _fit_selected(cls, data: np.ndarray, keep: np.ndarray, n_components: int, style: str,
                      remedy: str) -> "PCABasis":
        """The basis of the foreground rows `keep` of `data`; too few of them is an InputError ending in `remedy`."""
        if keep.sum() < max(n_components + 1, 2):
            raise InputError(f"too few foreground patches to fit a PCA; {remedy}")
        return cls._fit_array(data[keep], n_components, style)

    @classmethod
    def _fit_array(cls, data: np.ndarray, n_components: int, style: str = "plain") -> "PCABasis":
        """The basis (NumPy fields) of (N, D) float32 data: standardised ("plain") or only centred ("paper")."""
        n, d = data.shape
        if n_components < 1 or n_components > d:
            raise InputError(f"number of PCA components must be between 1 and {d}")
        if n < 2:
            raise InputError("PCA needs at least two patches; use a larger image")
        x = data.astype(np.float64)
        mean = x.mean(0)
        scale = x.std(0, ddof=1) if style == "plain" else np.ones(d)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        with one_blas_thread():  # too small to split: threads cost more than the work on a busy CPU
            cov = z.T @ z / (n - 1)
        basis = cls._from_moments(mean, scale, cov, n_components)
        basis.style = style
        with one_blas_thread():
            proj = z @ basis.components.astype(np.float64).T
        basis.low, basis.high = proj.min(0).astype(np.float32), proj.max(0).astype(np.float32)
        return basis

    @classmethod
    def from_covariance(cls, mean, scale, cov, n_components: int) -> "PCABasis":
        """The basis of standardised data from its moments: mean (D,), scale (D,) and the (D, D) covariance
        of the standardised data, all float64 (tensors or arrays; the basis comes back in the same kind).
        `low`/`high` are left empty (NaN) for the caller to fill: `PCABasis.fit` takes them from its data,
        a streaming fit from a second pass over the projections."""
        basis = cls._from_moments(as_array(mean, np.float64), as_array(scale, np.float64),
                                  as_array(cov, np.float64), n_components)
        return basis._as_kind_of(cov)

    @classmethod
    def _from_moments(cls, mean: np.ndarray, scale: np.ndarray, cov: np.ndarray, n_components: int) -> "PCABasis":
        d = cov.shape[0]
        if n_components < 1 or n_components > d:
            raise InputError(f"number of PCA components must be between 1 and {d}")
        with one_blas_thread():  # see threads.one_blas_thread: 0.09 s on one thread, seconds on a busy CPU
            values, vectors = np.linalg.eigh(cov)  # ascending; exact even on flat spectra
        order = np.argsort(-values, kind="stable")[:n_components]
        components = vectors[:, order].T
        peak = np.abs(components).argmax(axis=1)
        signs = np.sign(components[np.arange(n_components), peak])
        components = components * signs[:, None]
        empty = np.full((n_components,), np.nan, dtype=np.float32)
        return cls(mean.astype(np.float32), scale.astype(np.float32), components.astype(np.float32), empty,
                   empty.copy(), values[order].astype(np.float32))

    def _as_kind_of(self, reference) -> "PCABasis":
        """This basis with torch fields when `reference` is a tensor (the caller works in torch)."""
        if not is_tensor(reference):
            return self
        fields = (self.mean, self.scale, self.components, self.low, self.high, self.variance)
        foreground = None if self.foreground is None else like(self.foreground, reference)
        return PCABasis(*(like(f, reference) for f in fields), foreground, self.threshold, self.style)

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def _project(self, data) -> np.ndarray:
        z = (as_array(data, np.float64) - as_array(self.mean, np.float64)) / as_array(self.scale, np.float64)
        with one_blas_thread():
            return (z @ as_array(self.components, np.float64).T).astype(np.float32)

    def project(self, data):
        """Raw component scores of (N, D) tokens, float32."""
        return like(self._project(data), data)

    def _foreground_mask(self, features) -> np.ndarray | None:
        if self.foreground is None:
            return None
        d = self.mean.shape[0]
        fg = as_array(self.foreground, np.float64)
        mean, scale, direction = fg[:d], fg[d:2 * d], fg[2 * d:]
        z = (as_array(features.flat, np.float64) - mean) / scale
        return (z @ direction > 0).reshape(features.patches.shape[:2])

    def foreground_mask(self, features):
        mask = self._foreground_mask(features)
        return None if mask is None else like(mask, features.patches)

    def transform(self, features, components=None, *, mask=None):
        """(rows, cols, k) values in [0, 1]; `components` picks which ones (0-based), default all. `mask`, a
        (rows, cols) bool grid (a foreground probe's), blackens the patches it leaves out."""
        idx = list(range(self.n_components)) if components is None else list(components)
        for c in idx:
            if not 0 <= c < self.n_components:
                raise InputError(f"PCA component {c + 1} does not exist; this basis has {self.n_components}")
        proj = self._project(features.flat)[:, idx]
        if self.style == "paper":
            whitened = proj / np.sqrt(np.maximum(as_array(self.variance, np.float64)[idx], 1e-12))
            out = sigmoid(2.0 * whitened)
        else:
            low, high = as_array(self.low)[idx], as_array(self.high)[idx]
            span = np.where(high > low, high - low, np.float32(1.0))
            out = np.clip((proj - low) / span, 0, 1)
        out = out.astype(np.float32).reshape(*features.patches.shape[:2], len(idx))
        mask = self._foreground_mask(features) if mask is None else np.asarray(as_array(mask), bool)
        if mask is not None:
            out = out * mask[..., None]
        return like(out, features.patches)

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {"mean": self.mean, "scale": self.scale, "components": self.components, "low": self.low,
                   "high": self.high, "variance": self.variance}
        if self.foreground is not None:
            tensors["foreground"] = self.foreground
        with atomic_path(path) as tmp:
            save_file({k: as_array(v, None) for k, v in tensors.items()}, os.fspath(tmp),
                      metadata={"kind": "dinoscope-pca", "style": self.style})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, framework: str = "pt") -> "PCABasis":
        """Read a basis file; `framework` "pt" gives torch fields, "numpy" NumPy ones."""
        try:
            with safe_open(os.fspath(path), framework=framework) as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
                style = (f.metadata() or {}).get("style", "plain")
            return cls(t["mean"], t["scale"], t["components"], t["low"], t["high"], t["variance"], t.get("foreground"),
                       style=check_style(style))
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
            raise InputError(f"{path} is not a PCA basis file ({type(exc).__name__}); "
                             "save one with `dinoscope pca --save-pca-basis FILE`") from exc


STYLES = ("plain", "paper")


def check_style(style: str) -> str:
    if style not in STYLES:
        raise InputError(f"unknown PCA style {style!r}; use plain (min-max colours) or paper (whitened, sigmoid)")
    return style


def _stack_masks(masks, n: int) -> np.ndarray:
    keep = np.concatenate([np.asarray(as_array(m), bool).reshape(-1) for m in masks])
    if keep.shape[0] != n:
        raise InputError(f"the foreground masks cover {keep.shape[0]} patches, the features {n}; give one mask "
                         "per image, of its grid")
    return keep


def pca_rgb(features, basis: PCABasis | None = None, *, foreground_only: bool = False):
    """(rows, cols, 3) colours in [0, 1]: fit on this image unless a basis is given."""
    basis = basis or PCABasis.fit([features], 3, foreground_only=foreground_only)
    if basis.n_components < 3:
        raise InputError("an RGB PCA picture needs a basis with at least 3 components")
    return basis.transform(features, [0, 1, 2])


def _stack(samples) -> tuple[np.ndarray, object]:
    """(N, D) float32 data of Features or (N, D) tensors/arrays, and a tensor among them if any (the kind to
    give back)."""
    if is_tensor(samples) or isinstance(samples, np.ndarray):
        samples = [samples]
    parts = [s if is_tensor(s) or isinstance(s, np.ndarray) else s.flat for s in samples]
    if not parts:
        raise InputError("PCA needs at least one image")
    arrays = [as_array(p).reshape(-1, p.shape[-1]) for p in parts]
    return np.concatenate(arrays), next((p for p in parts if is_tensor(p)), None)


def _border_mask(samples):
    """True for patches on the outer ring of each image's grid (None for raw tensors or arrays)."""
    masks = []
    for s in samples if isinstance(samples, (list, tuple)) else [samples]:
        if is_tensor(s) or isinstance(s, np.ndarray):
            return None
        rows, cols = s.patches.shape[:2]
        m = np.zeros((rows, cols), dtype=bool)
        m[0, :] = m[-1, :] = True
        m[:, 0] = m[:, -1] = True
        masks.append(m.reshape(-1))
    return np.concatenate(masks)
