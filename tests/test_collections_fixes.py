"""Review fixes for collections: own output skipped, unique names, model errors stop the run, resume basis, Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoscope.cli import main
from dinoscope.collections import Item, Job, expand_inputs, read_manifest, run_collection
from dinoscope.errors import InputError
from dinoscope.features import Extractor


def picture(path: Path, seed: int = 0, size=(48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- 1. the output folder is not an input


def test_folder_and_glob_skip_the_output_folder(tmp_path):
    root = tmp_path / "photos"
    picture(root / "a.png")
    picture(root / "sub" / "b.png", 1)
    out = root / "dinoscope-out"
    picture(out / "a_norms.png", 2)
    picture(out / "dinoscope-out" / "a_norms.png", 3)
    names = [it.name for it in expand_inputs([str(root)], exclude=out)]
    assert names == ["a", "sub/b"]
    globbed = [it.name for it in expand_inputs([str(root / "**" / "*.png")], exclude=out)]
    assert globbed == ["a", "sub/b"]
    # a relative output folder is resolved like the inputs
    import os
    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert [it.name for it in expand_inputs(["."], exclude="dinoscope-out")] == ["a", "sub/b"]
    finally:
        os.chdir(cwd)
    # naming the output folder itself is on purpose: it is read
    assert [it.name for it in expand_inputs([str(out)], exclude=out)] == ["a_norms", "dinoscope-out/a_norms"]


def test_second_run_in_the_current_folder_does_not_read_its_own_output(tmp_path, tiny_model_dir, monkeypatch,
                                                                       capsys):
    root = tmp_path / "photos"
    picture(root / "a.png")
    picture(root / "b.png", 1)
    monkeypatch.chdir(root)
    for _ in range(2):
        code, stdout, stderr = cli(capsys, "norms", ".", "-m", tiny_model_dir, "--no-progress", "--no-cache")
        assert code == 0 and "2 of 2 input(s)" in stdout, stderr
    assert not (root / "dinoscope-out" / "dinoscope-out").exists()
    assert sorted(r["name"] for r in read_manifest(root / "dinoscope-out").values()) == ["a", "b"]


# --------------------------------------------------------------------------- 2. unique output names


def test_renamed_duplicates_never_take_another_inputs_name(tmp_path):
    files = [picture(tmp_path / n, i) for i, n in enumerate(["tom.jpg", "tom.png", "tom_2.jpg"])]
    names = [it.name for it in expand_inputs([str(f) for f in files])]
    assert len({n.lower() for n in names}) == 3, names
    assert names[0] == "tom" and names[2] == "tom_2" and names[1] == "tom_3"

    more = ["x/Tom.png", "y/tom.png", "tom_2.png", "z/tom.png", "TOM_3.png", "tom_2.gif"]
    for rel in more:
        picture(tmp_path / "more" / rel)
    got = [it.name.rsplit("/", 1)[-1] for it in expand_inputs([str(tmp_path / "more" / r) for r in more])]
    assert len({n.lower() for n in got}) == len(got), got


# --------------------------------------------------------------------------- 3. model errors stop the run


@pytest.mark.parametrize("kind", ["norms", "pca"])
def test_a_model_that_cannot_load_is_one_error_not_one_per_image(tmp_path, kind, capsys, monkeypatch):
    for i in range(3):
        picture(tmp_path / "in" / f"p{i}.png", i)
    import dinoscope.models as models

    calls = []
    real = models.load_model

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    code, stdout, stderr = cli(capsys, kind, tmp_path / "in", "-m", tmp_path / "nonexistent", "-o", tmp_path / "out",
                               "--no-progress", "--no-cache")
    assert code == 2, (stdout, stderr)
    assert stderr.count("\n") == 1 and "PCA needs" not in stderr and "Traceback" not in stderr, stderr
    assert len(calls) == 1
    assert not any(r["status"] == "failed" for r in read_manifest(tmp_path / "out").values())


class _FlakyBatches(Extractor):
    """Runs out of memory on any batch of more than one image."""

    def features_of(self, images, **kw):
        if len(images) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().features_of(images, **kw)


def test_a_batch_that_runs_out_of_memory_falls_back_to_one_image_at_a_time(tmp_path, tiny_model_dir):
    items = [Item(str(picture(tmp_path / "in" / f"p{i}.png", i)), f"p{i}") for i in range(3)]
    summary = run_collection(items, _FlakyBatches(tiny_model_dir), Job("norms"), tmp_path / "out")
    assert summary.ok == 3 and summary.failed == 0


# --------------------------------------------------------------------------- 4. resume with a saved basis that does not fit


def _first_pca_run(tmp_path, model):
    items = [Item(str(picture(tmp_path / "in" / f"p{i}.png", i)), f"p{i}") for i in range(3)]
    out = tmp_path / "out"
    summary = run_collection(items, Extractor(model), Job("pca"), out)
    assert summary.ok == 3
    return items, out


def _all_still_ok(out):
    records = read_manifest(out)
    assert len(records) == 3 and all(r["status"] == "ok" for r in records.values()), records


def test_resume_with_a_basis_of_too_few_components_is_one_error(tmp_path, tiny_model_dir):
    items, out = _first_pca_run(tmp_path, tiny_model_dir)
    with pytest.raises(InputError, match="has 3 components, this run needs 4"):
        run_collection(items, Extractor(tiny_model_dir), Job("pca", {"components": (3,)}), out, resume=True)
    _all_still_ok(out)


def test_resume_with_a_basis_for_other_features_is_one_error(tmp_path, tiny_model_dir):
    import torch

    from dinoscope.analyses import PCABasis

    items, out = _first_pca_run(tmp_path, tiny_model_dir)
    other = PCABasis.fit(torch.randn(50, 7), 4)
    other.save(out / "pca_basis.safetensors")
    (out / "p1_pca.png").unlink()  # one input to redo
    with pytest.raises(InputError, match="7-dim features") as err:
        run_collection(items, Extractor(tiny_model_dir), Job("pca"), out, resume=True)
    assert "\n" not in str(err.value)
    records = read_manifest(out)
    assert [r["status"] for r in records.values()] == ["ok", "ok", "ok"]


# --------------------------------------------------------------------------- 5. Ray cannot start


@pytest.mark.ray
@pytest.mark.parametrize("address", ["ray://nowhere.invalid:10001", ""])
def test_ray_that_cannot_start_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys, address):
    ray = pytest.importorskip("ray")

    def refuse(*args, **kwargs):
        raise ConnectionError("Failed to connect to the cluster\nlong Ray traceback text")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_ADDRESS", address)
    picture(tmp_path / "in" / "a.png")
    picture(tmp_path / "in" / "b.png", 1)
    code, stdout, stderr = cli(capsys, "norms", tmp_path / "in", "-m", tiny_model_dir, "-o", tmp_path / "out",
                               "--engine", "ray", "--no-progress")
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    if address:
        assert f"cannot reach the Ray cluster at {address}" in stderr and "RAY_ADDRESS" in stderr
    else:
        assert "cannot start a local Ray cluster" in stderr


def test_pca_collection_computes_each_image_once_even_with_a_tiny_user_cache(tiny_model_dir, tmp_path, capsys,
                                                                                monkeypatch):
    from PIL import Image

    from dinoscope.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (64 + 16 * i, 48), colour).save(photos / f"p{i}.png")
    monkeypatch.setenv("DINOSCOPE_CACHE_SIZE", "1")  # the user's cache keeps nothing between passes
    capsys.readouterr()
    code = main(["pca", str(photos), "-m", str(tiny_model_dir), "-o", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(3 computed" in out  # fit, colour range and drawing passes share one forward pass per image
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".dinoscope-scratch")]
