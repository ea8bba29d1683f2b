"""Two real processes writing the same output folder (and the same cache entries) at once."""

import subprocess
import sys

import pytest
from PIL import Image

from helpers import cli_env


@pytest.mark.slow
def test_two_runs_into_one_folder_leave_valid_files(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [sys.executable, "-m", "dinoscope", "all", "sample:coffee", "--match", "sample:chelsea", "--model",
            str(tiny_model_dir), "--out", str(out), "--cache-dir", str(cache)]
    extract = [sys.executable, "-m", "dinoscope", "extract", "sample:coffee", "sample:chelsea", "--model",
               str(tiny_model_dir), "--out", str(out), "--cache-dir", str(cache)]
    env = cli_env()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for cmd in (args, args, extract, extract)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary files left
    assert "coffee_pca.png" in names and "coffee_chelsea_matches_hungarian.png" in names
    for path in out.iterdir():
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                assert f.get_tensor("patches").shape[-1] == 64
    for entry in cache.rglob("*"):
        assert not entry.name.startswith("."), entry  # no temporary file left behind
