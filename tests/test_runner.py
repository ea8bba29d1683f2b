"""The collection runner: resume that checks what it resumes, an appended manifest, per-input write
transactions, leftovers of killed runs, and Ray's feature shards read by common tools as they are."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoscope.cli import main
from dinoscope.collections import Job, expand_inputs, read_manifest, run_collection
from dinoscope.features import Extractor

SRC = Path(__file__).resolve().parents[1] / "src"


def picture(path: Path, seed: int = 0, size=(48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    for i in range(4):
        picture(tmp_path / "photos" / f"p{i}.png", i)
    return tmp_path / "photos"


def lines(out: Path) -> list[str]:
    return (out / "manifest.jsonl").read_text().splitlines()


# --------------------------------------------------------------------------- resume checks what it resumes


def test_resume_redoes_exactly_what_no_longer_matches(photos, tiny_model_dir, tmp_path, caplog):
    items = expand_inputs([str(photos)])
    out = tmp_path / "out"

    def again(job=None, model=tiny_model_dir, **settings):
        return run_collection(items, Extractor(model, **settings), job or Job("norms", {"cmap": "magma"}), out,
                              resume=True)

    assert run_collection(items, Extractor(tiny_model_dir), Job("norms"), out).ok == 4
    same = run_collection(items, Extractor(tiny_model_dir), Job("norms", {"cmap": "inferno"}), out, resume=True)
    assert (same.skipped, same.computed, same.redone) == (4, 0, {})  # the default spelled out is the same recipe
    caplog.set_level("INFO", logger="dinoscope")
    changed = again()
    assert (changed.skipped, changed.computed, changed.redone) == (0, 4, {"cmap changed": 4})
    assert "redoing 4 of 4 input(s) recorded before: cmap changed (4)" in caplog.text
    # new content in one file: that one only; a file touched but unchanged: none
    picture(photos / "p2.png", 99)
    os.utime(photos / "p1.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    content = again()
    assert (content.skipped, content.computed, content.redone) == (3, 1, {"input content changed": 1})
    assert read_manifest(out)["p2"]["made_from"]["input"]["sha256"] != json.loads(lines(out)[2])["made_from"]["input"][
        "sha256"]
    assert again().skipped == 4
    layer = again(layer=0)
    assert (layer.skipped, layer.redone) == (0, {"layer changed": 4})
    other = shutil.copytree(tiny_model_dir, tmp_path / "another-model")
    model = again(model=other, layer=0)
    assert (model.skipped, model.redone) == (0, {"model changed": 4})
    assert again(model=other, layer=0).skipped == 4
    # the record says what each output was made from
    made = read_manifest(out)["p0"]["made_from"]
    assert made["model"] == str(other) and made["layer"] == 0 and made["cmap"] == "magma" and made["job"] == "norms"
    assert made["input"]["sha256"] and made["resolution"]


def test_resume_on_the_command_line_says_how_many_and_why(photos, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["similarity", str(photos), "-m", str(tiny_model_dir), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["similarity", str(photos), "-m", str(tiny_model_dir), "-o", str(out), "--resume", "--cell", "0,0",
                 "--no-progress", "--no-cache"])
    captured = capsys.readouterr()
    assert code == 0 and "4 computed" in captured.out, captured
    # another query is another file (_sim_cell0-0 beside _sim_centre): the new outputs are missing
    assert "redoing 4 of 4 input(s) recorded before: outputs missing (4)" in captured.err


def test_a_damaged_manifest_line_is_skipped_with_a_notice(photos, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["norms", str(photos), "-m", str(tiny_model_dir), "-o", str(out), "--no-progress", "--no-cache"]
    assert main(args) == 0
    text = lines(out)
    text[1] = text[1][: len(text[1]) // 2]  # half a line, as a disk error or an editor might leave it
    text[2] = "\x00\x00garbage"
    (out / "manifest.jsonl").write_text("\n".join(text) + "\n")
    capsys.readouterr()
    code = main([*args, "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert "2 damaged line(s) skipped (line 2, 3)" in captured.err and "delete those lines" in captured.err
    assert "2 already complete" in captured.out and "2 computed" in captured.out
    assert sorted(read_manifest(out)) == ["p0", "p1", "p2", "p3"]
    # a line cut by a killed run (no newline at the end) stays apart from the next one appended
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"name": "p3", "sou')
    (out / "p3_norms.png").unlink()
    assert main([*args, "--resume"]) == 0
    assert json.loads(lines(out)[-1])["name"] == "p3"


# --------------------------------------------------------------------------- the manifest is appended


def test_the_manifest_is_appended_not_rewritten(photos, tiny_model_dir, tmp_path, monkeypatch):
    items = expand_inputs([str(photos)])
    out = tmp_path / "out"
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b, **k: (replaced.append(Path(b).name), real_replace(a, b, **k))[1])
    run_collection(items, Extractor(tiny_model_dir), Job("norms"), out)
    first = (out / "manifest.jsonl").read_text()
    inode = (out / "manifest.jsonl").stat().st_ino
    (out / "p1_norms.png").unlink()
    summary = run_collection(items, Extractor(tiny_model_dir), Job("norms"), out, resume=True)
    after = (out / "manifest.jsonl").read_text()
    assert summary.skipped == 3 and summary.redone == {"outputs missing": 1}
    assert "manifest.jsonl" not in replaced  # never rewritten through a temporary file
    assert after.startswith(first) and (out / "manifest.jsonl").stat().st_ino == inode
    assert len(after.splitlines()) == 5 and json.loads(after.splitlines()[-1])["name"] == "p1"
    assert read_manifest(out)["p1"]["status"] == "ok"  # the last line of an input counts


# --------------------------------------------------------------------------- write failures are one input's


def test_an_os_error_writing_one_input_is_recorded_and_the_run_goes_on(photos, tiny_model_dir, tmp_path, monkeypatch,
                                                                        capsys):
    import dinoscope.jobs as jobs

    out = tmp_path / "out"
    real = jobs.write_object

    def full_disk(obj, tmp):
        if ".p1_pca.png." in tmp.name:  # the second of p1's four pictures
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, tmp)

    monkeypatch.setattr(jobs, "write_object", full_disk)
    (out / "p2_sim_centre.png").mkdir(parents=True)  # a folder in the way of one of p2's pictures
    code = main(["all", str(photos), "-m", str(tiny_model_dir), "-o", str(out), "--no-progress", "--no-cache"])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "2 of 4 input(s)" in captured.out and "2 failed" in captured.out
    records = read_manifest(out)
    assert [records[n]["status"] for n in ("p0", "p1", "p2", "p3")] == ["ok", "failed", "failed", "ok"]
    assert "No space left on device" in records["p1"]["error"] and "p1_pca.png" in records["p1"]["error"]
    assert "a folder stands where the file goes" in records["p2"]["error"]
    # one transaction per input: none of a failed input's pictures, no temporary files
    assert not list(out.glob("p1_*")) and [p.name for p in out.glob("p2_*")] == ["p2_sim_centre.png"]
    assert not [p for p in out.rglob(".*")]
    assert len(list(out.glob("p[03]_*.png"))) == 8


# --------------------------------------------------------------------------- leftovers of a killed run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_writers_are_cleaned_and_nothing_else(photos, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    dead, alive = _dead_pid(), os.getpid()
    ours = [out / f".p0_norms.png.{dead}-0123456789ab.part.png", out / "sub" / f".x.safetensors.{dead}-a0a0a0a0a0a0.part.safetensors",
            out / f".dinoscope-scratch-{dead}-k2j3" / "ab" / "entry.safetensors"]
    kept = [out / f".p3_norms.png.{alive}-0123456789ab.part.png", out / ".hidden", out / "notes.part.png",
            out / f".dinoscope-scratch-{alive}-zz" / "x", out / "mine.123-0123456789ab.part.png"]
    for path in ours + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    run_collection(expand_inputs([str(photos)]), Extractor(tiny_model_dir), Job("norms"), out)
    assert not any(p.exists() for p in ours) and not (out / f".dinoscope-scratch-{dead}-k2j3").exists()
    assert all(p.exists() for p in kept)


@pytest.mark.slow  # a subprocess
def test_kill_9_leftovers_are_cleaned_by_the_next_run(photos, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    for i in range(4, 40):
        picture(photos / f"p{i}.png", i, size=(160, 128))
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "dinoscope", "pca", str(photos), "-m", str(tiny_model_dir), "-o",
                             str(out), "--no-cache", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".dinoscope-scratch-*/*/*.safetensors")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(out.glob(".dinoscope-scratch-*")), "the run ended before it could be killed"
    assert main(["norms", str(photos / "p0.png"), str(photos / "p1.png"), "-m", str(tiny_model_dir), "-o", str(out),
                 "--no-progress", "--no-cache"]) == 0
    assert not list(out.rglob(".*"))


# --------------------------------------------------------------------------- Ray's feature shards


def test_feature_shards_are_typed_columns_that_pandas_and_pyarrow_read_as_they_are(photos, tiny_model_dir, tmp_path):
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    from dinoscope.ray_engine import SHARD_SCHEMA, ShardJob, load_feature_shard

    items = expand_inputs([str(photos)])
    picture(photos / "wide.png", 7, size=(80, 32))
    items = expand_inputs([str(photos)])
    ex = Extractor(tiny_model_dir)
    done = [(it, image, feats) for it, (image, feats) in zip(items, ex.extract_many([it.source for it in items]))]
    (outputs,) = {tuple(o) for o in ShardJob().write_batch(tmp_path, done)}
    path = tmp_path / outputs[0]
    table = pq.read_table(path)
    assert table.schema.equals(SHARD_SCHEMA) and str(table.schema.field("patches").type) == "list<element: float>"
    frame = pd.read_parquet(path)
    for (item, _, feats), (_, row) in zip(done, frame.iterrows()):
        patches = np.asarray(row["patches"], dtype=np.float32).reshape(row["rows"], row["cols"], row["dim"])
        assert row["name"] == item.name and np.array_equal(patches, feats.patches.numpy())
        assert np.array_equal(np.asarray(row["cls"], dtype=np.float32), feats.cls.numpy())
        regs = np.asarray(row["register_tokens"], dtype=np.float32).reshape(row["registers"], row["dim"])
        assert np.array_equal(regs, feats.registers.numpy())
    back = load_feature_shard(path)
    assert sorted(back) == sorted(it.name for it in items)
    assert back["wide"].geometry == done[-1][2].geometry if items[-1].name == "wide" else True
