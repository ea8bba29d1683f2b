"""Fixtures: small random-weight DINOv3 models built from configs, and a Hugging Face cache
holding a small random ViT under the real default id, so nothing is downloaded. Shared functions
and constants live in helpers.py (import them from there, not from conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY, VITB16, build_pixel_vit, build_vit, fake_hf_cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-dinov3")
    build_vit(0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    from dinoscope.models import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """A Hugging Face cache with a small random DINOv3 ViT (ViT-B/16's patch and registers) under the real default id."""
    return fake_hf_cache(tmp_path_factory.mktemp("hf-home"), TINY)


@pytest.fixture(scope="session")
def hf_home_vitb16(tmp_path_factory) -> Path:
    """The same cache holding a random model of the real ViT-B/16 size (86M parameters), for tests of its size."""
    return fake_hf_cache(tmp_path_factory.mktemp("hf-home-vitb16"), VITB16)


def _offline_at(home: Path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"), raising=False)
    return home


@pytest.fixture
def offline_hub(hf_home, monkeypatch):
    """Point this process at the fake cache, offline, as a user's machine without network would be."""
    return _offline_at(hf_home, monkeypatch)


@pytest.fixture
def offline_hub_vitb16(hf_home_vitb16, monkeypatch):
    """offline_hub with the full-size ViT-B/16 cache."""
    return _offline_at(hf_home_vitb16, monkeypatch)


@pytest.fixture(scope="session")
def pixel_backbone():
    from dinoscope.models.loading import describe

    return describe(build_pixel_vit(), source="pixel-model", revision="test")


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    """Keep the CLI's default feature cache out of the user's home during tests."""
    monkeypatch.setenv("DINOSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "dinoscope-cache"))


@pytest.fixture
def engine(tiny_model_dir, tmp_path):
    """The explorer's server state (no gradio) on the tiny model, with no disk cache."""
    from dinoscope import ui

    e = ui.Engine(tiny_model_dir, device="cpu", disk_cache=False, workdir=tmp_path)
    yield e
    e.close()
