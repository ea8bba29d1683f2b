"""Segments drawn at pixel level (`insights.sharp_labels`) and the hit table: known answers on flat-colour photos."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dinoscope.analyses.search import Hit
from dinoscope.analyses.segments import BACKGROUND
from dinoscope.geometry import Geometry, Resolution
from dinoscope.insights import hits_csv, sharp_labels


def _photo(split: int, width: int = 96, height: int = 64) -> Image.Image:
    """Red left of x = split, blue from it on."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, :split] = (220, 30, 30)
    a[:, split:] = (30, 30, 220)
    return Image.fromarray(a)


def _truth(split: int, width: int = 96, height: int = 64) -> np.ndarray:
    return np.broadcast_to((np.arange(width) >= split).astype(np.int64), (height, width))


def test_boundaries_on_patch_edges_are_kept_exactly():
    geometry, _ = Geometry.for_image(96, 64, 16, Resolution())
    labels = np.array([[0, 0, 0, 1, 1, 1]] * 4)
    assert np.array_equal(sharp_labels(labels, geometry, _photo(48), 2), _truth(48))


def test_a_boundary_inside_a_patch_follows_the_photo():
    """The edge at x = 40 splits patch column 2 (x 32..47), labelled red: drawn as patch squares the edge sits at
    x = 48; sharpened it follows the photo to x = 40."""
    geometry, _ = Geometry.for_image(96, 64, 16, Resolution())
    labels = np.array([[0, 0, 0, 1, 1, 1]] * 4)
    sharp = sharp_labels(labels, geometry, _photo(40), 2)
    squares = np.repeat(np.repeat(labels, 16, 0), 16, 1)
    truth = _truth(40)
    assert (squares != truth).sum() == 8 * 64
    assert (sharp != truth).sum() < 0.1 * (squares != truth).sum()


def test_background_and_the_uncovered_margin_stay_background():
    geometry, _ = Geometry.for_image(100, 70, 16, Resolution())  # native: 6x4 patches cover 96x64
    labels = np.array([[BACKGROUND, 0, 0, 1, 1, 1]] * 4)
    out = sharp_labels(labels, geometry, _photo(48, 100, 70), 2)
    assert out.shape == (70, 100)
    assert (out[:, 96:] == BACKGROUND).all() and (out[64:] == BACKGROUND).all()
    assert (out[:, :12] == BACKGROUND).all() and (out[:64, 20:44] == 0).all() and (out[:64, 52:92] == 1).all()


def test_hits_csv_columns_and_rounding():
    geometry, _ = Geometry.for_image(96, 64, 16, Resolution())
    hit = Hit("a/b", 7, 1, 1, geometry.box(7), 0.123456789, geometry)
    assert hits_csv([hit]).splitlines() == ["image,row,col,x0,y0,x1,y1,score", "a/b,1,1,16.0,16.0,32.0,32.0,0.123457"]


def _features(seed: int, rows: int = 3, cols: int = 4, dim: int = 8):
    import torch

    from dinoscope.features import Features

    g = torch.Generator().manual_seed(seed)
    geometry = Geometry(16, rows, cols, (cols * 16, rows * 16), (cols * 16, rows * 16), False)
    return Features(torch.randn(dim, generator=g), torch.zeros(0, dim), torch.randn(rows, cols, dim, generator=g),
                    geometry)


def test_search_sources_tell_extract_folders_ray_shards_and_images_apart(tmp_path):
    import pytest

    pytest.importorskip("pyarrow")
    import json

    import pyarrow.parquet as pq

    from dinoscope.analyses.search import search
    from dinoscope.errors import InputError
    from dinoscope.inputs import Item
    from dinoscope.ray_engine import SHARDS, shard_table
    from dinoscope.search_sources import open_collection

    photo = tmp_path / "b.png"
    Image.new("RGB", (64, 48), "red").save(photo)
    plain, ray, images = tmp_path / "plain", tmp_path / "ray", tmp_path / "images"
    for i, name in enumerate(["a", "b"]):
        _features(i).save(plain / f"{name}.safetensors")
    record = {"source": str(photo), "name": "b", "status": "ok", "outputs": ["b.safetensors"]}
    (plain / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    (ray / SHARDS).mkdir(parents=True)
    pq.write_table(shard_table([(Item(f"{n}.png", n), None, _features(i)) for i, n in enumerate(["a", "b"])]),
                   ray / SHARDS / "part-0.parquet")
    images.mkdir()
    Image.new("RGB", (64, 48), "blue").save(images / "c.png")
    query = _features(1).flat[5]  # patch 5 of "b"
    for folder, kind in ((plain, "features"), (ray, "shards")):
        collection = open_collection(folder)
        assert collection.kind == kind
        hits = search(query, collection.features(), top=1)
        assert (hits[0].name, hits[0].index) == ("b", 5)
    photo_of = open_collection(plain).photo
    assert photo_of("b").size == (64, 48) and photo_of("a") is None  # through the manifest; "a" has no record
    assert open_collection(images).kind == "images" and list(open_collection(images).sources) == ["c"]
    with pytest.raises(InputError, match="no such folder"):
        open_collection(tmp_path / "nope")
    with pytest.raises(InputError, match="needs a model"):
        next(open_collection(images).features())


def test_pictures_of_random_weights_are_tagged_and_real_ones_are_not():
    """Segments and contact sheets from a random model carry the red "random weights" tag (issue 10)."""
    import torch

    from dinoscope.insights import hits_sheet, segments_pictures
    from dinoscope.tokens import Features

    geometry, _ = Geometry.for_image(96, 64, 16, Resolution())
    patches = torch.zeros(4, 6, 3)
    patches[:, :3, 0] = 1
    patches[:, 3:, 2] = 1

    def features(model):
        return Features(torch.zeros(3), torch.zeros(0, 3), patches, geometry, model=model)

    photo = _photo(48)
    corner = (2, 2)  # inside the tag, which starts at the top-left corner
    for model, tagged in (("random:vits16", True), ("facebook/dinov3-vits16-pretrain-lvd1689m", False)):
        _, (picture,) = segments_pictures([features(model)], [photo], k=2, alpha=0.0)
        hit = Hit("a", 0, 0, 0, (0, 0, 16, 16), 1.0, geometry)
        sheet = hits_sheet([hit], lambda name: photo, made_from=[features(model)])
        for drawn, plain in ((picture, photo), (sheet, None)):
            pixel = drawn.convert("RGB").getpixel(corner)
            assert (pixel == (200, 0, 0)) is tagged, (model, pixel)
            if plain is not None and not tagged:
                assert pixel == plain.getpixel(corner)
