"""The long-sequence attention kernel computes the same attention as PyTorch's SDPA."""

import pytest
import torch
import torch.nn.functional as F

from blocked_attention import blocked_attention


def qkv(batch, heads, tokens, dim, dtype=torch.float32, seed=0, keys=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, tokens, dim, generator=g)
    k, v = (torch.randn(batch, heads, keys or tokens, dim, generator=g) for _ in range(2))
    return tuple(x.to(dtype) for x in (q, k, v))


@pytest.mark.parametrize("batch,heads,tokens,dim,block", [
    (1, 1, 1, 8, 64),       # a single token
    (1, 4, 128, 16, 64),    # the block divides the length
    (1, 6, 100, 32, 64),    # it does not: a short last block
    (2, 3, 257, 64, 32),    # batch > 1, several short blocks
    (1, 12, 700, 64, 1000), # one block longer than the sequence
    (1, 2, 64, 64, 1),      # one query at a time
])
def test_blocked_equals_sdpa_float32(batch, heads, tokens, dim, block):
    q, k, v = qkv(batch, heads, tokens, dim, seed=tokens)
    expected = F.scaled_dot_product_attention(q, k, v)
    got = blocked_attention(q, k, v, block=block)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_blocked_handles_strided_inputs_and_other_key_counts():
    # the layout the ViT produces: heads split from the hidden dimension, so q, k, v are not contiguous
    x = torch.randn(1, 300, 4 * 16)
    q, k, v = (x.view(1, 300, 4, 16).transpose(1, 2) * s for s in (1.0, 0.5, 2.0))
    torch.testing.assert_close(blocked_attention(q, k, v, block=64), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)
    q, k, v = qkv(1, 2, 50, 16, keys=170)
    torch.testing.assert_close(blocked_attention(q, k, v, block=16), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)


def test_large_logits_do_not_overflow():
    q, k, v = qkv(1, 2, 90, 16)
    q = q * 40  # logits in the hundreds: a softmax without the max shift would overflow
    torch.testing.assert_close(blocked_attention(q, k, v, block=32), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)


def test_bfloat16_close_to_float32():
    q, k, v = qkv(1, 3, 300, 64)
    exact = F.scaled_dot_product_attention(q, k, v)
    fast = blocked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert fast.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: errors of a few 1e-3 relative to the largest output
    assert (fast.float() - exact).abs().max() < 2e-2 * exact.abs().max()
