"""The explorer's server state, without Gradio (so it is tested without a browser).

* :class:`Engine` is shared by every user of one server: the models (loaded once, one load at
  a time), the feature cache (:mod:`dinoscope.cache`: a MemoryCache before the disk cache),
  forward passes side by side (a bounded number; one per image and settings), the explorer's
  patch budget, and the server's limits.
* :class:`Session` is one browser tab's state (its images, its last query, the views it has
  open, its temp dir), held in a ``gr.State``: two tabs never see each other's images.
* :func:`live_payload` / :meth:`Engine.live`: the unit float16 features the page computes hover
  similarity from (up to :data:`LIVE_MAX_BYTES` per image; larger grids are answered per click).

Exposed servers: URL loading is off unless enabled and then goes through the address guard of
:mod:`dinoscope.download`; uploads are limited in bytes and pixels; no text from a user is ever
used as a file path. Torch is imported on the first forward pass, so `dinoscope ui --help` stays fast.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..cache import FeatureCache, LayeredCache, MemoryCache, cache_disabled_by_env
from ..download import fetch_url, guarded_opener
from ..errors import InputError
from ..files import safe_name
from ..geometry import Resolution
from ..images import SAMPLES, image_digest, load_image
from ..models import DEFAULT_MODEL
from ..models.loading import identify
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
# The explorer's budget per image, far below the CLI's 16k: a ViT-B pass over 4096 patches takes a few seconds
# on a CPU, and larger uploads are downscaled on arrival (with a notice) so nobody waits minutes.
EXPLORER_MAX_TOKENS = 4096
BUDGET_PATCH = 16  # patch size assumed for the budget (ConvNeXt's 32 only makes its grid smaller)
# Hover-live similarity ships float16 normalised patch features to the browser once per image; above this
# many bytes (e.g. 4096 patches x 1024 dims x 2 bytes = 8 MiB) the page falls back to server clicks.
LIVE_MAX_BYTES = 8 * 1024 * 1024
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
    notice: str = ""  # why the photo shown is not the one uploaded (downscaled to the budget), else ""


@dataclass
class Session:
    """One browser tab's state."""

    slots: dict = field(default_factory=lambda: {s: None for s in SLOTS})
    query: tuple | None = None  # (slot, x, y) of the last click, or (slot, None, None) for CLS
    matches: tuple | None = None  # (key, Matches) of the last matching
    views: set = field(default_factory=set)  # views drawn since the page opened: redrawn when anything changes
    model: str | None = None  # the last model that loaded, to fall back to when another one is refused
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
    """What every user of one server shares: models, the feature cache, limits, the model lock and the
    bound on parallel forward passes."""

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, *, models: dict[str, str] | None = None,
                 device: str = "auto", dtype: str = "float32", loader: Callable | None = None,
                 max_entries: int = 32, max_cache_bytes: int = 2 * 1024**3, max_models: int = 2,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
                 max_tokens: int = EXPLORER_MAX_TOKENS, allow_urls: bool = False, disk_cache: bool = True,
                 workdir: str | os.PathLike | None = None, parallel_passes: int = 2,
                 live_max_bytes: int = LIVE_MAX_BYTES, search_folder: str | os.PathLike | None = None):
        self.default_model = os.fspath(model)
        choices = dict(models) if models is not None else {self._label(DEFAULT_MODEL): DEFAULT_MODEL,
                                                            **{_offline_label(name, spec): name
                                                               for name, spec in MODELS.items()
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
        self.search_folder = os.fspath(search_folder) if search_folder else None  # the Search tab's (ui/insights.py)
        self.search_collection = None
        self.disk_cache = self._disk_cache() if disk_cache else None
        self.workdir = Path(tempfile.mkdtemp(prefix="dinoscope-ui-", dir=workdir))
        self.model_lock = threading.RLock()  # one model load at a time
        # forward passes run side by side (torch releases the GIL), so one user's large image never holds
        # up another user's small one; the bound keeps memory in check
        self.passes = threading.BoundedSemaphore(max(1, int(parallel_passes)))
        self.live_max_bytes = live_max_bytes
        self._cache_lock = threading.Lock()
        self.memory = MemoryCache(max_entries)  # Features of recent images, shared by every tab
        self.cache = LayeredCache(self.memory, self.disk_cache)
        self._key_locks: dict = {}
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
        """The on-disk feature cache (unless turned off by the environment); never a reason to stop."""
        if cache_disabled_by_env():
            return None
        try:
            return FeatureCache()
        except Exception as exc:  # noqa: BLE001 - the cache must never stop the explorer
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
        """Features of one image, from the shared cache (memory, then disk) when seen before; else one pass.

        Two users asking for the same image and settings at once share one pass (one lock per key);
        other images run beside it (up to `parallel_passes`). A denser grid takes density^2 shifted passes."""
        key = self.key(label, slot, resolution, layer, density)
        backbone = self.backbone(label)
        backbone.layer_index(key[3])
        from ..features import Extractor

        extractor = Extractor(backbone, resolution=self.resolution(resolution), layer=key[3], max_pixels=None,
                              density=density, cache=self.cache)
        with self._pending(key):
            found = self.cache.get(extractor.cache_key(slot.image, slot.digest))
            if found is not None:
                return found
            with self.passes:
                features = self._forward(extractor, slot)
            self.forward_passes += extractor.forward_passes
        return features

    def _forward(self, extractor, slot: Slot):
        """One forward pass, stored in the cache (the hook tests replace to make a pass slow)."""
        return extractor(slot.image)[1]

    @contextlib.contextmanager
    def _pending(self, key):
        """Hold the lock of one features key (made on first use, dropped by whoever made it)."""
        with self._cache_lock:
            lock = self._key_locks.get(key)
            made = lock is None
            if made:
                lock = self._key_locks[key] = threading.Lock()
        try:
            with lock:
                yield
        finally:
            if made:
                with self._cache_lock:
                    self._key_locks.pop(key, None)

    def attention(self, label: str, slot: Slot, resolution: str, layer, query):
        key = (*self.key(label, slot, resolution, layer), query)
        hit = self._lookup(self._attention, key)
        if hit is not None:
            return hit
        backbone = self.backbone(label)
        if backbone.kind == "convnext":
            raise InputError(f"{label} is a ConvNeXt: it has no attention; pick a ViT model")
        with self.passes:
            from ..features import extract_attention

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
        return len(self.memory)

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
        return self._slot(load_image(data, max_pixels=self.max_pixels), _safe_name(p.name))

    def load_sample(self, name: str) -> Slot:
        if not name:
            raise InputError("choose a sample from the list")
        if name not in SAMPLES:
            raise InputError(f"unknown sample {name!r}; choose one of: {', '.join(sorted(SAMPLES))}")
        return self._slot(load_image(SAMPLES[name]), name)

    def load_url(self, url: str) -> Slot:
        image = fetch_image_url(url, allow_urls=self.allow_urls, max_bytes=self.max_upload_bytes,
                                max_pixels=self.max_pixels)
        return self._slot(image, _safe_name(url.rsplit("/", 1)[-1].split("?")[0]) or "url")

    def _slot(self, image, label: str) -> Slot:
        image, notice = fit_budget(image, self.max_tokens)
        return Slot(image, image_digest(image), label, notice)

    def live(self, features, folder: str | os.PathLike, name: str) -> dict:
        """The grid, and the file of features the page computes hover similarity from (path None when larger
        than `live_max_bytes`: the page then asks the server on each click)."""
        if features.flat.numel() * 2 > self.live_max_bytes:
            return {**grid_meta(features), "path": None}
        data, meta = live_payload(features)
        path = Path(folder) / f"live-{name}.bin"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return {**meta, "path": os.fspath(path)}


def _offline_label(name: str, spec) -> str:
    """A model's name in the dropdown, marked when no copy of its weights is on this machine."""
    if any(identify(i) is not None for i in spec.ids):
        return name
    return f"{name} (not downloaded)"


def fit_budget(image, max_tokens: int | None, patch: int = BUDGET_PATCH):
    """(image, notice): the photo downscaled so its native patch grid stays within `max_tokens`, else as it was."""
    if not max_tokens:
        return image, ""
    w, h = image.size
    if (w // patch) * (h // patch) <= max_tokens:
        return image, ""
    scale = (max_tokens / ((w / patch) * (h / patch))) ** 0.5
    while True:
        nw, nh = max(patch, int(w * scale)), max(patch, int(h * scale))
        if (nw // patch) * (nh // patch) <= max_tokens:
            break
        scale *= 0.99
    small = image.resize((nw, nh), Image.Resampling.LANCZOS)
    return small, (f"downscaled from {w}x{h} to {nw}x{nh} to stay within this explorer's budget of "
                   f"{max_tokens} patches (the CLI reads the full image)")


def live_payload(features) -> tuple[bytes, dict]:
    """What the page needs to compute similarity itself: unit-length patch features as float16, and the grid.

    The browser's dot product of two rows is then the cosine similarity the server computes (to ~1e-3).
    """
    import torch

    flat = features.flat.float()
    unit = flat / torch.linalg.vector_norm(flat, dim=-1, keepdim=True).clamp_min(1e-8)
    data = unit.numpy().astype("<f2").tobytes()
    return data, {**grid_meta(features), "bytes": len(data)}


def grid_meta(features) -> dict:
    """The grid as the page needs it to turn a pointer position into a cell: cells of cell_w x cell_h pixels."""
    g = features.geometry
    sx, sy = g.scale
    return {"rows": g.rows, "cols": g.cols, "dim": int(features.dim), "width": g.image_size[0],
            "height": g.image_size[1], "cell_w": g.cell_size * sx, "cell_h": g.cell_size * sy}


def _safe_name(name: str) -> str:
    return safe_name(Path(name).stem)[:60]
