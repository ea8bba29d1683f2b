"""Attention maps: where one query token (CLS or a patch) looks in one block, per head.

Only the query's row of the attention matrix is computed (softmax of q K^T / sqrt(d)),
from the block's own projections, so no second model load and no T x T matrix.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..models.adapters import query_attention
from ..tokens import Attention, split_row

__all__ = ["Attention", "attention_map", "query_attention", "register_share", "split_row"]


def register_share(attention: Attention) -> torch.Tensor:
    """(H,) fraction of each head's attention that goes to the register tokens."""
    return attention.registers.sum(-1)


def attention_map(attention: Attention, head: int | None = None) -> torch.Tensor:
    """(rows, cols) attention to the patches: one head, or the mean over heads (None)."""
    if head is None:
        return attention.patches.mean(0)
    if not -attention.heads <= head < attention.heads:
        raise InputError(f"head {head} does not exist; this layer has {attention.heads} heads (0..{attention.heads - 1})")
    return attention.patches[head]
