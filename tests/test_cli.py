"""The CLI as a user runs it: subprocesses, files, sizes, modes, exit codes, messages."""

import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from helpers import assert_clean_failure, run_cli

class InProcess:
    """The CLI's main() called in this process: same code path as the command, without the start-up cost."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    from dinoscope.cli import main

    def call(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return InProcess(code, captured.out, captured.err)

    return call


def test_help_is_fast_and_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("norms", "pca", "similarity", "match", "all", "extract"):
        assert command in result.stdout


@pytest.mark.slow
def test_default_model_from_the_offline_cache(hf_home, tmp_path):
    """`dinoscope all` with no arguments: the real default id, resolved from the HF cache offline."""
    result = run_cli("all", "--out", tmp_path / "out", "--device", "cpu", hf_home=hf_home)
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    for stem in ("chelsea", "coffee", "astronaut"):
        for kind in ("norms", "pca", "sim_centre", "sim_cls"):
            assert f"{stem}_{kind}.png" in files
    assert "chelsea_coffee_matches_hungarian.png" in files and "coffee_astronaut_matches_hungarian.png" in files
    with Image.open(tmp_path / "out" / "chelsea_pca.png") as im:  # photo, map and legend side by side, caption below
        assert im.width > 2 * 451 and im.height > 300 and im.mode == "RGB"
    assert str((tmp_path / "out").resolve()) in result.stdout


@pytest.mark.slow
def test_each_command_writes_its_picture(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    common = ["--model", tiny_model_dir, "--out", out, "--device", "cpu"]
    assert cli("norms", "sample:coffee", *common).returncode == 0
    assert cli("pca", "sample:coffee", *common, "--components", "2", "--save-basis", tmp_path / "b.safetensors").returncode == 0
    assert cli("pca", "sample:astronaut", *common, "--basis", tmp_path / "b.safetensors").returncode == 0
    assert cli("similarity", "sample:coffee", *common, "--pixel", "100,50").returncode == 0
    assert cli("similarity", "sample:coffee", *common, "--cls", "--target", "sample:chelsea").returncode == 0
    r = cli("match", "sample:coffee", "sample:chelsea", *common, "--top-k", "25", "--pairs", tmp_path / "m.csv")
    assert r.returncode == 0, r.stderr
    assert cli("extract", "sample:chelsea", *common).returncode == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["astronaut_pca.png", "chelsea.safetensors", "coffee_chelsea_matches_hungarian.png",
                     "coffee_norms.png", "coffee_pca2.png", "coffee_sim_px100-50.png", "coffee_to_chelsea_sim_cls.png"]
    assert cli("norms", "sample:coffee", *common, "--bare").returncode == 0
    with Image.open(out / "coffee_norms.png") as im:
        assert im.size == (600, 400)
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "index_a,index_b,x_a,y_a,x_b,y_b,score" and len(rows) == 1 + 18 * 28


@pytest.mark.slow
def test_extract_file_layout(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    assert run_cli("extract", "sample:chelsea", "--model", tiny_model_dir, "--out", tmp_path, "--layer", "0").returncode == 0
    with safe_open(str(tmp_path / "chelsea.safetensors"), "pt") as f:
        assert set(f.keys()) == {"cls", "registers", "patches"}
        assert tuple(f.get_tensor("patches").shape) == (18, 28, 64)
        assert tuple(f.get_tensor("registers").shape) == (4, 64)
        assert '"rows": 18' in f.metadata()["geometry"] and f.metadata()["layer"] == "0"


def _bomb_png(path: Path, width=40000, height=40000):
    """A valid PNG header declaring a huge image, with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/page":
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def bad_images(tmp_path: Path, web: str) -> dict:
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (200, 200), "red").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (15, 15)).save(tmp_path / "tiny.png")
    _bomb_png(tmp_path / "bomb.png")
    return {
        "missing": (tmp_path / "nope.jpg", "nope.jpg"),
        "folder": (tmp_path / "folder", "folder"),
        "text": (tmp_path / "text.jpg", "text.jpg"),
        "zero-byte": (tmp_path / "empty.png", "empty"),
        "truncated": (tmp_path / "truncated.jpg", "truncated.jpg"),
        "smaller than a patch": (tmp_path / "tiny.png", "patch"),
        "bomb": (tmp_path / "bomb.png", "--max-pixels"),
        "404": (f"{web}/missing.png", "404"),
        "web page": (f"{web}/page", "html"),
        "refused": ("http://127.0.0.1:9/x.png", "127.0.0.1"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "text", "zero-byte", "truncated", "smaller than a patch", "bomb",
                                  "404", "web page", "refused"])
def test_bad_images_fail_cleanly(case, cli, tiny_model_dir, tmp_path, web):
    source, word = bad_images(tmp_path, web)[case]
    out = tmp_path / "out"
    result = cli("all", source, "--model", tiny_model_dir, "--out", out)
    assert_clean_failure(result, word)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args,word", [
    (["similarity", "--patch", "504"], "outside"),
    (["similarity", "--pixel", "449,10"], "margin"),
    (["similarity", "--pixel", "10,1000"], "outside"),
    (["similarity", "--cell", "3"], "cell"),
    (["similarity", "--cls", "--patch", "3"], "only one"),
    (["pca", "--components", "1,2"], "components"),
    (["norms", "--resolution", "giant"], "resolution"),
    (["norms", "--layer", "7"], "layer"),
    (["norms", "--dtype", "float16"], "bfloat16"),
    (["norms", "--cmap", "nope"], "colormap"),
    (["match", "sample:chelsea", "sample:coffee", "--pairs", "x.txt"], ".csv"),
    (["norms", "sample:zebra"], "chelsea"),
    (["norms", "--device", "cuda"], "cuda"),
])
def test_bad_options_fail_cleanly(args, word, cli, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = cli(*args, "--model", tiny_model_dir, "--out", out)
    assert_clean_failure(result, word)
    assert not out.exists() or not any(out.iterdir())


def test_unknown_option_is_a_usage_error():
    result = run_cli("norms", "--no-such-option")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("model,word", [
    ("facebook/dinov3-vitl16-pretrain-lvd1689m", "not in the hugging face cache"),
    ("./no/such/folder", "no file or folder"),
])
def test_unavailable_models_fail_cleanly(model, word, hf_home, tmp_path):
    result = run_cli("norms", "--model", model, "--out", tmp_path / "out", hf_home=hf_home)
    assert_clean_failure(result, word)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(cli, tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("norms", "--model", tiny_model_dir, "--out", blocker / "sub")
    assert_clean_failure(result, "cannot write")


@pytest.mark.slow
def test_bad_input_as_a_real_process(tiny_model_dir, tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    result = run_cli("all", tmp_path / "text.jpg", "--model", tiny_model_dir, "--out", tmp_path / "out")
    assert_clean_failure(result, "text.jpg")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_debug_shows_the_traceback(tiny_model_dir, tmp_path):
    result = run_cli("norms", tmp_path / "nope.png", "--model", tiny_model_dir, "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.slow
def test_all_on_the_samples_matches_each_against_the_given_image(cli, tiny_model_dir, tmp_path):
    result = cli("all", "--match", "sample:coffee", "--model", tiny_model_dir, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    matches = sorted(p.name for p in tmp_path.glob("*_matches_*.png"))
    assert matches == ["astronaut_coffee_matches_hungarian.png", "chelsea_coffee_matches_hungarian.png"]


@pytest.mark.slow  # a subprocess
def test_extract_to_a_named_file_with_normal_permissions(tiny_model_dir, tmp_path):
    import os
    import stat

    target = tmp_path / "feats.safetensors"
    old = os.umask(0o022)
    try:
        result = run_cli("extract", "sample:chelsea", "--model", tiny_model_dir, "-o", target)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert target.is_file()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("command, extra", [("pca", "ray"), ("video", "video"), ("ui", "ui")])
def test_help_shows_bracketed_extras(command, extra):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and f"dinoscope[{extra}]" in result.stdout.replace("\n", "")


@pytest.mark.slow  # a subprocess
def test_progress_status_and_summary_on_request_quiet_otherwise(tiny_model_dir, tmp_path):
    common = ["norms", "sample:chelsea", "--model", tiny_model_dir, "--out", tmp_path, "--no-cache"]
    quiet = run_cli(*common)
    assert quiet.returncode == 0 and quiet.stderr == ""  # not a terminal: nothing on stderr
    told = run_cli(*common, "--progress")
    assert told.returncode == 0, told.stderr
    assert "loading model" in told.stderr and "computing features" in told.stderr
    last = told.stderr.strip().splitlines()[-1]
    assert last.startswith("dinoscope: 1 picture in ") and "model " in last and "features " in last
