"""Analyses: plain functions (and one fitted PCA basis) from Features to arrays."""

from .attention import Attention, attention_map, query_attention, register_share, split_row
from .matching import Matches, match_patches
from .norms import minmax, patch_norms
from .pca import PCABasis, pca_rgb
from .similarity import CLS, Patch, Pixel, query_index, query_vector, similarity_map

__all__ = [
    "Attention", "CLS", "Matches", "PCABasis", "Patch", "Pixel", "attention_map", "match_patches", "minmax",
    "patch_norms", "pca_rgb", "query_attention", "query_index", "query_vector", "register_share",
    "similarity_map", "split_row",
]
