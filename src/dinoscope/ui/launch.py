"""Serving the explorer: what `dinoscope ui` runs. Gradio is imported here, on the first build."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from ..models import DEFAULT_MODEL
from .callbacks import _try
from .state import Engine, bind_warning

log = logging.getLogger("dinoscope")


def build_app(model: str | os.PathLike = DEFAULT_MODEL, **kwargs):
    """The explorer as a Gradio Blocks app (see `layout.build_app`); imports Gradio on first use."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .layout import build_app as build

    return build(model, **kwargs)


def launch(model: str | os.PathLike = DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 7860,
           allow_urls: bool = False, block: bool = True, quiet: bool = True, warm: bool = True,
           **engine_kwargs):
    """Serve the explorer; returns (app, url). With `block`, waits until Ctrl+C and then closes.

    With `warm`, the default model is loaded in the background at once, so the first click waits less.
    """
    warning = bind_warning(host)
    if warning:
        log.warning(warning)
    app = build_app(model, allow_urls=allow_urls, **engine_kwargs)
    engine: Engine = app.dinoscope_engine
    if allow_urls:
        log.warning("URL loading is on: the server will download images that users name "
                    "(public addresses only, at most %d MB each)", engine.max_upload_bytes // 1_000_000)
    if warm:
        threading.Thread(target=_try, args=(engine.backbone, engine.default_label), daemon=True,
                         name="dinoscope-warm").start()
    app.queue(max_size=64, default_concurrency_limit=2)
    if not port:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet, ssr_mode=False,
               max_file_size=engine.max_upload_bytes, allowed_paths=[os.fspath(engine.workdir)],
               footer_links=[], show_error=False)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{app.server_port}/" if ":" not in shown else f"http://[{shown}]:{app.server_port}/"
    if block:
        serve_until_interrupted(app)
    return app, url


def serve_until_interrupted(app) -> None:
    """Keep a launched explorer running until Ctrl+C (or SIGTERM), then close it and its engine."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        app.dinoscope_engine.close()
