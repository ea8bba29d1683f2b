"""The Ray engine on a local 2-CPU cluster started by the test: same features, same basis, same manifest."""

from __future__ import annotations

import builtins
import os
import json

import pytest
import torch

from dinoscope.cli import main
from dinoscope.collections import Job, expand_inputs, run_collection
from dinoscope.features import Extractor, Features
from dinoscope.analyses import PCABasis

from test_collections import make_collection

if os.environ.get("CI"):  # CI installs the extra (it is in [test]): a missing one must fail, not skip
    import ray
else:
    ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local cluster for the module (2 CPUs, no dashboard, short temp dir), shut down after."""
    from dinoscope.ray_engine import ray_session

    with ray_session(num_cpus=2) as r:
        yield r
    assert not ray.is_initialized()


def test_ray_extract_gives_the_local_features(ray_cluster, tiny_model_dir, tmp_path):
    from dinoscope.ray_engine import load_feature_shard, run_on_ray

    photos = make_collection(tmp_path / "photos", n=7)
    items = expand_inputs([str(photos)])
    local = run_collection(items, Extractor(tiny_model_dir), Job("extract"), tmp_path / "local")
    summary = run_on_ray(items, Extractor(tiny_model_dir), Job("extract"), tmp_path / "ray")
    assert (summary.ok, summary.failed) == (local.ok, local.failed) == (7, 2)
    records = [json.loads(line) for line in (tmp_path / "ray" / "manifest.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == [it.name for it in items]  # input order, as the local engine writes
    shards = {}
    for r in records:
        if r["status"] != "ok":
            assert r["error"]
            continue
        (shard,) = r["outputs"]
        assert shard.startswith("features/part-") and shard.endswith(".parquet")
        shards.setdefault(shard, load_feature_shard(tmp_path / "ray" / shard))
        mine = shards[shard][r["name"]]
        theirs = Features.load(tmp_path / "local" / f"{r['name']}.safetensors")
        torch.testing.assert_close(mine.patches, theirs.patches, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.cls, theirs.cls, rtol=1e-5, atol=1e-5)
        assert mine.geometry == theirs.geometry and r["grid"] == list(theirs.geometry.grid)
    assert len(shards) >= 2  # the work was split into batches across the pool


def test_ray_pca_basis_is_the_distributed_reduction_of_the_local_one(ray_cluster, tiny_model_dir, tmp_path, capsys):
    photos = make_collection(tmp_path / "photos", n=8)
    code = main(["pca", str(photos), "-m", str(tiny_model_dir), "-o", str(tmp_path / "local"), "--no-progress"])
    assert code == 1
    capsys.readouterr()
    code = main(["pca", str(photos), "-m", str(tiny_model_dir), "-o", str(tmp_path / "ray"), "--engine", "ray",
                 "--no-cache"])
    stdout, stderr = capsys.readouterr()
    assert code == 1 and "8 of 10 input(s)" in stdout and "2 failed" in stdout and "(on Ray)" in stdout, stderr
    a = PCABasis.load(tmp_path / "local" / "pca_basis.safetensors")
    b = PCABasis.load(tmp_path / "ray" / "pca_basis.safetensors")
    for name in ("mean", "scale", "components", "low", "high", "variance"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-4)
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    remote = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.png"))
    assert local == remote and len(local) == 8
    assert not list((tmp_path / "ray").rglob(".*"))
    # resume on Ray: nothing left to do
    code = main(["pca", str(photos), "-m", str(tiny_model_dir), "-o", str(tmp_path / "ray"), "--engine", "ray",
                 "--resume", "--no-progress"])
    assert code == 1 and "8 already complete" in capsys.readouterr().out


def test_missing_ray_is_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    photos = make_collection(tmp_path / "photos", n=2)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["norms", str(photos), "-m", str(tiny_model_dir), "-o", str(tmp_path / "o"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and 'pip install "dinoscope[ray]"' in err
