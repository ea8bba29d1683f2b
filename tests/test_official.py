"""Official DINOv3 checkpoint layout <-> transformers models (dinoscope.models.official).

Random small models are exported to the official layout, written as .pth and .safetensors, read back
with nothing but the file, and must give the same features as the model they came from.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from dinoscope.errors import ModelError
from dinoscope.models import official as O

safetensors_torch = pytest.importorskip("safetensors.torch")


# ------------------------------------------------------------------------------------------------
# helpers


def make_vit(seed=0, **overrides):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    base = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                num_register_tokens=4, patch_size=16, key_bias=False, use_gated_mlp=False, rope_theta=100.0,
                layer_norm_eps=1e-5)
    base.update(overrides)
    base.setdefault("hidden_act", "silu" if base["use_gated_mlp"] else "gelu")
    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(**base)).eval()
    with torch.no_grad():  # random init leaves norms, biases and layer scale trivial: make every tensor matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def make_convnext(seed=0, layerscale=True, **overrides):
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    base = dict(hidden_sizes=[16, 24, 32, 40], depths=[1, 2, 1, 1])
    base.update(overrides)
    torch.manual_seed(seed)
    model = DINOv3ConvNextModel(DINOv3ConvNextConfig(**base)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") and not layerscale:
                p.fill_(1.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def features(model, height, width, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, height, width, generator=g)
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state


def max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def save_both(sd, folder, stem="ckpt"):
    pth, st = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
    torch.save(sd, pth)
    safetensors_torch.save_file(sd, str(st))
    return pth, st


# ------------------------------------------------------------------------------------------------
# ViT round trips over odd architectures

VIT_CASES = {
    "w64-h4-d1-r0-mlp-ls": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, num_register_tokens=0),
    "w96-h3-d3-r2-swiglu-ls": dict(hidden_size=96, num_attention_heads=3, num_hidden_layers=3,
                                   num_register_tokens=2, use_gated_mlp=True, intermediate_size=160),
    "w64-h2-d3-r4-swiglu-nols-p8": dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=3,
                                        num_register_tokens=4, use_gated_mlp=True, patch_size=8,
                                        layerscale=False),
    "w96-h6-d2-r4-mlp-nols-kbias": dict(hidden_size=96, num_attention_heads=6, num_hidden_layers=2,
                                        num_register_tokens=4, key_bias=True, layerscale=False),
    "w80-h5-d2-r1-theta1000-nobias": dict(hidden_size=80, num_attention_heads=5, num_hidden_layers=2,
                                          num_register_tokens=1, rope_theta=1000.0, query_bias=False,
                                          value_bias=False, proj_bias=False, mlp_bias=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(VIT_CASES))
def test_vit_round_trip_through_files(case, tmp_path):
    spec = dict(VIT_CASES[case])
    layerscale = spec.pop("layerscale", True)
    model = make_vit(seed=len(case), **spec)
    if not layerscale:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layer_scale" in name:
                    p.fill_(1.0)
    cfg = model.config
    official = O.transformers_to_official(model, layerscale=layerscale)

    keys = set(official)
    assert ("blocks.0.ls1.gamma" in keys) is layerscale
    assert ("storage_tokens" in keys) is (cfg.num_register_tokens > 0)
    has_bias = cfg.query_bias or cfg.value_bias or cfg.key_bias
    assert ("blocks.0.attn.qkv.bias" in keys) is has_bias
    assert ("blocks.0.attn.qkv.bias_mask" in keys) is (has_bias and not cfg.key_bias)
    assert official["rope_embed.periods"].numel() == cfg.hidden_size // cfg.num_attention_heads // 4
    assert O.detect_layout(official) == "official-vit"

    p = cfg.patch_size
    reference = features(model, 3 * p, 5 * p)
    for path in save_both(official, tmp_path):
        loaded = O.load_official_model(path)
        assert not loaded.training
        got = loaded.config
        for field in ("hidden_size", "num_attention_heads", "num_hidden_layers", "num_register_tokens",
                      "intermediate_size", "use_gated_mlp", "patch_size", "proj_bias", "mlp_bias", "key_bias"):
            assert getattr(got, field) == getattr(cfg, field), field
        assert got.rope_theta == pytest.approx(cfg.rope_theta)
        assert max_diff(features(loaded, 3 * p, 5 * p), reference) <= 1e-5


def test_official_key_names_match_the_official_code():
    """Names taken from facebookresearch/dinov3 (DinoVisionTransformer, SelfAttentionBlock, SelfAttention with
    LinearKMaskedBias, LayerScale, Mlp, PatchEmbed, RopePositionEmbedding) for a released-style ViT."""
    official = O.transformers_to_official(make_vit(num_hidden_layers=2, num_register_tokens=4))
    block0 = sorted(k for k in official if k.startswith("blocks.0."))
    assert block0 == sorted([
        "blocks.0.norm1.weight", "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.bias_mask",
        "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        "blocks.0.ls1.gamma",
        "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
        "blocks.0.ls2.gamma",
    ])
    rest = sorted(k for k in official if not k.startswith("blocks."))
    assert rest == sorted(["cls_token", "mask_token", "storage_tokens", "patch_embed.proj.weight",
                           "patch_embed.proj.bias", "rope_embed.periods", "norm.weight", "norm.bias"])
    assert official["cls_token"].shape == (1, 1, 64)
    assert official["mask_token"].shape == (1, 64)
    assert official["storage_tokens"].shape == (1, 4, 64)
    assert official["blocks.0.attn.qkv.weight"].shape == (192, 64)
    mask = official["blocks.0.attn.qkv.bias_mask"]
    assert mask[:64].eq(1).all() and mask[64:128].eq(0).all() and mask[128:].eq(1).all()
    periods = official["rope_embed.periods"]  # base 100, head_dim 16: 100 ** (4 i / 16)
    assert torch.allclose(periods, 100.0 ** (torch.arange(4.0) / 4))

    swiglu = O.transformers_to_official(make_vit(use_gated_mlp=True, intermediate_size=96))
    assert sorted(k for k in swiglu if k.startswith("blocks.0.mlp.")) == sorted(
        f"blocks.0.mlp.{n}.{p}" for n in ("w1", "w2", "w3") for p in ("weight", "bias"))


def test_official_gelu_and_swiglu_order_is_respected():
    """w1 is the gate (silu), w2 the value, w3 the output: swapping w1 and w2 must change the features."""
    model = make_vit(use_gated_mlp=True, intermediate_size=96)
    official = O.transformers_to_official(model)
    swapped = dict(official)
    swapped["blocks.0.mlp.w1.weight"], swapped["blocks.0.mlp.w2.weight"] = (
        official["blocks.0.mlp.w2.weight"], official["blocks.0.mlp.w1.weight"])
    swapped["blocks.0.mlp.w1.bias"], swapped["blocks.0.mlp.w2.bias"] = (
        official["blocks.0.mlp.w2.bias"], official["blocks.0.mlp.w1.bias"])
    ref = features(model, 32, 48)
    cfg, sd = O.official_to_transformers(official)
    assert cfg.hidden_act == "silu"
    assert max_diff(features(O.build_model(cfg, sd), 32, 48), ref) <= 1e-5
    cfg, sd = O.official_to_transformers(swapped)
    assert max_diff(features(O.build_model(cfg, sd), 32, 48), ref) > 1e-3


def test_masked_key_bias_is_ignored():
    """With a bias_mask the key third of qkv.bias never reaches the model, whatever it holds."""
    model = make_vit()
    official = O.transformers_to_official(model)
    bias = official["blocks.1.attn.qkv.bias"].clone()
    bias[64:128] = 5.0
    official["blocks.1.attn.qkv.bias"] = bias
    cfg, sd = O.official_to_transformers(official)
    assert cfg.key_bias is False
    assert max_diff(features(O.build_model(cfg, sd), 32, 48), features(model, 32, 48)) <= 1e-5
    # without the mask, the same bias is a real key bias
    del official["blocks.1.attn.qkv.bias_mask"]
    cfg, _ = O.official_to_transformers(official)
    assert cfg.key_bias is True


def test_training_only_keys_are_dropped_and_cls_norm_refused():
    official = O.transformers_to_official(make_vit())
    official["local_cls_norm.weight"] = torch.ones(64)
    official["local_cls_norm.bias"] = torch.zeros(64)
    cfg, sd = O.official_to_transformers(official)
    assert not any("local_cls_norm" in k or "periods" in k or "bias_mask" in k for k in sd)

    untied = dict(official, **{"cls_norm.weight": torch.full((64,), 2.0), "cls_norm.bias": torch.zeros(64)})
    with pytest.raises(ModelError, match="cls_norm") as info:
        O.official_to_transformers(untied)
    one_line(info.value)


def test_rope_theta_from_periods():
    official = O.transformers_to_official(make_vit(rope_theta=1000.0))
    assert O.infer_vit_config(official).rope_theta == 1000.0
    # a bfloat16 copy of the periods still gives the exact base
    low = dict(official, **{"rope_embed.periods": official["rope_embed.periods"].to(torch.bfloat16)})
    assert O.infer_vit_config(low).rope_theta == 1000.0
    # min/max-period RoPE cannot be expressed with rope_theta
    odd = dict(official, **{"rope_embed.periods": torch.linspace(0.5, 4.0, 4)})
    with pytest.raises(ModelError, match="periods") as info:
        O.infer_vit_config(odd)
    one_line(info.value)
    irregular = dict(official, **{"rope_embed.periods": torch.tensor([1.0, 3.0, 4.0, 100.0])})
    with pytest.raises(ModelError, match="periods"):
        O.infer_vit_config(irregular)


def test_heads_come_from_the_periods_not_the_width():
    a = O.infer_vit_config(O.transformers_to_official(make_vit(hidden_size=96, num_attention_heads=2)))
    b = O.infer_vit_config(O.transformers_to_official(make_vit(hidden_size=96, num_attention_heads=6)))
    assert (a.num_attention_heads, b.num_attention_heads) == (2, 6)


def test_dinov2_checkpoint_is_named_as_such():
    official = O.transformers_to_official(make_vit())
    del official["rope_embed.periods"]
    official["pos_embed"] = torch.zeros(1, 197, 64)
    with pytest.raises(ModelError, match="DINOv2"):
        O.official_to_transformers(official)


# ------------------------------------------------------------------------------------------------
# damaged, hostile and oddly named files


class _Payload:
    """Unpickling this object would call open(marker, "w") and so create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch-zip", "plain-pickle"])
def test_malicious_pickle_is_refused_and_not_run(writer, tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "dinov3_vits16_pretrain.pth"
    content = {"model": {"cls_token": torch.zeros(1, 1, 8), "evil": _Payload(marker)}}
    if writer == "torch-zip":
        torch.save(content, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(content, fh, protocol=2)
    assert not marker.exists()
    with pytest.raises(ModelError, match="refuses to unpickle code") as info:
        O.read_checkpoint(path)
    assert "safetensors" in one_line(info.value)
    with pytest.raises(ModelError, match="refuses to unpickle code"):
        O.load_official_model(path)
    assert not marker.exists()


def test_missing_block_key_is_named(tmp_path):
    official = O.transformers_to_official(make_vit(num_hidden_layers=3))
    del official["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ModelError, match=r"blocks\.1\.mlp\.fc2\.bias") as info:
        O.official_to_transformers(official)
    assert "missing 1 key" in one_line(info.value)
    pth, _ = save_both(official, tmp_path)
    with pytest.raises(ModelError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        O.load_official_model(pth)


def test_unexpected_and_misshaped_keys_are_named():
    official = O.transformers_to_official(make_vit())
    extra = dict(official, **{"blocks.0.attn.extra.weight": torch.zeros(3)})
    with pytest.raises(ModelError, match=r"unexpected key.*blocks\.0\.attn\.extra\.weight"):
        O.official_to_transformers(extra)
    bad = dict(official, **{"blocks.1.mlp.fc2.weight": torch.zeros(64, 100)})
    with pytest.raises(ModelError, match=r"fc2|down_proj") as info:
        O.official_to_transformers(bad)
    one_line(info.value)


def test_renamed_files_load_from_their_tensors(tmp_path):
    model = make_vit(hidden_size=96, num_attention_heads=3, num_register_tokens=2)
    official = O.transformers_to_official(model)
    pth, st = save_both(official, tmp_path, stem="x")
    # names that promise something else: the architecture must come from the tensors
    a = tmp_path / "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth"
    b = tmp_path / "dinov3_vitl16.safetensors"
    c = tmp_path / "weights.bin"
    d = tmp_path / "legacy.safetensors"
    st.rename(a)
    pth.rename(b)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in official.items()}}, c)
    torch.save(official, d, _use_new_zipfile_serialization=False)  # old pickle format under a misleading name
    ref = features(model, 48, 80)
    for path in (a, b, c, d):
        loaded = O.load_official_model(path)
        assert loaded.config.hidden_size == 96 and loaded.config.num_attention_heads == 3
        assert max_diff(features(loaded, 48, 80), ref) <= 1e-5


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        O.read_checkpoint(tmp_path / "nope.pth")
    one_line(info.value)
    with pytest.raises(ModelError, match="folder"):
        O.read_checkpoint(tmp_path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        O.read_checkpoint(empty)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError) as info:
        O.read_checkpoint(junk)
    one_line(info.value)
    notdict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), notdict)
    with pytest.raises(ModelError, match="not a state dict"):
        O.read_checkpoint(notdict)


@pytest.mark.parametrize("suffix,keep,match", [(".pth", 200, "not a readable PyTorch checkpoint"),
                                               (".safetensors", 60, "safetensors")])
def test_truncated_checkpoint_is_refused_in_one_line(tmp_path, suffix, keep, match):
    good, truncated = tmp_path / f"good{suffix}", tmp_path / f"truncated{suffix}"
    if suffix == ".pth":
        torch.save({"a": torch.zeros(100)}, good)
    else:
        safetensors_torch.save_file({"a": torch.zeros(100)}, str(good))
    truncated.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(ModelError, match=match) as info:
        O.read_checkpoint(truncated)
    one_line(info.value)


def test_containers_and_prefixes_are_unwrapped(tmp_path):
    sd = {"cls_token": torch.zeros(1, 1, 4), "blocks.0.attn.qkv.weight": torch.zeros(12, 4)}
    wrapped = {
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "teacher": {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                                "dino_head.mlp.0.weight": torch.zeros(2, 2)}, "iteration": 10},
        "student-teacher": {"model": {**{f"student.backbone.{k}": v + 1 for k, v in sd.items()},
                                      **{f"teacher.backbone.{k}": v for k, v in sd.items()}}},
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }
    for name, content in wrapped.items():
        path = tmp_path / f"{name}.pth"
        torch.save(content, path)
        got = O.read_checkpoint(path)
        assert set(got) == set(sd), name
        assert all(torch.equal(got[k], sd[k]) for k in sd), name


# ------------------------------------------------------------------------------------------------
# layouts and transformers versions


def test_detect_layout():
    vit = make_vit(num_hidden_layers=1)
    hf = vit.state_dict()
    official = O.transformers_to_official(vit)
    assert O.detect_layout(official) == "official-vit"
    assert O.detect_layout(hf) == "transformers-vit"
    # transformers 4.56 kept the blocks at "layer.N" (5.x: "model.layer.N"); wrappers add a prefix
    old = {k.replace("model.layer.", "layer."): v for k, v in hf.items()}
    assert O.detect_layout(old) == "transformers-vit"
    assert O.detect_layout({f"dinov3_vit.{k}": v for k, v in old.items()}) == "transformers-vit"
    cnx = make_convnext(depths=[1, 1, 1, 1])
    assert O.detect_layout(cnx.state_dict()) == "transformers-convnext"
    assert O.detect_layout(O.transformers_to_official(cnx)) == "official-convnext"
    with pytest.raises(ModelError, match="unrecognised.*encoder.weight") as info:
        O.detect_layout({"encoder.weight": torch.zeros(1), "decoder.bias": torch.zeros(1)})
    one_line(info.value)


def test_transformers_key_styles_export_the_same(tmp_path):
    model = make_vit()
    hf = model.state_dict()
    old = {k.replace("model.layer.", "layer."): v for k, v in hf.items()}
    prefixed = {f"dinov3_vit.{k}": v for k, v in old.items()}
    ref = O.transformers_to_official(model)
    for variant in (hf, old, prefixed):
        got = O.transformers_to_official(variant, model.config)
        assert set(got) == set(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ModelError, match="config"):
        O.transformers_to_official(hf)


def test_converted_keys_follow_the_installed_transformers():
    from transformers import DINOv3ViTModel

    official = O.transformers_to_official(make_vit())
    cfg, sd = O.official_to_transformers(official)
    assert set(sd) == set(DINOv3ViTModel(cfg).state_dict())
    DINOv3ViTModel(cfg).load_state_dict(sd, strict=True)


def test_transformers_file_with_config_loads(tmp_path):
    model = make_vit()
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ModelError, match="config.json"):
        O.load_official_model(path)
    model.config.to_json_file(str(tmp_path / "config.json"))
    loaded = O.load_official_model(path)
    assert max_diff(features(loaded, 32, 64), features(model, 32, 64)) <= 1e-5


def test_layerscale_false_needs_unit_scales():
    with pytest.raises(ModelError, match="layerscale=True"):
        O.transformers_to_official(make_vit(), layerscale=False)


def test_bfloat16_checkpoint_is_cast():
    official = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
                for k, v in O.transformers_to_official(make_vit()).items()}
    cfg, sd = O.official_to_transformers(official)
    assert O.build_model(cfg, sd).embeddings.cls_token.dtype == torch.float32
    assert O.build_model(cfg, sd, dtype=None).embeddings.cls_token.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# ConvNeXt


@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    dict(hidden_sizes=[16, 24, 32, 40], depths=[1, 2, 1, 1], layerscale=True),
    dict(hidden_sizes=[8, 16, 24, 32], depths=[2, 1, 3, 1], layerscale=False),
], ids=["ls", "no-ls"])
def test_convnext_round_trip_through_files(spec, tmp_path):
    spec = dict(spec)
    layerscale = spec.pop("layerscale")
    model = make_convnext(layerscale=layerscale, **spec)
    official = O.transformers_to_official(model, layerscale=layerscale)
    assert ("stages.0.0.gamma" in official) is layerscale
    assert {"downsample_layers.0.0.weight", "downsample_layers.0.1.weight", "downsample_layers.1.0.weight",
            "downsample_layers.1.1.weight", "stages.0.0.dwconv.weight", "stages.0.0.norm.weight",
            "stages.0.0.pwconv1.weight", "stages.0.0.pwconv2.weight", "norm.weight", "norms.3.weight"} <= set(official)
    cfg = O.infer_convnext_config(official)
    assert list(cfg.hidden_sizes) == spec["hidden_sizes"] and list(cfg.depths) == spec["depths"]
    reference = features(model, 96, 160)
    for path in save_both(official, tmp_path):
        loaded = O.load_official_model(path)
        assert max_diff(features(loaded, 96, 160), reference) <= 1e-5


def test_convnext_missing_key_is_named():
    official = O.transformers_to_official(make_convnext())
    del official["stages.1.1.pwconv1.bias"]
    with pytest.raises(ModelError, match=r"stages\.1\.1\.pwconv1\.bias") as info:
        O.official_to_transformers(official)
    one_line(info.value)
