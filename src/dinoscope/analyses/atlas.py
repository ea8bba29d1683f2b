"""Numbers for comparing layers and models: linear CKA, token-norm statistics, attention shares.

CKA (centred kernel alignment, Kornblith et al. 2019) compares two representations of the same
patches, (N, D1) and (N, D2): 1 when one is an orthogonal transform and isotropic scaling of the
other, near 0 when unrelated. Both estimators are here:

- standard (`debiased=False`, the default): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) on
  column-centred features, i.e. the biased HSIC estimator; it drifts upwards when N is not much
  larger than D.
- debiased (`debiased=True`): the unbiased HSIC estimator of Song et al. (2012) in place of the
  biased one (needs N >= 4); nearer 0 for unrelated representations at small N, may be slightly
  negative.

Representations on different patch grids (another patch size or resolution) are compared after
area-averaging each grid to the common grid (the smallest rows and the smallest cols among them)
with adaptive average pooling, so that row i of each matrix describes the same part of the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False) -> float:
    """Linear CKA between (N, D1) and (N, D2) representations of the same N items, in float64."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(f"CKA compares two (N, D) matrices of the same N rows; got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise InputError(f"CKA needs at least {4 if debiased else 2} patches; got {n}")
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean(0)
    if debiased:
        kx, ky = xc @ xc.T, yc @ yc.T
        xy, xx, yy = _unbiased_hsic(kx, ky), _unbiased_hsic(kx, kx), _unbiased_hsic(ky, ky)
    else:
        xy = (yc.T @ xc).pow(2).sum()
        xx = (xc.T @ xc).pow(2).sum()
        yy = (yc.T @ yc).pow(2).sum()
    denominator = torch.sqrt(xx * yy)
    if denominator <= 0:
        raise InputError("CKA is undefined for a constant representation (every patch the same)")
    return float(xy / denominator)


def _unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012), eq. 5, up to the 1/(n(n-3)) factor that cancels in CKA."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    ones_k, ones_l = k.sum(0), l.sum(0)
    return ((k * l).sum() + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2))
            - 2 * (ones_k @ ones_l) / (n - 2))


def common_grid(features: Sequence) -> tuple[int, int]:
    """The largest grid every one of `features` can be pooled to: (min rows, min cols)."""
    if not features:
        raise InputError("nothing to compare: give at least one set of features")
    return min(f.geometry.rows for f in features), min(f.geometry.cols for f in features)


def pooled(features, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens area-averaged to `grid`, as (rows * cols, D) in row-major order."""
    rows, cols = grid
    patches = features.patches.float().permute(2, 0, 1)[None]  # (1, D, rows, cols)
    if patches.shape[-2:] == (rows, cols):
        return features.flat.float()
    out = torch.nn.functional.adaptive_avg_pool2d(patches, (rows, cols))
    return out[0].permute(1, 2, 0).reshape(rows * cols, -1)


def cka_matrix(rows: Sequence, columns: Sequence | None = None, *, debiased: bool = False) -> torch.Tensor:
    """(len(rows), len(columns)) linear CKA between Features (layers of one model, or models) of one image.

    `columns` defaults to `rows` (a symmetric layer-by-layer matrix). Grids that differ are pooled
    to the common grid of all of them first (see the module notes).
    """
    rows = list(rows)
    columns = rows if columns is None else list(columns)
    grid = common_grid(rows + columns)
    a = [pooled(f, grid) for f in rows]
    b = a if columns is rows else [pooled(f, grid) for f in columns]
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if columns is rows and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = linear_cka(x, y, debiased=debiased)
    return out


@dataclass
class NormStats:
    """Token-norm statistics of one image's patches, with high-norm outliers flagged.

    A patch is an outlier when its norm exceeds median + k * 1.4826 * MAD (MAD, the median absolute
    deviation, times 1.4826 estimates a standard deviation robustly, so k counts robust sigmas):
    the high-norm "artifact" tokens that models without registers put in uninformative patches.
    """

    norms: torch.Tensor  # (rows, cols)
    median: float
    mad: float  # raw median absolute deviation (not scaled)
    threshold: float
    outliers: torch.Tensor  # (rows, cols) bool
    mean: float
    max: float

    @property
    def outlier_count(self) -> int:
        return int(self.outliers.sum())

    @property
    def outlier_share(self) -> float:
        return self.outlier_count / self.outliers.numel()


def norm_stats(features, *, k: float = 5.0) -> NormStats:
    """Statistics of the L2 norms of `features`' patch tokens; see NormStats for the outlier rule."""
    if k <= 0:
        raise InputError(f"the outlier factor k must be positive, not {k}")
    norms = features.patches.float().norm(dim=-1)
    flat = norms.reshape(-1).double()
    median = flat.quantile(0.5)  # the mean of the two middle values for an even count, unlike Tensor.median
    mad = (flat - median).abs().quantile(0.5)
    threshold = median + k * 1.4826 * mad
    return NormStats(norms, float(median), float(mad), float(threshold), norms > threshold, float(flat.mean()),
                     float(flat.max()))


@dataclass
class AttentionShares:
    """Where the attention of one query token (usually CLS) goes in each layer, per head: the fractions
    to the CLS token, to the registers and to the patches; (layers, heads) each, summing to 1 per head."""

    cls: torch.Tensor
    registers: torch.Tensor
    patches: torch.Tensor

    def per_layer(self) -> dict[str, torch.Tensor]:
        """Means over heads, (layers,) each."""
        return {"cls": self.cls.mean(1), "registers": self.registers.mean(1), "patches": self.patches.mean(1)}


def attention_shares(rows, num_registers: int) -> AttentionShares:
    """Shares of attention rows over [CLS, registers, patches] tokens.

    `rows` is a (layers, heads, 1 + R + N) tensor of attention weights of one query per layer, or a
    sequence of Attention objects (what `extract_attention` / `attention_rows` return, one per layer).
    """
    if isinstance(rows, torch.Tensor):
        weights = rows.double()
        if weights.ndim != 3 or weights.shape[-1] <= 1 + num_registers:
            raise InputError(f"attention rows must be (layers, heads, 1 + {num_registers} + patches); "
                             f"got {tuple(rows.shape)}")
        r = num_registers
        return AttentionShares(weights[..., 0].float(), weights[..., 1:1 + r].sum(-1).float(),
                               weights[..., 1 + r:].sum(-1).float())
    rows = list(rows)
    if not rows:
        raise InputError("no attention rows given")
    return AttentionShares(torch.stack([a.cls.float() for a in rows]),
                           torch.stack([a.registers.float().sum(-1) for a in rows]),
                           torch.stack([a.patches.float().sum((-2, -1)) for a in rows]))
