"""The interactive explorer: click a patch in the browser and see what the model sees.

`build_app()` returns a Gradio Blocks app; `launch()` serves it (what `dinoscope ui` runs).

The work is split in two so that it can be tested without a browser:

* :class:`Engine` is shared by every user of one server: the models (loaded once, under a
  lock, so forward passes never run concurrently), a bounded in-memory LRU of Features
  keyed by (model, image digest, resolution, layer), and the server's limits.
* :class:`Session` is one browser tab's state (its images, its last query, its temp dir),
  held in a ``gr.State``: two tabs never see each other's images.

The callbacks (`load_sample`, `similarity`, `pca`, ...) are plain functions of an engine,
a session and the widget values; they draw through :mod:`dinoscope.views`, so a picture
in the page equals the one the CLI writes. They raise :class:`DinoscopeError` for bad
input; the Gradio wrappers turn that into a one-line message in the page and leave the
rest of the page as it was.

Exposed servers: the app binds 127.0.0.1 unless told otherwise and warns when it is not;
URL loading is off unless enabled and then never reaches loopback, private, link-local or
other non-public addresses (checked on every connection, redirects included); uploads are
limited in bytes and pixels; no text from a user is ever used as a file path.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import DinoscopeError, InputError
from .files import safe_name

log = logging.getLogger("dinoscope")

DEFAULT_MODEL = "facebook/dinov3-vitb16-pretrain-lvd1689m"
RESOLUTIONS = ["native", "short:224", "short:448", "short:768", "long:512", "long:1024"]
CMAPS = ["turbo", "viridis", "inferno", "magma", "plasma", "coolwarm", "jet", "gray"]
SLOTS = ("A", "B")
SAME, OTHER = "same image", "the other image"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# ---------------------------------------------------------------------------
# network guard (no server-side request forgery)


def address_allowed(address: str) -> bool:
    """True only for public unicast addresses: never loopback, private, link-local, shared, reserved or multicast."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None and not address_allowed(str(mapped)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_loopback or ip.is_private or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified)


def _guarded_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *args, **kwargs):
    """socket.create_connection that resolves the host itself and connects only to public addresses.

    The address checked is the address connected to, so DNS rebinding cannot slip past the check.
    """
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}") from exc
    error: OSError | None = None
    for family, socktype, proto, _name, sockaddr in infos:
        if not address_allowed(sockaddr[0]):
            raise InputError(f"refusing to download from {host}: it is a local or private address ({sockaddr[0]}); "
                             "give a public image URL or upload the file")
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"cannot connect to {host}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_GuardedHTTPConnection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context)


def guarded_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that follows no redirects itself (fetch_url does, hop by hop) and connects only to public addresses."""
    from .images import _NoRedirect

    return urllib.request.build_opener(_NoRedirect(), _GuardedHTTPHandler(), _GuardedHTTPSHandler(),
                                       urllib.request.ProxyHandler({}))


def fetch_image_url(url: str, *, allow_urls: bool, max_bytes: int, max_pixels: int, timeout: float = 10.0):
    """Download and decode an image for a remote user: refused unless enabled, never to non-public addresses."""
    from .images import fetch_url, load_image

    if not allow_urls:
        raise InputError("loading images from URLs is turned off on this server; upload the file instead "
                         "(whoever runs the server can allow it with --allow-urls)")
    text = (url or "").strip()
    if not text.lower().startswith(("http://", "https://")):
        raise InputError("give an http:// or https:// image URL")
    data = fetch_url(text, timeout=timeout, max_bytes=max_bytes, max_redirects=3, opener=guarded_opener())
    return load_image(data, max_pixels=max_pixels)


def bind_warning(host: str) -> str | None:
    """The warning to print when the server listens beyond this machine, else None."""
    if host in LOOPBACK_HOSTS:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: listening on {host}: anyone who can reach this machine on that address can use the explorer "
            "(and its CPU/GPU). There is no login; put it behind a reverse proxy with authentication, or bind 127.0.0.1.")


# ---------------------------------------------------------------------------
# shared engine


@dataclass
class Slot:
    """One image of a session: the decoded RGB photo and its pixel digest."""

    image: Any
    digest: str
    label: str


@dataclass
class Session:
    """One browser tab's state."""

    slots: dict = field(default_factory=lambda: {s: None for s in SLOTS})
    query: tuple | None = None  # (slot, x, y) of the last click, or (slot, None, None) for CLS
    matches: tuple | None = None  # (key, Matches) of the last matching
    folder: str | None = None  # per-session temp dir for downloads

    def slot(self, name: str) -> Slot:
        if name not in SLOTS:
            raise InputError(f"unknown image slot {name!r}")
        s = self.slots.get(name)
        if s is None:
            raise InputError(f"load image {name} first: pick a sample or upload a photo")
        return s

    def cleanup(self) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _delete_session(session) -> None:
    if isinstance(session, Session):
        session.cleanup()


class Engine:
    """What every user of one server shares: models, the feature LRU, limits and the model lock."""

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, *, models: dict[str, str] | None = None,
                 device: str = "auto", dtype: str = "float32", loader: Callable | None = None,
                 max_entries: int = 32, max_cache_bytes: int = 2 * 1024**3, max_models: int = 2,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
                 max_tokens: int = 16384, allow_urls: bool = False, disk_cache: bool = True,
                 workdir: str | os.PathLike | None = None):
        from .models.registry import MODELS

        self.default_model = os.fspath(model)
        choices = dict(models) if models is not None else {**{self._label(DEFAULT_MODEL): DEFAULT_MODEL},
                                                            **{name: name for name, spec in MODELS.items()
                                                               if spec.hub_id != DEFAULT_MODEL}}
        if self.default_model not in choices.values():
            choices = {self._label(self.default_model): self.default_model, **choices}
        self.models = choices  # label shown -> source loaded; users can only pick from these
        self.default_label = next(k for k, v in self.models.items() if v == self.default_model)
        self.device, self.dtype = device, dtype
        self.loader = loader
        self.max_entries, self.max_cache_bytes, self.max_models = max_entries, max_cache_bytes, max_models
        self.max_upload_bytes, self.max_pixels, self.max_tokens = max_upload_bytes, max_pixels, max_tokens
        self.allow_urls = allow_urls
        self.disk_cache = self._disk_cache() if disk_cache else None
        self.workdir = Path(tempfile.mkdtemp(prefix="dinoscope-ui-", dir=workdir))
        self.model_lock = threading.RLock()  # one forward pass (or model load) at a time
        self._cache_lock = threading.Lock()
        self._features: OrderedDict = OrderedDict()
        self._attention: OrderedDict = OrderedDict()
        self._backbones: OrderedDict = OrderedDict()
        self.forward_passes = 0
        self.model_loads = 0

    @staticmethod
    def _label(source: str) -> str:
        from .models.registry import lookup

        spec = lookup(source)
        if spec is not None:
            return f"{spec.name} (default)" if source == DEFAULT_MODEL else spec.name
        return Path(source).name or source

    @staticmethod
    def _disk_cache():
        """The on-disk feature cache when this dinoscope has one (and it is not turned off)."""
        try:
            from . import cache
        except ImportError:
            return None
        try:
            if getattr(cache, "cache_disabled_by_env", lambda: False)():
                return None
            return cache.FeatureCache()
        except Exception as exc:  # the cache must never stop the explorer
            log.warning("feature cache unavailable (%s); continuing without it", exc)
            return None

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def session_folder(self, session) -> str:
        """The session's own temp folder (made on first use; removed when the tab's state is deleted)."""
        if not isinstance(session, Session):
            return os.fspath(self.workdir)
        if not session.folder or not os.path.isdir(session.folder):
            session.folder = tempfile.mkdtemp(prefix="session-", dir=self.workdir)
        return session.folder

    # -- models and features

    def source(self, label: str) -> str:
        if label not in self.models:
            raise InputError(f"unknown model {label!r}; choose one from the list")
        return self.models[label]

    def backbone(self, label: str):
        source = self.source(label)
        with self.model_lock:
            if source in self._backbones:
                self._backbones.move_to_end(source)
                return self._backbones[source]
            while len(self._backbones) >= self.max_models:
                self._backbones.popitem(last=False)
            if self.loader is not None:
                backbone = self.loader(source)
            else:
                from .models import load_model

                backbone = load_model(source, device=self.device, dtype=self.dtype)
            self.model_loads += 1
            self._backbones[source] = backbone
            return backbone

    def resolution(self, text: str):
        from .geometry import Resolution

        if text not in RESOLUTIONS:
            raise InputError(f"unknown resolution {text!r}; choose one from the list")
        return Resolution.parse(text, max_tokens=self.max_tokens)

    @staticmethod
    def layer(value) -> int:
        try:
            layer = int(value)
        except (TypeError, ValueError):
            raise InputError(f"the layer must be a whole number, not {value!r}") from None
        if layer != value and not isinstance(value, str):
            raise InputError(f"the layer must be a whole number, not {value!r}")
        return layer

    def key(self, label: str, slot: Slot, resolution: str, layer) -> tuple:
        return (self.source(label), slot.digest, resolution, self.layer(layer))

    def features(self, label: str, slot: Slot, resolution: str, layer=-1):
        """Features of one image, from the LRU when seen before; else one forward pass under the model lock."""
        key = self.key(label, slot, resolution, layer)
        hit = self._lookup(self._features, key)
        if hit is not None:
            return hit
        with self.model_lock:
            hit = self._lookup(self._features, key)  # another user may have computed it meanwhile
            if hit is not None:
                return hit
            from .features import Extractor

            backbone = self.backbone(label)
            backbone.layer_index(key[3])
            kwargs = {}
            if self.disk_cache is not None:
                kwargs["cache"] = self.disk_cache
            extractor = Extractor(backbone, resolution=self.resolution(resolution), layer=key[3], max_pixels=None,
                                  **kwargs)
            _, features = extractor(slot.image)
            self.forward_passes += 1
        self._store(self._features, key, features, features.patches.numel() * 4)
        return features

    def attention(self, label: str, slot: Slot, resolution: str, layer, query):
        key = (*self.key(label, slot, resolution, layer), query)
        hit = self._lookup(self._attention, key)
        if hit is not None:
            return hit
        with self.model_lock:
            from .features import extract_attention

            backbone = self.backbone(label)
            if backbone.kind == "convnext":
                raise InputError(f"{label} is a ConvNeXt: it has no attention; pick a ViT model")
            att = extract_attention(backbone, slot.image, layer=key[3], query=query,
                                    resolution=self.resolution(resolution))
            self.forward_passes += 1
        self._store(self._attention, key, att, 0)
        return att

    def _lookup(self, table: OrderedDict, key):
        with self._cache_lock:
            if key in table:
                table.move_to_end(key)
                return table[key][0]
        return None

    def _store(self, table: OrderedDict, key, value, size: int) -> None:
        with self._cache_lock:
            table[key] = (value, size)
            table.move_to_end(key)
            while len(table) > self.max_entries or (
                    len(table) > 1 and sum(s for _, s in table.values()) > self.max_cache_bytes):
                table.popitem(last=False)

    def cached(self) -> int:
        with self._cache_lock:
            return len(self._features)

    # -- images

    def load_upload(self, path, allowed_root: str | os.PathLike | None = None) -> Slot:
        """An uploaded file (a path the web framework wrote) as a Slot, within the byte and pixel limits."""
        from .images import image_digest, load_image

        if not path:
            raise InputError("no file was uploaded")
        p = Path(os.fspath(path)).resolve()
        if allowed_root is not None:
            root = Path(os.fspath(allowed_root)).resolve()
            if root not in p.parents:
                raise InputError("refusing that file: uploads must come through the upload button")
        try:
            size = p.stat().st_size
        except OSError:
            raise InputError("the upload could not be read; try again") from None
        if size > self.max_upload_bytes:
            raise InputError(f"the file is {size / 1e6:.1f} MB, more than this server's limit of "
                             f"{self.max_upload_bytes / 1e6:.1f} MB; use a smaller image")
        data = p.read_bytes()[: self.max_upload_bytes + 1]
        image = load_image(data, max_pixels=self.max_pixels)
        return Slot(image, image_digest(image), _safe_name(p.name))

    def load_sample(self, name: str) -> Slot:
        from .images import SAMPLES, image_digest, load_image

        if name not in SAMPLES:
            raise InputError(f"unknown sample {name!r}; choose one of: {', '.join(sorted(SAMPLES))}")
        image = load_image(SAMPLES[name])
        return Slot(image, image_digest(image), name)

    def load_url(self, url: str) -> Slot:
        from .images import image_digest

        image = fetch_image_url(url, allow_urls=self.allow_urls, max_bytes=self.max_upload_bytes,
                                max_pixels=self.max_pixels)
        return Slot(image, image_digest(image), _safe_name(url.rsplit("/", 1)[-1].split("?")[0]) or "url")


def _safe_name(name: str) -> str:
    return safe_name(Path(name).stem)[:60]


# ---------------------------------------------------------------------------
# callbacks: engine + session + widget values -> (pictures, message); DinoscopeError for bad input


@dataclass(frozen=True)
class Settings:
    model: str
    resolution: str = "native"
    layer: int = -1


def _set_slot(session: Session | None, name: str, slot: Slot) -> Session:
    session = session if isinstance(session, Session) else Session()
    if name not in SLOTS:
        raise InputError(f"unknown image slot {name!r}")
    session.slots[name] = slot
    if session.query and session.query[0] == name:
        session.query = None
    session.matches = None
    return session


def _loaded(engine: Engine, session, slot: str, s: Slot, what: str, settings: Settings | None):
    """Put the image in the session; with settings, run its forward pass now so the first click is instant."""
    session = _set_slot(session, slot, s)
    message = f"image {slot}: {what} ({s.image.width}x{s.image.height}); click on it"
    if settings is not None:
        started = time.perf_counter()
        try:
            engine.features(settings.model, s, settings.resolution, settings.layer)
            message += f" (features ready in {time.perf_counter() - started:.1f} s)"
        except DinoscopeError as exc:  # the image is loaded all the same; the message says why no features yet
            message += f"; {exc}"
    return session, s.image, message


def load_sample(engine: Engine, session, name: str, slot: str = "A", settings: Settings | None = None):
    return _loaded(engine, session, slot, engine.load_sample(name), f"sample {name}", settings)


def load_upload(engine: Engine, session, path, slot: str = "A", allowed_root=None, settings: Settings | None = None):
    s = engine.load_upload(path, allowed_root)
    return _loaded(engine, session, slot, s, s.label, settings)


def load_url(engine: Engine, session, url: str, slot: str = "A", settings: Settings | None = None):
    s = engine.load_url(url)
    return _loaded(engine, session, slot, s, s.label, settings)


def similarity(engine: Engine, session: Session, settings: Settings, slot: str, x=None, y=None, *,
               target: str = SAME, alpha: float = 0.55, cmap: str = "turbo"):
    """The similarity map for a click at (x, y) in image `slot` (CLS when x is None), over the same or the other image."""
    from .analyses import CLS, Pixel, query_index
    from .views import similarity_view

    started = time.perf_counter()
    _check_cmap(cmap)
    alpha = _unit(alpha, "opacity")
    source = session.slot(slot)
    feats = engine.features(settings.model, source, settings.resolution, settings.layer)
    if x is None:
        query, where = CLS, "the CLS token"
    else:
        g = feats.geometry
        x, y, note = _into_grid(g, x, y)
        query = Pixel(float(x), float(y))
        index = query_index(feats, query)
        row, col = divmod(index, g.cols)
        where = f"pixel ({int(x)}, {int(y)}) = patch {index} (row {row}, col {col}){note}"
    session.query = (slot, x, y)
    if target == OTHER:
        other = "B" if slot == "A" else "A"
        dest = session.slot(other)
        tfeats = engine.features(settings.model, dest, settings.resolution, settings.layer)
        picture = similarity_view(tfeats, query, dest.image, query_features=feats, query_image=source.image,
                                  cmap=cmap, alpha=alpha)
        over = f"image {other}"
    else:
        picture = similarity_view(feats, query, source.image, cmap=cmap, alpha=alpha)
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
    from . import render
    from .analyses import PCABasis
    from .views import pca_view

    _check_cmap(cmap)
    picked = _components(components)
    names = ["A", "B"] if both else ["A"]
    feats = [engine.features(settings.model, session.slot(n), settings.resolution, settings.layer) for n in names]
    basis = PCABasis.fit(feats, max(3, max(picked) + 1), foreground_only=bool(foreground))
    pictures = [pca_view(f, basis, components=picked, cmap=cmap) for f in feats]
    picture = pictures[0] if len(pictures) == 1 else render.side_by_side(pictures, gap=8)
    what = "components " + ",".join(str(c + 1) for c in picked)
    return picture, f"PCA {what} of image{'s A and B (one basis)' if both else ' A'}" + (
        ", foreground only" if foreground else "")


def norms(engine: Engine, session: Session, settings: Settings, slot: str = "A", *, cmap: str = "inferno",
          alpha: float = 0.0):
    from .views import norms_view

    _check_cmap(cmap)
    s = session.slot(slot)
    feats = engine.features(settings.model, s, settings.resolution, settings.layer)
    return norms_view(feats, s.image, cmap=cmap, alpha=_unit(alpha, "opacity")), f"feature norms of image {slot}"


def attention(engine: Engine, session: Session, settings: Settings, slot: str = "A", *, heads: bool = True,
              cmap: str = "inferno"):
    """Attention of the last clicked patch of `slot` (or CLS) in the chosen layer."""
    from .analyses import CLS, Pixel
    from .views import attention_view

    _check_cmap(cmap)
    s = session.slot(slot)
    query = CLS
    if session.query and session.query[0] == slot and session.query[1] is not None:
        feats = engine.features(settings.model, s, settings.resolution, settings.layer)
        from .analyses import query_index

        query = query_index(feats, Pixel(float(session.query[1]), float(session.query[2])))
    att = engine.attention(settings.model, s, settings.resolution, settings.layer, query)
    shares = att.shares()
    who = "CLS" if att.query < 0 else f"patch {att.query}"
    message = (f"attention of {who} in block {att.layer} of image {slot}: {shares['patches']:.1%} to patches, "
               f"{shares['registers']:.1%} to registers, {shares['cls']:.1%} to CLS")
    return attention_view(att, s.image, heads=bool(heads), cmap=cmap), message


def matching(engine: Engine, session: Session, settings: Settings, *, method: str = "hungarian", top_k: int = 50,
             cmap: str = "viridis"):
    from .views import matches_view

    if method not in ("hungarian", "mnn"):
        raise InputError(f"unknown matching method {method!r}; use hungarian or mnn")
    _check_cmap(cmap)
    a, b = session.slot("A"), session.slot("B")
    fa = engine.features(settings.model, a, settings.resolution, settings.layer)
    fb = engine.features(settings.model, b, settings.resolution, settings.layer)
    key = (engine.key(settings.model, a, settings.resolution, settings.layer),
           engine.key(settings.model, b, settings.resolution, settings.layer), method)
    cached = session.matches[1] if session.matches and session.matches[0] == key else None
    picture, found = matches_view(fa, fb, a.image, b.image, method=method, top_k=max(0, int(top_k)), cmap=cmap,
                                  matches=cached)
    session.matches = (key, found)
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
        feats = engine.features(settings.model, s, settings.resolution, settings.layer)
        paths.append(os.fspath(feats.save(folder / f"{name}_{s.label}.safetensors")))
    if session.matches is not None:
        from .files import write_text

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


# ---------------------------------------------------------------------------
# the Gradio app


def _message(exc: BaseException) -> str:
    if isinstance(exc, DinoscopeError):
        return f"error: {exc}"
    log.exception("explorer callback failed")
    return f"internal error: {type(exc).__name__}: {exc}"


def build_app(model: str | os.PathLike = DEFAULT_MODEL, *, engine: Engine | None = None, allow_urls: bool = False,
              **engine_kwargs):
    """The explorer as a Gradio Blocks app; the Engine is available as `app.dinoscope_engine`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .images import SAMPLES

    engine = engine or Engine(model, allow_urls=allow_urls, **engine_kwargs)
    upload_root = os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")

    def settings(model_label, resolution, layer) -> Settings:
        return Settings(model_label, resolution, engine.layer(layer))

    def new_session():
        return Session()

    # Gradio keeps a copy of every picture it serves: drop copies older than an hour, checking every 10 minutes
    with gr.Blocks(title="dinoscope explorer", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        session = gr.State(value=new_session, delete_callback=_delete_session)
        gr.Markdown("## dinoscope explorer\nPick or upload an image, then click on it: the map shows how similar "
                    "every patch is to the one you clicked.")
        with gr.Row():
            model_dd = gr.Dropdown(list(engine.models), value=engine.default_label, label="Model", elem_id="model")
            res_dd = gr.Dropdown(RESOLUTIONS, value="native", label="Resolution", elem_id="resolution")
            layer_nb = gr.Number(value=-1, precision=0, label="Layer (-1 = last)", elem_id="layer")
        status = gr.Textbox(label="Status", interactive=False, elem_id="status", max_lines=2)
        displays, pickers, uploads, urls = {}, {}, {}, {}
        with gr.Row():
            for name in SLOTS:
                with gr.Column():
                    with gr.Row():
                        pickers[name] = gr.Dropdown(sorted(SAMPLES), value=None, label=f"Sample for image {name}",
                                                    elem_id=f"sample-{name.lower()}")
                        uploads[name] = gr.UploadButton(f"Upload image {name}", file_types=["image"], type="filepath",
                                                        elem_id=f"upload-{name.lower()}")
                    if engine.allow_urls:
                        urls[name] = gr.Textbox(label=f"Image {name} URL (Enter to load)", elem_id=f"url-{name.lower()}")
                    displays[name] = gr.Image(type="filepath", interactive=False, label=f"Image {name} (click)",
                                              elem_id=f"image-{name.lower()}", buttons=["fullscreen"])
        with gr.Tabs():
            with gr.Tab("Similarity", id="similarity"):
                with gr.Row():
                    target = gr.Radio([SAME, OTHER], value=SAME, label="Map over", elem_id="target")
                    alpha = gr.Slider(0, 1, value=0.55, step=0.05, label="Opacity", elem_id="alpha")
                    sim_cmap = gr.Dropdown(CMAPS, value="turbo", label="Colormap", elem_id="sim-cmap")
                    cls_a = gr.Button("CLS query (image A)", elem_id="cls-a")
                    cls_b = gr.Button("CLS query (image B)", elem_id="cls-b")
                sim_out = gr.Image(type="filepath", interactive=False, label="Similarity",
                                   elem_id="sim-out", buttons=["download", "fullscreen"])
                # API-only twin of the click (benchmarks and scripted clients): slot, x, y
                with gr.Row(visible=False):
                    api_slot = gr.Textbox(value="A")
                    api_x = gr.Number()
                    api_y = gr.Number()
                    api_btn = gr.Button("query")
            with gr.Tab("PCA", id="pca"):
                with gr.Row():
                    comps = gr.Textbox(value="1,2,3", label="Components (three for RGB, one for a map)", elem_id="pca-components")
                    fg = gr.Checkbox(label="Foreground only", elem_id="pca-fg")
                    both = gr.Checkbox(label="A and B with one basis", elem_id="pca-both")
                    pca_cmap = gr.Dropdown(CMAPS, value="viridis", label="Colormap (one component)")
                    pca_btn = gr.Button("Draw PCA", variant="primary", elem_id="pca-go")
                pca_out = gr.Image(type="filepath", interactive=False, label="PCA", elem_id="pca-out",
                                   buttons=["download", "fullscreen"])
            with gr.Tab("Norms", id="norms"):
                with gr.Row():
                    norm_slot = gr.Radio(list(SLOTS), value="A", label="Image")
                    norm_alpha = gr.Slider(0, 1, value=0.0, step=0.05, label="Opacity over the photo")
                    norm_cmap = gr.Dropdown(CMAPS, value="inferno", label="Colormap")
                    norm_btn = gr.Button("Draw norms", variant="primary", elem_id="norms-go")
                norm_out = gr.Image(type="filepath", interactive=False, label="Norms", elem_id="norms-out",
                                    buttons=["download", "fullscreen"])
            with gr.Tab("Attention", id="attention"):
                gr.Markdown("Attention of the last patch you clicked in that image (or of CLS), ViT models only.")
                with gr.Row():
                    att_slot = gr.Radio(list(SLOTS), value="A", label="Image")
                    att_heads = gr.Checkbox(value=True, label="One panel per head")
                    att_btn = gr.Button("Draw attention", variant="primary", elem_id="attention-go")
                att_out = gr.Image(type="filepath", interactive=False, label="Attention",
                                   elem_id="attention-out", buttons=["download", "fullscreen"])
            with gr.Tab("Matching", id="matching"):
                with gr.Row():
                    method = gr.Radio(["hungarian", "mnn"], value="hungarian", label="Method", elem_id="method")
                    top_k = gr.Slider(0, 800, value=50, step=10, label="Top-k pairs (0 = up to 800 sampled)",
                                      elem_id="top-k")
                    match_btn = gr.Button("Match A and B", variant="primary", elem_id="match-go")
                match_out = gr.Image(type="filepath", interactive=False, label="Matches",
                                     elem_id="match-out", buttons=["download", "fullscreen"])
            with gr.Tab("Downloads", id="downloads"):
                gr.Markdown("Pictures: the download button on each picture. Features of the loaded images "
                            "(and the last matches as CSV):")
                dl_btn = gr.Button("Prepare features", elem_id="features-go")
                dl_files = gr.File(file_count="multiple", interactive=False, label="Files", elem_id="files")

        common = [model_dd, res_dd, layer_nb]
        skip = gr.skip

        def guarded(fn, n_out, photo=False):
            """Run a callback; on error keep every output as it was and show the message."""
            def run(*args):
                try:
                    return deliver(engine, args[0], fn(*args), photo=photo)
                except Exception as exc:  # noqa: BLE001 - the page must keep working whatever happened
                    return tuple(skip() for _ in range(n_out)) + (_message(exc),)
            return run

        for name in SLOTS:
            pickers[name].input(guarded(lambda sess, sample, m, r, l, n=name: load_sample(
                engine, sess, sample, n, settings(m, r, l)), 2, True),
                [session, pickers[name], *common], [session, displays[name], status], concurrency_limit=4,
                api_name=f"sample_{name.lower()}")
            uploads[name].upload(guarded(lambda sess, path, m, r, l, n=name: load_upload(
                engine, sess, path, n, upload_root, settings(m, r, l)), 2, True),
                [session, uploads[name], *common], [session, displays[name], status], concurrency_limit=4,
                api_name=f"upload_{name.lower()}")
            if name in urls:
                urls[name].submit(guarded(lambda sess, url, m, r, l, n=name: load_url(
                    engine, sess, url, n, settings(m, r, l)), 2, True),
                    [session, urls[name], *common], [session, displays[name], status], concurrency_limit=2)

            def on_select(sess, m, r, l, tgt, a, c, evt, n=name):
                try:
                    x, y = evt.index[0], evt.index[1]
                    return deliver(engine, sess, similarity(engine, sess, settings(m, r, l), n, x, y, target=tgt,
                                                            alpha=a, cmap=c))
                except Exception as exc:  # noqa: BLE001
                    return skip(), skip(), _message(exc)

            on_select.__annotations__ = {"evt": gr.SelectData}  # Gradio passes the click by this annotation
            displays[name].select(on_select, [session, *common, target, alpha, sim_cmap],
                                  [session, sim_out, status], concurrency_limit=4, api_name=f"click_{name.lower()}")

        def on_cls(n):
            return guarded(lambda sess, m, r, l, tgt, a, c: similarity(engine, sess, settings(m, r, l), n, None, None,
                                                                         target=tgt, alpha=a, cmap=c), 2)

        cls_a.click(on_cls("A"), [session, *common, target, alpha, sim_cmap], [session, sim_out, status],
                    concurrency_limit=4)
        cls_b.click(on_cls("B"), [session, *common, target, alpha, sim_cmap], [session, sim_out, status],
                    concurrency_limit=4)

        def redraw(sess, m, r, l, tgt, a, c):
            """Opacity/colormap/target changed: redraw the last query (nothing to do before a click)."""
            if not isinstance(sess, Session) or sess.query is None:
                return skip(), skip(), skip()
            n, x, y = sess.query
            return similarity(engine, sess, settings(m, r, l), n, x, y, target=tgt, alpha=a, cmap=c)

        for widget in (alpha, sim_cmap, target):
            widget.change(guarded(redraw, 2), [session, *common, target, alpha, sim_cmap], [session, sim_out, status],
                          concurrency_limit=4, show_progress="hidden")

        api_btn.click(guarded(lambda sess, n, x, y, m, r, l, tgt, a, c: similarity(
            engine, sess, settings(m, r, l), n, x, y, target=tgt, alpha=a, cmap=c), 2),
            [session, api_slot, api_x, api_y, *common, target, alpha, sim_cmap], [session, sim_out, status],
            api_name="similarity_at", concurrency_limit=4)
        pca_btn.click(guarded(lambda sess, m, r, l, cs, f, b, c: pca(
            engine, sess, settings(m, r, l), components=cs, foreground=f, both=b, cmap=c), 1),
            [session, *common, comps, fg, both, pca_cmap], [pca_out, status], api_name="pca", concurrency_limit=4)
        norm_btn.click(guarded(lambda sess, m, r, l, n, a, c: norms(
            engine, sess, settings(m, r, l), n, cmap=c, alpha=a), 1),
            [session, *common, norm_slot, norm_alpha, norm_cmap], [norm_out, status], api_name="norms",
            concurrency_limit=4)
        att_btn.click(guarded(lambda sess, m, r, l, n, h: attention(engine, sess, settings(m, r, l), n, heads=h), 1),
                      [session, *common, att_slot, att_heads], [att_out, status], api_name="attention",
                      concurrency_limit=2)
        match_btn.click(guarded(lambda sess, m, r, l, me, k: matching(
            engine, sess, settings(m, r, l), method=me, top_k=k), 2),
            [session, *common, method, top_k], [session, match_out, status], api_name="match", concurrency_limit=2)
        top_k.release(guarded(lambda sess, m, r, l, me, k: matching(
            engine, sess, settings(m, r, l), method=me, top_k=k) if isinstance(sess, Session) and sess.matches
            else (skip(), skip(), skip()), 2),
            [session, *common, method, top_k], [session, match_out, status], concurrency_limit=2)
        dl_btn.click(guarded(lambda sess, m, r, l: downloads(engine, sess, settings(m, r, l)), 1),
                     [session, *common], [dl_files, status], concurrency_limit=2)

        def on_model(sess, m, r, l):
            """Load the chosen model at once, so a missing one is reported in the page (the app keeps working)."""
            started = time.perf_counter()
            engine.backbone(m)
            return f"model {m} ready ({time.perf_counter() - started:.1f} s)"

        model_dd.input(lambda sess, m, r, l: _try(on_model, sess, m, r, l), [session, *common], [status],
                       concurrency_limit=1)

    app.dinoscope_engine = engine
    return app


KEEP_PICTURES = 8  # per session: Gradio has its own copy once it has answered


def deliver(engine: Engine, session, result, photo: bool = False):
    """Write the result's pictures as fast PNGs into the session folder and hand Gradio their paths.

    Gradio would encode a returned PIL picture itself with zlib level 6: ~150 ms for 640x480
    on a 2-core CPU, more than everything else a click costs. Level 1 takes ~20 ms for files
    ~15% larger; the pixels are the same (PNG is lossless).
    """
    from PIL import Image

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


def launch(model: str | os.PathLike = DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 7860,
           allow_urls: bool = False, block: bool = True, quiet: bool = True, warm: bool = True,
           **engine_kwargs):
    """Serve the explorer; returns (app, url). With `block`, waits until Ctrl+C and then closes.

    With `warm`, the default model is loaded in the background at once, so the first click waits less.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
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
