"""Feature norms: which patches carry large activations (artifact or high-information tokens)."""

from __future__ import annotations

import torch


def patch_norms(features) -> torch.Tensor:
    """L2 norm of every patch token, (rows, cols)."""
    return features.patches.float().norm(dim=-1)


def minmax(values) -> torch.Tensor:
    """Scale to [0, 1]; a constant map becomes all zeros rather than NaN."""
    lo, hi = values.min(), values.max()
    span = hi - lo
    if span <= 0:
        return values.new_zeros(values.shape)
    return (values - lo) / span
