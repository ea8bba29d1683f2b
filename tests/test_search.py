"""Search with known answers: a copy of the query patch hidden in one of N images is the top hit, at the
right cell and pixel box; blocked search gives exactly the brute-force ranking whatever the block size."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinoscope import sheets
from dinoscope.analyses import Pixel, query_vector
from dinoscope.analyses.search import Hit, saved_features, search
from dinoscope.errors import InputError
from dinoscope.features import Features, extract_batch
from dinoscope.geometry import Geometry, Resolution


def noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_features(name_seed, rows=3, cols=4, dim=8, geometry=None):
    g = torch.Generator().manual_seed(name_seed)
    geometry = geometry or Geometry(16, rows, cols, (cols * 16, rows * 16), (cols * 16, rows * 16), False)
    return Features(torch.randn(dim, generator=g), torch.zeros(0, dim),
                    torch.randn(geometry.rows, geometry.cols, dim, generator=g), geometry)


@pytest.mark.slow
@pytest.mark.parametrize("block_patches", [1, 200, 1 << 20])
def test_the_hidden_copy_of_the_query_patch_is_the_top_hit(pixel_backbone, block_patches):
    query_image = noise(96, 128, seed=0)
    qx, qy = 3 * 16 + 5, 2 * 16 + 9  # pixel in patch (2, 3)
    others = [noise(80 + 16 * (i % 3), 112, seed=10 + i) for i in range(6)]
    target, row, col = 4, 1, 5
    others[target][row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = query_image[32:48, 48:64]
    arrays = [query_image] + others
    feats = [f[0] for f in extract_batch(pixel_backbone, [Image.fromarray(a) for a in arrays],
                                         resolution=Resolution(), normed=False)]
    names = ["query"] + [f"img{i}" for i in range(len(others))]
    q = query_vector(feats[0], Pixel(qx, qy))
    hits = search(q, zip(names, feats), top=5, exclude=["query"], block_patches=block_patches)
    best = hits[0]
    assert (best.name, best.row, best.col) == (f"img{target}", row, col)
    assert best.box == (col * 16, row * 16, (col + 1) * 16, (row + 1) * 16)
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert all(h.score < 0.5 for h in hits[1:])  # noise patches are nowhere near
    with_self = search(q, zip(names, feats), top=2, block_patches=block_patches)
    assert {(h.name, h.row, h.col) for h in with_self} == {("query", 2, 3), (f"img{target}", row, col)}


@pytest.mark.parametrize("block_patches", [1, 5, 12, 37, 10_000])
def test_blocked_search_equals_brute_force(block_patches):
    feats = [random_features(i, rows=2 + i % 3, cols=3 + i % 2) for i in range(9)]
    feats[3].patches[1, 1] = feats[5].patches[0, 2]  # an exact tie: arrival order decides
    q = feats[5].patches[0, 2] * 2  # the two copies tie at the top
    hits = search(q, ((f"f{i}", f) for i, f in enumerate(feats)), top=10, block_patches=block_patches)
    # independent ranking: every patch scored with NumPy, sorted by score then arrival order
    rows = []
    for i, f in enumerate(feats):
        x = f.flat.numpy().astype(np.float64)
        s = x @ q.numpy() / (np.linalg.norm(x, axis=1) * np.linalg.norm(q.numpy()))
        rows += [(-s[j], len(rows) + j, f"f{i}", j) for j in range(len(s))]
    expected = sorted(rows)[:10]
    assert [(h.name, h.index) for h in hits] == [(name, j) for _, _, name, j in expected]
    assert np.allclose([h.score for h in hits], [-s for s, *_ in expected], atol=1e-6)
    assert [(h.name, h.row, h.col) for h in hits[:2]] == [("f3", 1, 1), ("f5", 0, 2)]


def test_boxes_follow_a_resized_geometry():
    g = Geometry(16, 10, 15, (451, 300), (240, 160), True)
    f = random_features(0, geometry=g, dim=6)
    f.patches[7, 11] = torch.tensor([1.0, 2, 3, 4, 5, 6])
    (hit,) = search(torch.tensor([1.0, 2, 3, 4, 5, 6]) * 3, [("a", f)], top=1)
    assert (hit.row, hit.col, hit.index) == (7, 11, 7 * 15 + 11)
    assert hit.box == pytest.approx((11 * 16 * 451 / 240, 7 * 16 * 300 / 160, 12 * 16 * 451 / 240, 8 * 16 * 300 / 160))
    assert hit.as_row()["image"] == "a" and hit.as_row()["score"] == pytest.approx(1.0)


def test_saved_features_of_an_extract_folder(tmp_path):
    feats = {"b": random_features(1), "sub/a": random_features(2)}
    for name, f in feats.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        f.save(tmp_path / f"{name}.safetensors")
    (tmp_path / "pca_basis.safetensors").write_bytes(b"not features")
    loaded = list(saved_features(tmp_path))
    assert [n for n, _ in loaded] == ["b", "sub/a"]
    assert torch.equal(loaded[1][1].patches, feats["sub/a"].patches)
    q = feats["sub/a"].patches[2, 3]
    assert search(q, saved_features(tmp_path), top=1)[0].name == "sub/a"


def test_bad_search_input_is_a_clear_error(tmp_path):
    f = random_features(0)
    with pytest.raises(InputError, match="8-d features but the query is 5-d"):
        search(torch.ones(5), [("x", f)])
    with pytest.raises(InputError, match="at least 1"):
        search(torch.ones(8), [("x", f)], top=0)
    with pytest.raises(InputError, match="no .safetensors"):
        list(saved_features(tmp_path))
    with pytest.raises(InputError, match="not a folder"):
        list(saved_features(tmp_path / "missing"))


def test_contact_sheet_outlines_the_matched_patch():
    photo = Image.new("RGB", (200, 150), (128, 128, 128))
    g = Geometry(16, 9, 12, (200, 150), (192, 144), False)
    hit = Hit("p", g.index(4, 5), 4, 5, g.box(g.index(4, 5)), 0.9, g)
    sheet = np.asarray(sheets.search_sheet([hit], {"p": photo}, columns=1, tile=144, context=1.0))
    red = (sheet[..., 0] == 255) & (sheet[..., 1] == 0) & (sheet[..., 2] == 0)
    ys, xs = np.nonzero(red)
    # crop of 3 boxes (48 px) centred on the box, scaled by 144 / 48 = 3: the box spans 48..95 in the tile
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (48, 95, 48, 95)


def test_half_precision_features_give_the_float32_ranking():
    feats = [random_features(i, rows=4, cols=5, dim=16) for i in range(6)]
    half = [Features(f.cls.half(), f.registers.half(), f.patches.half(), f.geometry) for f in feats]
    q = feats[2].patches[1, 3] + 0.1
    full = search(q, ((f"f{i}", f) for i, f in enumerate(feats)), top=3)
    low = search(q, ((f"f{i}", f) for i, f in enumerate(half)), top=3)
    assert [(h.name, h.index) for h in low][:1] == [(h.name, h.index) for h in full][:1]
    assert np.allclose([h.score for h in low], [h.score for h in full], atol=2e-3)
