"""The explorer's page: one function per part of the page, and the wiring of widgets to callbacks."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from types import SimpleNamespace

import gradio as gr
import matplotlib

from ..images import SAMPLES
from ..models import DEFAULT_MODEL
from . import callbacks as cb, insights_tabs
from .state import (
    CMAPS,
    DETAILS,
    OTHER,
    RESOLUTIONS,
    SAME,
    SLOTS,
    Engine,
    Session,
    _delete_session,
)

PICTURE_BUTTONS = ["download", "fullscreen"]
FIRST_SAMPLE = "chelsea"  # shown in image A on a first visit, so the page never opens empty
HIDDEN = ["ds-hidden"]  # in the page (scripts use them) but not shown


@dataclass
class View:
    """A picture the page redraws when the image, the query or a setting changes, once it has been drawn.

    `draw(session, settings, *values of params)` returns (picture, message). Tabs add theirs to `w.views`."""

    name: str
    output: object
    params: list
    draw: object


def _script() -> str:
    """The overlay script (overlay.js) with the colour tables of every colormap the page offers."""
    luts = {}
    for name in CMAPS:
        table = matplotlib.colormaps[name](range(256))[:, :3]
        luts[name] = [int(v * 255 + 0.5) for v in table.flatten()]
    code = resources.files(__package__).joinpath("overlay.js").read_text(encoding="utf-8")
    return "(...args) => { " + code.replace("__LUTS__", json.dumps(luts)) + "\n return args; }"


def _picture(label: str, elem_id: str):
    return gr.Image(type="filepath", interactive=False, label=label, elem_id=elem_id, buttons=PICTURE_BUTTONS)


def _header(engine: Engine, w: SimpleNamespace) -> None:
    gr.Markdown("## dinoscope explorer\nPoint at the photo: the map over it shows how similar every patch is "
                "to the one under the pointer. Click to pin a patch; pick or upload other images below.")
    with gr.Row():
        w.model = gr.Dropdown(list(engine.models), value=engine.default_label, label="Model", elem_id="model")
        w.resolution = gr.Dropdown(RESOLUTIONS, value="native", label="Resolution", elem_id="resolution")
        w.layer = gr.Number(value=-1, precision=0, label="Layer (-1 = last)", elem_id="layer")
        w.detail = gr.Dropdown(DETAILS, value=DETAILS[0], label="Detail (denser grid, sharpened maps)",
                               elem_id="detail")
    with gr.Row(equal_height=True):
        w.status = gr.Textbox(label="Status", interactive=False, elem_id="status", max_lines=2, scale=5)
        w.cancel = gr.Button("Cancel", elem_id="cancel", scale=0, min_width=90)
    # channels to the overlay script: features per image, the last query, the arrow keys' query
    w.live = gr.JSON(elem_id="live-data", elem_classes=HIDDEN)
    w.overlay = gr.JSON(elem_id="overlay-data", elem_classes=HIDDEN)
    w.key_query = gr.Button("arrow-key query", elem_id="key-query", elem_classes=HIDDEN)


def _images(engine: Engine, w: SimpleNamespace) -> None:
    w.displays, w.pickers, w.uploads, w.urls, w.notices = {}, {}, {}, {}, {}
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
                w.displays[name] = gr.Image(type="filepath", interactive=False,
                                            label=f"Image {name} (point, click, or focus and use the arrow keys)",
                                            elem_id=f"image-{name.lower()}", buttons=["fullscreen"])
                w.notices[name] = gr.Markdown("", elem_id=f"notice-{name.lower()}")
    with gr.Row():
        w.show_map = gr.Checkbox(value=True, label="Map over the photos (off: photos only)", elem_id="show-map")
        w.follow = gr.Checkbox(value=True, label="Map follows the pointer (off: it stays on the clicked patch and "
                               "the bar reads the value under the pointer)", elem_id="follow")


def _similarity_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Similarity", id="similarity"):
        with gr.Row():
            w.target = gr.Radio([SAME, OTHER], value=SAME, label="Map over", elem_id="target")
            w.alpha = gr.Slider(0, 1, value=0.55, step=0.05, label="Opacity", elem_id="alpha")
            w.sim_cmap = gr.Dropdown(CMAPS, value="turbo", label="Colormap", elem_id="sim-cmap")
            w.cls = {"A": gr.Button("CLS query (image A)", elem_id="cls-a"),
                     "B": gr.Button("CLS query (image B)", elem_id="cls-b")}
        w.sim_out = _picture("Similarity", "sim-out")
        w.views.append(View("similarity", w.sim_out, [w.target, w.alpha, w.sim_cmap], _similarity_view))
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
        w.views.append(View("pca", w.pca_out, [w.comps, w.fg, w.both, w.pca_cmap],
                            lambda e, sess, st, cs, f, b, c: cb.pca(e, sess, st, components=cs, foreground=f, both=b,
                                                                    cmap=c)))


def _norms_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Norms", id="norms"):
        with gr.Row():
            w.norm_slot = gr.Radio(list(SLOTS), value="A", label="Image")
            w.norm_alpha = gr.Slider(0, 1, value=0.0, step=0.05, label="Opacity over the photo")
            w.norm_cmap = gr.Dropdown(CMAPS, value="inferno", label="Colormap")
            w.norm_btn = gr.Button("Draw norms", variant="primary", elem_id="norms-go")
        w.norm_out = _picture("Norms", "norms-out")
        w.views.append(View("norms", w.norm_out, [w.norm_slot, w.norm_alpha, w.norm_cmap],
                            lambda e, sess, st, n, a, c: cb.norms(e, sess, st, n, cmap=c, alpha=a)))


def _attention_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Attention", id="attention"):
        gr.Markdown("Attention of the last patch you clicked in that image (or of CLS), ViT models only.")
        with gr.Row():
            w.att_slot = gr.Radio(list(SLOTS), value="A", label="Image")
            w.att_heads = gr.Checkbox(value=True, label="One panel per head")
            w.att_btn = gr.Button("Draw attention", variant="primary", elem_id="attention-go")
        w.att_out = _picture("Attention", "attention-out")
        w.views.append(View("attention", w.att_out, [w.att_slot, w.att_heads],
                            lambda e, sess, st, n, h: cb.attention(e, sess, st, n, heads=h)))


def _matching_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Matching", id="matching"):
        with gr.Row():
            w.method = gr.Radio(["hungarian", "mnn"], value="hungarian", label="Method", elem_id="method")
            w.top_k = gr.Slider(0, 800, value=50, step=10, label="Top-k pairs (0 = up to 800 sampled)",
                                elem_id="top-k")
            w.match_btn = gr.Button("Match A and B", variant="primary", elem_id="match-go")
        w.match_out = _picture("Matches", "match-out")
        w.views.append(View("matching", w.match_out, [w.method, w.top_k],
                            lambda e, sess, st, me, k: cb.matching(e, sess, st, method=me, top_k=k)[1:]))


def _similarity_view(engine: Engine, sess: Session, settings, target, alpha, cmap):
    n, x, y = sess.query
    return cb.similarity(engine, sess, settings, n, x, y, target=target, alpha=alpha, cmap=cmap)[1:]


def _downloads_tab(w: SimpleNamespace) -> None:
    with gr.Tab("Downloads", id="downloads"):
        gr.Markdown("Pictures: the download button on each picture. Features of the loaded images "
                    "(and the last matches as CSV):")
        w.dl_btn = gr.Button("Prepare features", elem_id="features-go")
        w.dl_files = gr.File(file_count="multiple", interactive=False, label="Files", elem_id="files")


class _Wiring:
    """Connects widgets to callbacks: every callback gets the engine, the tab's session and the settings.

    Concurrency: loading images (forward passes) and redrawing after a change share the "work" queue
    (several at once; the engine runs passes side by side), clicks have their own, so one user's large
    image never holds up another user's clicks or small image."""

    def __init__(self, engine: Engine, w: SimpleNamespace):
        self.engine, self.w = engine, w
        self.common = [w.model, w.resolution, w.layer, w.detail]
        self.upload_root = os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")
        self.params = [p for v in w.views for p in v.params]
        self.view_outputs = [v.output for v in w.views]
        self.work = {"concurrency_id": "work", "concurrency_limit": 4}
        self.clicks_queue = {"concurrency_id": "clicks", "concurrency_limit": 4}
        self.cancellable = []

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
        """(session, picture, overlay query, message) for a click at (x, y) of image n (CLS when x is None)."""
        settings = self.settings(m, r, l, d)
        sess, picture, message = cb.similarity(self.engine, sess, settings, n, x, y, target=tgt, alpha=a, cmap=c)
        return sess, picture, cb.query_overlay(self.engine, sess, settings, tgt), message

    def refresh(self, sess, m, r, l, d, *values):
        """After an image load or a setting change: the overlay's data, the query, and every open view redrawn."""
        settings = self.settings(m, r, l, d)
        sess = sess if isinstance(sess, Session) else Session()
        live = cb.live_data(self.engine, sess, settings)
        drawers, i = {}, 0
        for v in self.w.views:
            args = values[i:i + len(v.params)]
            i += len(v.params)
            drawers[v.name] = (lambda v=v, args=args: v.draw(self.engine, sess, settings, *args))
        pictures, messages = cb.redraw(sess, drawers)
        target = values[0] if self.w.views and self.w.views[0].name == "similarity" else SAME
        overlay = cb.query_overlay(self.engine, sess, settings, target) if sess.query else None
        views = [pictures.get(v.name, gr.skip()) for v in self.w.views]
        ready = [f"image {n} ({sess.slots[n].label}, {sess.slots[n].image.width}x{sess.slots[n].image.height})"
                 for n in SLOTS if live.get(n)]
        message = (f"ready: {' and '.join(ready)} with {m}, {r}, layer {l}, {d}; point at a photo or click it"
                   if ready else "load an image to start")
        if messages:
            message += "; redrawn: " + "; ".join(messages)
        return (sess, live, overlay, *views, message)

    def chain_refresh(self, event):
        """Follow an event with the refresh (overlay data and open views); returns the new event."""
        w = self.w
        refresh = self.guarded(self.refresh, 3 + len(self.view_outputs))

        def run(*args, progress=gr.Progress()):  # noqa: B008 - how Gradio hands over its progress bar
            progress(0.05, desc="computing features (a forward pass per new image), then redrawing")
            return refresh(*args)

        follow = event.then(run, [w.session, *self.common, *self.params],
                            [w.session, w.live, w.overlay, *self.view_outputs, w.status], **self.work)
        self.cancellable.append(follow)
        return follow

    def loader(self, name: str, load):
        """An image-loading handler: the photo, its notice, every view cleared; nothing at all for no value."""
        e, s, n_views = self.engine, self.settings, len(self.view_outputs)

        def run(sess, value, m, r, l, d, progress=gr.Progress()):  # noqa: B008 - how Gradio hands over its progress bar
            if value is None or value == "":  # a dropdown left without a choice: not an error, nothing to do
                return (gr.skip(),) * (4 + n_views)
            try:
                s(m, r, l, d)  # bad settings are reported now, before the photo changes
                # the photo is shown at once; its forward pass runs in the refresh that follows (with progress)
                sess, photo, message = load(e, sess, value, name, None, lambda f, t: progress(f, desc=t))
                message = message.replace("; click on it or point at it", "; computing its features...")
                photo = cb.deliver(e, sess, (photo,), photo=True)[0]
                sess.query = None if sess.query and sess.query[0] == name else sess.query
                notice = f"**Note:** image {name} was {sess.slots[name].notice}." if sess.slots[name].notice else ""
                return (sess, photo, notice, *([None] * n_views), message)
            except Exception as exc:  # noqa: BLE001
                return (gr.skip(),) * (3 + n_views) + (cb._message(exc),)
        return run

    def images(self) -> None:
        w = self.w
        for name in SLOTS:
            outputs = [w.session, w.displays[name], w.notices[name], *self.view_outputs, w.status]
            common = [w.session, None, *self.common]
            sources = [(w.pickers[name].input, w.pickers[name], cb.load_sample, f"sample_{name.lower()}"),
                       (w.uploads[name].upload, w.uploads[name],
                        lambda e, sess, path, n, st, rep: cb.load_upload(e, sess, path, n, self.upload_root, st, rep),
                        f"upload_{name.lower()}")]
            if name in w.urls:
                sources.append((w.urls[name].submit, w.urls[name], cb.load_url, None))
            for listener, widget, load, api in sources:
                common[1] = widget
                event = listener(self.loader(name, load), list(common), outputs, api_name=api, **self.work)
                self.cancellable.append(event)
                self.chain_refresh(event)
            self.clicks(name)

    def clicks(self, name: str) -> None:
        w = self.w

        def on_select(sess, m, r, l, d, tgt, a, c, evt, n=name):
            try:
                x, y = evt.index[0], evt.index[1]
                return cb.deliver(self.engine, sess, self.similarity(sess, n, x, y, m, r, l, d, tgt, a, c))
            except Exception as exc:  # noqa: BLE001
                return gr.skip(), gr.skip(), gr.skip(), cb._message(exc)

        on_select.__annotations__ = {"evt": gr.SelectData}  # Gradio passes the click by this annotation
        w.displays[name].select(on_select, [w.session, *self.common, w.target, w.alpha, w.sim_cmap],
                                [w.session, w.sim_out, w.overlay, w.status], api_name=f"click_{name.lower()}",
                                show_progress="minimal", **self.clicks_queue)

    def similarity_tab(self) -> None:
        w = self.w
        inputs = [w.session, *self.common, w.target, w.alpha, w.sim_cmap]
        outputs = [w.session, w.sim_out, w.overlay, w.status]
        for name, button in w.cls.items():
            button.click(self.guarded(lambda sess, m, r, l, d, tgt, a, c, n=name: self.similarity(
                sess, n, None, None, m, r, l, d, tgt, a, c), 3), inputs, outputs, **self.clicks_queue)

        def redraw(sess, m, r, l, d, tgt, a, c):
            """Opacity/colormap/target changed: redraw the last query (nothing to do before a click)."""
            if not isinstance(sess, Session) or sess.query is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            n, x, y = sess.query
            return self.similarity(sess, n, x, y, m, r, l, d, tgt, a, c)

        for widget in (w.alpha, w.sim_cmap, w.target):
            widget.change(self.guarded(redraw, 3), inputs, outputs, show_progress="hidden", **self.clicks_queue)
        at = self.guarded(lambda sess, n, x, y, m, r, l, d, tgt, a, c: self.similarity(
            sess, n, x, y, m, r, l, d, tgt, a, c), 3)
        w.api_btn.click(at, [w.session, w.api_slot, w.api_x, w.api_y, *inputs[1:]], outputs,
                        api_name="similarity_at", **self.clicks_queue)
        # the arrow keys: the script puts (slot, x, y) of the new query cell in place of the hidden fields
        w.key_query.click(at, [w.session, w.api_slot, w.api_x, w.api_y, *inputs[1:]], outputs,
                          js="(s, n, x, y, ...rest) => [s, ...(window.dinoscope.pending || [n, x, y]), ...rest]",
                          show_progress="hidden", **self.clicks_queue)
        for widget, key in ((w.alpha, "alpha"), (w.sim_cmap, "cmap"), (w.target, "target"), (w.show_map, "show"),
                            (w.follow, "follow")):
            widget.change(None, [widget], None, js=f"(v) => window.dinoscope && window.dinoscope.set('{key}', v)")
        w.live.change(None, [w.live], None, js="(d) => window.dinoscope && window.dinoscope.setLive(d)")
        w.overlay.change(None, [w.overlay], None, js="(q) => window.dinoscope && window.dinoscope.serverQuery(q)")
        w.status.change(None, [w.status], None, js="(t) => window.dinoscope && window.dinoscope.announce(t)")

    def other_tabs(self) -> None:
        w, e, s, common = self.w, self.engine, self.settings, [self.w.session, *self.common]
        w.pca_btn.click(self.guarded(lambda sess, m, r, l, d, cs, f, b, c: cb.pca(
            e, sess, s(m, r, l, d), components=cs, foreground=f, both=b, cmap=c), 1),
            [*common, w.comps, w.fg, w.both, w.pca_cmap], [w.pca_out, w.status], api_name="pca", **self.clicks_queue)
        w.norm_btn.click(self.guarded(lambda sess, m, r, l, d, n, a, c: cb.norms(
            e, sess, s(m, r, l, d), n, cmap=c, alpha=a), 1),
            [*common, w.norm_slot, w.norm_alpha, w.norm_cmap], [w.norm_out, w.status], api_name="norms",
            **self.clicks_queue)
        self.cancellable.append(w.att_btn.click(
            self.guarded(lambda sess, m, r, l, d, n, h: cb.attention(e, sess, s(m, r, l, d), n, heads=h), 1),
            [*common, w.att_slot, w.att_heads], [w.att_out, w.status], api_name="attention", **self.work))
        match = self.guarded(lambda sess, m, r, l, d, me, k: cb.matching(e, sess, s(m, r, l, d), method=me, top_k=k),
                             2)
        rematch = self.guarded(lambda sess, m, r, l, d, me, k: cb.matching(e, sess, s(m, r, l, d), method=me, top_k=k)
                               if isinstance(sess, Session) and sess.matches else (gr.skip(), gr.skip(), gr.skip()), 2)
        match_io = ([*common, w.method, w.top_k], [w.session, w.match_out, w.status])
        self.cancellable.append(w.match_btn.click(match, *match_io, api_name="match", **self.work))
        # typing a number fires change as well as dragging; only the last value of a burst is drawn
        w.top_k.change(rematch, *match_io, trigger_mode="always_last", show_progress="hidden", **self.work)
        w.dl_btn.click(self.guarded(lambda sess, m, r, l, d: cb.downloads(e, sess, s(m, r, l, d)), 1), common,
                       [w.dl_files, w.status], **self.work)

    def settings_changes(self) -> None:
        """A model, resolution, layer or detail change redraws the overlay and every open view; a refused model is
        put back to the one in use, with the reason in the status line."""
        w = self.w

        def on_model(sess, label):
            sess = sess if isinstance(sess, Session) else Session()
            keep, message = cb.choose_model(self.engine, sess, label)
            return sess, gr.update(value=keep), message

        picked = w.model.input(on_model, [w.session, w.model], [w.session, w.model, w.status], **self.work)
        self.chain_refresh(picked)
        for widget in (w.resolution, w.layer, w.detail):
            self.chain_refresh(widget.input(lambda: None, None, None, show_progress="hidden"))
        w.cancel.click(lambda: "cancelled: the page shows what was there before", None, [w.status],
                       cancels=self.cancellable)

    def first_visit(self, app) -> None:
        """Load the overlay script, and on a first visit an example image, so the page never opens empty."""
        w = self.w
        example = self.loader("A", cb.load_sample)

        def first(sess, m, r, l, d):
            out = example(sess, FIRST_SAMPLE, m, r, l, d)
            return (*out, FIRST_SAMPLE if isinstance(out[0], Session) else gr.skip())

        event = app.load(first, [w.session, *self.common],
                         [w.session, w.displays["A"], w.notices["A"], *self.view_outputs, w.status, w.pickers["A"]],
                         js=_script(), **self.work)
        self.chain_refresh(event)


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
        w.views = []
        _header(engine, w)
        _images(engine, w)
        with gr.Tabs():
            for tab in (_similarity_tab, _pca_tab, _norms_tab, _attention_tab, _matching_tab, _downloads_tab):
                tab(w)
            insights_tabs.segments_tab(w)
            insights_tabs.search_tab(engine, w)
        wiring = _Wiring(engine, w)
        wiring.first_visit(app)
        wiring.images()
        wiring.similarity_tab()
        wiring.other_tabs()
        wiring.settings_changes()
        insights_tabs.wire(wiring)
    app.dinoscope_engine = engine
    return app
