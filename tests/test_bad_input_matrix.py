"""Every CLI command against a table of awkward and hostile inputs: exit code, one line, no traceback,
no stray files. Runs main() in-process (the same code path as the command) to keep it fast."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoscope.cli import main

COMMANDS = {
    "norms": lambda img: ["norms", img],
    "pca": lambda img: ["pca", img],
    "similarity": lambda img: ["similarity", img],
    "attention": lambda img: ["attention", img],
    "layers": lambda img: ["layers", img, "--layers", "0,1"],
    "all": lambda img: ["all", img],
    "extract": lambda img: ["extract", img],
    "match-first": lambda img: ["match", img, "sample:chelsea"],
    "match-second": lambda img: ["match", "sample:chelsea", img],
    "segments": lambda img: ["segments", img, "--k", "2"],
    "atlas": lambda img: ["atlas", img],
    "search-query": lambda img: ["search", img, "--in", "sample:coffee", "--top", "3"],
}


def _exif_jpeg(path: Path, orientation: int):
    im = Image.new("RGB", (64, 32), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())


def make_cases(folder: Path) -> dict:
    """name -> (source, expected): expected is "ok" or a word the one-line error must contain."""
    folder.mkdir(exist_ok=True)
    cases = {}
    Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20)).save(folder / "16bit.png")
    cases["16-bit png"] = (folder / "16bit.png", "ok")
    Image.new("CMYK", (64, 48), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
    cases["cmyk jpeg"] = (folder / "cmyk.jpg", "ok")
    pal = Image.new("P", (64, 48), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    cases["palette with transparency"] = (folder / "palette.png", "ok")
    for k in range(1, 9):
        _exif_jpeg(folder / f"exif{k}.jpg", k)
        cases[f"exif orientation {k}"] = (folder / f"exif{k}.jpg", "ok")
    Image.new("RGB", (1, 1)).save(folder / "1x1.png")
    cases["1x1"] = (folder / "1x1.png", "patch")
    Image.new("RGB", (15, 15)).save(folder / "15x15.png")
    cases["15x15"] = (folder / "15x15.png", "patch")
    Image.new("RGB", (1, 10000)).save(folder / "1x10000.png")
    cases["1x10000"] = (folder / "1x10000.png", "patch")
    frames = [Image.new("P", (32, 32), i % 256) for i in range(500)]
    frames[0].save(folder / "500.gif", save_all=True, append_images=frames[1:], duration=10)
    cases["gif with 500 frames"] = (folder / "500.gif", "ok")
    (folder / "text.jpg").write_text("this is text, not a JPEG")
    cases["text with image extension"] = (folder / "text.jpg", "text.jpg")
    loop = folder / "loop.png"
    if not loop.is_symlink():
        os.symlink(loop, loop)
    cases["symlink loop"] = (loop, "loop.png")
    (folder / "empty.jpg").write_bytes(b"")
    cases["zero bytes"] = (folder / "empty.jpg", "empty")
    return cases


CASE_NAMES = ["16-bit png", "cmyk jpeg", "palette with transparency", *[f"exif orientation {k}" for k in range(1, 9)],
              "1x1", "15x15", "1x10000", "gif with 500 frames", "text with image extension", "symlink loop", "zero bytes"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_cases(tmp_path_factory.mktemp("inputs"))


def call(args, capsys):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", CASE_NAMES)
def test_matrix(command, case, cases, tiny_model_dir, tmp_path, capsys):
    source, expected = cases[case]
    out = tmp_path / "out"
    code, stdout, stderr = call([*COMMANDS[command](source), "--model", tiny_model_dir, "--out", out], capsys)
    assert "Traceback" not in stderr
    if expected == "ok":
        assert code == 0, stderr
        written = [p for p in out.iterdir()]
        assert written and not any(p.name.startswith(".") for p in written)
        for p in written:
            if p.suffix == ".png":
                with Image.open(p) as im:
                    im.load()
        return
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected.lower() in lines[0].lower(), stderr
    assert not out.exists() or not any(out.iterdir())


def test_exif_orientation_is_applied(cases, tiny_model_dir, tmp_path, capsys):
    for k in (1, 6):
        code, _, err = call(["norms", cases[f"exif orientation {k}"][0], "--model", tiny_model_dir, "--out", tmp_path,
                             "--bare"], capsys)
        assert code == 0, err
        with Image.open(tmp_path / f"exif{k}_norms.png") as im:
            assert im.size == ((64, 32) if k == 1 else (32, 64))


@pytest.mark.parametrize("command", ["norms", "match-first", "extract"])
def test_unwritable_output_folder(command, tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = call([*COMMANDS[command]("sample:chelsea"), "--model", tiny_model_dir, "--out", blocker / "out"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err
    assert blocker.read_text() == "x"


def test_unreadable_file(cases, tiny_model_dir, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads any file; the loader's permission error is covered in test_images.py")
    path = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(path)
    path.chmod(0)
    code, _, err = call(["norms", path, "--model", tiny_model_dir, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "secret.png" in err


@pytest.mark.parametrize("stem", ["..%2F..%2Fescape.png", "../../escape.png"])
def test_output_names_never_escape_the_output_folder(stem, tiny_model_dir, tmp_path, capsys):
    from dinoscope.cli import _stem

    name = _stem(f"http://127.0.0.1/{stem}")
    assert name == "escape"
    out = tmp_path / "deep" / "out"
    Image.new("RGB", (64, 48), "green").save(tmp_path / "img.png")
    weird = tmp_path / "deep" / "..img.png"
    weird.parent.mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), "green").save(weird)
    code, _, err = call(["norms", weird, "--model", tiny_model_dir, "--out", out], capsys)
    assert code == 0, err
    assert [p.parent for p in out.iterdir()] == [out]
