"""One contract for every backbone family, so extraction never looks inside a model.

Each adapter offers what timm's `forward_intermediates` offers, shaped for dinoscope:

* ``forward_intermediates(pixels, blocks, norm)`` runs the model once, stopping after the
  deepest block asked for, and gives per requested block ``(cls (B, D), registers (B, R, D),
  patches (B, rows, cols, D))``, float32 on the CPU;
* ``attention_rows(pixels, block, queries)`` gives, for one image, each query token's
  softmax attention weights ``(H, 1 + R + N)`` in `block`, computed from the block's own
  q/k projections for the query rows only (the model keeps its fast attention).

All knowledge of module attribute layouts lives here: where the embeddings, rotary
embedding, blocks and final norm sit in dinoscope's plain-torch DINOv3 ViT (which mirrors
transformers' layout), transformers' DINOv3 ViT (4.56 and 5.x), DINOv2 (with or without
registers) and DINOv3 ConvNeXt.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from .vit import rotate


def query_attention(query, keys, scale: float) -> torch.Tensor:
    """softmax(q . k / sqrt(d)) for one query: q (H, d), keys (H, T, d) -> (H, T) weights, computed in float32."""
    logits = torch.einsum("hd,htd->ht", query.float(), keys.float()) * scale
    return torch.softmax(logits, dim=-1)


class ViTAdapter:
    """A vision transformer: embeddings (+ RoPE for DINOv3), a list of blocks, a final norm.

    The tokens are [CLS, registers, patches]; RoPE (DINOv3 only) rotates the patch tokens' queries
    and keys, never CLS or the registers.
    """

    def __init__(self, module, *, embeddings, rope, blocks, norm, num_registers: int, patch_size: int, heads: int):
        self.module = module
        self.embeddings, self.rope, self.blocks, self.norm = embeddings, rope, blocks, norm
        self.num_registers, self.patch_size, self.heads = num_registers, patch_size, heads

    def require_attention(self) -> None:
        """Nothing to check: every ViT has attention."""

    def _prepare(self, pixels):
        p = next(self.module.parameters())
        return pixels.to(device=p.device, dtype=p.dtype)

    def _walk(self, pixels, wanted: Sequence[int], inputs: bool = False):
        """{block: its output} (or, with `inputs`, its input) for the wanted blocks, and the RoPE (cos, sin) or None.

        Runs no further than needed: through the deepest wanted block, or up to it for inputs.
        """
        hidden = self.embeddings(pixels)
        position = self.rope(pixels) if self.rope is not None else None
        keep = {}
        for i, block in enumerate(self.blocks):
            if inputs and i in wanted:
                keep[i] = hidden
                if i == wanted[-1]:
                    break
            hidden = block(hidden, position_embeddings=position) if position is not None else block(hidden)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            if not inputs and i in wanted:
                keep[i] = hidden
                if i == wanted[-1]:
                    break
        return keep, position

    def forward_intermediates(self, pixels, blocks: Sequence[int], norm: bool = True) -> list[tuple]:
        rows, cols = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        r = self.num_registers
        outputs = []
        with torch.inference_mode():
            states, _ = self._walk(self._prepare(pixels), sorted(set(blocks)))
            for b in blocks:
                h = self.norm(states[b]) if norm else states[b]
                h = h.float().cpu()
                outputs.append((h[:, 0], h[:, 1:1 + r], h[:, 1 + r:].reshape(h.shape[0], rows, cols, -1)))
        return outputs

    def attention_rows(self, pixels, block: int, queries: Sequence[int]) -> list[torch.Tensor]:
        """For one image (pixels (1, 3, H, W)): per query (-1 = CLS, else a patch index) its (H, T) weights."""
        r = self.num_registers
        tokens = [0 if q < 0 else 1 + r + q for q in queries]
        with torch.inference_mode():
            states, position = self._walk(self._prepare(pixels), [block], inputs=True)
            layer = self.blocks[block]
            attn = layer.attention
            x = layer.norm1(states[block])[0]  # (T, D)
            head_dim = attn.q_proj.out_features // self.heads
            k = attn.k_proj(x).view(-1, self.heads, head_dim).transpose(0, 1)  # (H, T, d)
            q = attn.q_proj(x[tokens]).view(len(tokens), self.heads, head_dim).transpose(0, 1)  # (H, Q, d)
            if position is not None:  # RoPE rotates patch tokens only; CLS and registers pass as they are
                cos, sin = position
                k = torch.cat([k[:, :1 + r], rotate(k[:, 1 + r:], cos, sin)], dim=1)
                for j, t in enumerate(tokens):
                    if t >= 1 + r:
                        q[:, j] = rotate(q[:, j:j + 1], cos[t - 1 - r:t - r], sin[t - 1 - r:t - r])[:, 0]
            return [query_attention(q[:, j], k, head_dim ** -0.5).cpu() for j in range(len(tokens))]


class ConvNeXtAdapter:
    """A DINOv3 ConvNeXt: four stages, no tokens beyond the map and no attention.

    Its "blocks" are the stages: earlier stages are average-pooled onto the stride-32 grid of
    the last one, and the mean of the map stands in for CLS (as the transformers model's pooled
    output does). The final norm belongs to the last stage; earlier stages (other widths) are
    returned as they are.
    """

    def __init__(self, module, *, source: str, patch_size: int = 32):
        self.module = module
        self.source = source
        self.patch_size = patch_size
        self.num_registers = 0

    def require_attention(self) -> None:
        raise InputError(f"{self.source} is a ConvNeXt: it has no transformer blocks or attention; use a ViT model")

    def forward_intermediates(self, pixels, blocks: Sequence[int], norm: bool = True) -> list[tuple]:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        p = next(self.module.parameters())
        with torch.inference_mode():
            states = self._stage_outputs(pixels.to(device=p.device, dtype=p.dtype), sorted(set(blocks)))
            return [self._tokens(states[b], norm, grid) for b in blocks]

    def attention_rows(self, pixels, block: int, queries: Sequence[int]) -> list[torch.Tensor]:
        self.require_attention()
        return []

    def _stage_outputs(self, pixels, wanted: Sequence[int]):
        keep = {}
        hidden = pixels
        for i, stage in enumerate(self.module.model.stages):
            if i > wanted[-1]:
                break
            hidden = stage(hidden)
            if i in wanted:
                keep[i] = hidden
        return keep

    def _tokens(self, h, norm: bool, grid: tuple[int, int]):
        if tuple(h.shape[-2:]) != grid:
            h = torch.nn.functional.adaptive_avg_pool2d(h, grid)
        patches = h.permute(0, 2, 3, 1)
        pooled = patches.mean(dim=(1, 2))
        final_norm = self.module.layer_norm
        if norm and final_norm.normalized_shape[0] == patches.shape[-1]:
            patches, pooled = final_norm(patches), final_norm(pooled)
        empty = torch.zeros(h.shape[0], 0, patches.shape[-1])
        return pooled.float().cpu(), empty, patches.float().cpu()


def adapter_for(module, kind: str, *, source: str, num_registers: int, patch_size: int):
    """The adapter of a loaded model of family `kind` ("vit", "dinov2" or "convnext")."""
    if kind == "convnext":
        return ConvNeXtAdapter(module, source=source, patch_size=patch_size)
    heads = module.config.num_attention_heads
    common = dict(num_registers=num_registers, patch_size=patch_size, heads=heads)
    if kind == "vit":  # dinoscope's plain-torch model and transformers 5.x keep blocks under .model; 4.56 on the module
        blocks = module.model.layer if hasattr(module, "model") else module.layer
        return ViTAdapter(module, embeddings=module.embeddings, rope=module.rope_embeddings, blocks=blocks,
                          norm=module.norm, **common)
    if kind == "dinov2":
        return ViTAdapter(module, embeddings=module.embeddings, rope=None, blocks=module.encoder.layer,
                          norm=module.layernorm, **common)
    raise InputError(f"{source} is a {kind!r} model; dinoscope runs DINOv3 ViT, DINOv3 ConvNeXt and DINOv2 models")
