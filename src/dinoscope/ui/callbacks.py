"""The explorer's callbacks: an engine, a session and the widget values in; pictures and a status line out.

They draw through :mod:`dinoscope.views`, so a picture in the page equals the one the CLI writes, and
raise :class:`DinoscopeError` for bad input; `guarded` (in the layout) turns that into a one-line
message in the page and leaves the rest of the page as it was. No Gradio here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import render
from ..analyses import CLS, PCABasis, Pixel, query_index, similarity_map
from ..errors import DinoscopeError, InputError, redact
from ..files import write_text
from ..views import attention_view, matches_view, norms_view, pca_view, similarity_view
from .state import CMAPS, DETAIL_CHOICES, OTHER, SAME, SLOTS, Engine, Session, Slot

log = logging.getLogger("dinoscope")
PAGE_WIDTH = 1200  # about how wide the page shows a picture on a desktop screen


@dataclass(frozen=True)
class Settings:
    model: str
    resolution: str = "native"
    layer: int = -1
    density: int = 1
    sharpen: bool = False

    @property
    def upsample(self) -> str:
        return "guided" if self.sharpen else "nearest"


def detail(label: str) -> tuple[int, bool]:
    """(density, sharpen) of a Detail choice."""
    for name, density, sharpen in DETAIL_CHOICES:
        if name == label:
            return density, sharpen
    raise InputError(f"unknown detail {label!r}; choose one from the list")


def _features(engine: Engine, settings: Settings, slot: Slot):
    return engine.features(settings.model, slot, settings.resolution, settings.layer, settings.density)


def _set_slot(session: Session | None, name: str, slot: Slot) -> Session:
    session = session if isinstance(session, Session) else Session()
    if name not in SLOTS:
        raise InputError(f"unknown image slot {name!r}")
    session.slots[name] = slot
    if session.query and session.query[0] == name:
        session.query = None
        session.views.discard("similarity")
    session.matches = None
    return session


def _loaded(engine: Engine, session, slot: str, s: Slot, what: str, settings: Settings | None, report=None):
    """Put the image in the session; with settings, run its forward pass now so the first click is instant.

    `report(fraction, text)`, when given, hears about the slow part (the page shows it as progress)."""
    session = _set_slot(session, slot, s)
    message = f"image {slot}: {what} ({s.image.width}x{s.image.height}); click on it or point at it"
    if s.notice:
        message += f" ({s.notice})"
    if settings is not None:
        started = time.perf_counter()
        if report is not None:
            report(0.1, f"image {slot}: computing features ({settings.model})")
        try:
            feats = _features(engine, settings, s)
            message += (f" (features ready in {time.perf_counter() - started:.1f} s; weights {feats.model} at "
                        f"revision {feats.revision[:12]})")
        except DinoscopeError as exc:  # the image is loaded all the same; the message says why no features yet
            message += f"; {exc}"
    return session, s.image, message


def load_sample(engine: Engine, session, name: str, slot: str = "A", settings: Settings | None = None, report=None):
    return _loaded(engine, session, slot, engine.load_sample(name), f"sample {name}", settings, report)


def load_upload(engine: Engine, session, path, slot: str = "A", allowed_root=None, settings: Settings | None = None,
                report=None):
    s = engine.load_upload(path, allowed_root)
    return _loaded(engine, session, slot, s, s.label, settings, report)


def load_url(engine: Engine, session, url: str, slot: str = "A", settings: Settings | None = None, report=None):
    s = engine.load_url(url)
    return _loaded(engine, session, slot, s, s.label, settings, report)


def live_data(engine: Engine, session: Session, settings: Settings) -> dict:
    """What the page's overlay needs per image: its grid and the file of unit features (see `Engine.live`).

    None for an empty slot or one whose features failed (the page then draws nothing over it)."""
    out: dict = {"model": settings.model, "resolution": settings.resolution, "layer": settings.layer}
    for name in SLOTS:
        s = session.slots.get(name)
        out[name] = None
        if s is None:
            continue
        try:
            feats = _features(engine, settings, s)
        except DinoscopeError:
            continue
        key = engine.key(settings.model, s, settings.resolution, settings.layer, settings.density)
        tag = hashlib.sha1(repr(key).encode())
        out[name] = engine.live(feats, engine.session_folder(session), f"{name}-{tag.hexdigest()[:16]}")
    return out


def query_overlay(engine: Engine, session: Session, settings: Settings, target: str = SAME) -> dict | None:
    """The last query as the page's overlay draws it: the query cell (None for CLS), the image the map goes
    over, and the map's values when that image's features are too large to be sent (server-side fallback)."""
    if session.query is None:
        return None
    slot, x, y = session.query
    dest = slot if target != OTHER else ("B" if slot == "A" else "A")
    if session.slots.get(dest) is None:
        return None
    feats = _features(engine, settings, session.slot(slot))
    query = CLS if x is None else Pixel(float(x), float(y))
    cell = None if x is None else list(divmod(query_index(feats, query), feats.geometry.cols))
    out = {"slot": slot, "target": dest, "cell": cell, "sims": None}
    tfeats = feats if dest == slot else _features(engine, settings, session.slot(dest))
    if tfeats.flat.numel() * 2 > engine.live_max_bytes:
        sims = similarity_map(tfeats, query, query_features=None if dest == slot else feats)
        out["sims"] = [round(float(v), 4) for v in sims.flatten().tolist()]
    return out


def redraw(session: Session, drawers: dict, only=None) -> tuple[dict, list[str]]:
    """Redraw every open view ({name: draw() -> (picture, message)}); a view that fails is cleared.

    Returns ({name: picture or None}, messages); views never drawn are left out."""
    pictures, messages = {}, []
    for name, draw in drawers.items():
        if name not in session.views or (only is not None and name not in only):
            continue
        try:
            pictures[name], message = draw()
            messages.append(message)
        except DinoscopeError as exc:
            pictures[name] = None
            messages.append(f"{name}: {exc}")
    return pictures, messages


def choose_model(engine: Engine, session, label: str) -> tuple[str, str]:
    """Load the chosen model now: (the model to keep selected, message). A model that cannot be loaded
    (not downloaded and offline, say) is refused and the previous one stays selected."""
    session = session if isinstance(session, Session) else Session()
    previous = session.model if session.model in engine.models else engine.default_label
    started = time.perf_counter()
    try:
        engine.backbone(label)
    except DinoscopeError as exc:
        return previous, f"error: {label} cannot be used: {exc}; still using {previous}"
    session.model = label
    return label, f"model {label} ready ({time.perf_counter() - started:.1f} s)"


def similarity(engine: Engine, session: Session, settings: Settings, slot: str, x=None, y=None, *,
               target: str = SAME, alpha: float = 0.55, cmap: str = "turbo"):
    """The similarity map for a click at (x, y) in image `slot` (CLS when x is None), over the same or the other image."""
    started = time.perf_counter()
    _check_cmap(cmap)
    alpha = _unit(alpha, "opacity")
    source = session.slot(slot)
    feats = _features(engine, settings, source)
    if x is None:
        query, where = CLS, "the CLS token"
    else:
        g = feats.geometry
        x, y, note = _into_grid(g, x, y)
        query = Pixel(float(x), float(y))
        index = query_index(feats, query)
        row, col = divmod(index, g.cols)
        cell = "patch" if g.density == 1 else f"cell (density {g.density})"
        where = f"pixel ({int(x)}, {int(y)}) = {cell} {index} (row {row}, col {col}){note}"
    session.query = (slot, x, y)
    session.views.add("similarity")
    if target == OTHER:
        other = "B" if slot == "A" else "A"
        dest = session.slot(other)
        tfeats = _features(engine, settings, dest)
        picture = similarity_view(tfeats, query, dest.image, query_features=feats, query_image=source.image,
                                  cmap=cmap, alpha=alpha, upsample=settings.upsample)
        over = f"image {other}"
    else:
        picture = similarity_view(feats, query, source.image, cmap=cmap, alpha=alpha, upsample=settings.upsample)
        over = f"image {slot}"
    ms = (time.perf_counter() - started) * 1000
    return session, picture, f"similarity to {where} of image {slot}, over {over} ({ms:.0f} ms)"


def _into_grid(geometry, x, y):
    """A click in the thin right/bottom margin that native resolution leaves uncovered goes to the nearest patch."""
    x, y = float(x), float(y)
    w, h = geometry.image_size
    cw, ch = geometry.covered
    if 0 <= x < w and 0 <= y < h and not (x < cw and y < ch):
        return min(x, cw - 1), min(y, ch - 1), " (nearest patch: the margin is not covered)"
    return x, y, ""


def pca(engine: Engine, session: Session, settings: Settings, *, components="1,2,3", foreground: bool = False,
        both: bool = False, cmap: str = "viridis"):
    """PCA colours of image A (or A and B side by side with one basis fitted on both)."""
    _check_cmap(cmap)
    picked = _components(components)
    names = ["A", "B"] if both else ["A"]
    feats = [_features(engine, settings, session.slot(n)) for n in names]
    session.views.add("pca")
    basis = PCABasis.fit(feats, max(3, max(picked) + 1), foreground_only=bool(foreground))
    pictures = [pca_view(f, basis, components=picked, cmap=cmap, upsample=settings.upsample,
                         guide=session.slot(n).image) for f, n in zip(feats, names, strict=True)]
    picture = pictures[0] if len(pictures) == 1 else render.side_by_side(pictures, gap=8)
    what = "components " + ",".join(str(c + 1) for c in picked)
    return picture, f"PCA {what} of image{'s A and B (one basis)' if both else ' A'}" + (
        ", foreground only" if foreground else "")


def norms(engine: Engine, session: Session, settings: Settings, slot: str = "A", *, cmap: str = "inferno",
          alpha: float = 0.0):
    _check_cmap(cmap)
    s = session.slot(slot)
    feats = _features(engine, settings, s)
    session.views.add("norms")
    return (norms_view(feats, s.image, cmap=cmap, alpha=_unit(alpha, "opacity"), upsample=settings.upsample),
            f"feature norms of image {slot}")


def attention(engine: Engine, session: Session, settings: Settings, slot: str = "A", *, heads: bool = True,
              cmap: str = "inferno"):
    """Attention of the last clicked patch of `slot` (or CLS) in the chosen layer."""
    _check_cmap(cmap)
    s = session.slot(slot)
    query = CLS
    if session.query and session.query[0] == slot and session.query[1] is not None:
        # attention is read from one pass on the patch grid whatever the density: the click names its patch
        query = Pixel(float(session.query[1]), float(session.query[2]))
    att = engine.attention(settings.model, s, settings.resolution, settings.layer, query)
    session.views.add("attention")
    shares = att.shares()
    who = "CLS" if att.query < 0 else f"patch {att.query}"
    message = (f"attention of {who} in block {att.layer} of image {slot}: {shares['patches']:.1%} to patches, "
               f"{shares['registers']:.1%} to registers, {shares['cls']:.1%} to CLS")
    if settings.density != 1:
        message += " (attention is on the patch grid: one pass, not the shifted ones)"
    # the page shows pictures about PAGE_WIDTH pixels wide: as many panels a row as fit at full size, so
    # the per-head captions stay at their drawn size instead of being scaled down to a few pixels
    columns = max(1, min(4, PAGE_WIDTH // max(1, s.image.width)))
    return (attention_view(att, s.image, heads=bool(heads), cmap=cmap, columns=columns, upsample=settings.upsample),
            message)


def matching(engine: Engine, session: Session, settings: Settings, *, method: str = "hungarian", top_k: int = 50,
             cmap: str = "viridis"):
    if method not in ("hungarian", "mnn"):
        raise InputError(f"unknown matching method {method!r}; use hungarian or mnn")
    _check_cmap(cmap)
    a, b = session.slot("A"), session.slot("B")
    fa = _features(engine, settings, a)
    fb = _features(engine, settings, b)
    key = (engine.key(settings.model, a, settings.resolution, settings.layer, settings.density),
           engine.key(settings.model, b, settings.resolution, settings.layer, settings.density), method)
    cached = session.matches[1] if session.matches and session.matches[0] == key else None
    picture, found = matches_view(fa, fb, a.image, b.image, method=method, top_k=max(0, int(top_k)), cmap=cmap,
                                  matches=cached)
    session.matches = (key, found)
    session.views.add("matching")
    shown = min(len(found), int(top_k)) if int(top_k) > 0 else min(len(found), 800)
    return session, picture, f"{len(found)} {method} matches between A and B; {shown} drawn, coloured by score"


def downloads(engine: Engine, session: Session, settings: Settings) -> tuple[list[str], str]:
    """Write the features of the loaded images (and the last matches) into the session's temp dir."""
    if not any(session.slots.values()):
        raise InputError("load an image first")
    folder = Path(engine.session_folder(session))
    paths = []
    for name in SLOTS:
        s = session.slots.get(name)
        if s is None:
            continue
        feats = _features(engine, settings, s)
        paths.append(os.fspath(feats.save(folder / f"{name}_{s.label}.safetensors")))
    if session.matches is not None:
        paths.append(os.fspath(write_text(session.matches[1].to_csv(), folder / "matches.csv")))
    return paths, f"{len(paths)} file(s) ready: features as .safetensors (keys cls, registers, patches)"


def _check_cmap(cmap: str) -> None:
    if cmap not in CMAPS:
        raise InputError(f"unknown colormap {cmap!r}; choose one from the list")


def _unit(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"the {what} must be a number between 0 and 1") from None
    if not 0.0 <= v <= 1.0:
        raise InputError(f"the {what} must be between 0 and 1, not {v}")
    return v


def _components(text) -> list[int]:
    try:
        picked = [int(c) - 1 for c in str(text).replace(" ", "").split(",") if c]
    except ValueError:
        raise InputError(f"cannot read components {text!r}; write 1-based numbers like 1,2,3 or 4") from None
    if len(picked) not in (1, 3) or min(picked, default=0) < 0 or max(picked, default=0) > 63:
        raise InputError(f"give one PCA component (a single map) or three (red, green, blue) from 1 to 64, not {text!r}")
    return picked


def _message(exc: BaseException) -> str:
    if isinstance(exc, DinoscopeError):
        return redact(f"error: {exc}")
    log.exception("explorer callback failed")
    return redact(f"internal error: {type(exc).__name__}: {exc}")


KEEP_PICTURES = 8  # per session: Gradio has its own copy once it has answered


def deliver(engine: Engine, session, result, photo: bool = False):
    """Write the result's pictures as fast PNGs into the session folder and hand Gradio their paths.

    Gradio would encode a returned PIL picture itself with zlib level 6: ~150 ms for 640x480
    on a 2-core CPU, more than everything else a click costs. Level 1 takes ~20 ms for files
    ~15% larger; the pixels are the same (PNG is lossless).
    """
    if not isinstance(result, tuple):
        return result
    folder = None
    out = []
    for item in result:
        if isinstance(item, Image.Image):
            if folder is None:
                folder = engine.session_folder(session)
            fd, tmp = tempfile.mkstemp(prefix="picture-", suffix=".jpg" if photo else ".png", dir=folder)
            with os.fdopen(fd, "wb") as fh:
                if photo:  # the photo to click on: what it looks like matters, not its exact pixels
                    item.save(fh, format="JPEG", quality=90)
                else:
                    item.save(fh, format="PNG", compress_level=1)
            out.append(tmp)
        else:
            out.append(item)
    if folder is not None:
        def age(p):
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0

        old = sorted(Path(folder).glob("picture-*"), key=age)
        for stale in old[:-KEEP_PICTURES]:
            stale.unlink(missing_ok=True)
    return tuple(out)


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return _message(exc)
