"""Cosine similarity between one query token and every patch."""

from __future__ import annotations

import numpy as np

from ..geometry import CLS, Patch, Pixel, Query
from .arrays import as_array, like

__all__ = ["CLS", "Patch", "Pixel", "Query", "query_index", "query_vector", "similarity_map"]


def query_index(features, query: Query) -> int:
    """The row-major patch index a query names, or CLS (-1)."""
    return features.geometry.query_index(query)


def query_vector(features, query: Query):
    index = query_index(features, query)
    return features.cls if index == CLS else features.flat[index]


def similarity_map(features, query: Query, *, query_features=None):
    """Cosine similarity in [-1, 1] between the query token and each patch of `features`, (rows, cols), float32.

    The query is read from `query_features` when given (cross-image similarity), else from `features`.
    """
    source = features if query_features is None else query_features
    q = as_array(query_vector(source, query))
    patches = as_array(features.flat)
    # one matrix-vector product (not a broadcast cosine per row, ~50x slower on the CPU)
    norms = np.sqrt(np.einsum("nd,nd->n", patches, patches)) * np.sqrt(q @ q)
    sims = (patches @ q) / np.maximum(norms, np.float32(1e-8))
    return like(np.clip(sims, -1.0, 1.0).reshape(features.patches.shape[:2]), features.patches)
