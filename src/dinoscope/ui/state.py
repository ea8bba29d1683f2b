"""The explorer's server state, without Gradio (so it is tested without a browser).

* :class:`Engine` is shared by every user of one server: the models (loaded once, under a
  lock, so forward passes never run concurrently), a bounded in-memory LRU of Features
  keyed by (model, image digest, resolution, layer), and the server's limits.
* :class:`Session` is one browser tab's state (its images, its last query, its temp dir),
  held in a ``gr.State``: two tabs never see each other's images.

Exposed servers: URL loading is off unless enabled and then goes through the address guard of
:mod:`dinoscope.download`; uploads are limited in bytes and pixels; no text from a user is ever
used as a file path. Torch is imported on the first forward pass, so `dinoscope ui --help` stays fast.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..download import fetch_url, guarded_opener
from ..errors import InputError
from ..files import safe_name
from ..geometry import DEFAULT_MAX_TOKENS, Resolution
from ..images import SAMPLES, image_digest, load_image
from ..models import DEFAULT_MODEL
from ..models.registry import MODELS, lookup

log = logging.getLogger("dinoscope")

RESOLUTIONS = ["native", "short:224", "short:448", "short:768", "long:512", "long:1024"]
# Grid density and how maps reach the photo's pixels: (label, density, sharpened by guided upsampling)
DETAIL_CHOICES = [("patch grid", 1, False), ("patch grid, sharpened", 1, True), ("density 2", 2, False),
                  ("density 2, sharpened", 2, True), ("density 4", 4, False), ("density 4, sharpened", 4, True)]
DETAILS = [label for label, _, _ in DETAIL_CHOICES]
CMAPS = ["turbo", "viridis", "inferno", "magma", "plasma", "coolwarm", "jet", "gray"]
SLOTS = ("A", "B")
SAME, OTHER = "same image", "the other image"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def fetch_image_url(url: str, *, allow_urls: bool, max_bytes: int, max_pixels: int, timeout: float = 10.0):
    """Download and decode an image for a remote user: refused unless enabled, never to non-public addresses."""
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
                 max_tokens: int = DEFAULT_MAX_TOKENS, allow_urls: bool = False, disk_cache: bool = True,
                 workdir: str | os.PathLike | None = None):
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
        spec = lookup(source)
        if spec is not None:
            return f"{spec.name} (default)" if source == DEFAULT_MODEL else spec.name
        return Path(source).name or source

    @staticmethod
    def _disk_cache():
        """The on-disk feature cache when this dinoscope has one (and it is not turned off)."""
        try:
            from .. import cache
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
                from ..models import load_model

                backbone = load_model(source, device=self.device, dtype=self.dtype)
            self.model_loads += 1
            self._backbones[source] = backbone
            return backbone

    def resolution(self, text: str):
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

    def key(self, label: str, slot: Slot, resolution: str, layer, density: int = 1) -> tuple:
        return (self.source(label), slot.digest, resolution, self.layer(layer)) + ((density,) if density != 1 else ())

    def features(self, label: str, slot: Slot, resolution: str, layer=-1, density: int = 1):
        """Features of one image, from the LRU when seen before; else one forward pass under the model lock
        (density^2 shifted passes for a denser grid)."""
        key = self.key(label, slot, resolution, layer, density)
        hit = self._lookup(self._features, key)
        if hit is not None:
            return hit
        with self.model_lock:
            hit = self._lookup(self._features, key)  # another user may have computed it meanwhile
            if hit is not None:
                return hit
            from ..features import Extractor

            backbone = self.backbone(label)
            backbone.layer_index(key[3])
            kwargs = {}
            if self.disk_cache is not None:
                kwargs["cache"] = self.disk_cache
            extractor = Extractor(backbone, resolution=self.resolution(resolution), layer=key[3], max_pixels=None,
                                  density=density, **kwargs)
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
            from ..features import extract_attention

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
        if name not in SAMPLES:
            raise InputError(f"unknown sample {name!r}; choose one of: {', '.join(sorted(SAMPLES))}")
        image = load_image(SAMPLES[name])
        return Slot(image, image_digest(image), name)

    def load_url(self, url: str) -> Slot:
        image = fetch_image_url(url, allow_urls=self.allow_urls, max_bytes=self.max_upload_bytes,
                                max_pixels=self.max_pixels)
        return Slot(image, image_digest(image), _safe_name(url.rsplit("/", 1)[-1].split("?")[0]) or "url")


def _safe_name(name: str) -> str:
    return safe_name(Path(name).stem)[:60]
