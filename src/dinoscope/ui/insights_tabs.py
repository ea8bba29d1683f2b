"""The Segments and Search tabs of the explorer's page and their wiring (Gradio; the callbacks are in .insights)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from . import insights as ins
from .state import Engine


def segments_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Segments", id="segments"):
        gr.Markdown("k-means over the patch features: each colour is one cluster. With A and B, one clustering "
                    "over both images: the same colour is the same part in each.")
        with gr.Row():
            w.seg_k = gr.Slider(1, ins.MAX_K, value=6, step=1, label="Segments (k)", elem_id="seg-k")
            w.seg_fg = gr.Checkbox(label="Foreground only", elem_id="seg-fg")
            w.seg_both = gr.Checkbox(label="A and B together", elem_id="seg-both")
            w.seg_sharp = gr.Checkbox(label="Edges following the photo", elem_id="seg-sharp")
            w.seg_alpha = gr.Slider(0, 1, value=0.6, step=0.05, label="Opacity", elem_id="seg-alpha")
            w.seg_btn = gr.Button("Draw segments", variant="primary", elem_id="seg-go")
        w.seg_out = gr.Image(type="filepath", interactive=False, label="Segments", elem_id="seg-out",
                             buttons=["download", "fullscreen"])


def search_tab(engine: Engine, w: SimpleNamespace) -> None:
    scopes = [ins.IN_B] + ([ins.IN_FOLDER] if engine.search_folder else [])
    with gr.Tab("Search", id="search"):
        gr.Markdown("Click a point on image A, then search: the patches most similar to the one under it, "
                    "best first (the query outlined in blue, each hit in red)."
                    + ("" if engine.search_folder else " Start the server with `--search-folder DIR` to search "
                                                       "a folder of images too."))
        with gr.Row():
            w.search_scope = gr.Radio(scopes, value=scopes[-1], label="Search in", elem_id="search-scope")
            w.search_top = gr.Slider(1, ins.MAX_HITS, value=20, step=1, label="Hits", elem_id="search-top")
            w.search_btn = gr.Button("Search from the last click on A", variant="primary", elem_id="search-go")
        w.search_out = gr.Image(type="filepath", interactive=False, label="Hits", elem_id="search-out",
                                buttons=["download", "fullscreen"])
        w.search_table = gr.Dataframe(headers=list(ins.HIT_COLUMNS), interactive=False, label="Hits (original-image "
                                      "pixels)", elem_id="search-table")


def wire(wiring) -> None:
    """Connect both tabs through the page's own guard and settings (see layout._Wiring)."""
    w, e, s = wiring.w, wiring.engine, wiring.settings
    common = [w.session, *wiring.common]
    w.seg_btn.click(wiring.guarded(lambda sess, m, r, l, d, k, fg, both, sharp, a: ins.segments(
        e, sess, s(m, r, l, d), k=k, foreground=fg, both=both, sharpen=sharp, alpha=a), 1),
        [*common, w.seg_k, w.seg_fg, w.seg_both, w.seg_sharp, w.seg_alpha], [w.seg_out, w.status], api_name="segments",
        concurrency_limit=2)
    w.search_btn.click(wiring.guarded(lambda sess, m, r, l, d, scope, top: ins.search(
        e, sess, s(m, r, l, d), scope=scope, top=top), 2),
        [*common, w.search_scope, w.search_top], [w.search_out, w.search_table, w.status], api_name="search",
        concurrency_limit=1)
