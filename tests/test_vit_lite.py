"""The torch-only DINOv3 ViT (models/vit.py) gives transformers' numbers, so the fast path is the same model."""

import pytest
import torch

from helpers import build_vit
from dinoscope.features import extract_batch, forward_tokens
from dinoscope.models import load_model
from dinoscope.models.loading import describe
from dinoscope.models.vit import DINOv3ViT


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {},
    {"num_register_tokens": 0, "layerscale_value": 0.1},
    {"use_gated_mlp": True, "hidden_act": "silu", "intermediate_size": 96},
    {"query_bias": False, "value_bias": False, "proj_bias": False, "mlp_bias": False, "rope_theta": 1000.0},
    {"patch_size": 8, "num_hidden_layers": 3},
])
def test_same_tokens_as_transformers(overrides, tmp_path):
    reference = build_vit(3, **overrides)
    reference.save_pretrained(tmp_path)
    lite = load_model(tmp_path, device="cpu")
    assert isinstance(lite.module, DINOv3ViT)
    ref = describe(reference, source="ref", revision="r")
    pixels = torch.randn(2, 3, 5 * ref.patch_size, 7 * ref.patch_size)
    for normed in (True, False):
        for (a_cls, a_reg, a_patch), (b_cls, b_reg, b_patch) in zip(
                forward_tokens(lite, pixels, [0, ref.num_layers - 1], normed),
                forward_tokens(ref, pixels, [0, ref.num_layers - 1], normed)):
            torch.testing.assert_close(a_cls, b_cls, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(a_reg, b_reg, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(a_patch, b_patch, atol=2e-5, rtol=1e-5)
    with torch.inference_mode():
        expected = reference(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(forward_tokens(lite, pixels, [ref.num_layers - 1], True)[0][2].reshape(2, 35, -1),
                               expected[:, 1 + ref.num_registers:], atol=2e-5, rtol=1e-5)


def test_attention_and_bfloat16_work_on_the_lite_model(tiny_model_dir, tmp_path):
    from dinoscope.features import extract_attention
    from dinoscope.images import load_image

    lite = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert isinstance(lite.module, DINOv3ViT) and lite.dtype == torch.bfloat16
    image = load_image("sample:chelsea")
    feats = extract_batch(lite, [image])[0][0]
    assert feats.patches.dtype == torch.float32 and torch.isfinite(feats.patches).all()
    att = extract_attention(load_model(tiny_model_dir, device="cpu"), image, query=-1)
    eager = load_model(tiny_model_dir, device="cpu", attention="eager")  # transformers' own model
    assert not isinstance(eager.module, DINOv3ViT)
    ref = extract_attention(eager, image, query=-1)
    for name in ("cls", "registers", "patches"):
        torch.testing.assert_close(getattr(att, name), getattr(ref, name), atol=1e-5, rtol=1e-4)


def test_lite_model_is_callable_like_transformers(tiny_model_dir):
    from transformers import AutoModel

    lite = load_model(tiny_model_dir, device="cpu").module
    ref = AutoModel.from_pretrained(tiny_model_dir).eval()
    pixels = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        a, b = lite(pixel_values=pixels, output_hidden_states=True), ref(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=2e-5, rtol=1e-5)
    assert len(a.hidden_states) == len(b.hidden_states)
    torch.testing.assert_close(a.hidden_states[-1], b.hidden_states[-1], atol=2e-5, rtol=1e-5)
