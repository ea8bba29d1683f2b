"""Downloads, fallbacks and their errors, against a local stand-in for the Hugging Face hub (tests/fake_hub.py).

huggingface_hub is pointed at 127.0.0.1 (in this process by patching its constants, in subprocesses
through HF_ENDPOINT, as a user would); nothing leaves the machine.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import build_vit, cli_env, run_cli
from dinoscope.errors import ModelError
from dinoscope.models import load_model
from dinoscope.models.loading import WeightsUnavailable
from dinoscope.render import label_random_weights
from fake_hub import COMMIT, FakeHub
from timm_files import folder_files, write_timm_folder

OFFICIAL = "facebook/dinov3-vits16-pretrain-lvd1689m"
OPEN = "timm/vit_small_patch16_dinov3_qkvb.lvd1689m"
DEMO_OFFICIAL = "facebook/dinov3-vitb16-pretrain-lvd1689m"
DEMO_OPEN = "timm/vit_base_patch16_dinov3_qkvb.lvd1689m"


@pytest.fixture(scope="session")
def timm_files(tmp_path_factory) -> dict[str, bytes]:
    """A tiny DINOv3 ViT in timm's hub layout, as the bytes of its two files."""
    model = build_vit(7)
    return folder_files(write_timm_folder(tmp_path_factory.mktemp("timm-copy"), model,
                                          "vit_small_patch16_dinov3_qkvb", num_heads=4))


@pytest.fixture(scope="session")
def plain_timm_files(tmp_path_factory) -> dict[str, bytes]:
    """The same, in timm's plain variant: no query/value biases."""
    model = build_vit(9, query_bias=False, value_bias=False)
    return folder_files(write_timm_folder(tmp_path_factory.mktemp("timm-plain"), model, "vit_small_patch16_dinov3",
                                          num_heads=4))


@pytest.fixture(scope="session")
def official_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("official-copy")
    build_vit(8).save_pretrained(folder)
    return folder_files(folder)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running fake hub with this process's huggingface_hub pointed at it and an empty cache."""
    import huggingface_hub.constants as c

    fake = FakeHub(stall_seconds=4).start()
    for name, value in {"ENDPOINT": fake.url, "HUGGINGFACE_CO_URL_TEMPLATE": fake.url + "/{repo_id}/resolve/{revision}/{filename}",
                        "HF_HUB_OFFLINE": False, "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
                        "HF_TOKEN_PATH": str(tmp_path / "hf" / "token"), "HF_HUB_ETAG_TIMEOUT": 1,
                        "HF_HUB_DOWNLOAD_TIMEOUT": 1}.items():
        monkeypatch.setattr(c, name, value, raising=False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.stop()


def go_offline(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dinoscope" and r.levelno >= logging.WARNING]


def test_an_ungated_copy_downloads_once_and_then_loads_offline(hub, timm_files, monkeypatch, caplog):
    hub.add(OPEN, "files", timm_files)
    backbone = load_model(OPEN, device="cpu")
    assert (backbone.source, backbone.revision, backbone.kind) == (OPEN, COMMIT, "vit")
    assert any(r.startswith("GET /timm/") and r.endswith("model.safetensors") for r in hub.requests)
    asked = len(hub.requests)
    go_offline(monkeypatch)
    again = load_model("hf-hub:" + OPEN, device="cpu")
    assert (again.source, again.revision) == (OPEN, COMMIT) and len(hub.requests) == asked
    assert notices(caplog) == []  # asked for by name: nothing was substituted


@pytest.mark.parametrize("mode, reason", [("gated", "gated"), ("forbidden", "gated")])
def test_refused_official_weights_fall_back_to_the_ungated_copy_with_one_notice(hub, timm_files, caplog, mode,
                                                                                 reason):
    hub.add(OFFICIAL, mode)
    hub.add(OPEN, "files", timm_files)
    backbone = load_model("vits16", device="cpu")
    assert (backbone.source, backbone.revision) == (OPEN, COMMIT)  # provenance: what was actually used
    said = notices(caplog)
    assert len(said) == 1 and OPEN in said[0] and OFFICIAL in said[0] and reason in said[0]


def test_offline_without_the_official_weights_uses_the_cached_copy(hub, timm_files, monkeypatch, caplog):
    hub.add(OPEN, "files", timm_files)
    load_model(OPEN, device="cpu")
    go_offline(monkeypatch)
    backbone = load_model(OFFICIAL, device="cpu")
    assert backbone.source == OPEN
    said = notices(caplog)
    assert len(said) == 1 and "not cached" in said[0] and "HF_HUB_OFFLINE" in said[0]


def test_official_weights_that_can_be_had_are_used_without_a_notice(hub, official_files, timm_files, caplog):
    hub.add(OFFICIAL, "files", official_files)
    hub.add(OPEN, "files", timm_files)
    backbone = load_model("vits16", device="cpu")
    assert (backbone.source, backbone.revision) == ("vits16", COMMIT)
    assert notices(caplog) == [] and not any(OPEN in r for r in hub.requests)


def test_errors_say_what_happened_and_nothing_else_is_substituted(hub, timm_files, tmp_path, caplog):
    hub.add(OPEN, "files", timm_files)
    with pytest.raises(ModelError, match="not found on the Hugging Face hub"):
        load_model("someone/no-such-model", device="cpu")
    hub.add("someone/flaky", "error")
    with pytest.raises(ModelError, match="HTTP 500"):
        load_model("someone/flaky", device="cpu")
    with pytest.raises(ModelError, match="no file or folder"):
        load_model(str(tmp_path / "missing" / "weights.safetensors"), device="cpu")
    assert not [r for r in hub.requests if "/timm/" in r]  # no other model was tried in their place
    hub.add(OFFICIAL, "gated")
    hub.add(OPEN, "error")
    with pytest.raises(WeightsUnavailable) as failure:
        load_model("vits16", device="cpu")
    assert OFFICIAL in str(failure.value) and OPEN in str(failure.value) and "HTTP 500" in str(failure.value)
    assert notices(caplog) == []


@pytest.mark.parametrize("mode", ["broken", pytest.param("stall", marks=pytest.mark.slow)])
def test_an_interrupted_download_leaves_nothing_loadable_and_resumes(hub, timm_files, monkeypatch, mode):
    hub.add(OPEN, mode, timm_files)
    with pytest.raises(ModelError) as failure:
        load_model(OPEN, device="cpu")
    assert OPEN in str(failure.value)
    import huggingface_hub.constants as c

    cached = list(Path(c.HF_HUB_CACHE).rglob("snapshots/*/*"))
    assert not [p for p in cached if p.name.endswith(".safetensors")]  # no half-written weights in a snapshot
    go_offline(monkeypatch)
    with pytest.raises(WeightsUnavailable):  # offline, the partial entry is not taken for a model
        load_model(OPEN, device="cpu")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    hub.add(OPEN, "files", timm_files)
    assert load_model(OPEN, device="cpu").revision == COMMIT


def cli(args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI against this test's own hub: none of this process's HF_* settings, no feature cache."""
    env = cli_env(offline=False, drop_hf=True, **env, DINOSCOPE_CACHE="off")
    return run_cli(*args, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_downloads_through_hf_endpoint_with_progress_and_says_which_copy(tmp_path, timm_files, plain_timm_files):
    plain = "timm/vit_small_patch16_dinov3.lvd1689m"
    with FakeHub() as fake:
        fake.add(DEMO_OFFICIAL, "gated")
        fake.add(DEMO_OPEN, "files", timm_files)
        fake.add(plain, "files", plain_timm_files)
        env = {"HF_ENDPOINT": fake.url, "HF_HOME": str(tmp_path / "hf")}
        done = cli(["all", "-r", "long:64", "-o", "out"], env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"using {DEMO_OPEN}" in done.stderr and "gated" in done.stderr
        assert "Download" in done.stderr or "100%" in done.stderr  # huggingface_hub's progress
        assert "RANDOM" not in done.stderr
        assert (tmp_path / "out" / "chelsea_pca.png").is_file()
        done = cli(["norms", "sample:coffee", "--model", "hf-hub:" + plain, "-r", "long:64", "-o", "first"], env,
                   tmp_path)
        assert done.returncode == 0 and "using" not in done.stderr, done.stderr  # named: nothing substituted
    # the hub is gone: the cache holds only the ungated copy, and the demo and a named model still work
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = cli(["all", "-r", "long:64", "-o", "again"], offline, tmp_path)
    assert done.returncode == 0 and f"using {DEMO_OPEN}" in done.stderr and "RANDOM" not in done.stderr
    done = cli(["pca", "sample:coffee", "--model", plain, "-r", "long:64", "-o", "named"], offline, tmp_path)
    assert done.returncode == 0, done.stderr
    photo = Image.open(tmp_path / "named" / "coffee_pca.png").convert("RGB")
    assert photo.getpixel((1, 1)) != (200, 0, 0)  # real weights: no random-weights tag


@pytest.mark.slow
def test_offline_demo_draws_labelled_random_weights_and_only_the_demo_does(tmp_path):
    offline = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1"}
    done = cli(["all", "-r", "long:64", "-o", "demo"], offline, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "REAL WEIGHTS UNREACHABLE" in done.stderr and DEMO_OPEN in done.stderr
    for name in ("chelsea_pca.png", "chelsea_sim_centre.png", "chelsea_coffee_matches_hungarian.png"):
        assert Image.open(tmp_path / "demo" / name).convert("RGB").getpixel((1, 1)) == (200, 0, 0)
    for args in (["all", "sample:chelsea"], ["all", "--model", "vitb16"], ["pca", "sample:chelsea"]):
        done = cli([*args, "-r", "long:64", "-o", "named"], offline, tmp_path)
        assert done.returncode == 2 and "RANDOM" not in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "named").exists()


def test_the_random_weights_tag_is_a_corner_of_the_same_picture():
    picture = Image.new("RGB", (320, 200), (0, 0, 255))
    tagged = label_random_weights(picture)
    assert tagged.size == picture.size and picture.getpixel((1, 1)) == (0, 0, 255)  # pure: input untouched
    assert tagged.getpixel((1, 1)) == (200, 0, 0) and tagged.getpixel((319, 199)) == (0, 0, 255)
    changed = int((np.asarray(tagged) != np.asarray(picture)).any(axis=-1).sum())
    assert 0 < changed < 0.15 * 320 * 200


def test_explorer_works_offline_from_the_ungated_copy_and_shows_which_weights(hub, timm_files, monkeypatch, tmp_path):
    from dinoscope import ui

    hub.add(DEMO_OPEN, "files", timm_files)
    load_model(DEMO_OPEN, device="cpu")  # the cache now holds only the ungated copy
    go_offline(monkeypatch)
    engine = ui.Engine(device="cpu", disk_cache=False, workdir=tmp_path)
    try:
        settings = ui.Settings(model=engine.default_label, resolution="short:224")
        _session, _image, status = ui.load_sample(engine, None, "chelsea", "A", settings)
    finally:
        engine.close()
    assert f"weights {DEMO_OPEN} at revision {COMMIT[:12]}" in status


def test_first_download_states_the_weights_licence_once(hub, timm_files, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="dinoscope")
    hub.add(OPEN, "files", timm_files)
    load_model(OPEN, device="cpu")
    said = [r.getMessage() for r in caplog.records if r.name == "dinoscope" and "DINOv3 License" in r.getMessage()]
    assert len(said) == 1 and OPEN in said[0] and "dinov3-license" in said[0]
    caplog.clear()
    load_model(OPEN, device="cpu")  # cached now: no second notice
    assert not any("DINOv3 License" in r.getMessage() for r in caplog.records)
