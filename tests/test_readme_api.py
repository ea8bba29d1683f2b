"""The README's Python API section runs as written, with a tiny random model in place of the real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 3)]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def twelve_block_model(tmp_path_factory) -> Path:
    """A small random DINOv3 ViT with ViT-B/16's depth and registers, so the README's layer numbers exist."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from dinoscope.models.loading import vit_architecture

    config = dict(vit_architecture("vitb16"), hidden_size=32, intermediate_size=64, num_attention_heads=4)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vitb16-shaped")
    DINOv3ViTModel(DINOv3ViTConfig(**config)).eval().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_the_readme_notebook_session_runs(twelve_block_model, tmp_path, monkeypatch):
    code = _python_api_block()
    assert code.count('"vitb16"') >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace('"vitb16"', repr(str(twelve_block_model))), "README.md", "exec"), namespace)
    feats, other, picture = namespace["feats"], namespace["other"], namespace["picture"]
    assert feats.image.size == (451, 300) and other.image.size == (600, 400)
    assert isinstance(picture, Image.Image) and picture.width > 451 + 600
    assert "layer 11" in repr(feats) and "registers" in repr(feats)
    assert (tmp_path / "chelsea.safetensors").is_file()
