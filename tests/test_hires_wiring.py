"""Denser grids, tiles and upsampling wired through extraction, the CLI and the views (issue 12, "everywhere")."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dinoscope import names
from dinoscope.analyses import Pixel
from dinoscope.cache import FeatureCache
from dinoscope.dense import shift_and_stitch
from dinoscope.features import Extractor, forward_tokens, preprocess
from dinoscope.geometry import Geometry, Resolution
from dinoscope.images import load_image
from test_cli import assert_clean_failure, cli  # noqa: F401  (the fixture)


def test_dense_features_from_the_extractor_equal_shift_and_stitch(tiny_backbone):
    image = load_image("sample:coffee").resize((150, 100))
    feats = Extractor(tiny_backbone, density=2)(image)[1]
    native, _ = Geometry.for_image(150, 100, 16, Resolution())
    pixels = preprocess(image, native, tiny_backbone.mean, tiny_backbone.std)
    last = tiny_backbone.num_layers - 1
    dense, [(cls_t, regs, patches)] = shift_and_stitch(lambda x: forward_tokens(tiny_backbone, x, [last], True),
                                                       pixels, native, 2)
    assert feats.geometry == dense and feats.geometry.density == 2 and feats.geometry.grid == (12, 18)
    torch.testing.assert_close(feats.patches, patches)
    torch.testing.assert_close(feats.cls, cls_t)
    torch.testing.assert_close(feats.registers, regs)
    assert feats.extra == {"density": 2, "pad": "replicate"}


def test_every_analysis_reads_a_dense_grid(tiny_backbone):
    from dinoscope.analyses import Pixel, match_patches, similarity_map
    from dinoscope.views import norms_view, pca_view, similarity_view

    image = load_image("sample:coffee").resize((150, 100))
    feats = Extractor(tiny_backbone, density=4)(image)[1]
    g = feats.geometry
    assert g.grid == (24, 36) and g.cell_size == 4
    x, y = 61.0, 37.0  # a click lands on the 4-pixel cell under it, not on its 16-pixel patch
    assert g.patch_at(x, y) == g.index(9, 15)
    sims = similarity_map(feats, Pixel(x, y))
    assert sims.shape == (24, 36) and sims[9, 15] == pytest.approx(1.0)
    for picture in (norms_view(feats, image), pca_view(feats, upsample="guided", guide=image),
                    similarity_view(feats, Pixel(x, y), image, upsample="guided")):
        assert picture.size == (150, 100)
    other = Extractor(tiny_backbone, density=2)(load_image("sample:chelsea").resize((100, 80)))[1]
    assert len(match_patches(Extractor(tiny_backbone, density=2)(image)[1], other, "mnn")) > 0


def test_tiles_keep_full_resolution_within_the_budget(tiny_backbone):
    image = load_image("sample:coffee").resize((320, 160))  # 10 x 20 = 200 patches, budget 64
    tiled = Extractor(tiny_backbone, resolution=Resolution(max_tokens=64), tiles=True)(image)[1]
    squeezed = Extractor(tiny_backbone, resolution=Resolution(max_tokens=64))(image)[1]
    assert tiled.geometry.grid == (10, 20) and squeezed.geometry.num_patches <= 64
    assert tiled.extra == {"density": 1, "tiles": {"tile": 8, "overlap": 2}}


def test_cache_keys_differ_by_density_tiles_and_not_for_the_plain_grid(tiny_backbone, tmp_path):
    image = load_image("sample:coffee").resize((96, 64))
    keys = {(d, t): Extractor(tiny_backbone, density=d, tiles=t).cache_key(image) for d in (1, 2, 4) for t in (0, 1)}
    assert len({k.digest for k in keys.values()}) == 6
    assert keys[(1, False)].sampling == ""  # entries of plain extraction made before these settings stay valid
    cache = FeatureCache(tmp_path)
    first = Extractor(tiny_backbone, density=2, cache=cache)
    a = first(image)[1]
    again = Extractor(tiny_backbone, density=2, cache=cache)
    b = again(image)[1]
    assert again.forward_passes == 0 and b.geometry.density == 2 and b.extra["density"] == 2
    torch.testing.assert_close(a.patches, b.patches)


def test_attention_on_a_dense_grid_says_what_to_do(tiny_backbone):
    from dinoscope.errors import InputError

    with pytest.raises(InputError, match="drop --density"):
        Extractor(tiny_backbone, density=2).attention(load_image("sample:coffee").resize((64, 48)))


def test_cli_density_upsample_tiles(cli, tiny_model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "o"
    common = ["--model", tiny_model_dir, "--out", out, "--device", "cpu", "--resolution", "short:96"]
    r = cli("norms", "sample:coffee", *common, "--bare", "--density", "2", "--upsample", "guided")
    assert r.returncode == 0, r.stderr
    assert cli("pca", "sample:coffee", *common, "--bare", "--sharpen").returncode == 0
    assert cli("similarity", "sample:coffee", *common, "--bare", "--density", "4", "--pixel", "300,200",
               "--upsample", "bilinear").returncode == 0
    assert cli("extract", "sample:coffee", *common, "--density", "2").returncode == 0
    for name in (names.norms_name("coffee"), names.pca_name("coffee"),
                 names.similarity_name("coffee", Pixel(300.0, 200.0))):
        with Image.open(out / name) as im:
            assert im.size == (600, 400), name
    with safe_open(str(out / "coffee.safetensors"), "pt") as f:
        geometry = json.loads(f.metadata()["geometry"])
        assert geometry["density"] == 2 and f.get_tensor("patches").shape[:2] == (geometry["rows"], geometry["cols"])
        assert json.loads(f.metadata()["extra"])["density"] == 2
    tiles_out = tmp_path / "t"
    r = cli("extract", "sample:coffee", "--model", tiny_model_dir, "--out", tiles_out, "--tiles", "--max-tokens", "100")
    assert r.returncode == 0, r.stderr
    with safe_open(str(tiles_out / "coffee.safetensors"), "pt") as f:
        assert f.get_tensor("patches").shape[:2] == (25, 37)  # 600x400 at full resolution, tiles of 10x10 patches


@pytest.mark.parametrize("args,word", [
    (["norms", "--density", "3"], "density"),
    (["pca", "--upsample", "bicubic"], "upsample"),
    (["similarity", "--sharpen", "--upsample", "bilinear"], "sharpen"),
    (["attention", "--density", "2"], "density"),
])
def test_bad_sharpening_options_fail_before_the_model_loads(args, word, cli, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = cli(*args, "--model", tmp_path / "no-such-model", "--out", out)
    assert_clean_failure(result, word)
    assert not out.exists() or not any(out.iterdir())


def test_explorer_click_on_a_dense_grid_queries_the_dense_cell(tiny_model_dir, tmp_path):
    from dinoscope.analyses import Pixel
    from dinoscope.ui import callbacks, state
    from dinoscope.views import similarity_view

    engine = state.Engine(tiny_model_dir, device="cpu", disk_cache=False, workdir=tmp_path)
    try:
        session, _, _ = callbacks.load_sample(engine, state.Session(), "coffee", "A")
        detail = callbacks.detail("density 2, sharpened")
        settings = callbacks.Settings(engine.default_label, "short:224", -1, *detail)
        session, picture, message = callbacks.similarity(engine, session, settings, "A", 301, 157)
        feats = engine.features(engine.default_label, session.slots["A"], "short:224", -1, 2)
        g = feats.geometry
        assert g.density == 2 and "cell (density 2)" in message
        index = g.patch_at(301, 157)
        assert f"{index} (row {index // g.cols}, col {index % g.cols})" in message
        expected = similarity_view(feats, Pixel(301, 157), session.slots["A"].image, upsample="guided")
        assert np.array_equal(np.asarray(picture), np.asarray(expected))
        _, message = callbacks.attention(engine, session, settings, "A")  # read on the patch grid, said so
        assert "patch grid" in message
        plain = engine.features(engine.default_label, session.slots["A"], "short:224", -1)
        assert plain.geometry.density == 1
        assert engine.forward_passes == 3  # dense, attention, plain: the density is part of the engine's key
    finally:
        engine.close()


def test_a_collection_takes_density_and_upsampling(cli, tiny_model_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size in (("a.png", (120, 90)), ("b.png", (100, 70))):
        load_image("sample:coffee").resize(size).save(folder / name)
    out = tmp_path / "o"
    r = cli("norms", folder, "--model", tiny_model_dir, "--out", out, "--bare", "--density", "2", "--sharpen")
    assert r.returncode == 0, r.stderr
    for name, size in (("a_norms.png", (120, 90)), ("b_norms.png", (100, 70))):
        with Image.open(out / name) as im:
            assert im.size == size
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    grids = {r["source"].rsplit("/", 1)[-1]: r["grid"] for r in records if r.get("status") == "ok"}
    assert grids == {"a.png": [10, 14], "b.png": [8, 12]}  # 5x7 and 4x6 patches, two cells per patch each way


def test_notebook_extract_at_density_draws_sharpened_over_its_own_photo(tiny_backbone):
    import dinoscope as ds

    image = load_image("sample:chelsea").resize((128, 96))
    feats = ds.extract(tiny_backbone, image, density=2)
    assert feats.geometry.grid == (12, 16) and "cells of 8 px (density 2" in repr(feats)
    sharp = ds.pca_view(feats, upsample="guided")  # guided by the photo the Features carry
    assert sharp.size == (128, 96)
    assert not np.array_equal(np.asarray(sharp), np.asarray(ds.pca_view(feats)))


def test_attention_panels_upsampled_together_equal_one_by_one(tiny_backbone):
    from dinoscope import render
    from dinoscope.analyses import attention_map, minmax
    from dinoscope.views import attention_view, painted

    image = load_image("sample:coffee").resize((96, 64))
    attention = Extractor(tiny_backbone).attention_weights(image)
    together = attention_view(attention, image, upsample="guided", alpha=1.0, columns=1)
    alone = painted(minmax(attention_map(attention, 2)), attention.geometry,
                    lambda v: render.colorize(v, "inferno", 0.0, 1.0), upsample="guided", guide=image)
    panel = np.asarray(together)[3 * (64 + 16 + 4) + 16:][:64]  # the fourth panel (head 2), below its caption
    outlined = np.asarray(render.outline_patch(alone, attention.geometry, attention.query))
    np.testing.assert_array_equal(panel, outlined)
