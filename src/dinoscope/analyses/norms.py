"""Feature norms: which patches carry large activations (artifact or high-information tokens)."""

from __future__ import annotations

import numpy as np

from .arrays import as_array, like


def patch_norms(features):
    """L2 norm of every patch token, (rows, cols), float32."""
    patches = as_array(features.patches)
    return like(np.sqrt(np.einsum("...d,...d->...", patches, patches)), features.patches)


def minmax(values):
    """Scale to [0, 1]; a constant map becomes all zeros rather than NaN."""
    v = as_array(values, dtype=None)
    lo, hi = v.min(), v.max()
    span = hi - lo
    scaled = np.zeros_like(v) if span <= 0 else (v - lo) / span
    return like(scaled, values)
