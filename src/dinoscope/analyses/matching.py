"""Patch correspondences between two images: exact one-to-one assignment or mutual nearest neighbours."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass

import lap
import numpy as np
import torch

from ..errors import InputError

log = logging.getLogger("dinoscope")

# float32 similarity matrix above this many entries (8192 x 8192 = 256 MiB) is not solved exactly
DEFAULT_MAX_ASSIGNMENT = 8192 * 8192


@dataclass
class Matches:
    """Pairs of patch indices (row-major) in image A and image B with their cosine similarity."""

    index_a: np.ndarray  # (K,) int64
    index_b: np.ndarray  # (K,) int64
    scores: np.ndarray  # (K,) float32
    method: str
    geometry_a: object = None
    geometry_b: object = None

    def __len__(self) -> int:
        return len(self.scores)

    def order(self) -> np.ndarray:
        """Indices of the pairs from best to worst score (stable, so ties keep patch order)."""
        return np.argsort(-self.scores, kind="stable")

    def top(self, k: int) -> "Matches":
        keep = self.order()[:k]
        return Matches(self.index_a[keep], self.index_b[keep], self.scores[keep], self.method, self.geometry_a,
                       self.geometry_b)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Patch centres in original-image pixels: (K, 2) arrays of (x, y) for A and for B."""
        a = np.array([self.geometry_a.center(int(i)) for i in self.index_a], dtype=np.float64).reshape(-1, 2)
        b = np.array([self.geometry_b.center(int(i)) for i in self.index_b], dtype=np.float64).reshape(-1, 2)
        return a, b

    def rows(self) -> list[dict]:
        a, b = self.points()
        return [
            {"index_a": int(ia), "index_b": int(ib), "x_a": round(float(pa[0]), 2), "y_a": round(float(pa[1]), 2),
             "x_b": round(float(pb[0]), 2), "y_b": round(float(pb[1]), 2), "score": round(float(s), 6)}
            for ia, ib, pa, pb, s in zip(self.index_a, self.index_b, a, b, self.scores)
        ]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["index_a", "index_b", "x_a", "y_a", "x_b", "y_b", "score"])
        writer.writeheader()
        writer.writerows(self.rows())
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "pairs": self.rows()}, indent=1)


def cosine_matrix(a, b) -> np.ndarray:
    """(N_A, N_B) float32 cosine similarities between the patches of two Features."""
    fa = torch.nn.functional.normalize(a.flat.float(), dim=-1, eps=1e-8)
    fb = torch.nn.functional.normalize(b.flat.float(), dim=-1, eps=1e-8)
    return (fa @ fb.T).numpy()


def match_patches(a, b, method: str = "hungarian", *, max_assignment: int = DEFAULT_MAX_ASSIGNMENT) -> Matches:
    """Match the patches of two images.

    "hungarian": the one-to-one assignment maximising total cosine similarity (exact,
    Jonker-Volgenant; rectangular problems are solved directly, so min(N_A, N_B) pairs).
    "mnn": pairs that are each other's nearest neighbour (fast, fewer pairs).
    Above `max_assignment` similarity entries the exact solver is replaced by "mnn" with a notice.
    """
    if method not in ("hungarian", "mnn"):
        raise InputError(f"unknown matching method {method!r}; use hungarian or mnn")
    n_a, n_b = a.geometry.num_patches, b.geometry.num_patches
    if method == "hungarian" and n_a * n_b > max_assignment:
        log.warning(
            f"exact matching of {n_a} x {n_b} patches exceeds the budget of {max_assignment} pairs; "
            "using mutual nearest neighbours instead (use a smaller resolution for an exact assignment)"
        )
        method = "mnn"
    if method == "mnn":
        ia, ib, scores = _mutual_nearest(a, b)
    else:
        sims = cosine_matrix(a, b)
        ia, ib = _assign(sims)
        scores = sims[ia, ib]
    return Matches(ia.astype(np.int64), ib.astype(np.int64), scores.astype(np.float32), method, a.geometry, b.geometry)


def _assign(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # lapjvr solves rectangular problems natively (no padding) and minimises, hence the negation
    rows, cols = lap.lapjvr(-sims, extend_cost=True, return_cost=False)
    order = np.argsort(rows, kind="stable")
    return np.asarray(rows)[order], np.asarray(cols)[order]


def _mutual_nearest(a, b, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest neighbours computed in row blocks, so memory stays O(chunk x N_B)."""
    fa = torch.nn.functional.normalize(a.flat.float(), dim=-1, eps=1e-8)
    fb = torch.nn.functional.normalize(b.flat.float(), dim=-1, eps=1e-8)
    best_b = torch.empty(fa.shape[0], dtype=torch.long)
    best_b_score = torch.empty(fa.shape[0])
    best_a_score = torch.full((fb.shape[0],), -2.0)
    best_a = torch.zeros(fb.shape[0], dtype=torch.long)
    for start in range(0, fa.shape[0], chunk):
        block = fa[start:start + chunk] @ fb.T
        score, idx = block.max(dim=1)
        best_b[start:start + chunk], best_b_score[start:start + chunk] = idx, score
        col_score, col_idx = block.max(dim=0)
        better = col_score > best_a_score
        best_a_score[better] = col_score[better]
        best_a[better] = col_idx[better] + start
    ia = torch.arange(fa.shape[0])
    mutual = best_a[best_b] == ia
    return ia[mutual].numpy(), best_b[mutual].numpy(), best_b_score[mutual].numpy()
