"""A blocked softmax attention for long token sequences on CPU, kept for measurement (not wired in).

Measured at the phone-portrait length (11,709 tokens, 12 heads of 64; BENCHMARKS.md, "Long sequences"):
PyTorch's CPU flash kernel (SDPA) runs float32 attention at 1.17x its FLOP floor (one thread, CPU
time) and every blocked variant built from large matrix products was slower (1.5-2.4x SDPA): the
softmax passes over a block x tokens matrix are memory-bound. In bfloat16 this kernel is 1.27x faster
than SDPA on one thread (SDPA gains nothing from the CPU's bf16 dot products), but with two threads
on a shared machine its many small parallel operations wait at every barrier and it collapsed (16x
the floor), so the ViT keeps SDPA. This module is what benchmarks/attention_long.py compares against.
"""

from __future__ import annotations

import math

import torch

QUERY_BLOCK = 64  # 64 queries x 11,709 keys in bf16: 1.5 MB, within one core's L2


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = QUERY_BLOCK) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, one head and one block of queries against all keys at a time.

    Memory beyond inputs and output: one (block x keys) score matrix.
    """
    *lead, tokens, dim = q.shape
    keys, value_dim = k.shape[-2], v.shape[-1]
    q3, k3, v3 = (x.reshape(-1, *x.shape[-2:]) for x in (q, k, v))
    out = torch.empty(q3.shape[0], tokens, value_dim, dtype=q.dtype, device=q.device)
    scores = torch.empty(min(block, tokens), keys, dtype=q.dtype, device=q.device)
    scale = 1.0 / math.sqrt(dim)
    for head in range(q3.shape[0]):
        key_t, values = k3[head].T, v3[head]
        for start in range(0, tokens, block):
            stop = min(start + block, tokens)
            block_scores = scores[: stop - start]  # leading rows of a contiguous buffer: contiguous
            torch.addmm(block_scores, q3[head, start:stop], key_t, beta=0, alpha=scale, out=block_scores)
            torch.softmax(block_scores, dim=-1, out=block_scores)
            torch.mm(block_scores, values, out=out[head, start:stop])
    return out.reshape(*lead, tokens, value_dim)
