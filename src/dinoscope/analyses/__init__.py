"""Analyses: plain functions (and one fitted PCA basis) from Features to arrays."""

from .matching import Matches, match_patches
from .norms import minmax, patch_norms
from .pca import PCABasis, pca_rgb
from .similarity import CLS, Patch, Pixel, query_index, query_vector, similarity_map

__all__ = [
    "CLS", "Matches", "PCABasis", "Patch", "Pixel", "match_patches", "minmax", "patch_norms", "pca_rgb",
    "query_index", "query_vector", "similarity_map",
]
