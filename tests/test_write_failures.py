"""Write failures and checks before work: every command's outputs are one transaction (all or none), any OS
error while writing is exit 2 with one line naming the path and the real cause, and bad options, outputs,
inputs and checkpoints are refused before the model loads. In-process (main()) with injected OS errors,
plus a real full and a real read-only tmpfs where this machine lets a test mount one."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import dinoscope.files
from dinoscope.cli import main

COMMANDS = {
    "norms": ["norms", "sample:chelsea"],
    "pca": ["pca", "sample:chelsea"],
    "similarity": ["similarity", "sample:chelsea"],
    "match": ["match", "sample:chelsea", "sample:coffee"],
    "all": ["all", "sample:chelsea", "--match", "sample:coffee"],
    "extract": ["extract", "sample:chelsea"],
    "layers": ["layers", "sample:chelsea", "--layers", "0,1"],
    "attention": ["attention", "sample:chelsea"],
}
USES_CACHE = {"norms", "pca", "similarity", "match", "all", "extract"}


def no_cache(command: str) -> list[str]:
    """Keep the feature cache's own writes out of the count of renames."""
    return ["--no-cache"] if command in USES_CACHE else []
CAUSES = {  # errno -> a word the one line must say
    errno.ENOSPC: "no space",
    errno.EROFS: "read-only",
    errno.EISDIR: "folder stands where",
    errno.ENAMETOOLONG: "too long",
    errno.EACCES: "permission denied",
}


def call(args, capsys):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, [line for line in out.err.splitlines() if line.strip()]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


@pytest.fixture(scope="module")
def output_counts(tiny_model_dir, tmp_path_factory):
    """How many files each command writes when nothing fails."""
    counts = {}
    for name, args in COMMANDS.items():
        out = tmp_path_factory.mktemp(f"ok-{name}")
        assert main([*args, "--model", str(tiny_model_dir), "--out", str(out), *no_cache(name)]) == 0
        counts[name] = len(files_under(out))
        assert counts[name] >= 1 and not any(p.name.startswith(".") for p in files_under(out))
    return counts


@pytest.mark.parametrize("code", list(CAUSES), ids=[errno.errorcode[c] for c in CAUSES])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_write_failure_matrix(command, code, output_counts, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The last output's rename fails: exit 2, one line naming that path and the cause, and the outputs
    already renamed are taken back, so the folder holds nothing."""
    real_replace, calls, failed = os.replace, [], []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == output_counts[command]:
            failed.append(dst)
            raise OSError(code, os.strerror(code), os.fspath(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(dinoscope.files.os, "replace", replace)
    out = tmp_path / "out"
    status, stdout, err = call([*COMMANDS[command], "--model", tiny_model_dir, "--out", out, *no_cache(command)],
                               capsys)
    assert status == 2, err
    assert len(err) == 1 and str(failed[0]) in err[0] and CAUSES[code] in err[0].lower(), err
    assert "Traceback" not in "".join(err) and "wrote" not in stdout
    assert files_under(out) == []


@pytest.mark.parametrize("command", ["norms", "all", "extract"])
def test_a_folder_in_the_way_of_an_output(command, output_counts, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    reference = tmp_path / "reference"
    assert main([*COMMANDS[command], "--model", str(tiny_model_dir), "--out", str(reference), "--no-cache"]) == 0
    blocked = out / files_under(reference)[-1].name
    blocked.mkdir(parents=True)
    status, _, err = call([*COMMANDS[command], "--model", tiny_model_dir, "--out", out, "--no-cache"], capsys)
    assert status == 2 and len(err) == 1 and str(blocked) in err[0] and "folder stands where" in err[0]
    assert files_under(out) == [] and blocked.is_dir()


def test_a_name_too_long_for_the_file_system(tiny_model_dir, tmp_path, capsys):
    pairs = tmp_path / ("p" * 300 + ".csv")
    status, _, err = call(["match", "sample:chelsea", "sample:coffee", "--pairs", pairs, "--model", tiny_model_dir,
                           "--out", tmp_path / "out"], capsys)
    assert status == 2 and len(err) == 1 and "too long" in err[0], err
    assert files_under(tmp_path / "out") == []


def _mount_tmpfs(folder: Path, *options: str) -> Path:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *options]), "tmpfs", str(folder)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected errors above cover this")
    return folder


@pytest.mark.parametrize("command", ["norms", "all"])
def test_a_really_full_disk(command, tiny_model_dir, tmp_path, capsys):
    small = _mount_tmpfs(tmp_path / "small")
    try:
        with open(small / "filler", "wb") as filler:  # the disk filled to the last block
            try:
                filler.write(bytes(65_536))
                filler.flush()
            except OSError:
                pass
        status, stdout, err = call([*COMMANDS[command], "--model", tiny_model_dir, "--out", small / "out",
                                    "--no-cache"], capsys)
        assert status == 2 and len(err) == 1 and "no space" in err[0].lower(), err
        assert files_under(small / "out") == [] and "wrote" not in stdout
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_really_read_only_disk_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys, monkeypatch):
    frozen = _mount_tmpfs(tmp_path / "frozen", "ro")
    try:
        _refuse_loading(monkeypatch)
        status, _, err = call(["norms", "--model", tiny_model_dir, "--out", frozen / "out"], capsys)
        assert status == 2 and len(err) == 1 and "read-only" in err[0].lower() and str(frozen) in err[0], err
    finally:
        subprocess.run(["umount", str(frozen)], check=False)


# ------------------------------------------------------------------------------------------------
# everything that can be checked without a model is checked before it loads


def _refuse_loading(monkeypatch):
    import dinoscope.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(dinoscope.models, "load_model", refuse)


BAD_OPTIONS = {
    "top-k": (["match", "sample:chelsea", "sample:coffee", "--top-k", "-1"], "--top-k"),
    "max-lines": (["match", "sample:chelsea", "sample:coffee", "--max-lines", "-1"], "--max-lines"),
    "seed": (["match", "sample:chelsea", "sample:coffee", "--seed", "-1"], "--seed"),
    "all top-k": (["all", "sample:chelsea", "--top-k", "-1"], "--top-k"),
    "alpha nan": (["norms", "--alpha", "nan"], "--alpha"),
    "alpha -1": (["similarity", "--alpha", "-1"], "--alpha"),
    "alpha 2": (["attention", "--alpha", "2"], "--alpha"),
    "max-pixels": (["norms", "--max-pixels", "0"], "--max-pixels"),
    "max-tokens": (["norms", "--max-tokens", "-1"], "--max-tokens"),
    "batch-size": (["extract", "sample:chelsea", "--batch-size", "0"], "--batch-size"),
    "resolution huge": (["norms", "--resolution", f"short:{10**9}"], "out of range"),
    "resolution zero": (["norms", "--resolution", "long:0"], "out of range"),
    "resolution negative": (["norms", "--resolution=-5"], "resolution"),
    "device meta": (["norms", "--device", "meta"], "meta"),
    "device xpu": (["norms", "--device", "xpu"], "xpu"),
    "device cuda:99": (["norms", "--device", "cuda:99"], "cuda:99"),
    "device garbage": (["norms", "--device", "garbage"], "garbage"),
    "save-basis blocked": (["pca", "--save-basis", "{blocker}/sub/basis.safetensors"], "stands where"),
    "save-basis folder": (["pca", "--save-basis", "{tmp}"], "folder stands where"),
    "pairs blocked": (["match", "sample:chelsea", "sample:coffee", "--pairs", "{blocker}/pairs.csv"], "stands where"),
    "out is a file": (["norms", "--out", "{blocker}"], "stands where"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_refused_before_the_model_loads(case, tiny_model_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args, word = BAD_OPTIONS[case]
    args = [a.format(blocker=blocker, tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    _refuse_loading(monkeypatch)
    status, _, err = call([*args, "--model", tiny_model_dir], capsys)
    assert status == 2 and len(err) == 1 and word in err[0], err
    assert "_" not in err[0].split(":")[1].split()[0]  # a flag name, never an internal one like max_pixels
    assert files_under(tmp_path / "out") == [] and blocker.read_text() == "x"


def test_video_stride_zero(tmp_path, capsys):
    pytest.importorskip("av")
    status, _, err = call(["video", tmp_path / "clip.mp4", "--stride", "0", "--out", tmp_path / "out"], capsys)
    assert status == 2 and len(err) == 1 and "--stride" in err[0]


def test_a_too_small_second_image_leaves_no_pictures(tiny_model_dir, tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    status, _, err = call(["all", "sample:chelsea", "--match", tmp_path / "tiny.png", "--model", tiny_model_dir,
                           "--out", tmp_path / "out"], capsys)
    assert status == 2 and len(err) == 1 and "patch" in err[0]
    assert files_under(tmp_path / "out") == []


# ------------------------------------------------------------------------------------------------
# inputs that are not regular files, list files, hostile checkpoints


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    return path


def test_list_files_that_are_not_files_are_refused_at_once(fifo, tiny_model_dir, tmp_path, capsys):
    for spec, word in ((f"@{fifo}", "named pipe"), ("@/dev/zero", "character device")):
        status, _, err = call(["norms", spec, "--model", tiny_model_dir, "--out", tmp_path / "out"], capsys)
        assert status == 2 and len(err) == 1 and word in err[0], err


def test_a_huge_list_file_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import dinoscope.inputs

    monkeypatch.setattr(dinoscope.inputs, "MAX_LIST_BYTES", 1000)
    (tmp_path / "list.txt").write_text("sample:chelsea\n" * 200)
    status, _, err = call(["norms", f"@{tmp_path / 'list.txt'}", "--model", tiny_model_dir, "--out", tmp_path / "o"],
                          capsys)
    assert status == 2 and len(err) == 1 and "larger than" in err[0]


def test_devices_and_pipes_are_named_truly(fifo, tiny_model_dir, tmp_path, capsys):
    status, _, err = call(["norms", "--model", "/dev/null", "--out", tmp_path / "out"], capsys)
    assert status == 2 and "character device" in err[0] and "no file or folder" not in err[0]
    status, _, err = call(["norms", fifo, "--model", tiny_model_dir, "--out", tmp_path / "out"], capsys)
    assert status == 2 and "named pipe" in err[0]


def test_a_fifo_is_not_called_a_missing_video(fifo, tmp_path, capsys):
    pytest.importorskip("av")
    status, _, err = call(["video", fifo, "--out", tmp_path / "out"], capsys)
    assert status == 2 and "named pipe" in err[0] and "no such" not in err[0]


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"x")
        with archive.open("archive/data/0", "w", force_zip64=True) as entry:
            for _ in range(16):
                entry.write(bytes(2**24))  # 256 MiB of zeros, about 250 kB on disk
    return path


def test_hostile_checkpoints_are_one_line(tmp_path, capsys, monkeypatch):
    import resource

    folder = tmp_path / "random-folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov3_vit", "hidden_size": 768,
                                                   "num_hidden_layers": 12, "patch_size": 16}))
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({"model_type": "dinov3_vit", "hidden_size": 10**7,
                                                 "num_hidden_layers": 10**4, "patch_size": 16}))
    (tmp_path / "random.safetensors").write_bytes(os.urandom(4096))
    bomb = _zip_bomb(tmp_path / "bomb.pth")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for model, word in ((folder, "safetensors header"), (tmp_path / "random.safetensors", "safetensors header"),
                        (bomb, "inflate"), (huge, "parameters")):
        status, _, err = call(["norms", "--model", model, "--out", tmp_path / "out"], capsys)
        assert status == 2 and len(err) == 1 and word in err[0], err
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 200_000  # KiB: the 256 MiB bomb was never inflated


# ------------------------------------------------------------------------------------------------
# secrets and the explorer's launcher


def test_credentials_in_urls_never_written_or_printed(tiny_model_dir, tmp_path, capsys):
    secret_url = "http://someone:hunter2@127.0.0.1:9/photo.jpg"
    status, _, err = call(["norms", secret_url, "--model", tiny_model_dir, "--out", tmp_path / "one"], capsys)
    assert status == 2 and "hunter2" not in "".join(err) and "127.0.0.1" in "".join(err)
    status, stdout, err = call(["norms", secret_url, "sample:chelsea", "--model", tiny_model_dir,
                                "--out", tmp_path / "many"], capsys)
    assert status == 1 and "hunter2" not in "".join(err) + stdout and "127.0.0.1" in "".join(err)
    manifest = (tmp_path / "many" / "manifest.jsonl").read_text()
    assert "hunter2" not in manifest and "someone" not in manifest and "127.0.0.1" in manifest


def test_redact():
    from dinoscope.errors import redact

    assert redact("a https://u:p@h.com:8/x?y=1 b http://u@h/c") == "a https://h.com:8/x?y=1 b http://h/c"
    assert redact("no url here: user@example.com") == "no url here: user@example.com"


def test_ui_busy_port_bad_host_and_port_zero(capsys):
    pytest.importorskip("gradio")
    from dinoscope.cli.explorer import free_address

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, _, err = call(["ui", "--port", port], capsys)
        assert status == 2 and len(err) == 1 and "in use" in err[0] and str(port) in err[0]
    status, _, err = call(["ui", "--host", "999.1.1.1"], capsys)
    assert status == 2 and len(err) == 1 and "999.1.1.1" in err[0]
    assert 0 < free_address("127.0.0.1", 0) < 65536
