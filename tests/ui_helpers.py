"""Shared helpers of the explorer tests and benchmarks: free ports, a served app, a headless browser."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile

CHROMIUM = os.environ.get("DINOSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def quiet_gradio_env(tmp: str | os.PathLike | None = None) -> str:
    """No analytics lookups; Gradio's temp files in a folder of our own. Returns that folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    folder = os.fspath(tmp) if tmp else tempfile.mkdtemp(prefix="dinoscope-gradio-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model, **kwargs):
    """Serve the explorer on a free local port; yields (app, url); closes the server afterwards."""
    from dinoscope import ui

    app, url = ui.launch(model, host="127.0.0.1", port=free_port(), block=False, **kwargs)
    try:
        yield app, url
    finally:
        app.close()
        app.dinoscope_engine.close()


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM) or shutil.which("chromium") is not None


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def pick_sample(page, slot: str, name: str) -> None:
    """Choose a bundled sample in a Gradio dropdown and wait for the photo to show."""
    page.click(f"#sample-{slot} input")
    page.get_by_role("option", name=name, exact=True).first.click()
    page.wait_for_selector(f"#image-{slot} img", timeout=30_000)


def fetch_served_page_then_interrupt(proc, *, wait: float = 120) -> None:
    """Wait for the "dinoscope explorer: URL" line of a started explorer process, fetch its page, then stop
    it with Ctrl+C; the page must be dinoscope's and the process must end cleanly."""
    import signal
    import subprocess
    import time
    import urllib.request

    try:
        deadline, line = time.monotonic() + wait, ""
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


def default_settings(engine):
    """The explorer's settings with the engine's default model and every other control at its default."""
    from dinoscope import ui

    return ui.Settings(engine.default_label)


def same_pixels(a, b) -> bool:
    import numpy as np

    return np.array_equal(np.asarray(a), np.asarray(b))
