"""The Hugging Face Space app (space/): starts offline from the HF cache and serves the explorer's page."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env
from ui_helpers import fetch_served_page_then_interrupt

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


def test_space_files_declare_the_app_and_its_requirements():
    header = (ROOT / "space" / "README.md").read_text(encoding="utf-8").split("---")[1]
    assert re.search(r"^sdk: gradio$", header, re.M) and re.search(r"^app_file: app\.py$", header, re.M)
    requirements = (ROOT / "space" / "requirements.txt").read_text()
    assert "dinoscope[ui]" in requirements and "torch" in requirements


@pytest.mark.slow  # a subprocess
def test_space_app_serves_the_explorer_offline(hf_home, tmp_path):
    env = cli_env(hf_home, PYTHONPATH=str(ROOT / "src"), PORT="0", GRADIO_ANALYTICS_ENABLED="False",
                  GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    env.pop("SPACE_ID", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "space" / "app.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    fetch_served_page_then_interrupt(proc, wait=120)
