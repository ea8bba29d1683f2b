"""Exact maximum-similarity assignment that stays fast when every similarity is close to every other.

Dense Jonker-Volgenant solvers slow down by two to three orders of magnitude on similarity matrices
of real ViT features (all cosines near one shared mean): their augmenting paths wander over the whole
matrix. Here the assignment is solved on a sparse candidate set (the best few partners of every row
and of every column) and then certified for the full matrix:

1. solve the sparse problem exactly (SciPy's LAPJVsp);
2. turn its optimum into node potentials with Bellman-Ford on the residual graph (no negative cycle
   exists there because the sparse solution is optimal);
3. check the reduced cost of EVERY pair, pruned ones included, block by block. If none is negative the
   potentials prove the sparse solution optimal for the full matrix (min-cost-flow optimality); pairs
   that violate the check join the candidate set and the loop repeats.

Only when certification keeps failing is the dense matrix handed to the dense solver. Similarities are
read one block of rows at a time, either from a matrix or computed from the two feature sets on the
fly, so the 16k x 16k case never holds more than one block beyond its inputs.
"""

from __future__ import annotations

import logging

import lap
import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

log = logging.getLogger("dinoscope")

# a pair counts as violating when its reduced cost is below this (costs are cosines, order 1)
TOLERANCE = 1e-9
STALLED = 0.8  # a round that leaves more than this share of the last round's violations: go dense
JITTER = 1e-3  # noise added when choosing which violating pairs to add, relative to the similarity range
BLOCK_ENTRIES = 1 << 22  # similarities per block (16 MiB of float32; the certificate works in float64)


class _Similarities:
    """Similarity rows served block by block, from a matrix or from two feature sets."""

    def __init__(self, matrix: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                 cols: torch.Tensor | None = None):
        self.matrix, self.rows, self.cols = matrix, rows, cols
        self.shape = tuple(matrix.shape) if matrix is not None else (rows.shape[0], cols.shape[0])

    def transposed(self) -> "_Similarities":
        if self.matrix is not None:
            return _Similarities(matrix=self.matrix.T.contiguous())
        return _Similarities(rows=self.cols, cols=self.rows)

    def block(self, start: int, stop: int) -> torch.Tensor:
        if self.matrix is not None:
            return self.matrix[start:stop]
        return self.rows[start:stop] @ self.cols.T

    def blocks(self):
        step = max(1, BLOCK_ENTRIES // max(1, self.shape[1]))
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            yield start, stop, self.block(start, stop)

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean similarity of each row and of each column (float32)."""
        if self.matrix is None:  # the mean of dot products is the dot product with the mean: no pass needed
            return self.rows @ self.cols.mean(dim=0), self.cols @ self.rows.mean(dim=0)
        n_rows, n_cols = self.shape
        row_mean = torch.zeros(n_rows)
        col_sum = torch.zeros(n_cols, dtype=torch.float64)
        for start, stop, block in self.blocks():
            row_mean[start:stop] = block.mean(dim=1)
            col_sum += (torch.ones(1, stop - start) @ block)[0]  # a matmul sums columns far faster than sum(0)
        return row_mean, (col_sum / n_rows).float()

    def dense(self) -> np.ndarray:
        return np.concatenate([b.numpy() for _, _, b in self.blocks()]) if self.matrix is None \
            else self.matrix.numpy()


def max_similarity_assignment(sims: np.ndarray, *, k: int = 8, max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the one-to-one assignment with the largest total of `sims`.

    min(N_A, N_B) pairs, rows in increasing order; the total equals the dense optimum.
    """
    return _assign(_Similarities(matrix=torch.as_tensor(np.ascontiguousarray(sims, dtype=np.float32))), k, max_rounds)


def max_similarity_assignment_features(rows: torch.Tensor, cols: torch.Tensor, *, k: int = 8,
                                       max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The same assignment for the similarity matrix rows @ cols.T, never materialised whole."""
    return _assign(_Similarities(rows=rows.float().contiguous(), cols=cols.float().contiguous()), k, max_rounds)


def _assign(sims: _Similarities, k: int, max_rounds: int) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = sims.shape
    if n_rows == 0 or n_cols == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if n_rows > n_cols:
        cols, rows = _assign_wide(sims.transposed(), k, max_rounds)
        order = np.argsort(rows, kind="stable")
        return rows[order], cols[order]
    return _assign_wide(sims, k, max_rounds)


def _assign_wide(sims: _Similarities, k: int, max_rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row gets a column (n_rows <= n_cols); rows come back as 0..n_rows-1."""
    n_rows, n_cols = sims.shape
    k = min(k, n_cols)
    keys, values = _initial_candidates(sims, k)
    jitter = JITTER * float(values.max() - values.min())
    violations = None
    for round_ in range(max_rounds):
        r, c = np.divmod(keys, n_cols)
        match = _solve_sparse(r, c, values, sims.shape)
        potentials = _potentials(r, c, values, match, n_cols)
        if potentials is None:  # a negative cycle: the sparse solve was not optimal (rounding); give up
            break
        new_keys, new_values = _violations(sims, keys, match, potentials, k, jitter)
        if len(new_keys) == 0:
            return np.arange(n_rows), match
        log.debug(f"assignment round {round_}: {len(new_keys)} pruned pairs violate the certificate")
        if violations is not None and len(new_keys) > STALLED * violations:
            # the similarities of real features (low rank, many near-duplicate patches) can need most of
            # the matrix as candidates: growing the set k pairs a row at a time would cost more than JV
            break
        violations = len(new_keys)
        keys, values = _unique_pairs([keys, new_keys], [values, new_values])
    log.info("sparse assignment could not be certified; solving the dense problem instead")
    rows, cols = lap.lapjvr(-sims.dense().astype(np.float64), extend_cost=True, return_cost=False)
    order = np.argsort(rows, kind="stable")
    return np.asarray(rows)[order], np.asarray(cols)[order]


def _unique_pairs(keys: list, values: list) -> tuple[np.ndarray, np.ndarray]:
    keys, first = np.unique(np.concatenate(keys), return_index=True)
    return keys, np.concatenate(values)[first]


def _initial_candidates(sims: _Similarities, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (keys row * n_cols + col, similarities) of the best k columns of each row and best k rows
    of each column, plus the diagonal, which guarantees that a full matching exists among them.

    Ranked after removing each row's and each column's mean similarity: real features share a mean
    direction, which adds a per-column offset that would otherwise make every row pick the same columns.
    Similarities are always read from the blocks (never recomputed), so every step sees the same numbers.
    """
    n_rows, n_cols = sims.shape
    row_mean, col_mean = sims.means()
    k_rows = min(k, n_rows)
    best_score = torch.full((k_rows, n_cols), -torch.inf)
    best_value = torch.zeros((k_rows, n_cols))
    best_rows = torch.zeros((k_rows, n_cols), dtype=torch.long)
    keys, values = [], []
    for start, stop, block in sims.blocks():
        local = torch.arange(stop - start)
        top_cols = torch.topk(block - col_mean, k, dim=1).indices
        keys.append(((local + start)[:, None] * n_cols + top_cols).flatten())
        values.append(block.gather(1, top_cols).flatten())
        keys.append((local + start) * (n_cols + 1))
        values.append(block[local, local + start])
        score, idx = torch.topk(block - row_mean[start:stop, None], min(k_rows, stop - start), dim=0)
        merged_score, pick = torch.topk(torch.cat([best_score, score]), k_rows, dim=0)
        best_rows = torch.gather(torch.cat([best_rows, idx + start]), 0, pick)
        best_value = torch.gather(torch.cat([best_value, block.gather(0, idx)]), 0, pick)
        best_score = merged_score
    keys.append((best_rows * n_cols + torch.arange(n_cols)).flatten())
    values.append(best_value.flatten())
    return _unique_pairs([x.numpy() for x in keys], [x.double().numpy() for x in values])


def _solve_sparse(r: np.ndarray, c: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Column of each row in the optimal assignment restricted to the candidate pairs."""
    # costs >= 1: the sparse solver reads an explicit zero as a missing edge
    cost = values.max() - values + 1.0
    graph = scipy.sparse.csr_matrix((cost, (r, c)), shape=shape)
    rows, cols = min_weight_full_bipartite_matching(graph)
    match = np.empty(shape[0], dtype=np.int64)
    match[rows] = cols
    return match


def _potentials(r: np.ndarray, c: np.ndarray, values: np.ndarray, match: np.ndarray, n_cols: int):
    """Column potentials p with S[i, j] + p[j] <= S[i, m(i)] + p[m(i)] for every candidate pair.

    Bellman-Ford on the residual graph with each row merged into its matched column: the arc
    m(i) -> j costs S[i, m(i)] - S[i, j]. When columns outnumber rows, an extra node t lets a free
    column replace a matched one: free -> t and t -> matched cost 0. None if a negative cycle exists.
    """
    matched_value = np.full(len(match), -np.inf)
    is_match = match[r] == c
    matched_value[r[is_match]] = values[is_match]
    src, dst, weight = match[r[~is_match]], c[~is_match], matched_value[r[~is_match]] - values[~is_match]
    n_nodes = n_cols
    if len(match) < n_cols:
        used = np.zeros(n_cols, dtype=bool)
        used[match] = True
        sink = n_cols
        n_nodes += 1
        free, taken = np.flatnonzero(~used), np.flatnonzero(used)
        src = np.concatenate([src, free, np.full(len(taken), sink)])
        dst = np.concatenate([dst, np.full(len(free), sink), taken])
        weight = np.concatenate([weight, np.zeros(len(free) + len(taken))])
    order = np.argsort(dst, kind="stable")
    src, dst, weight = src[order], dst[order], weight[order]
    targets, starts = np.unique(dst, return_index=True)
    distance = np.zeros(n_nodes)  # a virtual source reaches every node at cost 0
    for _ in range(n_nodes + 1):
        relaxed = np.minimum.reduceat(distance[src] + weight, starts)
        better = relaxed < distance[targets] - 1e-15
        if not better.any():
            return distance[:n_cols]
        distance[targets[better]] = relaxed[better]
    return None


def _violations(sims: _Similarities, keys: np.ndarray, match: np.ndarray, potentials: np.ndarray,
                k: int, jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pruned pairs whose reduced cost is negative (up to k per offending row, worst first) and their
    similarities. A float32 pass screens every row; rows that come near the bound are decided in float64.
    Candidate pairs are masked out: Bellman-Ford already made their reduced costs non-negative (many are
    exactly zero), so only pruned pairs can break the certificate."""
    n_cols = sims.shape[1]
    potentials64 = torch.from_numpy(potentials)
    potentials32 = potentials64.float()
    # float32 rounding of block + potentials stays far below this margin
    margin = 1e-6 * (1.0 + float(potentials64.abs().max()))
    match_t = torch.from_numpy(match)
    generator = torch.Generator().manual_seed(len(keys))
    found_keys, found_values = [], []
    buffer = torch.empty(0)
    for start, stop, block in sims.blocks():
        lo, hi = np.searchsorted(keys, [start * n_cols, stop * n_cols])
        cand_r, cand_c = (torch.from_numpy(x) for x in np.divmod(keys[lo:hi] - start * n_cols, n_cols))
        own = match_t[start:stop, None]
        bound = block.gather(1, own).double() + potentials64[own]  # S[i, m(i)] + p[m(i)]
        adjusted = torch.add(block, potentials32, out=buffer[:len(block)] if len(buffer) >= len(block) else None)
        buffer = adjusted if len(adjusted) > len(buffer) else buffer
        adjusted[cand_r, cand_c] = -torch.inf
        near = torch.nonzero(adjusted.amax(dim=1).double() > bound[:, 0] - margin).flatten()
        if len(near) == 0:
            continue
        exact = block[near].double() + potentials64 - bound[near]
        exact[torch.isinf(adjusted[near])] = -torch.inf
        # near-duplicate rows (flat image regions) share their worst columns: ranking with a little noise
        # spreads them over different violating columns, so one round repairs a whole group
        violating = exact > TOLERANCE
        spread = torch.rand(exact.shape, generator=generator, dtype=torch.float64) * jitter
        cols = torch.topk(torch.where(violating, exact + spread, -torch.inf), k, dim=1).indices
        keep = violating.gather(1, cols)
        found_keys.append(((near + start)[:, None] * n_cols + cols)[keep])
        found_values.append(block[near].gather(1, cols)[keep])
    if not found_keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return torch.cat(found_keys).numpy(), torch.cat(found_values).double().numpy()
