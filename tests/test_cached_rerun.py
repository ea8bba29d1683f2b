"""Cached reruns without torch: the same pictures bit for bit as the torch path, torch never imported when
every image is in the cache, and a cache miss still computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from dinoscope import views
from dinoscope.analyses import PCABasis, minmax, patch_norms, similarity_map
from dinoscope.cache import FeatureCache
from dinoscope.cached import CachedReader
from dinoscope.features import Extractor
from dinoscope.geometry import Geometry, Resolution
from dinoscope.images import load_image
from dinoscope.tokens import Features

IMAGE, OTHER = "sample:chelsea", "sample:coffee"

# Each command as a user would type it (model, cache and output folder are added per run).
COMMANDS = [
    ["norms", IMAGE],
    ["norms", IMAGE, "--alpha", "0.5", "--cmap", "viridis"],
    ["pca", IMAGE],
    ["pca", IMAGE, "--components", "2", "--smooth"],
    ["similarity", IMAGE],
    ["similarity", IMAGE, "--cls"],
    ["similarity", IMAGE, "--pixel", "100,60", "--target", OTHER],
    ["all", IMAGE],
]

# Runs CLI command lines in one process (one JSON list of argument lists), then reports what it imported.
RUNNER = """
import json, sys
from dinoscope.cli import main
codes = [main(args) for args in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
"""


def run_lines(lines: list[list[str]], tmp_path: Path) -> dict:
    script = tmp_path / "run_lines.py"
    script.write_text(RUNNER)
    done = run_cli(script, json.dumps(lines), module=None)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def pictures(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_cached_reruns_draw_the_torch_pictures_without_importing_torch(tiny_model_dir, tmp_path):
    cache, model = tmp_path / "cache", str(tiny_model_dir)
    # the torch path: a forward pass for every picture (no cache), and one run that fills the cache
    reference = [[*c, "-m", model, "--no-cache", "-o", str(tmp_path / "torch" / str(i))]
                 for i, c in enumerate(COMMANDS)]
    fill = [["all", img, "-m", model, "--cache-dir", str(cache), "-o", str(tmp_path / "fill")]
            for img in (IMAGE, OTHER)]
    cold = run_lines(fill + reference, tmp_path)
    assert cold["codes"] == [0] * len(fill + reference) and cold["torch"]

    cached = [[*c, "-m", model, "--cache-dir", str(cache), "-o", str(tmp_path / "numpy" / str(i))]
              for i, c in enumerate(COMMANDS)]
    warm = run_lines(cached, tmp_path)
    assert warm["codes"] == [0] * len(cached)
    assert not warm["torch"], "a rerun on cached images imported torch"

    for i, command in enumerate(COMMANDS):
        expected, got = pictures(tmp_path / "torch" / str(i)), pictures(tmp_path / "numpy" / str(i))
        assert expected and sorted(got) == sorted(expected), command
        for name in expected:
            assert got[name].dtype == np.uint8
            assert np.array_equal(got[name], expected[name]), f"{command}: {name} differs from the torch path"


@pytest.mark.slow
def test_a_cache_miss_still_computes(tiny_model_dir, tmp_path):
    cache, model = tmp_path / "cache", str(tiny_model_dir)
    lines = [["pca", IMAGE, "-m", model, "--cache-dir", str(cache), "-o", str(tmp_path / "miss")],
             ["pca", IMAGE, "-m", model, "--no-cache", "-o", str(tmp_path / "plain")]]
    result = run_lines(lines, tmp_path)
    assert result["codes"] == [0, 0] and result["torch"]  # nothing cached: the model ran
    assert list(cache.rglob("*.safetensors")), "the miss did not fill the cache"
    miss, plain = pictures(tmp_path / "miss"), pictures(tmp_path / "plain")
    assert miss and all(np.array_equal(miss[n], plain[n]) for n in plain)


def test_the_reader_finds_what_the_extractor_stored(tiny_model_dir, tmp_path):
    """The reader's key is the Extractor's: a hit right after extraction, NumPy arrays equal to the stored tensors."""
    image = load_image(IMAGE)
    store = FeatureCache(tmp_path / "c")
    extractor = Extractor(str(tiny_model_dir), device="cpu", cache=store)
    stored = extractor.features_of([image])[0]

    def never():
        raise AssertionError("the reader fell back to the Extractor on a cached image")

    reader = CachedReader(str(tiny_model_dir), resolution=Resolution(), layer=-1, normed=True, dtype="float32",
                          max_pixels=None, cache=FeatureCache(tmp_path / "c"), fallback=never)
    [(img, found)] = reader.extract_many([IMAGE])
    assert reader.from_cache == 1 and found.image is img
    assert isinstance(found.patches, np.ndarray) and found.patches.dtype == np.float32
    assert np.array_equal(found.patches, stored.patches.numpy()) and np.array_equal(found.cls, stored.cls.numpy())
    assert found.geometry == stored.geometry and found.model == stored.model

    other = CachedReader(str(tiny_model_dir), resolution=Resolution(), layer=0, normed=True, dtype="float32",
                         max_pixels=None, cache=FeatureCache(tmp_path / "c"), fallback=lambda: extractor)
    assert other.cached([image]) is None  # another layer: not cached, so the Extractor is asked


def _features_pair(seed: int = 0, rows: int = 5, cols: int = 7, dim: int = 24):
    """The same tokens as torch tensors (a strided batch view, as extraction gives) and as NumPy arrays."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.randn(2, rows, cols, dim, generator=g) + 0.3 * torch.randn(dim, generator=g)
    cls, regs = torch.randn(dim, generator=g), torch.randn(2, dim, generator=g)
    geometry = Geometry(patch_size=16, rows=rows, cols=cols, image_size=(cols * 16 + 5, rows * 16 + 3),
                        input_size=(cols * 16, rows * 16), resized=False)
    as_torch = Features(cls, regs, batch[1], geometry)
    as_numpy = Features(cls.numpy().copy(), regs.numpy().copy(), batch[1].numpy().copy(), geometry)
    return as_torch, as_numpy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_analyses_give_equal_numbers_for_tensors_and_arrays(seed):
    t, n = _features_pair(seed)
    assert isinstance(patch_norms(t), torch.Tensor) and isinstance(patch_norms(n), np.ndarray)
    assert np.array_equal(patch_norms(t).numpy(), patch_norms(n))
    assert np.array_equal(minmax(patch_norms(t)).numpy(), minmax(patch_norms(n)))
    assert np.allclose(patch_norms(n), np.linalg.norm(n.patches.astype(np.float64), axis=-1), rtol=1e-5)
    for query in (0, 17, -1):
        assert np.array_equal(similarity_map(t, query).numpy(), similarity_map(n, query))
    for foreground in (False, True):
        bt, bn = PCABasis.fit([t], 4, foreground_only=foreground), PCABasis.fit([n], 4, foreground_only=foreground)
        assert isinstance(bt.components, torch.Tensor) and isinstance(bn.components, np.ndarray)
        for name in ("mean", "scale", "components", "low", "high", "variance"):
            assert np.array_equal(getattr(bt, name).numpy(), getattr(bn, name)), name
        assert np.array_equal(bt.transform(t).numpy(), bn.transform(n))


def test_pca_is_the_standardised_eigenbasis():
    """Independent check of the NumPy PCA: components are unit eigenvectors of the standardised covariance,
    ordered by eigenvalue, each with its largest loading positive."""
    _, n = _features_pair(3)
    basis = PCABasis.fit([n], 3)
    x = n.flat.astype(np.float64)
    z = (x - x.mean(0)) / x.std(0, ddof=1)
    cov = np.cov(z, rowvar=False)
    for k in range(3):
        v = basis.components[k].astype(np.float64)
        assert np.allclose(cov @ v, basis.variance[k] * v, atol=1e-4)
        assert v[np.abs(v).argmax()] > 0
    assert np.all(np.diff(basis.variance) <= 0)
    assert np.allclose(np.linalg.eigvalsh(cov)[::-1][:3], basis.variance, rtol=1e-5)


def test_views_draw_equal_pictures_from_tensors_and_arrays():
    t, n = _features_pair(4)
    photo = Image.new("RGB", t.geometry.image_size, (30, 90, 160))
    pairs = [(views.norms_view(t, photo, alpha=0.4), views.norms_view(n, photo, alpha=0.4)),
             (views.pca_view(t), views.pca_view(n)),
             (views.pca_view(t, components=(1,), cmap="magma", smooth=True),
              views.pca_view(n, components=(1,), cmap="magma", smooth=True)),
             (views.similarity_view(t, 11, photo), views.similarity_view(n, 11, photo))]
    for a, b in pairs:
        assert np.array_equal(np.asarray(a), np.asarray(b))
