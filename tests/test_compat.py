"""The reference project's interface is a contract: flags, file names, sizes, modes and API shapes."""


import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, SRC, cli_env, run_cli

def script(name, *args):
    return run_cli(*args, module=f"scripts.{name}", env=cli_env(PYTHONPATH=f"{SRC}:{ROOT}"), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (427, 640, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_reference_scripts_write_reference_files(tiny_model_dir, photo, tmp_path):
    common = ["--model_name", tiny_model_dir, "--output_dir", tmp_path, "--device", "cpu"]
    assert script("run_feat_len", "--input_path", photo, *common).returncode == 0
    assert script("run_pca", "--input_path", photo, *common).returncode == 0
    r = script("run_similarity", "--input_path", photo, "--patch_idx", "41", *common)
    assert r.returncode == 0, r.stderr
    r = script("run_matching", "--input_path1", photo, "--input_path2", "sample:chelsea", "--top_k", "25", *common)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "norm_feat_lens.png") as im:
        assert im.mode == "L" and im.size == (640, 427)
    with Image.open(tmp_path / "pca.png") as im:
        assert im.mode == "RGB" and im.size == (640, 427)
    with Image.open(tmp_path / "similarity.png") as im:
        assert im.size == (640, 427)
        a = np.asarray(im.convert("RGB"))
    red = (a[..., 0] == 255) & (a[..., 1] == 0) & (a[..., 2] == 0)
    ys, xs = np.nonzero(red)  # patch 41 of a 26x40 grid is row 1, col 1
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 31, 16, 31)
    with Image.open(tmp_path / "matching_vis.png") as im:
        assert im.size == (640 + 8 + 451, 427)


@pytest.mark.slow
def test_cls_query_draws_no_box(tiny_model_dir, photo, tmp_path):
    r = script("run_similarity", "--input_path", photo, "--patch_idx", "-1", "--model_name", tiny_model_dir,
               "--output_dir", tmp_path)
    assert r.returncode == 0, r.stderr
    a = np.asarray(Image.open(tmp_path / "similarity.png").convert("RGB"))
    assert not ((a[..., 0] == 255) & (a[..., 1] == 0) & (a[..., 2] == 0)).any()


@pytest.mark.slow
def test_reference_scripts_fail_cleanly(tiny_model_dir, tmp_path):
    r = script("run_similarity", "--patch_idx", "5000", "--model_name", tiny_model_dir, "--output_dir", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "outside" in r.stderr
    r = script("run_matching", "--out_name", "../escape.png", "--model_name", tiny_model_dir, "--output_dir", tmp_path)
    assert r.returncode == 2 and "plain file name" in r.stderr
    r = script("run_similarity", "--model_name", tiny_model_dir)
    assert r.returncode == 2 and "--patch_idx" in r.stderr  # required, as in the reference
    assert not any(tmp_path.iterdir())


def test_reference_api_shapes(tiny_backbone, photo):
    from dinoscope import (FeaturesLengthExperiment, MatchingExperiment, PCAExperiment, SimilarityExperiment,
                           process_image)

    image, inputs = process_image(photo, device="cpu")
    assert image.size == (640, 427) and inputs["pixel_values"].shape == (1, 3, 427, 640)
    lens = FeaturesLengthExperiment(dinov3_model=tiny_backbone, device="cpu").run_dict(inputs)["norm_feat_lens"]
    assert lens.shape == (1, 26, 40) and lens.min() == 0 and lens.max() == 1
    assert PCAExperiment(dinov3_model=tiny_backbone).run_dict(inputs)["pca"].shape == (3, 26, 40)
    sim = SimilarityExperiment(dinov3_model=tiny_backbone).run_dict(inputs, patch_idx=41)["similarity"]
    assert sim.shape == (1, 26, 40, 1) and sim.min() >= 0 and sim[0, 1, 1, 0] == pytest.approx(1.0)
    _, small = process_image("sample:chelsea", device="cpu")
    out = MatchingExperiment(dinov3_model=tiny_backbone).run_dict(inputs, small)  # the first image is the larger
    assert out["matching"].shape == (1, 1040) and out["scores"].shape == (1, 1040)
    matched = out["matching"][0][out["matching"][0] >= 0]
    assert len(matched) == 18 * 28 and len(set(matched.tolist())) == 18 * 28


def test_experiments_accept_a_bare_transformers_model(photo):
    from helpers import build_vit
    from dinoscope import FeaturesLengthExperiment, process_image

    _, inputs = process_image(photo, device="cpu")
    lens = FeaturesLengthExperiment(dinov3_model=build_vit(0)).run_dict(inputs)["norm_feat_lens"]
    assert lens.shape == (1, 26, 40) and torch.isfinite(lens).all()


def test_load_dinov3_model_default_id_offline(offline_hub):
    from dinoscope import load_dinov3_model

    model = load_dinov3_model(device="cpu")
    assert model.source == "facebook/dinov3-vitb16-pretrain-lvd1689m" and model.num_registers == 4
    assert model.revision == "0123456789abcdef0123456789abcdef01234567"


def test_reference_keywords_and_run(tiny_backbone, photo):
    """The calls the reference's scripts make: its keyword names, and run(...) for the bare result."""
    import torch

    from dinoscope import (FeaturesLengthExperiment, MatchingExperiment, PCAExperiment, SimilarityExperiment,
                           process_image)
    from dinoscope.errors import InputError

    _, inputs = process_image(photo, device="cpu")
    _, small = process_image("sample:chelsea", device="cpu")
    lengths = FeaturesLengthExperiment(dinov3_model=tiny_backbone)
    by_keyword = lengths.run_dict(preprocessed_inputs=inputs)["norm_feat_lens"]
    assert torch.equal(by_keyword, lengths.run_dict(inputs)["norm_feat_lens"])
    assert torch.equal(lengths.run(preprocessed_inputs=inputs), by_keyword)
    assert PCAExperiment(dinov3_model=tiny_backbone).run(preprocessed_inputs=inputs).shape == (3, 26, 40)
    sims = SimilarityExperiment(dinov3_model=tiny_backbone)
    sim = sims.run_dict(preprocessed_inputs=inputs, patch_idx=41)["similarity"]
    assert torch.equal(sim, sims.run_dict(inputs, patch_idx=41)["similarity"])
    assert torch.equal(sims.run(preprocessed_inputs=inputs, patch_idx=41), sim)
    matcher = MatchingExperiment(dinov3_model=tiny_backbone)
    out = matcher.run_dict(preprocessed_inputs1=inputs, preprocessed_inputs2=small)
    assert torch.equal(out["matching"], matcher.run_dict(inputs, small)["matching"])
    matching, scores = matcher.run(preprocessed_inputs1=inputs, preprocessed_inputs2=small)
    assert torch.equal(matching, out["matching"]) and torch.equal(scores, out["scores"])
    with pytest.raises(InputError, match="preprocessed_inputs"):
        lengths.run_dict(inputs, preprocessed_inputs=inputs)
