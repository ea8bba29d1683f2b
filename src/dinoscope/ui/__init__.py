"""The interactive explorer: click a patch in the browser and see what the model sees.

`build_app()` returns a Gradio Blocks app; `launch()` serves it (what `dinoscope ui` runs).

* :mod:`.state`: the server's :class:`Engine` (models, feature cache, limits, budget) and each tab's :class:`Session`;
* :mod:`.callbacks`: plain functions of an engine, a session and the widget values (tested without a browser);
* :mod:`.layout`: the Gradio page, one function per part, and its wiring (the only module importing Gradio);
* :mod:`.launch`: building and serving, deferring the Gradio import;
* ``overlay.js``: the page's script (loaded with the page): the similarity map drawn on a canvas over
  the photo, computed in the browser from features sent once per image; arrow keys; alt text; the
  announced status.

Exposed servers: the app binds 127.0.0.1 unless told otherwise and warns when it is not;
URL loading is off unless enabled and then never reaches loopback, private, link-local or
other non-public addresses (:mod:`dinoscope.download`, checked on every connection, redirects
included); uploads are limited in bytes and pixels; no text from a user is ever used as a file path.
"""

from __future__ import annotations

from ..download import address_allowed, guarded_opener
from .callbacks import (  # noqa: F401  (how the page words errors; tested)
                        KEEP_PICTURES,
                        Settings,
                        _message,
                        _try,
                        attention,
                        choose_model,
                        deliver,
                        downloads,
                        live_data,
                        load_sample,
                        load_upload,
                        load_url,
                        matching,
                        norms,
                        pca,
                        query_overlay,
                        redraw,
                        similarity,
)
from .launch import build_app, launch, serve_until_interrupted
from .state import (
                        CMAPS,
                        DEFAULT_MAX_UPLOAD_BYTES,
                        DEFAULT_MAX_UPLOAD_PIXELS,
                        EXPLORER_MAX_TOKENS,
                        LIVE_MAX_BYTES,
                        OTHER,
                        RESOLUTIONS,
                        SAME,
                        SLOTS,
                        Engine,
                        Session,
                        Slot,
                        _delete_session,  # noqa: F401  (what Gradio calls when a tab goes away; tested)
                        bind_warning,
                        fetch_image_url,
                        fit_budget,
)

__all__ = ["CMAPS", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_UPLOAD_PIXELS", "EXPLORER_MAX_TOKENS", "KEEP_PICTURES",
           "LIVE_MAX_BYTES", "OTHER", "RESOLUTIONS", "SAME", "SLOTS", "Engine", "Session", "Settings", "Slot",
           "address_allowed", "attention", "bind_warning", "build_app", "choose_model", "deliver", "downloads",
           "fetch_image_url", "fit_budget", "guarded_opener", "launch", "live_data", "load_sample", "load_upload",
           "load_url", "matching", "norms", "pca", "query_overlay", "redraw", "serve_until_interrupted",
           "similarity"]
