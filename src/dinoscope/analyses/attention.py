"""Attention maps: where one query token (CLS or a patch) looks in one block, per head.

Only the query's row of the attention matrix is computed (softmax of q K^T / sqrt(d)),
from the block's own projections, so no second model load and no T x T matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError


@dataclass
class Attention:
    """One query's attention weights in one block, split by what is attended to.

    Per head, the weights to the CLS token, the registers and the patches sum to 1.
    """

    cls: "torch.Tensor"  # (H,)
    registers: "torch.Tensor"  # (H, R)
    patches: "torch.Tensor"  # (H, rows, cols)
    geometry: object
    query: int = -1  # -1: the CLS token; else a row-major patch index
    layer: int = -1
    model: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def heads(self) -> int:
        return self.patches.shape[0]

    def shares(self) -> dict[str, float]:
        """Mean over heads of the attention that goes to the CLS token, the registers and the patches."""
        return {"cls": float(self.cls.mean()), "registers": float(self.registers.sum(-1).mean()),
                "patches": float(self.patches.sum((-2, -1)).mean())}


def query_attention(query, keys, scale: float) -> "torch.Tensor":
    """softmax(q . k / sqrt(d)) for one query: q (H, d), keys (H, T, d) -> (H, T) weights, computed in float32."""
    import torch

    logits = torch.einsum("hd,htd->ht", query.float(), keys.float()) * scale
    return torch.softmax(logits, dim=-1)


def split_row(weights, num_registers: int, geometry, *, query: int = -1, layer: int = -1, model: str = "") -> Attention:
    """(H, 1 + R + N) weights over [CLS, registers, patches] -> an Attention."""
    h = weights.shape[0]
    r = num_registers
    if weights.shape[1] != 1 + r + geometry.num_patches:
        raise ValueError(f"{weights.shape[1]} attention weights for 1 + {r} + {geometry.num_patches} tokens")
    return Attention(weights[:, 0], weights[:, 1:1 + r], weights[:, 1 + r:].reshape(h, geometry.rows, geometry.cols),
                     geometry, query, layer, model)


def register_share(attention: Attention) -> "torch.Tensor":
    """(H,) fraction of each head's attention that goes to the register tokens."""
    return attention.registers.sum(-1)


def attention_map(attention: Attention, head: int | None = None) -> "torch.Tensor":
    """(rows, cols) attention to the patches: one head, or the mean over heads (None)."""
    if head is None:
        return attention.patches.mean(0)
    if not -attention.heads <= head < attention.heads:
        raise InputError(f"head {head} does not exist; this layer has {attention.heads} heads (0..{attention.heads - 1})")
    return attention.patches[head]
