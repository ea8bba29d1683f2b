"""Every family (DINOv3 ViT, DINOv3 ConvNeXt, DINOv2, DINOv2 with registers) through the loader,
every analysis, layer selection and attention; the registry; and the loader's errors.

All models are tiny, random and built from configs: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import DEFAULT_ID, build_vit, run_cli

FAMILIES = ("vit", "convnext", "dinov2", "dinov2reg")
VITS = ("vit", "dinov2", "dinov2reg")


def _perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # random init leaves norms and scales trivial: make every weight matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def build(family: str, seed: int = 0):
    from transformers import (DINOv3ConvNextConfig, DINOv3ConvNextModel, Dinov2Config, Dinov2Model,
                              Dinov2WithRegistersConfig, Dinov2WithRegistersModel)

    torch.manual_seed(seed)
    if family == "vit":
        return build_vit(seed, num_hidden_layers=3, num_register_tokens=3)
    if family == "convnext":
        return _perturb(DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])),
                        seed)
    small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, patch_size=14, image_size=56)
    if family == "dinov2":
        return _perturb(Dinov2Model(Dinov2Config(**small)), seed)
    return _perturb(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small, num_register_tokens=2)), seed)


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    dirs = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        build(family).save_pretrained(folder)
        dirs[family] = folder
    return dirs


@pytest.fixture(scope="session")
def backbones(family_dirs):
    from dinoscope.models import load_model

    return {f: load_model(d, device="cpu") for f, d in family_dirs.items()}


@pytest.fixture(scope="session")
def photos():
    from dinoscope.images import load_image

    return load_image("sample:chelsea").resize((100, 70)), load_image("sample:coffee").resize((90, 80))


def _pixels(backbone, h_cells=3, w_cells=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, h_cells * backbone.patch_size, w_cells * backbone.patch_size, generator=g)


# ------------------------------------------------------------------------------------------------
# every family through every analysis


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_description(backbones, family):
    b = backbones[family]
    expected = {"vit": ("vit", 16, 3, 3), "convnext": ("convnext", 32, 0, 4), "dinov2": ("dinov2", 14, 0, 3),
                "dinov2reg": ("dinov2", 14, 2, 3)}[family]
    assert (b.kind, b.patch_size, b.num_registers, b.num_layers) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_equal_the_transformers_output(backbones, family_dirs, family):
    from transformers import AutoModel

    from dinoscope.features import forward_tokens

    b = backbones[family]
    px = _pixels(b)
    cls, regs, patches = forward_tokens(b, px, [-1 % b.num_layers], True)[0]
    with torch.no_grad():  # transformers' own model, whichever implementation dinoscope loaded
        ref = AutoModel.from_pretrained(family_dirs[family]).eval()(pixel_values=px).last_hidden_state
    r = b.num_registers
    assert patches.shape == (1, 3, 4, b.hidden_size) and regs.shape == (1, r, b.hidden_size)
    assert torch.allclose(cls, ref[:, 0], atol=1e-5)
    assert torch.allclose(regs, ref[:, 1:1 + r], atol=1e-5)
    assert torch.allclose(patches.reshape(1, 12, -1), ref[:, 1 + r:], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_analysis_runs_on_every_family(backbones, photos, family):
    from dinoscope.analyses import CLS, PCABasis, match_patches, patch_norms, similarity_map
    from dinoscope.features import extract_attention, extract_batch
    from dinoscope.geometry import Resolution
    from dinoscope.views import attention_view, matches_view, norms_view, pca_view, similarity_view

    b = backbones[family]
    res = Resolution("short", 3 * b.patch_size)
    (fa,), (fb,) = extract_batch(b, list(photos), resolution=res)
    assert fa.geometry.patch_size == b.patch_size and fa.geometry.rows == 3
    assert fa.registers.shape[0] == b.num_registers
    assert patch_norms(fa).shape == fa.geometry.grid
    assert PCABasis.fit([fa, fb], 3).transform(fb).shape == (*fb.geometry.grid, 3)
    sims = similarity_map(fa, CLS)
    assert sims.shape == fa.geometry.grid and float(sims.max()) <= 1.0
    matches = match_patches(fa, fb)
    assert len(matches) == min(fa.geometry.num_patches, fb.geometry.num_patches)
    for picture in (norms_view(fa, photos[0]), pca_view(fa), similarity_view(fa, 0, photos[0]),
                    matches_view(fa, fb, *photos)[0].crop((0, 0, 100, 70))):
        assert picture.size == photos[0].size
    if family == "convnext":
        from dinoscope.errors import InputError

        with pytest.raises(InputError, match="ConvNeXt"):
            extract_attention(b, photos[0], resolution=res)
        return
    att = extract_attention(b, photos[0], resolution=res)
    assert att.patches.shape == (4, *fa.geometry.grid) and att.registers.shape == (4, b.num_registers)
    total = att.cls + att.registers.sum(-1) + att.patches.sum((-2, -1))
    assert torch.allclose(total, torch.ones(4), atol=1e-5)
    picture = attention_view(att, photos[0])
    assert picture.width > photos[0].width and picture.height > photos[0].height  # mean + 4 heads, tiled


# ------------------------------------------------------------------------------------------------
# layers


@pytest.mark.parametrize("family", VITS)
def test_layer_selection_equals_output_hidden_states(backbones, family):
    from dinoscope.features import forward_tokens

    b = backbones[family]
    px = _pixels(b)
    with torch.no_grad():
        out = b.module(pixel_values=px, output_hidden_states=True)
    r = b.num_registers
    layers = [0, 1, -1, -2]
    raw = forward_tokens(b, px, [b.layer_index(i) for i in layers], False)
    for i, (cls, _regs, patches) in zip(layers, raw):
        ref = out.hidden_states[b.layer_index(i) + 1]
        assert torch.allclose(cls, ref[:, 0], atol=1e-5)
        assert torch.allclose(patches.reshape(1, 12, -1), ref[:, 1 + r:], atol=1e-5)
    normed_last = forward_tokens(b, px, [b.num_layers - 1], True)[0][2]
    assert torch.allclose(normed_last.reshape(1, 12, -1), out.last_hidden_state[:, 1 + r:], atol=1e-5)
    assert not torch.allclose(raw[0][2], raw[2][2])  # layers really differ


def test_convnext_stages_pool_onto_the_output_grid(backbones):
    from dinoscope.features import forward_tokens

    b = backbones["convnext"]
    px = _pixels(b)
    with torch.no_grad():
        stage1 = b.module.model.stages[1](b.module.model.stages[0](px))  # stride 8: a 12 x 16 map
    cls, regs, patches = forward_tokens(b, px, [1], True)[0]
    assert stage1.shape[-2:] == (12, 16) and patches.shape == (1, 3, 4, 16)
    block = stage1[0, :, 4:8, 8:12].mean(dim=(1, 2))  # cell (1, 2) averages a 4 x 4 block
    assert torch.allclose(patches[0, 1, 2], block, atol=1e-5)  # earlier stages are not normed (other width)
    assert torch.allclose(cls[0], stage1[0].mean(dim=(1, 2)), atol=1e-5)


def test_negative_and_out_of_range_layers(backbones):
    from dinoscope.errors import InputError

    b = backbones["vit"]
    assert b.layer_index(-1) == 2 and b.layer_index(-3) == 0
    with pytest.raises(InputError, match="3 blocks"):
        b.layer_index(3)


def test_extract_layers_one_pass_matches_single_layer_extraction(backbones, photos):
    from dinoscope.features import extract, extract_layers
    from dinoscope.geometry import Resolution
    from dinoscope.views import layers_view

    b = backbones["dinov2reg"]
    res = Resolution("short", 42)
    several = extract_layers(b, photos[0], resolution=res, layers=[0, -1], normed=False)
    single = extract(b, photos[0], resolution=res, layer=0, normed=False)
    assert torch.equal(several[0].patches, single.patches) and several[1].layer == 2
    picture = layers_view(several, photos[0])
    assert picture.width >= 3 * photos[0].width  # photo + one panel per layer


# ------------------------------------------------------------------------------------------------
# attention against transformers' eager attention weights


@pytest.mark.parametrize("family", VITS)
def test_attention_matches_eager_weights(family_dirs, backbones, family):
    from dinoscope.features import attention_rows
    from dinoscope.geometry import Geometry, Resolution
    from dinoscope.models import load_model

    b = backbones[family]
    eager = load_model(family_dirs[family], device="cpu", attention="eager")
    px = _pixels(b)
    with torch.no_grad():
        ref = eager.module(pixel_values=px, output_attentions=True).attentions
    geometry = Geometry.for_image(px.shape[-1], px.shape[-2], b.patch_size, Resolution())[0]
    r = b.num_registers
    for layer in (0, b.num_layers - 1):
        cls_att, patch_att = attention_rows(b, px, layer, [-1, 5], geometry)
        for att, token in ((cls_att, 0), (patch_att, 1 + r + 5)):
            row = ref[layer][0, :, token]  # (H, T)
            assert torch.allclose(att.cls, row[:, 0], atol=1e-6)
            assert torch.allclose(att.registers, row[:, 1:1 + r], atol=1e-6)
            assert torch.allclose(att.patches.reshape(4, -1), row[:, 1 + r:], atol=1e-6)
    assert not torch.allclose(cls_att.patches, patch_att.patches)


def test_attention_query_kinds_and_register_share(backbones, photos):
    from dinoscope.analyses import Patch, Pixel, attention_map, register_share
    from dinoscope.errors import InputError
    from dinoscope.features import extract_attention
    from dinoscope.geometry import Resolution

    b = backbones["vit"]
    res = Resolution("short", 48)
    by_cell = extract_attention(b, photos[0], query=Patch(1, 2), resolution=res)
    by_index = extract_attention(b, photos[0], query=by_cell.geometry.index(1, 2), resolution=res)
    x0, y0, x1, y1 = by_cell.geometry.box(by_cell.query)
    by_pixel = extract_attention(b, photos[0], query=Pixel((x0 + x1) / 2, (y0 + y1) / 2), resolution=res)
    assert by_cell.query == by_index.query == by_pixel.query
    assert torch.equal(by_cell.patches, by_pixel.patches)
    share = register_share(by_cell)
    assert share.shape == (4,) and torch.allclose(share.mean(), torch.tensor(by_cell.shares()["registers"]))
    assert torch.allclose(attention_map(by_cell), by_cell.patches.mean(0))
    with pytest.raises(InputError, match="4 heads"):
        attention_map(by_cell, 4)


# ------------------------------------------------------------------------------------------------
# registry


def test_registry_entries():
    from dinoscope.models.registry import MODELS, SAT_MEAN, SAT_STD, closest, lookup

    names = {"vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16", "convnext-tiny", "convnext-small",
             "convnext-base", "convnext-large", "vitl16-sat", "vit7b16-sat"}
    assert names <= set(MODELS)
    assert len({m.hub_id for m in MODELS.values()}) == len(MODELS)
    for m in MODELS.values():
        assert m.patch_size == {"dinov3-vit": 16, "dinov3-convnext": 32, "dinov2": 14}[m.family]
        assert m.memory("float32") == 2 * m.memory("bfloat16")
        assert (m.mean, m.std) == ((SAT_MEAN, SAT_STD) if m.name.endswith("-sat") else
                                   ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        assert m.family != "dinov3-vit" or m.registers == 4
    assert lookup("VITB16").hub_id == DEFAULT_ID and lookup(DEFAULT_ID.upper()).name == "vitb16"
    assert lookup("facebook/dinov2-with-registers-small").registers == 4
    assert lookup("nope") is None
    assert closest("vitb14")[0] in ("vitb16", "vits16")
    assert "convnext-tiny" in closest("convnext-tiy")


def test_models_command_lists_everything(capsys):
    from dinoscope.cli import main
    from dinoscope.models.registry import MODELS

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for m in MODELS.values():
        assert m.name in out and m.hub_id in out
    assert "32.2 GB" in out and "16.1 GB" in out  # 7B: 6.7B parameters x 4 / 2 bytes x 1.2 headroom


# ------------------------------------------------------------------------------------------------
# the loader on every kind of source


@pytest.mark.slow
def test_short_name_and_hub_id_from_the_cache(offline_hub_vitb16):
    from dinoscope.models import load_model

    by_name = load_model("vitb16", device="cpu")
    by_id = load_model(DEFAULT_ID, device="cpu")
    assert by_name.revision == by_id.revision == "0123456789abcdef0123456789abcdef01234567"
    assert by_name.hidden_size == 768 and by_name.source == "vitb16"


def test_sat_models_get_their_normalisation(tiny_model_dir, monkeypatch, tmp_path):
    from dinoscope.models import loading
    from dinoscope.models.official import transformers_to_official
    from dinoscope.models.registry import SAT_MEAN, SAT_STD

    asked = []
    monkeypatch.setattr(loading, "_download", lambda repo: (asked.append(repo), (tiny_model_dir, "rev"))[1])
    sat = loading.load_model("vitl16-sat", device="cpu")
    assert asked == ["facebook/dinov3-vitl16-pretrain-sat493m"]
    assert (sat.mean, sat.std) == (SAT_MEAN, SAT_STD)
    plain = loading.load_model("vitl16", device="cpu")
    assert plain.mean == (0.485, 0.456, 0.406)
    model = build_vit(2)
    path = tmp_path / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"
    torch.save(transformers_to_official(model), path)
    assert loading.load_model(path, device="cpu").mean == SAT_MEAN


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_official_checkpoint_through_the_loader_equals_the_source(tmp_path, suffix):
    from safetensors.torch import save_file

    from dinoscope.features import forward_tokens
    from dinoscope.models import load_model
    from dinoscope.models.official import transformers_to_official

    source = build_vit(3, hidden_size=96, num_attention_heads=3, num_hidden_layers=3, num_register_tokens=2,
                       intermediate_size=160, use_gated_mlp=True, hidden_act="silu")
    sd = transformers_to_official(source)
    path = tmp_path / f"renamed{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))
    b = load_model(path, device="cpu")
    assert (b.kind, b.hidden_size, b.num_layers, b.num_registers) == ("vit", 96, 3, 2)
    assert b.revision.startswith("file-")
    px = _pixels(b)
    with torch.no_grad():
        ref = source(pixel_values=px).last_hidden_state
    cls, regs, patches = forward_tokens(b, px, [2], True)[0]
    assert (patches.reshape(1, 12, -1) - ref[:, 3:]).abs().max() < 1e-5
    assert (cls - ref[:, 0]).abs().max() < 1e-5


def test_transformers_safetensors_with_its_config(tmp_path, tiny_model_dir):
    import shutil

    from dinoscope.models import load_model

    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    shutil.copy(tiny_model_dir / "model.safetensors", tmp_path / "weights.safetensors")
    b = load_model(tmp_path / "weights.safetensors", device="cpu")
    ref = load_model(tiny_model_dir, device="cpu")
    for (k, v), (k2, v2) in zip(sorted(b.module.state_dict().items()), sorted(ref.module.state_dict().items())):
        assert k == k2 and torch.equal(v, v2)


def test_official_convnext_checkpoint(tmp_path, backbones):
    from dinoscope.models import load_model
    from dinoscope.models.official import transformers_to_official

    source = backbones["convnext"].module
    torch.save(transformers_to_official(source), tmp_path / "cnx.pth")
    b = load_model(tmp_path / "cnx.pth", device="cpu")
    assert (b.kind, b.patch_size, b.hidden_size) == ("convnext", 32, 32)
    px = _pixels(b)
    with torch.no_grad():
        assert (b.module(pixel_values=px).last_hidden_state - source(pixel_values=px).last_hidden_state).abs().max() < 1e-5


def test_bfloat16_load(family_dirs):
    from dinoscope.models import load_model

    assert load_model(family_dirs["dinov2"], device="cpu", dtype="bf16").dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# errors that say what to do


def _one_line(exc) -> str:
    text = str(exc.value if hasattr(exc, "value") else exc)
    assert text and "\n" not in text
    return text


def test_unknown_name_lists_the_closest(offline_hub):
    from dinoscope.errors import ModelError
    from dinoscope.models import load_model

    with pytest.raises(ModelError) as exc:
        load_model("vitb16plus", device="cpu")
    text = _one_line(exc)
    assert "vitb16" in text and "dinoscope models" in text
    with pytest.raises(ModelError, match="no file or folder") as exc:
        load_model("./missing/dinov3.pth", device="cpu")
    _one_line(exc)


def _raise_from_hub(monkeypatch, exc):
    import huggingface_hub

    def fake(*args, **kwargs):
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)


def _http_error(cls, status, message="denied"):
    """A hub error with an HTTP response, in whichever HTTP library this huggingface_hub uses."""
    import importlib

    for name in ("httpx2", "httpx"):
        try:
            http = importlib.import_module(name)
        except ImportError:
            continue
        response = http.Response(status, request=http.Request("GET", "https://huggingface.co/api/models/x"))
        return cls(message, response=response)
    import requests  # huggingface_hub before 1.0

    response = requests.Response()
    response.status_code = status
    return cls(message, response=response)


@pytest.mark.parametrize("status", [401, 403])
def test_gated_access_names_the_licence_page_and_login(monkeypatch, status):
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    from dinoscope.errors import ModelError
    from dinoscope.models import load_model

    for error in (_http_error(GatedRepoError, status), _http_error(HfHubHTTPError, status)):
        _raise_from_hub(monkeypatch, error)
        with pytest.raises(ModelError) as exc:
            load_model("vits16", device="cpu")
        text = _one_line(exc)
        assert "https://huggingface.co/facebook/dinov3-vits16-pretrain-lvd1689m" in text
        assert "hf auth login" in text and "checkpoint file" in text


def test_unknown_hub_repo_lists_the_closest(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    from dinoscope.errors import ModelError
    from dinoscope.models import load_model

    _raise_from_hub(monkeypatch, _http_error(RepositoryNotFoundError, 404))
    with pytest.raises(ModelError) as exc:
        load_model("facebook/dinov3-vitb16-pretrain", device="cpu")
    text = _one_line(exc)
    assert "was not found" in text and "facebook/dinov3-vitb16-pretrain-lvd1689m" in text


def test_offline_with_nothing_cached_names_the_alternatives(offline_hub):
    from dinoscope.errors import ModelError
    from dinoscope.models import load_model

    with pytest.raises(ModelError) as exc:
        load_model("convnext-tiny", device="cpu")
    text = _one_line(exc)
    assert "not in the Hugging Face cache" in text and "local folder" in text and "checkpoint file" in text


def test_too_large_model_is_refused_up_front(monkeypatch, family_dirs):
    from dinoscope.errors import ModelError
    from dinoscope.models import loading

    def no_download(repo):
        raise AssertionError("the memory check must come before any download")

    monkeypatch.setattr(loading, "_download", no_download)
    monkeypatch.setattr(loading, "available_memory", lambda device: 8 * 10**9)
    with pytest.raises(ModelError) as exc:
        loading.load_model("vit7b16", device="cpu")
    text = _one_line(exc)
    assert "6.7B parameters" in text and "32.2 GB" in text and "8.0 GB" in text and "bfloat16" in text
    with pytest.raises(ModelError, match="16.1 GB in bfloat16"):
        loading.load_model("vit7b16", device="cpu", dtype="bfloat16")
    monkeypatch.setattr(loading, "available_memory", lambda device: 1000)  # local folders are counted too
    with pytest.raises(ModelError, match="parameters and needs about"):
        loading.load_model(family_dirs["vit"], device="cpu")


def test_available_memory_reads_the_system():
    from dinoscope.models import available_memory

    free = available_memory(torch.device("cpu"))
    assert free is None or free > 0
    if Path("/proc/meminfo").exists():
        assert free is not None


def test_cli_refuses_a_large_model_with_exit_2(monkeypatch, capsys):
    from dinoscope.cli import main
    from dinoscope.models import loading

    monkeypatch.setattr(loading, "available_memory", lambda device: 10**9)
    assert main(["norms", "--model", "vith16plus", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4.0 GB" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# the command line (as users run it: a subprocess on the worktree code)


@pytest.mark.slow
def test_cli_unknown_model_and_offline_errors(hf_home, tmp_path):
    for args, expected in ((["norms", "-m", "vitb61"], "closest known names: vitb16"),
                           (["pca", "-m", "dinov2-small"], "not in the Hugging Face cache")):
        run = run_cli(*args, "--device", "cpu", "-o", str(tmp_path), hf_home=hf_home)
        assert run.returncode == 2, run.stderr
        assert run.stderr.count("\n") == 1 and expected in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_cli_attention_and_layers(family_dirs, tmp_path):
    from PIL import Image

    run = run_cli("attention", "sample:chelsea", "-m", str(family_dirs["vit"]), "--device", "cpu", "-r", "short:64",
               "--layer", "-2", "--cell", "1,1", "-o", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "layer 1, query patch" in run.stdout and "to the 3 registers" in run.stdout
    assert "register share per head" in run.stdout
    assert Image.open(tmp_path / "chelsea_attention_L1.png").width > 0
    run = run_cli("layers", "sample:chelsea", "-m", str(family_dirs["convnext"]), "--device", "cpu", "-r", "short:64",
               "--layers", "1,-1", "--show", "norms", "-o", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "chelsea_layers_norms.png").exists()


def test_cli_layer_and_attention_refusals(family_dirs, capsys, tmp_path):
    from dinoscope.cli import main

    assert main(["attention", "-m", str(family_dirs["convnext"]), "--device", "cpu", "-o", str(tmp_path)]) == 2
    assert "ConvNeXt" in capsys.readouterr().err
    assert main(["layers", "-m", str(family_dirs["vit"]), "--device", "cpu", "--layers", "0,7", "-o",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "layer 7 does not exist" in err and err.count("\n") == 1
    assert main(["layers", "--layers", "a,b", "-o", str(tmp_path)]) == 2
    assert "3,6,9,-1" in capsys.readouterr().err
