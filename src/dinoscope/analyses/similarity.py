"""Cosine similarity between one query token and every patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import InputError

CLS = -1  # the query index that means the CLS token


@dataclass(frozen=True)
class Patch:
    """A patch by grid position."""

    row: int
    col: int


@dataclass(frozen=True)
class Pixel:
    """A point in original-image pixels; the patch covering it is the query."""

    x: float
    y: float


Query = Union[int, Patch, Pixel]


def query_index(features, query: Query) -> int:
    """The row-major patch index a query names, or CLS (-1)."""
    geometry = features.geometry
    if isinstance(query, Pixel):
        return geometry.patch_at(query.x, query.y)
    if isinstance(query, Patch):
        return geometry.index(query.row, query.col)
    if isinstance(query, bool) or not isinstance(query, int):
        raise InputError(f"cannot use {query!r} as a query; give a patch index, Patch(row, col) or Pixel(x, y)")
    if query == CLS:
        return CLS
    geometry.cell(query)  # raises with the valid range when out of bounds
    return query


def query_vector(features, query: Query) -> "torch.Tensor":
    index = query_index(features, query)
    return features.cls if index == CLS else features.flat[index]


def similarity_map(features, query: Query, *, query_features=None) -> "torch.Tensor":
    """Cosine similarity in [-1, 1] between the query token and each patch of `features`, (rows, cols).

    The query is read from `query_features` when given (cross-image similarity), else from `features`.
    """
    import torch

    source = features if query_features is None else query_features
    q = query_vector(source, query).float()
    patches = features.flat.float()
    # one matrix-vector product: the same cosine as torch's cosine_similarity (within 1e-7), which
    # broadcasts one query against N rows about 50x slower on the CPU (60 ms for 1200 x 768)
    norms = torch.linalg.vector_norm(patches, dim=-1) * torch.linalg.vector_norm(q)
    sims = (patches @ q) / norms.clamp_min(1e-8)
    return sims.clamp(-1.0, 1.0).reshape(features.patches.shape[:2])
