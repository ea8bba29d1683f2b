"""The explorer's callbacks without a browser: state, caching, pictures equal to the library's, bad input, SSRF."""

from __future__ import annotations

import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the explorer needs the ui extra: pip install 'dinoscope[ui]'")

from dinoscope import ui
from ui_helpers import default_settings, same_pixels  # noqa: E402
from dinoscope.analyses import CLS, PCABasis, Pixel  # noqa: E402
from dinoscope.errors import InputError, ModelError  # noqa: E402
from dinoscope.views import matches_view, norms_view, pca_view, similarity_view  # noqa: E402


def test_click_draws_the_library_picture_and_second_click_runs_no_model(engine):
    s = ui.Session()
    s, shown, msg = ui.load_sample(engine, s, "chelsea", "A")
    assert "chelsea" in msg and shown.size == s.slots["A"].image.size
    s, pic1, msg1 = ui.similarity(engine, s, default_settings(engine), "A", 100, 80)
    assert engine.forward_passes == 1 and "pixel (100, 80)" in msg1
    feats = engine.features(engine.default_label, s.slots["A"], "native")
    assert same_pixels(pic1, similarity_view(feats, Pixel(100, 80), s.slots["A"].image))
    for x, y in ((10, 10), (300, 200), (440, 280)):
        s, pic, _ = ui.similarity(engine, s, default_settings(engine), "A", x, y, alpha=0.3, cmap="viridis")
        assert same_pixels(pic, similarity_view(feats, Pixel(x, y), s.slots["A"].image, alpha=0.3, cmap="viridis"))
    s, pic, msg = ui.similarity(engine, s, default_settings(engine), "A", 450, 299)  # uncovered margin: nearest patch
    assert "nearest patch" in msg and same_pixels(pic, similarity_view(feats, Pixel(447, 287), s.slots["A"].image))
    s, pic_cls, msg = ui.similarity(engine, s, default_settings(engine), "A")  # the CLS button
    assert "CLS" in msg and same_pixels(pic_cls, similarity_view(feats, CLS, s.slots["A"].image))
    assert engine.forward_passes == 1  # every click after the first forward pass used the cache
    ui.norms(engine, s, default_settings(engine))
    ui.pca(engine, s, default_settings(engine))
    assert engine.forward_passes == 1


def test_cache_key_includes_model_resolution_and_layer_and_is_bounded(tiny_model_dir, tmp_path):
    e = ui.Engine(tiny_model_dir, device="cpu", disk_cache=False, workdir=tmp_path, max_entries=2)
    s = ui.Session()
    ui.load_sample(e, s, "chelsea", "A")
    ui.similarity(e, s, default_settings(e), "A", 5, 5)
    ui.similarity(e, s, ui.Settings(e.default_label, "short:224"), "A", 5, 5)
    ui.similarity(e, s, ui.Settings(e.default_label, "native", 0), "A", 5, 5)
    assert e.forward_passes == 3 and e.cached() == 2  # LRU bound holds
    ui.similarity(e, s, ui.Settings(e.default_label, "native", 0), "A", 50, 5)
    assert e.forward_passes == 3
    assert e.model_loads == 1  # one model load serves every resolution and layer
    e.close()


def test_same_image_from_two_sessions_is_computed_once_but_sessions_stay_apart(engine):
    one, two = ui.Session(), ui.Session()
    ui.load_sample(engine, one, "coffee", "A")
    with pytest.raises(InputError, match="load image A first"):
        ui.similarity(engine, two, default_settings(engine), "A", 5, 5)  # tab two sees nothing of tab one
    ui.load_sample(engine, two, "coffee", "A")
    ui.similarity(engine, one, default_settings(engine), "A", 5, 5)
    ui.similarity(engine, two, default_settings(engine), "A", 5, 5)
    assert engine.forward_passes == 1
    ui.load_sample(engine, two, "astronaut", "A")
    assert one.slots["A"].label == "coffee" and two.slots["A"].label == "astronaut"


def test_concurrent_clicks_share_one_forward_pass(engine):
    sessions = [ui.Session() for _ in range(6)]
    for s in sessions:
        ui.load_sample(engine, s, "chelsea", "A")
    errors = []

    def click(s):
        try:
            for i in range(5):
                ui.similarity(engine, s, default_settings(engine), "A", 20 * i, 10 * i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and engine.forward_passes == 1


def test_cross_image_pca_norms_matching_attention_equal_the_library(engine):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    ui.load_sample(engine, s, "coffee", "B")
    a, b = s.slots["A"], s.slots["B"]
    fa = engine.features(engine.default_label, a, "native")
    fb = engine.features(engine.default_label, b, "native")
    s, pic, msg = ui.similarity(engine, s, default_settings(engine), "A", 60, 70, target=ui.OTHER)
    assert "over image B" in msg
    assert same_pixels(pic, similarity_view(fb, Pixel(60, 70), b.image, query_features=fa, query_image=a.image))
    pic, _ = ui.pca(engine, s, default_settings(engine), components="2,3,4", foreground=False)
    basis = PCABasis.fit([fa], 4)
    assert same_pixels(pic, pca_view(fa, basis, components=[1, 2, 3]))
    pic, msg = ui.pca(engine, s, default_settings(engine), components="1", both=True)
    assert "one basis" in msg and pic.width > a.image.width + b.image.width
    pic, _ = ui.pca(engine, s, default_settings(engine), foreground=True)
    assert pic.size == a.image.size
    pic, _ = ui.norms(engine, s, default_settings(engine), "B", alpha=0.5, cmap="magma")
    assert same_pixels(pic, norms_view(fb, b.image, alpha=0.5, cmap="magma"))
    s, pic, msg = ui.matching(engine, s, default_settings(engine), method="mnn", top_k=20)
    assert same_pixels(pic, matches_view(fa, fb, a.image, b.image, method="mnn", top_k=20)[0])
    s, pic2, _ = ui.matching(engine, s, default_settings(engine), method="mnn", top_k=5)  # slider: no new matching
    assert not same_pixels(pic, pic2)
    s, _, _ = ui.similarity(engine, s, default_settings(engine), "A", 60, 70)
    pic, msg = ui.attention(engine, s, default_settings(engine), "A", heads=False)
    assert "attention of patch" in msg and pic.size[0] >= a.image.width
    passes = engine.forward_passes
    pic, _ = ui.attention(engine, s, default_settings(engine), "A", heads=True)
    assert engine.forward_passes == passes  # attention rows are cached too
    # as many full-size panels a row as the page shows unscaled, so the per-head captions stay legible
    assert a.image.width <= pic.width <= max(ui.callbacks.PAGE_WIDTH, a.image.width) + 4 * 3


def test_downloads_write_loadable_features_in_a_session_folder(engine):
    from dinoscope.features import Features

    s = ui.Session()
    with pytest.raises(InputError, match="load an image"):
        ui.downloads(engine, s, default_settings(engine))
    ui.load_sample(engine, s, "chelsea", "A")
    ui.load_sample(engine, s, "coffee", "B")
    ui.matching(engine, s, default_settings(engine))
    paths, msg = ui.downloads(engine, s, default_settings(engine))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["A_chelsea.safetensors", "B_coffee.safetensors", "matches.csv"]
    loaded = Features.load(paths[0])
    assert loaded.patches.shape == engine.features(engine.default_label, s.slots["A"], "native").patches.shape
    other = ui.Session()
    ui.load_sample(engine, other, "chelsea", "A")
    other_paths, _ = ui.downloads(engine, other, default_settings(engine))
    assert other.folder != s.folder  # one folder per session
    folder = s.folder
    ui._delete_session(s)  # what Gradio calls when the tab goes away
    import os

    assert not os.path.exists(folder) and os.path.exists(other_paths[0])


def _png(size=(64, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_uploads_are_refused_with_a_message_and_the_session_keeps_its_image(engine, tmp_path):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    junk = tmp_path / "photo.png"
    junk.write_text("not an image at all")
    with pytest.raises(InputError):
        ui.load_upload(engine, s, junk, "A")
    big = tmp_path / "big.png"
    big.write_bytes(_png() + b"\0" * (engine.max_upload_bytes + 10))
    with pytest.raises(InputError, match="limit"):
        ui.load_upload(engine, s, big, "A")
    small_limit = ui.Engine(engine.default_model, device="cpu", disk_cache=False, workdir=tmp_path, max_pixels=1000)
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png((200, 100)))
    with pytest.raises(InputError, match="pixels"):
        small_limit.load_upload(wide)
    small_limit.close()
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png())
    with pytest.raises(InputError, match="upload button"):
        ui.load_upload(engine, s, outside, "A", allowed_root=tmp_path / "uploads")  # no user path reaches the disk
    with pytest.raises(InputError, match="no file"):
        ui.load_upload(engine, s, None, "A")
    with pytest.raises(InputError, match="unknown sample"):
        ui.load_sample(engine, s, "../../etc/passwd", "A")
    assert s.slots["A"].label == "chelsea"
    s, pic, _ = ui.similarity(engine, s, default_settings(engine), "A", 5, 5)  # still works
    inside = tmp_path / "uploads" / "ok.png"
    inside.parent.mkdir()
    inside.write_bytes(_png())
    s, shown, msg = ui.load_upload(engine, s, inside, "B", allowed_root=tmp_path / "uploads")
    assert shown.size == (64, 48) and "ok" in msg


def test_bad_widget_values_are_input_errors(engine):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    bad = [
        lambda: ui.similarity(engine, s, ui.Settings("/etc/passwd"), "A", 5, 5),
        lambda: ui.similarity(engine, s, ui.Settings(engine.default_label, "huge:9"), "A", 5, 5),
        lambda: ui.similarity(engine, s, ui.Settings(engine.default_label, "native", 99), "A", 5, 5),
        lambda: ui.similarity(engine, s, default_settings(engine), "A", 5000, 5),
        lambda: ui.similarity(engine, s, default_settings(engine), "C", 5, 5),
        lambda: ui.similarity(engine, s, default_settings(engine), "A", 5, 5, cmap="no-such"),
        lambda: ui.similarity(engine, s, default_settings(engine), "A", 5, 5, alpha=3),
        lambda: ui.pca(engine, s, default_settings(engine), components="1,2"),
        lambda: ui.pca(engine, s, default_settings(engine), components="x"),
        lambda: ui.matching(engine, s, default_settings(engine)),  # no image B
        lambda: ui.matching(engine, s, default_settings(engine), method="greedy"),
        lambda: engine.layer(1.5),
    ]
    for call in bad:
        with pytest.raises(InputError):
            call()
    assert engine.forward_passes == 1


def test_missing_model_gives_a_message_and_the_app_keeps_working(tiny_model_dir, tmp_path):
    from dinoscope.models import load_model

    def loader(source):
        if source == "missing":
            raise ModelError("missing is not in the local cache and there is no network; download it first")
        return load_model(source, device="cpu")

    e = ui.Engine(tiny_model_dir, models={"tiny": str(tiny_model_dir), "missing": "missing"}, loader=loader,
                  disk_cache=False, workdir=tmp_path)
    s = ui.Session()
    ui.load_sample(e, s, "chelsea", "A")
    with pytest.raises(ModelError):
        ui.similarity(e, s, ui.Settings("missing"), "A", 5, 5)
    assert ui._message(ModelError("x is missing")) == "error: x is missing"
    assert ui._try(e.backbone, "missing").startswith("error: missing is not in the local cache")
    ui.similarity(e, s, ui.Settings("tiny"), "A", 5, 5)
    e.close()


def test_real_loader_error_for_an_uncached_model_is_one_line(tmp_path, offline_hub):
    e = ui.Engine(models={"vits16": "vits16"}, model="vits16", disk_cache=False, workdir=tmp_path)
    message = ui._try(e.backbone, "vits16")
    assert message.startswith("error: ") and "\n" not in message
    e.close()


# --- URLs from remote users: off unless enabled; never to local or private addresses


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        body = _png()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    _Counting.hits = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_urls_are_refused_unless_enabled(engine, local_server):
    with pytest.raises(InputError, match="turned off"):
        ui.load_url(engine, ui.Session(), f"http://127.0.0.1:{local_server}/cat.png", "A")
    with pytest.raises(InputError, match="turned off"):
        ui.fetch_image_url("https://example.com/cat.png", allow_urls=False, max_bytes=10**6, max_pixels=10**6)
    assert _Counting.hits == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "10.255.0.7", "192.168.1.1",
                                  "172.16.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "[::ffff:127.0.0.1]",
                                  "[fe80::1]", "[fc00::1]", "2130706433"])
def test_enabled_urls_never_reach_local_or_private_addresses(host, local_server):
    port = local_server if host in ("127.0.0.1", "localhost", "2130706433") else 9
    with pytest.raises(InputError, match="local or private address"):
        ui.fetch_image_url(f"http://{host}:{port}/cat.png", allow_urls=True, max_bytes=10**6, max_pixels=10**6,
                           timeout=2)
    assert _Counting.hits == 0  # refused before connecting: the local server saw nothing


def test_the_guard_is_what_refuses(local_server):
    """Without the guard, the same URL is fetched: the refusal above is the guard's doing, not a network error."""
    from dinoscope.images import fetch_url

    assert fetch_url(f"http://127.0.0.1:{local_server}/cat.png") == _png()
    assert _Counting.hits == 1


def test_other_schemes_are_refused():
    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "/etc/passwd", "sample:chelsea"):
        with pytest.raises(InputError, match="http"):
            ui.fetch_image_url(url, allow_urls=True, max_bytes=10**6, max_pixels=10**6)


@pytest.mark.parametrize("address, allowed", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False),
    ("127.1.2.3", False), ("10.1.2.3", False), ("172.31.255.255", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("::", False), ("fe80::1%eth0", False), ("fd00::1", False),
    ("::ffff:10.0.0.1", False), ("2002:0a00:0001::1", False), ("not an ip", False),
])
def test_address_allowed(address, allowed):
    assert ui.address_allowed(address) is allowed


def test_bind_warning_only_beyond_loopback():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert ui.bind_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        warning = ui.bind_warning(host)
        assert warning and host in warning and "127.0.0.1" in warning


def test_guarded_wrapper_keeps_outputs_and_reports(engine):
    """Errors in callbacks become a message; nothing else in the page changes."""
    import gradio as gr

    app = ui.build_app(engine=engine)
    assert isinstance(app, gr.Blocks) and app.dinoscope_engine is engine
    fns = {getattr(b, "api_name", None): b for b in app.fns.values()}
    assert {"similarity_at", "pca", "norms", "attention", "match"} <= set(fns)
    result = fns["pca"].fn(ui.Session(), engine.default_label, "native", -1, "patch grid", "1,2,3", False, False,
                           "viridis")
    assert result[-1].startswith("error: load image A first")


@pytest.mark.slow
def test_cli_ui_serves_prints_its_address_and_stops_on_ctrl_c(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    from helpers import SRC, cli_env
    from ui_helpers import fetch_served_page_then_interrupt

    env = cli_env(PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                  GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    proc = subprocess.Popen([sys.executable, "-m", "dinoscope", "ui", "--port", "0", "--model", str(tiny_model_dir),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    fetch_served_page_then_interrupt(proc, wait=90)


def test_cli_ui_without_gradio_or_bad_port_is_one_line(monkeypatch, capsys):
    from dinoscope.cli import main

    assert main(["ui", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_loading_with_settings_runs_the_forward_pass_so_the_first_click_is_instant(engine):
    s = ui.Session()
    s, _, msg = ui.load_sample(engine, s, "chelsea", "A", default_settings(engine))
    assert "features ready" in msg and engine.forward_passes == 1
    ui.similarity(engine, s, default_settings(engine), "A", 5, 5)
    assert engine.forward_passes == 1
    s, _, msg = ui.load_sample(engine, s, "coffee", "B", ui.Settings(engine.default_label, "native", 42))
    assert s.slots["B"].label == "coffee" and "layer 42 does not exist" in msg  # loaded anyway, reason shown


# ---- the page's overlay data, budgets, redraws, refused models, fairness


def test_live_features_give_the_library_cosine_and_large_grids_fall_back_to_the_server(engine):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    settings = default_settings(engine)
    live = ui.live_data(engine, s, settings)
    meta = live["A"]
    assert live["B"] is None and meta["path"] and meta["bytes"] == meta["rows"] * meta["cols"] * meta["dim"] * 2
    unit = np.frombuffer(Path(meta["path"]).read_bytes(), dtype="<f2").astype(np.float32).reshape(-1, meta["dim"])
    feats = engine.features(settings.model, s.slots["A"], "native")
    from dinoscope.analyses import similarity_map

    x, y = 100, 80
    row, col = int(y // meta["cell_h"]), int(x // meta["cell_w"])
    want = similarity_map(feats, Pixel(x, y)).numpy().ravel()
    got = unit @ unit[row * meta["cols"] + col]
    assert np.abs(got - want).max() < 3e-3  # what the browser computes is the server's map to float16 precision
    s, _, _ = ui.similarity(engine, s, settings, "A", x, y)
    assert ui.query_overlay(engine, s, settings) == {"slot": "A", "target": "A", "cell": [row, col], "sims": None}
    engine.live_max_bytes = 10  # too large to send: the grid only, and the server's values on each click
    assert ui.live_data(engine, s, settings)["A"]["path"] is None
    q = ui.query_overlay(engine, s, settings)
    assert np.allclose(q["sims"], want, atol=1e-4)


def test_uploads_above_the_budget_are_downscaled_with_a_notice(engine, tmp_path):
    from PIL import Image

    Image.new("RGB", (2000, 1500), (10, 200, 30)).save(tmp_path / "big.png")
    Image.new("RGB", (320, 240), (10, 200, 30)).save(tmp_path / "small.png")
    s, shown, msg = ui.load_upload(engine, None, tmp_path / "big.png", "A")
    assert "downscaled from 2000x1500" in msg and s.slots["A"].notice
    assert (shown.width // 16) * (shown.height // 16) <= engine.max_tokens == ui.EXPLORER_MAX_TOKENS
    assert abs(shown.width / shown.height - 2000 / 1500) < 0.01
    assert (shown.width // 16) * (shown.height // 16) > 0.9 * engine.max_tokens  # not needlessly small
    s, shown, msg = ui.load_upload(engine, s, tmp_path / "small.png", "B")
    assert shown.size == (320, 240) and "downscaled" not in msg and not s.slots["B"].notice
    with pytest.raises(InputError, match="choose a sample"):
        engine.load_sample(None)


def test_open_views_are_redrawn_and_a_failing_one_is_cleared(engine):
    s = ui.Session()
    ui.load_sample(engine, s, "chelsea", "A")
    settings = default_settings(engine)
    ui.norms(engine, s, settings)
    calls = []
    drawers = {"norms": lambda: ("picture", "norms redrawn"),
               "pca": lambda: calls.append("pca"),
               "matching": lambda: ui.matching(engine, s, settings)[1:]}
    s.views.add("matching")
    pictures, messages = ui.redraw(s, drawers)
    assert pictures["norms"] == "picture" and "pca" not in pictures and not calls  # never drawn: left alone
    assert pictures["matching"] is None and any("load image B first" in m for m in messages)


def test_a_model_that_cannot_load_is_refused_and_the_previous_stays(tiny_model_dir, tmp_path):
    e = ui.Engine(tiny_model_dir, device="cpu", disk_cache=False, workdir=tmp_path,
                  models={"tiny": str(tiny_model_dir), "gone": str(tmp_path / "absent")})
    s = ui.Session()
    keep, msg = ui.choose_model(e, s, "tiny")
    assert keep == "tiny" and "ready" in msg
    keep, msg = ui.choose_model(e, s, "gone")
    assert keep == "tiny" and msg.startswith("error: gone cannot be used") and "still using tiny" in msg
    e.close()


def test_models_without_local_weights_are_marked(engine):
    marked = [label for label in engine.models if label.endswith("(not downloaded)")]
    assert all(ui.state.identify(i) is None for label in marked for i in ui.state.MODELS[label.split()[0]].ids)


def test_a_large_image_does_not_hold_up_another_users_small_one(tiny_model_dir, tmp_path):
    release, big_started = threading.Event(), threading.Event()

    class SlowForBig(ui.Engine):
        def _forward(self, extractor, slot):
            if slot.label == "big":
                big_started.set()
                assert release.wait(60)
            return super()._forward(extractor, slot)

    from PIL import Image

    e = SlowForBig(tiny_model_dir, device="cpu", disk_cache=False, workdir=tmp_path)
    big, small = ui.Session(), ui.Session()
    settings = default_settings(e)
    big.slots["A"] = e._slot(Image.new("RGB", (640, 480), (200, 10, 10)), "big")
    worker = threading.Thread(target=e.features, args=(settings.model, big.slots["A"], "native"))
    worker.start()
    assert big_started.wait(60)
    ui.load_sample(e, small, "coffee", "A", settings)  # finishes while the big pass is still running
    ui.similarity(e, small, settings, "A", 20, 20)
    assert worker.is_alive() and e.forward_passes == 1
    release.set()
    worker.join(60)
    assert e.forward_passes == 2
    e.close()
