"""segments, search, atlas and propagate as a user runs them: files, sizes, known answers, one-line errors."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import test_cli
from PIL import Image
from helpers import assert_clean_failure, run_cli

from dinoscope.images import SAMPLES, load_image

cli = test_cli.cli  # the fixture that runs main() in this process


def _no_output(out):
    return not out.exists() or not any(out.rglob("*"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    load_image(SAMPLES["chelsea"]).save(folder / "cat.png")
    (folder / "more").mkdir()
    load_image(SAMPLES["coffee"]).save(folder / "more" / "cup.png")
    return folder


def test_segments_one_image_and_cosegments(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    common = ["--model", tiny_model_dir, "--out", out, "--device", "cpu"]
    r = cli("segments", "sample:chelsea", "--k", "4", *common)
    assert r.returncode == 0, r.stderr
    assert "4 segments" in r.stdout
    with Image.open(out / "chelsea_segments_k4.png") as im:
        assert im.size == (451, 300) and im.mode == "RGB"
    assert cli("segments", "sample:chelsea", "--k", "4", "--sharpen", *common).returncode == 0
    with Image.open(out / "chelsea_segments_k4_sharp.png") as im:
        assert im.size == (451, 300) and im.mode == "RGB"
    r = cli("segments", "sample:chelsea", "sample:coffee", "--k", "3", "--foreground", "--seed", "2", *common)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chelsea_cosegments_k3_fg.png", "chelsea_segments_k4.png",
                                                      "chelsea_segments_k4_sharp.png", "coffee_cosegments_k3_fg.png"]
    with Image.open(out / "coffee_cosegments_k3_fg.png") as im:
        assert im.size == (600, 400)
    again = tmp_path / "again"
    assert cli("segments", "sample:chelsea", "sample:coffee", "--k", "3", "--foreground", "--seed", "2", "--model",
               tiny_model_dir, "--out", again).returncode == 0
    for name in ("chelsea_cosegments_k3_fg.png", "coffee_cosegments_k3_fg.png"):  # deterministic for a seed
        assert (again / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize("args,word", [
    (["segments", "--k", "0"], "at least 1"),
    (["segments", "--k", "100000"], "choose k between 1 and 504"),
    (["segments", "--alpha", "2"], "--alpha"),
    (["atlas", "--layers", "7"], "layer 7"),
    (["atlas", "--outlier-k", "0"], "--outlier-k"),
    (["atlas", "--models", " , "], "--models"),
])
def test_bad_segment_and_atlas_options(args, word, cli, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(cli(*args, "--model", tiny_model_dir, "--out", out), word)
    assert _no_output(out)


def _hits(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_search_a_folder_of_images_finds_the_query_patch(cli, tiny_model_dir, photos, tmp_path):
    out = tmp_path / "out"
    r = cli("search", photos / "cat.png", "--pixel", "200,120", "--in", photos, "--top", "6", "--include-query",
            "--model", tiny_model_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat_search_hits.csv", "cat_search_sheet.png"]
    with open(out / "cat_search_hits.csv") as f:
        assert f.readline().strip() == "image,row,col,x0,y0,x1,y1,score"
    hits = _hits(out / "cat_search_hits.csv")
    assert len(hits) == 6 and {h["image"] for h in hits} <= {"cat", "more/cup"}
    best = hits[0]
    assert (best["image"], int(best["row"]), int(best["col"])) == ("cat", 7, 12)  # 200 // 16, 120 // 16
    assert [float(best[k]) for k in ("x0", "y0", "x1", "y1")] == [192.0, 112.0, 208.0, 128.0]
    assert float(best["score"]) == pytest.approx(1.0, abs=1e-5)
    scores = [float(h["score"]) for h in hits]
    assert scores == sorted(scores, reverse=True)
    with Image.open(out / "cat_search_sheet.png") as im:
        assert im.width >= 5 * 160 and im.height >= 2 * 160  # the query and six hits: two rows of five
    # without --include-query the query's own file is left out
    r = cli("search", photos / "cat.png", "--pixel", "200,120", "--in", photos, "--top", "3", "--model", tiny_model_dir,
            "--out", tmp_path / "other")
    assert r.returncode == 0, r.stderr
    assert {h["image"] for h in _hits(tmp_path / "other" / "cat_search_hits.csv")} == {"more/cup"}


def test_search_an_extract_folder(cli, tiny_model_dir, photos, tmp_path):
    feats = tmp_path / "feats"
    assert cli("extract", photos, "--model", tiny_model_dir, "--out", feats).returncode == 0
    out = tmp_path / "out"
    r = cli("search", "sample:chelsea", "--cell", "7,12", "--in", feats, "--top", "4", "--model", tiny_model_dir,
            "--out", out)
    assert r.returncode == 0, r.stderr
    assert "in features" in r.stdout
    hits = _hits(out / "chelsea_search_hits.csv")
    assert (hits[0]["image"], hits[0]["row"], hits[0]["col"]) == ("cat", "7", "12")
    assert float(hits[0]["score"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("case,word", [
    ("empty", "holds no image"),
    ("missing", "no such folder"),
    ("top", "--top"),
    ("pixel", "outside"),
    ("only one", "only one"),
])
def test_bad_search_input(case, word, cli, tiny_model_dir, photos, tmp_path):
    (tmp_path / "empty").mkdir()
    inside = {"empty": tmp_path / "empty", "missing": tmp_path / "nope"}.get(case, photos)
    extra = {"top": ["--top", "0"], "pixel": ["--pixel", "10,1000"], "only one": ["--pixel", "1,1", "--patch", "3"]}
    out = tmp_path / "out"
    r = cli("search", "sample:chelsea", "--in", inside, *extra.get(case, []), "--model", tiny_model_dir, "--out", out)
    assert_clean_failure(r, word)
    assert _no_output(out)


def test_search_needs_in():
    r = run_cli("search", "sample:chelsea")
    assert r.returncode == 2 and "--in" in r.stderr and "Traceback" not in r.stderr


def test_atlas_writes_sheet_heatmap_and_numbers(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    r = cli("atlas", "sample:coffee", "--models", f"{tiny_model_dir},{tiny_model_dir}", "--model", tiny_model_dir,
            "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["coffee_atlas.csv", "coffee_atlas.json", "coffee_atlas.png",
                                                      "coffee_cka.png"]
    numbers = json.loads((out / "coffee_atlas.json").read_text())
    assert [m["blocks"] for m in numbers["models"]] == [[0, 1], [0, 1]]
    layers = np.array(numbers["models"][0]["cka_between_blocks"])
    assert np.allclose(np.diag(layers), 1) and np.allclose(layers, layers.T)
    assert np.allclose(numbers["cka_between_models"]["cka"], 1)  # the same model twice
    block = numbers["models"][0]["per_block"][1]
    assert block["grid"] == [25, 37] and block["norm_threshold"] > block["norm_median"]
    shares = [block[f"cls_attention_to_{p}"] for p in ("cls", "registers", "patches")]
    assert sum(shares) == pytest.approx(1, abs=1e-4) and shares[1] > 0  # the tiny model has 4 registers
    with open(out / "coffee_atlas.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[1]["block"] == "1" and float(rows[1]["outlier_share"]) == block["outlier_share"]
    with Image.open(out / "coffee_atlas.png") as im:
        assert im.height > 2 * 160  # two rows of 160-pixel cells and their labels


av = pytest.importorskip("av") if not os.environ.get("CI") else __import__("av")
W, H, N = 96, 64, 6


def _clip(path):
    """A red square moving right over a smooth background, and the first frame's mask of it."""
    from dinoscope.video import VideoWriter

    y, x = np.mgrid[0:H, 0:W]
    background = np.stack([x * 255 // W, y * 255 // H, np.full_like(x, 128)], -1).astype(np.uint8)
    with VideoWriter(path, 10) as writer:
        for t in range(N):
            frame = background.copy()
            frame[16:48, 8 + 4 * t:40 + 4 * t] = (255, 40, 40)
            writer.write(Image.fromarray(frame))
    mask = np.zeros((H, W, 3), np.uint8)
    mask[16:48, 8:40] = (0, 200, 0)
    return mask


def test_propagate_writes_overlay_video_and_masks(cli, tiny_model_dir, tmp_path):
    clip = tmp_path / "walk.mp4"
    Image.fromarray(_clip(clip)).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    r = cli("propagate", clip, "--mask", tmp_path / "mask.png", "--radius", "2", "--stride", "2", "--model",
            tiny_model_dir, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "3 frame(s) of 96x64, 2 labels" in r.stdout
    assert sorted(p.name for p in (out / "walk_masks").iterdir()) == ["frame_00001.png", "frame_00003.png",
                                                                      "frame_00005.png"]
    with av.open(str(out / "walk_propagated.mp4")) as c:
        frames = [f.to_image() for f in c.decode(c.streams.video[0])]
    assert len(frames) == 3 and frames[0].size == (W, H)
    with Image.open(out / "walk_masks" / "frame_00001.png") as first:
        assert first.mode == "P" and first.size == (W, H)
        assert np.array_equal(np.asarray(first.convert("RGB")), np.asarray(Image.open(tmp_path / "mask.png")))
    for name in ("frame_00003.png", "frame_00005.png"):
        with Image.open(out / "walk_masks" / name) as m:
            assert set(np.unique(np.asarray(m))) <= {0, 1}  # labels stay the mask's labels
    assert not [p for p in out.rglob(".*")]  # no temporary files left


@pytest.mark.parametrize("mask,word", [
    ("small", "96x64"),
    ("noise", "colours"),
    ("flat", "one colour"),
    ("missing", "nope.png"),
])
def test_bad_masks_fail_before_any_output(mask, word, cli, tiny_model_dir, tmp_path):
    clip = tmp_path / "walk.mp4"
    good = _clip(clip)
    pictures = {"small": good[:32], "noise": np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8),
                "flat": np.zeros_like(good)}
    path = tmp_path / "nope.png"
    if mask in pictures:
        path = tmp_path / f"{mask}.png"
        Image.fromarray(pictures[mask]).save(path)
    out = tmp_path / "out"
    r = cli("propagate", clip, "--mask", path, "--model", tiny_model_dir, "--out", out)
    assert_clean_failure(r, word)
    assert _no_output(out)
