"""The explorer's page: one function per part of the page, and the wiring of widgets to callbacks."""

from __future__ import annotations

import os
import tempfile
import time
from types import SimpleNamespace

import gradio as gr

from ..images import SAMPLES
from . import callbacks as cb
from ..models import DEFAULT_MODEL
from .state import CMAPS, DETAILS, OTHER, RESOLUTIONS, SAME, SLOTS, Engine, Session, _delete_session

PICTURE_BUTTONS = ["download", "fullscreen"]


def _picture(label: str, elem_id: str):
    return gr.Image(type="filepath", interactive=False, label=label, elem_id=elem_id, buttons=PICTURE_BUTTONS)


def _header(engine: Engine, w: SimpleNamespace) -> None:
    gr.Markdown("## dinoscope explorer\nPick or upload an image, then click on it: the map shows how similar "
                "every patch is to the one you clicked.")
    with gr.Row():
        w.model = gr.Dropdown(list(engine.models), value=engine.default_label, label="Model", elem_id="model")
        w.resolution = gr.Dropdown(RESOLUTIONS, value="native", label="Resolution", elem_id="resolution")
        w.layer = gr.Number(value=-1, precision=0, label="Layer (-1 = last)", elem_id="layer")
        w.detail = gr.Dropdown(DETAILS, value=DETAILS[0], label="Detail (denser grid, sharpened maps)",
                               elem_id="detail")
    w.status = gr.Textbox(label="Status", interactive=False, elem_id="status", max_lines=2)


def _images(engine: Engine, w: SimpleNamespace) -> None:
    w.displays, w.pickers, w.uploads, w.urls = {}, {}, {}, {}
    with gr.Row():
        for name in SLOTS:
            with gr.Column():
                with gr.Row():
                    w.pickers[name] = gr.Dropdown(sorted(SAMPLES), value=None, label=f"Sample for image {name}",
                                                  elem_id=f"sample-{name.lower()}")
                    w.uploads[name] = gr.UploadButton(f"Upload image {name}", file_types=["image"], type="filepath",
                                                      elem_id=f"upload-{name.lower()}")
                if engine.allow_urls:
                    w.urls[name] = gr.Textbox(label=f"Image {name} URL (Enter to load)", elem_id=f"url-{name.lower()}")
                w.displays[name] = gr.Image(type="filepath", interactive=False, label=f"Image {name} (click)",
                                            elem_id=f"image-{name.lower()}", buttons=["fullscreen"])


def _similarity_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Similarity", id="similarity"):
        with gr.Row():
            w.target = gr.Radio([SAME, OTHER], value=SAME, label="Map over", elem_id="target")
            w.alpha = gr.Slider(0, 1, value=0.55, step=0.05, label="Opacity", elem_id="alpha")
            w.sim_cmap = gr.Dropdown(CMAPS, value="turbo", label="Colormap", elem_id="sim-cmap")
            w.cls = {"A": gr.Button("CLS query (image A)", elem_id="cls-a"),
                     "B": gr.Button("CLS query (image B)", elem_id="cls-b")}
        w.sim_out = _picture("Similarity", "sim-out")
        # API-only twin of the click (benchmarks and scripted clients): slot, x, y
        with gr.Row(visible=False):
            w.api_slot = gr.Textbox(value="A")
            w.api_x = gr.Number()
            w.api_y = gr.Number()
            w.api_btn = gr.Button("query")


def _pca_tab(w: SimpleNamespace) -> None:
    with gr.Tab("PCA", id="pca"):
        with gr.Row():
            w.comps = gr.Textbox(value="1,2,3", label="Components (three for RGB, one for a map)",
                                 elem_id="pca-components")
            w.fg = gr.Checkbox(label="Foreground only", elem_id="pca-fg")
            w.both = gr.Checkbox(label="A and B with one basis", elem_id="pca-both")
            w.pca_cmap = gr.Dropdown(CMAPS, value="viridis", label="Colormap (one component)")
            w.pca_btn = gr.Button("Draw PCA", variant="primary", elem_id="pca-go")
        w.pca_out = _picture("PCA", "pca-out")


def _norms_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Norms", id="norms"):
        with gr.Row():
            w.norm_slot = gr.Radio(list(SLOTS), value="A", label="Image")
            w.norm_alpha = gr.Slider(0, 1, value=0.0, step=0.05, label="Opacity over the photo")
            w.norm_cmap = gr.Dropdown(CMAPS, value="inferno", label="Colormap")
            w.norm_btn = gr.Button("Draw norms", variant="primary", elem_id="norms-go")
        w.norm_out = _picture("Norms", "norms-out")


def _attention_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Attention", id="attention"):
        gr.Markdown("Attention of the last patch you clicked in that image (or of CLS), ViT models only.")
        with gr.Row():
            w.att_slot = gr.Radio(list(SLOTS), value="A", label="Image")
            w.att_heads = gr.Checkbox(value=True, label="One panel per head")
            w.att_btn = gr.Button("Draw attention", variant="primary", elem_id="attention-go")
        w.att_out = _picture("Attention", "attention-out")


def _matching_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Matching", id="matching"):
        with gr.Row():
            w.method = gr.Radio(["hungarian", "mnn"], value="hungarian", label="Method", elem_id="method")
            w.top_k = gr.Slider(0, 800, value=50, step=10, label="Top-k pairs (0 = up to 800 sampled)",
                                elem_id="top-k")
            w.match_btn = gr.Button("Match A and B", variant="primary", elem_id="match-go")
        w.match_out = _picture("Matches", "match-out")


def _downloads_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Downloads", id="downloads"):
        gr.Markdown("Pictures: the download button on each picture. Features of the loaded images "
                    "(and the last matches as CSV):")
        w.dl_btn = gr.Button("Prepare features", elem_id="features-go")
        w.dl_files = gr.File(file_count="multiple", interactive=False, label="Files", elem_id="files")


class _Wiring:
    """Connects widgets to callbacks: every callback gets the engine, the tab's session and the settings."""

    def __init__(self, engine: Engine, w: SimpleNamespace):
        self.engine, self.w = engine, w
        self.common = [w.model, w.resolution, w.layer, w.detail]
        self.upload_root = os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")

    def settings(self, model_label, resolution, layer, detail=DETAILS[0]) -> cb.Settings:
        return cb.Settings(model_label, resolution, self.engine.layer(layer), *cb.detail(detail))

    def guarded(self, fn, n_out, photo=False):
        """Run a callback; on error keep every output as it was and show the message."""
        def run(*args):
            try:
                return cb.deliver(self.engine, args[0], fn(*args), photo=photo)
            except Exception as exc:  # noqa: BLE001 - the page must keep working whatever happened
                return tuple(gr.skip() for _ in range(n_out)) + (cb._message(exc),)
        return run

    def similarity(self, sess, n, x, y, m, r, l, d, tgt, a, c):
        return cb.similarity(self.engine, sess, self.settings(m, r, l, d), n, x, y, target=tgt, alpha=a, cmap=c)

    def images(self) -> None:
        w, e, s = self.w, self.engine, self.settings
        for name in SLOTS:
            outputs = [w.session, w.displays[name], w.status]
            w.pickers[name].input(self.guarded(lambda sess, sample, m, r, l, d, n=name: cb.load_sample(
                e, sess, sample, n, s(m, r, l, d)), 2, True), [w.session, w.pickers[name], *self.common], outputs,
                concurrency_limit=4, api_name=f"sample_{name.lower()}")
            w.uploads[name].upload(self.guarded(lambda sess, path, m, r, l, d, n=name: cb.load_upload(
                e, sess, path, n, self.upload_root, s(m, r, l, d)), 2, True),
                [w.session, w.uploads[name], *self.common],
                outputs, concurrency_limit=4, api_name=f"upload_{name.lower()}")
            if name in w.urls:
                w.urls[name].submit(self.guarded(lambda sess, url, m, r, l, d, n=name: cb.load_url(
                    e, sess, url, n, s(m, r, l, d)), 2, True), [w.session, w.urls[name], *self.common], outputs,
                    concurrency_limit=2)
            self.clicks(name)

    def clicks(self, name: str) -> None:
        w = self.w

        def on_select(sess, m, r, l, d, tgt, a, c, evt, n=name):
            try:
                x, y = evt.index[0], evt.index[1]
                return cb.deliver(self.engine, sess, self.similarity(sess, n, x, y, m, r, l, d, tgt, a, c))
            except Exception as exc:  # noqa: BLE001
                return gr.skip(), gr.skip(), cb._message(exc)

        on_select.__annotations__ = {"evt": gr.SelectData}  # Gradio passes the click by this annotation
        w.displays[name].select(on_select, [w.session, *self.common, w.target, w.alpha, w.sim_cmap],
                                [w.session, w.sim_out, w.status], concurrency_limit=4, api_name=f"click_{name.lower()}")

    def similarity_tab(self) -> None:
        w = self.w
        inputs, outputs = [w.session, *self.common, w.target, w.alpha, w.sim_cmap], [w.session, w.sim_out, w.status]
        for name, button in w.cls.items():
            button.click(self.guarded(lambda sess, m, r, l, d, tgt, a, c, n=name: self.similarity(
                sess, n, None, None, m, r, l, d, tgt, a, c), 2), inputs, outputs, concurrency_limit=4)

        def redraw(sess, m, r, l, d, tgt, a, c):
            """Opacity/colormap/target changed: redraw the last query (nothing to do before a click)."""
            if not isinstance(sess, Session) or sess.query is None:
                return gr.skip(), gr.skip(), gr.skip()
            n, x, y = sess.query
            return self.similarity(sess, n, x, y, m, r, l, d, tgt, a, c)

        for widget in (w.alpha, w.sim_cmap, w.target):
            widget.change(self.guarded(redraw, 2), inputs, outputs, concurrency_limit=4, show_progress="hidden")
        w.api_btn.click(self.guarded(lambda sess, n, x, y, m, r, l, d, tgt, a, c: self.similarity(
            sess, n, x, y, m, r, l, d, tgt, a, c), 2), [w.session, w.api_slot, w.api_x, w.api_y, *inputs[1:]], outputs,
            api_name="similarity_at", concurrency_limit=4)

    def other_tabs(self) -> None:
        w, e, s, common = self.w, self.engine, self.settings, [self.w.session, *self.common]
        w.pca_btn.click(self.guarded(lambda sess, m, r, l, d, cs, f, b, c: cb.pca(
            e, sess, s(m, r, l, d), components=cs, foreground=f, both=b, cmap=c), 1),
            [*common, w.comps, w.fg, w.both, w.pca_cmap], [w.pca_out, w.status], api_name="pca", concurrency_limit=4)
        w.norm_btn.click(self.guarded(lambda sess, m, r, l, d, n, a, c: cb.norms(
            e, sess, s(m, r, l, d), n, cmap=c, alpha=a), 1),
            [*common, w.norm_slot, w.norm_alpha, w.norm_cmap], [w.norm_out, w.status], api_name="norms",
            concurrency_limit=4)
        w.att_btn.click(self.guarded(lambda sess, m, r, l, d, n, h: cb.attention(e, sess, s(m, r, l, d), n,
                                                                                 heads=h), 1),
                        [*common, w.att_slot, w.att_heads], [w.att_out, w.status], api_name="attention",
                        concurrency_limit=2)
        match = self.guarded(lambda sess, m, r, l, d, me, k: cb.matching(e, sess, s(m, r, l, d), method=me, top_k=k), 2)
        rematch = self.guarded(lambda sess, m, r, l, d, me, k: cb.matching(e, sess, s(m, r, l, d), method=me, top_k=k)
                               if isinstance(sess, Session) and sess.matches else (gr.skip(), gr.skip(), gr.skip()), 2)
        match_io = ([*common, w.method, w.top_k], [w.session, w.match_out, w.status])
        w.match_btn.click(match, *match_io, api_name="match", concurrency_limit=2)
        w.top_k.release(rematch, *match_io, concurrency_limit=2)
        w.dl_btn.click(self.guarded(lambda sess, m, r, l, d: cb.downloads(e, sess, s(m, r, l, d)), 1), common,
                       [w.dl_files, w.status], concurrency_limit=2)

    def model_choice(self) -> None:
        def on_model(sess, m, r, l, d):
            """Load the chosen model at once, so a missing one is reported in the page (the app keeps working)."""
            started = time.perf_counter()
            self.engine.backbone(m)
            return f"model {m} ready ({time.perf_counter() - started:.1f} s)"

        self.w.model.input(lambda sess, m, r, l, d: cb._try(on_model, sess, m, r, l, d), [self.w.session, *self.common],
                           [self.w.status], concurrency_limit=1)


def _new_session() -> Session:
    return Session()


def build_app(model: str | os.PathLike = DEFAULT_MODEL, *, engine: Engine | None = None, allow_urls: bool = False,
              **engine_kwargs):
    """The explorer as a Gradio Blocks app; the Engine is available as `app.dinoscope_engine`."""
    engine = engine or Engine(model, allow_urls=allow_urls, **engine_kwargs)
    w = SimpleNamespace()
    # Gradio keeps a copy of every picture it serves: drop copies older than an hour, checking every 10 minutes
    with gr.Blocks(title="dinoscope explorer", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        w.session = gr.State(value=_new_session, delete_callback=_delete_session)
        _header(engine, w)
        _images(engine, w)
        with gr.Tabs():
            for tab in (_similarity_tab, _pca_tab, _norms_tab, _attention_tab, _matching_tab, _downloads_tab):
                tab(w)
        wiring = _Wiring(engine, w)
        wiring.images()
        wiring.similarity_tab()
        wiring.other_tabs()
        wiring.model_choice()
    app.dinoscope_engine = engine
    return app
