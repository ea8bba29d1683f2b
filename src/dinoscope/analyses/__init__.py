"""Analyses: plain functions (and one fitted PCA basis) from Features to arrays.

Exported lazily (like `dinoscope.models`): norms, PCA and similarity compute with NumPy and do not
import torch, so a cached rerun can use them without starting torch; attention and matching load
theirs (and torch) when first named. The same names are imported plainly for editors and type checkers.
"""

from __future__ import annotations

from ..lazy import exports
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .attention import Attention, attention_map, query_attention, register_share, split_row
    from .matching import Matches, match_patches
    from .norms import minmax, patch_norms
    from .pca import PCABasis, pca_rgb
    from .similarity import CLS, Patch, Pixel, query_index, query_vector, similarity_map
    from .streaming import StreamingPCA

_EXPORTS = {
    "Attention": "attention", "attention_map": "attention", "query_attention": "attention",
    "register_share": "attention", "split_row": "attention", "Matches": "matching", "match_patches": "matching",
    "minmax": "norms", "patch_norms": "norms", "PCABasis": "pca", "pca_rgb": "pca", "CLS": "similarity",
    "Patch": "similarity", "Pixel": "similarity", "query_index": "similarity", "query_vector": "similarity",
    "similarity_map": "similarity", "StreamingPCA": "streaming",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = exports(__name__, _EXPORTS, __all__)
