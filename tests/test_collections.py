"""Collections: inputs, outputs mirroring folders, manifest, failures, resume, one PCA basis (streaming)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinoscope.cli import main
from dinoscope.collections import Job, expand_inputs, is_collection, read_manifest, run_collection
from dinoscope.features import Extractor, Features
from dinoscope.analyses import PCABasis
from dinoscope.analyses.streaming import Moments, Range, StreamingPCA, fit_streaming

SIZES = [(64, 48), (80, 64), (50, 40), (96, 32), (33, 47), (64, 64)]


def make_collection(root: Path, n: int = 12) -> Path:
    """n images of varied sizes in two folder levels, one truncated PNG, one HTML page named .jpg, one .txt."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        folder = root / ("a/b" if i % 3 == 2 else "a" if i % 3 == 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    data = (root / "img00.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "page.jpg").write_text("<!doctype html><html><body>not a photo</body></html>")
    (root / "notes.txt").write_text("not an input: ignored by suffix")
    return root


@pytest.fixture
def collection(tmp_path) -> Path:
    return make_collection(tmp_path / "photos")


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- inputs


def test_expand_folder_glob_list_and_files(collection, tmp_path):
    items = expand_inputs([str(collection)])
    names = [it.name for it in items]
    assert names == sorted(names) and len(items) == 14  # 12 images + truncated + page; notes.txt ignored
    assert "a/b/img02" in names and "a/truncated" in names and "page" in names
    assert all(Path(it.source).is_file() for it in items)

    globbed = expand_inputs([str(collection / "a" / "**" / "*.png")])
    assert {it.name for it in globbed} == {"img01", "img04", "img07", "img10", "truncated", "b/img02", "b/img05",
                                           "b/img08", "b/img11"}

    listing = tmp_path / "list.txt"
    listing.write_text("# my picks\nphotos/img00.png\n\nsample:chelsea\nhttps://example.com/x/cat%20one.jpg\n"
                       f"{collection / 'a' / 'img01.png'}\nphotos/img00.png\n")
    listed = expand_inputs([f"@{listing}"])
    assert [it.name for it in listed] == ["img00", "chelsea", "cat_one", "img01", "img00_2"]
    assert listed[0].source == os.path.normpath(collection / "img00.png")  # relative to the list's folder

    several = expand_inputs([str(collection / "img00.png"), "sample:coffee", str(collection / "a" / "img01.png")])
    assert [it.name for it in several] == ["img00", "coffee", "img01"]


def test_what_counts_as_a_collection(collection):
    assert not is_collection([str(collection / "img00.png")])
    assert not is_collection(["sample:chelsea"]) and not is_collection(["https://example.com/a*.jpg"])
    assert is_collection([str(collection)]) and is_collection(["@list.txt"])
    assert is_collection([str(collection / "*.png")]) and is_collection(["sample:chelsea", "sample:coffee"])


def test_bad_collection_specs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for spec, words in [(tmp_path / "empty", "no image files"), (f"{tmp_path}/nothing-*.png", "no files match"),
                        (f"@{tmp_path}/missing.txt", "no such list file")]:
        code, out, err = cli(capsys, "norms", spec, "--out", tmp_path / "o")
        assert code == 2 and err.count("\n") == 1 and words in err, err


# --------------------------------------------------------------------------- runs


def test_collection_run_outputs_manifest_failures_and_exit_code(collection, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, "norms", collection, "-m", tiny_model_dir, "-o", out, "--progress", "--bare")
    assert code == 1, stderr
    assert "12 of 14 input(s)" in stdout and "2 failed" in stdout and "images/s" in stdout
    assert "img/s" in stderr or "images/s" in stderr  # the progress bar
    assert "truncated" in stderr and "page.jpg" in stderr and "Traceback" not in stderr
    records = manifest(out)
    assert len(records) == 14 and [r["name"] for r in records] == [it.name for it in expand_inputs([str(collection)])]
    bad = {r["name"]: r for r in records if r["status"] != "ok"}
    assert set(bad) == {"a/truncated", "page"}
    assert "truncated" in bad["a/truncated"]["error"] and "web page" in bad["page"]["error"]
    for r in records:
        if r["status"] == "ok":
            assert r["outputs"] == [f"{r['name']}_norms.png"]
            picture = out / r["outputs"][0]
            with Image.open(r["source"]) as src, Image.open(picture) as im:
                assert im.size == src.size  # one picture per input at the input's size, folders mirrored
            assert r["grid"] == [src.size[1] // 16, src.size[0] // 16]
    assert (out / "a" / "b" / "img02_norms.png").is_file()
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_all_ok_exits_zero_and_extract_writes_features(collection, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "feats"
    code, stdout, stderr = cli(capsys, "extract", collection / "a" / "img01.png", collection / "img00.png", "-m",
                               tiny_model_dir, "-o", out, "--no-progress", "--no-cache")
    assert code == 0 and "0 failed" in stdout and "2 computed" in stdout, stderr
    assert sorted(p.name for p in out.iterdir()) == ["img00.safetensors", "img01.safetensors", "manifest.jsonl"]
    _, alone = Extractor(tiny_model_dir)(collection / "img00.png")
    torch.testing.assert_close(Features.load(out / "img00.safetensors").patches, alone.patches)


@pytest.mark.slow
def test_resume_after_interruption_redoes_nothing_complete(collection, tiny_model_dir, tmp_path, monkeypatch):
    items = expand_inputs([str(collection)])
    out = tmp_path / "out"
    written = []
    real_write = Job.write

    def interrupting(self, out_, name, image, features):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(name)
        return real_write(self, out_, name, image, features)

    monkeypatch.setattr(Job, "write", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_collection(items, Extractor(tiny_model_dir), Job("pca"), out)
    first = dict(written=list(written))
    assert len(first["written"]) == 5
    assert {r["name"] for r in read_manifest(out).values() if r["status"] == "ok"} == set(first["written"])
    basis_before = (out / "pca_basis.safetensors").read_bytes()
    pictures_before = {n: (out / f"{n}_pca.png").stat().st_mtime_ns for n in first["written"]}

    written.clear()
    monkeypatch.setattr(Job, "write", lambda self, *a: (written.append(a[1]), real_write(self, *a))[1])
    ex = Extractor(tiny_model_dir)
    summary = run_collection(items, ex, Job("pca"), out, resume=True)
    assert not set(written) & set(first["written"])  # nothing complete was redone
    assert len(written) == 7 and summary.skipped == 5 and summary.ok == 12 and summary.failed == 2
    assert ex.forward_passes == 7  # the saved basis is reused: no refit over the collection
    assert (out / "pca_basis.safetensors").read_bytes() == basis_before
    assert {n: (out / f"{n}_pca.png").stat().st_mtime_ns for n in first["written"]} == pictures_before
    assert len(read_manifest(out)) == 14

    # a missing output is redone even though the manifest says ok
    (out / "img03_pca.png").unlink()
    written.clear()
    run_collection(items, Extractor(tiny_model_dir), Job("pca"), out, resume=True)
    assert written == ["img03"]


def test_cli_resume_skips_complete(collection, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "similarity", collection, "-m", tiny_model_dir, "-o", out, "--cell", "0,0")[0] == 1
    code, stdout, _ = cli(capsys, "similarity", collection, "-m", tiny_model_dir, "-o", out, "--cell", "0,0",
                          "--resume", "--no-cache")
    assert code == 1 and "12 already complete" in stdout and "0 computed" in stdout


def test_collection_refusals_are_one_line(collection, tiny_model_dir, tmp_path, capsys):
    for args, words in [(["pca", "--foreground"], "--foreground"), (["similarity", "--target", "sample:coffee"], "--target"),
                        (["all", "--match", "sample:coffee"], "--match"), (["norms", "--engine", "spark"], "--engine")]:
        code, _, err = cli(capsys, args[0], collection, *args[1:], "-m", tiny_model_dir, "-o", tmp_path / "o")
        assert code == 2 and err.count("\n") == 1 and words in err, err


# --------------------------------------------------------------------------- streaming PCA


def _chunks(seed=0, n=7, dim=24):
    gen = torch.Generator().manual_seed(seed)
    # large offsets and very different scales per dimension: the hard case for one-pass moments
    offset = 1000 * torch.randn(dim, generator=gen)
    scale = torch.logspace(-2, 2, dim)
    mix = torch.randn(dim, dim, generator=gen)
    return [offset + (torch.randn(int(torch.randint(3, 60, (1,), generator=gen)), dim, generator=gen) @ mix) * scale
            for _ in range(n)]


def _assert_same_basis(a: PCABasis, b: PCABasis, tol=1e-4):
    for field in ("mean", "scale", "components", "low", "high", "variance"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=tol, atol=tol, msg=field)


def _fits_by(user: str, collection: Path, model, tmp_path: Path):
    """(the basis `user` streams, PCABasis.fit on the same patches at once, `user`'s basis with the data in
    another order, or None where the order is fixed)."""
    if user == "library":
        chunks = _chunks()
        reordered = list(reversed(chunks))[2:] + list(reversed(chunks))[:2]
        return fit_streaming(lambda: chunks, 5), PCABasis.fit(torch.cat(chunks), 5), fit_streaming(lambda: reordered, 5)
    if user == "video":
        pytest.importorskip("av")
        from test_collections_video import make_clip

        from dinoscope.video import iter_frames, run_video

        make_clip(tmp_path / "walk.mp4")
        run_video(tmp_path / "walk.mp4", Extractor(model), tmp_path / "video")
        feats = Extractor(model).features_of(list(iter_frames(tmp_path / "walk.mp4")))
        return PCABasis.load(tmp_path / "video" / "walk_pca_basis.safetensors"), PCABasis.fit(feats, 3), None
    items = [it for it in expand_inputs([str(collection)]) if it.name.startswith("img")]
    feats = [f for _, f in Extractor(model).extract_many([it.source for it in items])]
    shuffled = items[5:] + items[:5]
    if user == "collection":
        run = run_collection
    else:
        pytest.importorskip("ray")
        from dinoscope.ray_engine import run_on_ray as run
    for chosen, folder in ((items, "out"), (shuffled, "shuffled")):
        summary = run(chosen, Extractor(model), Job("pca"), tmp_path / folder)
        assert summary.failed == 0 and summary.basis_path == str(tmp_path / folder / "pca_basis.safetensors")
    return (PCABasis.load(tmp_path / "out" / "pca_basis.safetensors"), PCABasis.fit(feats, 3),
            PCABasis.load(tmp_path / "shuffled" / "pca_basis.safetensors"))


@pytest.mark.parametrize("user", ["library", "collection", "video", pytest.param("ray", marks=pytest.mark.ray)])
def test_every_streamed_fit_equals_the_fit_on_all_patches_and_ignores_order(user, collection, tiny_model_dir,
                                                                             tmp_path):
    streamed, whole, reordered = _fits_by(user, collection, tiny_model_dir, tmp_path)
    _assert_same_basis(streamed, whole)
    if reordered is not None:
        _assert_same_basis(reordered, streamed, tol=1e-5)


def test_partial_accumulators_merge_in_any_grouping():
    chunks = _chunks()
    whole = PCABasis.fit(torch.cat(chunks), 5)
    # merging partial accumulators (as cluster workers do) in any grouping gives the same moments
    left, right = Moments(), Moments()
    for c in chunks[:3]:
        left.update(c)
    for c in chunks[3:]:
        right.update(c)
    merged = Moments.from_state(right.state()).merge(Moments.from_state(left.state()))
    one = Moments()
    for c in chunks:
        one.update(c)
    assert merged.n == one.n == sum(len(c) for c in chunks)
    torch.testing.assert_close(merged.mean, one.mean)
    torch.testing.assert_close(merged.m2, one.m2, rtol=1e-9, atol=1e-6)
    span = Range().merge(Range.from_state(Range().update(whole, chunks[0]).state()))
    assert torch.all(span.low >= whole.low.double() - 1e-3) and torch.all(span.high <= whole.high.double() + 1e-3)
    # the same through StreamingPCA's states, both passes, merged in reverse order
    total = StreamingPCA(5)
    for c in chunks:
        total.observe(c)
    parts = [StreamingPCA(5).observe(c).state() for c in chunks]
    grouped = StreamingPCA(5)
    for state in reversed(parts):
        grouped.merge(state)
    torch.testing.assert_close(grouped.moments.m2, total.moments.m2, rtol=1e-9, atol=1e-6)
    grouped.fix_directions()
    for state in [grouped.spawn().observe(c).state() for c in chunks][::-1]:
        grouped.merge(state)
    _assert_same_basis(grouped.finish(), whole)


def test_collection_pictures_share_the_streamed_basis(collection, tiny_model_dir, tmp_path):
    items = [it for it in expand_inputs([str(collection)]) if it.name.startswith("img")]
    feats = [f for _, f in Extractor(tiny_model_dir).extract_many([it.source for it in items])]
    out = tmp_path / "out"
    run_collection(items, Extractor(tiny_model_dir), Job("pca"), out)
    saved = PCABasis.load(out / "pca_basis.safetensors")
    # every picture is drawn with the one collection basis, not a per-image fit
    from dinoscope.views import pca_view

    k = [it.name for it in items].index("img03")
    with Image.open(out / "img03_pca.png") as im:
        drawn = np.asarray(im.convert("RGB"))
    assert np.array_equal(drawn, np.asarray(pca_view(feats[k], saved)))
    assert not np.array_equal(drawn, np.asarray(pca_view(feats[k])))


def test_cli_pca_basis_is_saved_and_reused(collection, tiny_model_dir, tmp_path, capsys):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    basis = tmp_path / "colours.safetensors"
    code, stdout, _ = cli(capsys, "pca", collection / "a", "-m", tiny_model_dir, "-o", out1, "--save-pca-basis", basis)
    assert code == 1 and basis.is_file() and not (out1 / "pca_basis.safetensors").exists()  # a/truncated.png fails
    code, stdout, _ = cli(capsys, "pca", collection / "a" / "b", "-m", tiny_model_dir, "-o", out2, "--pca-basis", basis,
                          "--no-cache")
    assert code == 0 and "PCA basis" not in stdout and "4 computed" in stdout
    assert not (out2 / "pca_basis.safetensors").exists()
    for name in ("img02", "img05"):
        assert (out1 / "b" / f"{name}_pca.png").read_bytes() == (out2 / f"{name}_pca.png").read_bytes()
    # the single-image command reads the same file (old spelling --basis still works)
    code, _, _ = cli(capsys, "pca", collection / "a" / "b" / "img02.png", "-m", tiny_model_dir, "-o", tmp_path / "s",
                     "--basis", basis)
    assert code == 0
    assert (tmp_path / "s" / "img02_pca.png").read_bytes() == (out2 / "img02_pca.png").read_bytes()


def test_all_on_a_collection(collection, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "all", collection / "a" / "b", "-m", tiny_model_dir, "-o", out, "--no-progress")
    assert code == 0 and (out / "pca_basis.safetensors").is_file()
    records = manifest(out)
    assert len(records) == 4 and all(len(r["outputs"]) == 4 for r in records)
    assert all((out / o).is_file() for r in records for o in r["outputs"])
