"""The Hugging Face Space app (space/): starts offline from the HF cache and serves the explorer's page."""

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import cli_env

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


def test_space_files_declare_the_app_and_its_requirements():
    header = (ROOT / "space" / "README.md").read_text(encoding="utf-8").split("---")[1]
    assert re.search(r"^sdk: gradio$", header, re.M) and re.search(r"^app_file: app\.py$", header, re.M)
    requirements = (ROOT / "space" / "requirements.txt").read_text()
    assert "dinoscope[ui]" in requirements and "torch" in requirements


def test_space_app_serves_the_explorer_offline(hf_home, tmp_path):
    env = cli_env(hf_home, PYTHONPATH=str(ROOT / "src"), PORT="0", GRADIO_ANALYTICS_ENABLED="False",
                  GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    env.pop("SPACE_ID", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "space" / "app.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline, line = time.monotonic() + 120, ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("dinoscope explorer: ") or proc.poll() is not None:
                break
        assert line.startswith("dinoscope explorer: http://127.0.0.1:"), (line, proc.poll())
        with urllib.request.urlopen(line.split()[2], timeout=20) as response:
            assert response.status == 200 and b"dinoscope" in response.read()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc in (0, 130), proc.stderr.read()[-2000:]
