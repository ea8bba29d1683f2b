"""`dinoscope ui`: serve the interactive explorer."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .options import MODEL, Options, shared

# The explorer's limits are its own (lower than the command line's: the images come from strangers).
DEFAULT_UPLOAD_MB = 20.0
DEFAULT_UI_PIXELS = 40_000_000


@shared(*MODEL)
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on. 127.0.0.1 keeps it on this machine; anything else "
                                           "exposes it (a warning is printed).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 7860,
    allow_urls: Annotated[bool, typer.Option("--allow-urls", help="Let users load images from public http(s) URLs "
                                                                  "(never local or private addresses).")] = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted, in MB.")] = DEFAULT_UPLOAD_MB,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")] = DEFAULT_UI_PIXELS,
    search_folder: Annotated[Optional[Path], typer.Option(
        "--search-folder", help="A folder the Search tab searches: images, or the output folder of `dinoscope "
                                "extract`.", show_default=False)] = None,
    *, opts: Options,
):
    """Interactive explorer in the browser: click a patch and see its similarity map, PCA, norms, attention, matches.

    Needs the ui extra: pip install 'dinoscope\\[ui]'.
    """
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, not {port}")
    if max_upload_mb <= 0 or max_pixels <= 0:
        raise InputError("--max-upload-mb and --max-pixels must be positive")
    if search_folder is not None:
        from ..search_sources import open_collection

        open_collection(search_folder, max_pixels=max_pixels)  # a missing or empty folder fails now, not at the first search
    port = free_address(host, port)  # a busy port or a bad host is one line, before gradio starts
    try:
        import gradio  # noqa: F401  (checked here so a missing extra gets a one-line message)
    except ImportError:
        raise InputError("the explorer needs Gradio; install it with: pip install 'dinoscope[ui]'") from None
    from .. import ui as explorer

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        app, url = explorer.launch(opts.model, host=host, port=port, allow_urls=allow_urls, block=False,
                                   device=opts.device, dtype=opts.dtype, max_upload_bytes=int(max_upload_mb * 1_000_000),
                                   max_pixels=max_pixels, search_folder=search_folder)
    except OSError as exc:  # taken between our check and gradio's own bind
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                         "(--port 0 picks a free one)") from exc
    typer.echo(f"dinoscope explorer: {url}  (Ctrl+C to stop)", err=False)
    sys.stdout.flush()
    explorer.serve_until_interrupted(app)


def free_address(host: str, port: int) -> int:
    """The port to serve on: `port` if `host` can listen on it now, else a clear InputError; port 0 becomes
    a free port chosen by the system (printed with the explorer's address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise InputError(f"--host {host!r} is not an address of this machine ({getattr(exc, 'strerror', None) or exc}); "
                         "use 127.0.0.1, 0.0.0.0 or one of this machine's addresses") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is already in use; choose another --port "
                                 "(--port 0 picks a free one)") from None
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; use 127.0.0.1 or 0.0.0.0 "
                             "and a port above 1023") from None
        return probe.getsockname()[1]
