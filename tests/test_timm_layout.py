"""timm's ungated copies of DINOv3, loaded by dinoscope's own modules.

Two kinds of check: tokens equal to timm's own model computed from the same file (timm runs in a
subprocess, installed by tests/tools/install_timm.py; skipped locally without it, a failure in CI),
and, without timm, tokens equal to the transformers model whose weights were renamed to timm's keys.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import build_vit, cli_env, run_cli
from dinoscope.errors import ModelError
from dinoscope.features import forward_tokens
from dinoscope.models import load_model, lookup
from dinoscope.models.loading import identify
from dinoscope.models.registry import MODELS, table
from timm_files import timm_state, write_timm_folder

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS / "tools"))
from install_timm import timm_dir  # noqa: E402

REFERENCE_CASES = ["vit", "vit_qkvb", "vit_splus", "vit_hplus_qkvb", "vit_7b", "convnext"]
TOLERANCE = 1e-4


def tokens_of(backbone, pixels) -> torch.Tensor:
    """[CLS, registers, patches row-major] after the final norm, as timm's forward_features orders them."""
    cls, registers, patches = forward_tokens(backbone, pixels, [backbone.num_layers - 1], True)[0]
    return torch.cat([cls[:, None], registers, patches.flatten(1, 2)], dim=1)


@pytest.fixture(scope="session")
def timm_references(tmp_path_factory) -> Path:
    site = timm_dir()
    if not (site / "timm" / "__init__.py").is_file():
        message = f"timm is not installed in {site}; run `python tests/tools/install_timm.py`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("timm-references")
    done = run_cli(TESTS / "timm_reference.py", out, module=None, env=cli_env(PYTHONPATH=str(site)))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_tokens_equal_timms_own_model(timm_references, case):
    folder = timm_references / case
    reference = load_file(str(folder / "reference.safetensors"))
    backbone = load_model(folder, device="cpu")
    assert backbone.kind == ("convnext" if case == "convnext" else "vit")
    assert "timm" not in sys.modules and "torchvision" not in sys.modules  # dinoscope's own modules did this
    ours = tokens_of(backbone, reference["pixels"])
    assert ours.shape == reference["tokens"].shape
    diff = (ours - reference["tokens"]).abs().max().item()
    print(f"{case}: max abs difference to timm {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("overrides, architecture", [
    (dict(), "vit_base_patch16_dinov3_qkvb"),
    (dict(query_bias=False, value_bias=False), "vit_base_patch16_dinov3"),
    (dict(use_gated_mlp=True, hidden_act="silu"), "vit_small_plus_patch16_dinov3_qkvb"),
])
def test_timm_layout_gives_the_tokens_of_the_model_it_was_renamed_from(overrides, architecture, tmp_path):
    model = build_vit(3, **overrides)
    folder = write_timm_folder(tmp_path / "copy", model, architecture, num_heads=model.config.num_attention_heads,
                               mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    backbone = load_model(folder, device="cpu")
    assert (backbone.mean, backbone.std) == ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))  # from pretrained_cfg
    assert backbone.num_registers == model.config.num_register_tokens
    pixels = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
    assert (tokens_of(backbone, pixels) - expected).abs().max().item() <= TOLERANCE
    assert identify(folder) == (backbone.revision, 16)


def test_single_timm_file_with_and_without_its_config(tmp_path):
    model = build_vit(4)
    folder = write_timm_folder(tmp_path / "with-config", model, "vit_base_patch16_dinov3_qkvb", num_heads=4)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
    got = tokens_of(load_model(folder / "model.safetensors", device="cpu"), pixels)
    assert (got - expected).abs().max().item() <= TOLERANCE
    bare = tmp_path / "bare.safetensors"  # width 64 is no released width: the heads cannot be known
    save_file(timm_state(model), str(bare))
    with pytest.raises(ModelError, match="number of attention heads"):
        load_model(bare, device="cpu")


def test_damaged_or_foreign_timm_folders_fail_clearly(tmp_path):
    model = build_vit(5)
    folder = write_timm_folder(tmp_path / "other", model, "vit_base_patch16_224", num_heads=4)
    with pytest.raises(ModelError, match="not a DINOv3 model"):
        load_model(folder, device="cpu")
    folder = write_timm_folder(tmp_path / "cut", model, "vit_base_patch16_dinov3_qkvb", num_heads=4)
    state = load_file(str(folder / "model.safetensors"))
    del state["blocks.1.attn.proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="blocks.1.attn.proj.weight"):
        load_model(folder, device="cpu")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors"):
        load_model(folder, device="cpu")


def test_every_dinov3_release_names_its_ungated_copy_and_both_ids_find_it():
    for spec in MODELS.values():
        if spec.family == "dinov2":
            assert not spec.gated and not spec.open_id
            continue
        assert spec.gated and spec.open_id.startswith("timm/") and "dinov3" in spec.open_id
        assert ("sat493m" in spec.open_id) == (spec.data == "SAT-493M")
        for ident in spec.ids:
            assert lookup(ident) is spec and lookup("hf-hub:" + ident.upper()) is spec
    assert lookup("timm/vit_base_patch16_dinov3.lvd1689m").name == "vitb16"  # the copy without q/v biases too
    assert lookup("timm/convnext_large.dinov3_lvd1689m").name == "convnext-large"
    text = table()
    assert "timm/vit_base_patch16_dinov3_qkvb.lvd1689m" in text
    assert "facebook/dinov3-vitb16-pretrain-lvd1689m *" in text and "facebook/dinov2-base *" not in text


def test_timm_config_identifies_the_patch_size_without_loading(tmp_path):
    for architecture, patch in [("convnext_tiny", 32), ("vit_7b_patch16_dinov3", 16)]:
        folder = tmp_path / architecture
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architecture": architecture}))
        assert identify(folder)[1] == patch
