"""Nothing half-written: runs interrupted with SIGINT or SIGTERM leave only complete files."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import cli_env

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from dinoscope.files import atomic_path, sigterm_as_interrupt
    with sigterm_as_interrupt():
        with atomic_path(sys.argv[1]) as tmp:
            with open(tmp, "wb") as f:
                for _ in range(400):
                    f.write(b"x" * 4096)
                    f.flush()
                    print("writing", flush=True)
                    time.sleep(0.01)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_write_leaves_no_file(tmp_path, sig):
    target = tmp_path / "out.bin"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env())
    for _ in range(5):
        proc.stdout.readline()  # the temporary file exists and is being written
    assert any(tmp_path.iterdir())
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_cli_run_leaves_only_complete_files(tiny_model_dir, tmp_path, sig):
    from safetensors import safe_open

    out = tmp_path / "out"
    images = ["sample:chelsea", "sample:coffee", "sample:astronaut"] * 100
    proc = subprocess.Popen([sys.executable, "-m", "dinoscope", "extract", *images, "--model", str(tiny_model_dir),
                             "--out", str(out), "--resolution", "short:1024", "--max-tokens", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env())
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(p.suffix == ".safetensors" and not p.name.startswith(".")
                                                                for p in out.iterdir())):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == 130, proc.stderr.read()
    assert any(out.iterdir())
    import json

    # several images make a collection: its manifest is written atomically too, and every output it
    # lists as ok is there
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all((out / o).is_file() for r in records if r["status"] == "ok" for o in r["outputs"])
    for path in out.iterdir():
        if path.name == "manifest.jsonl":
            continue
        assert path.suffix == ".safetensors" and not path.name.startswith("."), path.name
        with safe_open(str(path), "pt") as f:
            assert tuple(f.get_tensor("patches").shape)[-1] == 64


def test_interrupt_between_outputs_of_one_command_leaves_none(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`all` writes several pictures as one transaction: Ctrl+C after some of them are written leaves none,
    and no temporary file either."""
    from PIL import Image

    from dinoscope.cli import main

    real_save, saved = Image.Image.save, []

    def save_then_interrupt(picture, *args, **kwargs):
        real_save(picture, *args, **kwargs)
        saved.append(args[0] if args else None)
        if len(saved) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    out = tmp_path / "out"
    code = main(["all", "sample:chelsea", "--match", "sample:coffee", "--model", str(tiny_model_dir),
                 "--out", str(out)])
    assert code == 130 and len(saved) == 3
    assert not out.exists() or list(out.iterdir()) == []
    assert "wrote" not in capsys.readouterr().out
