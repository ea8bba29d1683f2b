"""Batch extraction (API and `dinoscope extract`) and matching beyond the memory budget."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from helpers import run_cli

from dinoscope.features import Extractor, Features, extract_batch
from dinoscope.geometry import Geometry, Resolution

@pytest.mark.slow
def test_extract_many_batches_same_sizes_and_keeps_order(tiny_backbone, monkeypatch):
    import dinoscope.features as features_module

    batches = []
    real = features_module.forward_tokens

    def spy(backbone, pixels, blocks, normed):
        batches.append(tuple(pixels.shape))
        return real(backbone, pixels, blocks, normed)

    monkeypatch.setattr(features_module, "forward_tokens", spy)
    sources = ["sample:chelsea", "sample:coffee", "sample:chelsea", "sample:astronaut", "sample:coffee"]
    progress = []
    ex = Extractor(tiny_backbone, resolution=Resolution("native"))
    results = ex.extract_many(sources, progress=lambda done, total: progress.append((done, total)))
    assert [im.size for im, _ in results] == [(451, 300), (600, 400), (451, 300), (512, 512), (600, 400)]
    assert sorted(b[0] for b in batches) == [1, 2, 2]  # one pass per input size
    assert ex.forward_passes == 5
    assert progress[-1] == (5, 5) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    # batched tokens equal one-at-a-time tokens
    for source, (_, feats) in zip(sources, results):
        _, alone = Extractor(tiny_backbone)(source)
        torch.testing.assert_close(feats.patches, alone.patches, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_extract_batch_progress_counts_images(tiny_backbone):
    from dinoscope.images import load_image

    images = [load_image("sample:chelsea")] * 5
    seen = []
    out = extract_batch(tiny_backbone, images, batch_size=2, progress=seen.append)
    assert len(out) == 5 and seen == [2, 4, 5]


@pytest.mark.slow
def test_cli_extract_many_images(tiny_model_dir, tmp_path):
    out = tmp_path / "feats"
    r = run_cli("extract", "sample:chelsea", "sample:coffee", "sample:chelsea", "-m", tiny_model_dir, "-o", out,
                "--no-cache", "-b", "2", "--progress")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.safetensors", "chelsea_2.safetensors",
                                                      "coffee.safetensors", "manifest.jsonl"]  # several: a collection
    assert "images/s" in r.stdout and "3 computed, 0 from the cache" in r.stdout
    assert "3/3" in r.stderr  # the progress bar reached the end
    a, b = Features.load(out / "chelsea.safetensors"), Features.load(out / "chelsea_2.safetensors")
    assert torch.equal(a.patches, b.patches) and a.geometry.grid == (18, 28)
    r = run_cli("extract", "sample:chelsea", "-b", "0")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--batch-size" in r.stderr


def _features(n_rows: int, n_cols: int, dim: int, x: torch.Tensor) -> Features:
    g = Geometry(16, n_rows, n_cols, (16 * n_cols, 16 * n_rows), (16 * n_cols, 16 * n_rows), False)
    return Features(torch.zeros(dim), torch.zeros(0, dim), x.reshape(n_rows, n_cols, dim), g)


@pytest.mark.slow
def test_huge_matching_takes_the_blocked_path_never_the_dense_matrix(monkeypatch, caplog):
    import dinoscope.analyses.matching as matching

    def refuse(*args, **kwargs):
        raise AssertionError("a dense similarity matrix was built")

    monkeypatch.setattr(matching, "cosine_matrix", refuse)
    gen = torch.Generator().manual_seed(0)
    n, dim = 40_000, 8  # a dense 40k x 40k float32 matrix would be 6 GiB
    xa = torch.randn(n, dim, generator=gen)
    perm = torch.randperm(n, generator=gen)
    xb = xa[perm] + 1e-4 * torch.randn(n, dim, generator=gen)
    m = matching.match_patches(_features(200, 200, dim, xa), _features(200, 200, dim, xb))
    assert m.method == "mnn" and "mutual nearest neighbours" in caplog.text
    # near-copies are found: most pairs are the true permutation
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    assert len(m) > 0.9 * n
    assert (inverse[torch.from_numpy(m.index_a)].numpy() == m.index_b).mean() > 0.99


@pytest.mark.slow
def test_exact_matching_at_4096_equals_scipy():
    from scipy.optimize import linear_sum_assignment

    import dinoscope.analyses.matching as matching

    gen = torch.Generator().manual_seed(1)
    xa = torch.randn(4096, 32, generator=gen)
    xb = torch.randn(4096, 32, generator=gen)
    fa, fb = _features(64, 64, 32, xa), _features(64, 64, 32, xb)
    m = matching.match_patches(fa, fb)
    sims = matching.cosine_matrix(fa, fb)
    rows, cols = linear_sum_assignment(sims.astype(np.float64), maximize=True)
    assert m.method == "hungarian" and len(m) == 4096
    assert sorted(m.index_b.tolist()) == list(range(4096))  # one-to-one
    assert float(m.scores.astype(np.float64).sum()) == pytest.approx(float(sims[rows, cols].sum()), abs=1e-2)
