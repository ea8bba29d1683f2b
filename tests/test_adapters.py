"""The model adapter contract (models/adapters.py), family by family, against each model's own outputs.

Every family must give, per requested block, (cls (B, D), registers (B, R, D), patches (B, rows, cols, D))
equal to the model's hidden states (norm off) or to its final norm applied to them (norm on), in the
order the blocks were asked for, stopping at the deepest; and attention rows that are proper
distributions over [CLS, registers, patches]. Tiny random models built from configs; nothing downloaded.
"""

from __future__ import annotations

import pytest
import torch

from dinoscope.errors import InputError
from dinoscope.models import load_model
from dinoscope.models.adapters import ConvNeXtAdapter, ViTAdapter
from dinoscope.models.vit import DINOv3ViT

FAMILIES = ("vit-torch", "vit-transformers", "dinov2", "dinov2reg", "convnext")


def _perturb(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random init leaves norms and layer scales trivial: make every weight matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _build(family: str):
    from transformers import (DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel,
                              Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel)

    torch.manual_seed(0)
    if family.startswith("vit"):
        return _perturb(DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                       num_hidden_layers=3, num_register_tokens=2, patch_size=16)), 1)
    if family == "convnext":
        return _perturb(DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])), 1)
    small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, patch_size=14, image_size=56)
    if family == "dinov2":
        return _perturb(Dinov2Model(Dinov2Config(**small)), 1)
    return _perturb(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small, num_register_tokens=2)), 1)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """{family: (backbone, the transformers reference model)}."""
    found = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        reference = _build(family)
        reference.save_pretrained(folder)
        # sdpa takes dinoscope's plain-torch ViT where it can; eager forces transformers' own
        attention = "eager" if family in ("vit-transformers", "dinov2", "dinov2reg") else "sdpa"
        found[family] = load_model(folder, device="cpu", attention=attention), reference
    return found


def _pixels(patch_size: int, rows: int = 3, cols: int = 4, batch: int = 2):
    return torch.randn(batch, 3, rows * patch_size, cols * patch_size, generator=torch.Generator().manual_seed(7))


@pytest.mark.slow
def test_each_family_gets_its_adapter(loaded):
    assert isinstance(loaded["vit-torch"][0].module, DINOv3ViT)
    assert not isinstance(loaded["vit-transformers"][0].module, DINOv3ViT)
    for family in FAMILIES:
        expected = ConvNeXtAdapter if family == "convnext" else ViTAdapter
        assert isinstance(loaded[family][0].adapter, expected)


@pytest.mark.slow
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "convnext"])
def test_vit_intermediates_equal_the_hidden_states(loaded, family, norm):
    backbone, reference = loaded[family]
    px = _pixels(backbone.patch_size)
    with torch.no_grad():
        states = reference(pixel_values=px, output_hidden_states=True).hidden_states
    final_norm = reference.norm if family.startswith("vit") else reference.layernorm
    r = backbone.num_registers
    blocks = [2, 0, 1]  # any order, repeats of the deepest allowed; answers follow the request
    got = backbone.adapter.forward_intermediates(px, blocks, norm)
    assert len(got) == len(blocks)
    for block, (cls, registers, patches) in zip(blocks, got):
        with torch.no_grad():
            want = final_norm(states[block + 1]) if norm else states[block + 1]
        assert cls.dtype == torch.float32 and cls.device.type == "cpu"
        assert cls.shape == (2, 32) and registers.shape == (2, r, 32) and patches.shape == (2, 3, 4, 32)
        torch.testing.assert_close(cls, want[:, 0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(registers, want[:, 1:1 + r], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(patches.reshape(2, 12, -1), want[:, 1 + r:], atol=1e-5, rtol=1e-4)


def test_plain_torch_and_transformers_vit_agree(loaded):
    px = _pixels(16)
    for norm in (False, True):
        mine = loaded["vit-torch"][0].adapter.forward_intermediates(px, [0, 2], norm)
        theirs = loaded["vit-transformers"][0].adapter.forward_intermediates(px, [0, 2], norm)
        for a, b in zip(mine, theirs):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm", [False, True])
def test_convnext_intermediates_pool_stages_onto_the_output_grid(loaded, norm):
    backbone, reference = loaded["convnext"]
    px = _pixels(32)
    with torch.no_grad():
        out = reference(pixel_values=px, output_hidden_states=True)
    for stage in (0, 1, 3):
        (cls, registers, patches), = backbone.adapter.forward_intermediates(px, [stage], norm)
        state = out.hidden_states[stage + 1]  # (B, C, h, w), a multiple of the 3 x 4 output grid
        fy, fx = state.shape[-2] // 3, state.shape[-1] // 4
        want = state.unflatten(2, (3, fy)).unflatten(4, (4, fx)).mean(dim=(3, 5)).permute(0, 2, 3, 1)
        want_cls = want.mean(dim=(1, 2))
        if norm and stage == 3:  # the final norm is the last stage's; earlier stages have other widths
            want, want_cls = out.last_hidden_state[:, 1:].reshape(2, 3, 4, -1), out.last_hidden_state[:, 0]
        assert registers.shape == (2, 0, state.shape[1])
        torch.testing.assert_close(patches, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cls, want_cls, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "convnext"])
def test_attention_rows_are_distributions_per_head(loaded, family):
    backbone, _ = loaded[family]
    px = _pixels(backbone.patch_size, batch=1)
    rows = backbone.adapter.attention_rows(px, 1, [-1, 0, 11])
    assert len(rows) == 3
    for weights in rows:
        assert weights.shape == (4, 1 + backbone.num_registers + 12)
        torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    assert not torch.allclose(rows[0], rows[1])


def test_plain_torch_attention_rows_equal_transformers(loaded):
    px = _pixels(16, batch=1)
    for block in (0, 2):
        mine = loaded["vit-torch"][0].adapter.attention_rows(px, block, [-1, 5])
        theirs = loaded["vit-transformers"][0].adapter.attention_rows(px, block, [-1, 5])
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_convnext_has_no_attention(loaded):
    adapter = loaded["convnext"][0].adapter
    with pytest.raises(InputError, match="ConvNeXt"):
        adapter.require_attention()
    with pytest.raises(InputError, match="ConvNeXt"):
        adapter.attention_rows(_pixels(32, batch=1), 0, [-1])
