"""Feature caches: a second look at an image already seen does no forward pass.

One protocol (`get(key)` -> Features or None, `put(key, features)`), three implementations,
handed to the Extractor when it is built: `FeatureCache` (on disk, below), `MemoryCache`
(a bounded in-process LRU) and `LayeredCache` (a front cache before a back one).

The disk cache:

Entries are safetensors files (the `Features.save` format) named by a SHA-256 key over
everything that decides the tokens: model source and weights revision, patch size, the
image's pixel digest, the resolution policy and token budget, layer, norm and dtype.

Safe by construction rather than by locking:

* every entry is written to a temporary file beside it and renamed into place
  (`os.replace` is atomic), so concurrent writers of one entry each leave a whole
  file and readers never see half of one;
* a corrupt, truncated or foreign entry is treated as a miss (deleted, recomputed),
  never an error;
* the folder is bounded in size: after each write the least recently used entries
  (by modification time, refreshed on every hit) are removed until it fits.

Failures to write (read-only disk, full disk) are logged once and the cache steps
aside; extraction never fails because of the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from .errors import InputError
from .files import SCRATCH_PREFIX, outside_transaction
from .tokens import Features, _as_array

log = logging.getLogger("dinoscope")

FORMAT = "dinoscope-cache-v2"  # v2: entries carry a CRC-32 of their tensor data
DEFAULT_MAX_BYTES = 2 * 1024**3
_SUFFIX = ".safetensors"
_STALE_TEMP_SECONDS = 3600
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(text: str | int) -> int:
    """'2G', '500M', '1.5GiB' or a number of bytes -> bytes."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise InputError(f"cannot read the cache size {text!r}; write a size like 2G, 500M or 100000000")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 0:
        raise InputError(f"the cache size must not be negative, got {text!r}")
    return value


def default_cache_dir() -> Path:
    """$DINOSCOPE_CACHE, else $XDG_CACHE_HOME/dinoscope, else ~/.cache/dinoscope."""
    env = os.environ.get("DINOSCOPE_CACHE", "").strip()
    if env and env.lower() not in ("0", "off", "none", "false", "no"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dinoscope"


def cache_disabled_by_env() -> bool:
    return os.environ.get("DINOSCOPE_CACHE", "").strip().lower() in ("0", "off", "none", "false", "no")


@dataclass(frozen=True)
class CacheKey:
    """Everything that decides an image's tokens. `digest` is the cache file name."""

    model: str
    revision: str
    patch_size: int
    image: str  # images.image_digest of the loaded RGB pixels
    resolution: str  # e.g. "native", "short:768"
    max_tokens: int | None
    layer: int
    normed: bool
    dtype: str
    sampling: str = ""  # sampling.Sampling.key(): density, padding and tiles ("" for one pass on the patch grid)

    @property
    def digest(self) -> str:
        text = json.dumps([FORMAT, self.model, self.revision, self.patch_size, self.image, self.resolution,
                           self.max_tokens, self.layer, self.normed, self.dtype]
                          + ([self.sampling] if self.sampling else []), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def key_for(identity: tuple[str, str, int], digest: str, resolution, layer: int, normed: bool,
            dtype: str, *, sampling: str = "") -> CacheKey:
    """The key of an image (its `images.image_digest`) under extraction settings: the one place keys are
    built, by the Extractor and by the torch-free cached rerun alike. `identity` is (source, revision,
    patch size); `resolution` a geometry.Resolution; `dtype` a name such as "float32"; `sampling` a
    sampling.Sampling.key(), left out of the digest when "" (one pass on the patch grid)."""
    source, revision, patch = identity
    return CacheKey(source, revision, patch, digest, str(resolution), resolution.max_tokens, layer, normed, dtype,
                    sampling)


class Cache(Protocol):
    """What the Extractor asks of a cache. `get` misses with None; `put` never raises for a full or
    read-only store (the cache steps aside, extraction goes on)."""

    def get(self, key: CacheKey) -> Features | None: ...

    def put(self, key: CacheKey, features: Features) -> object: ...


class FeatureCache:
    """A size-bounded folder of cached Features, safe for concurrent processes.

    `folder` defaults to :func:`default_cache_dir`; `max_bytes` (default 2 GiB, or
    $DINOSCOPE_CACHE_SIZE such as "500M") bounds its size, 0 meaning "keep nothing".
    """

    def __init__(self, folder: str | os.PathLike | None = None, *, max_bytes: int | str | None = None,
                 framework: str = "pt"):
        self.framework = framework  # "numpy": hits hold NumPy arrays and reading never imports torch
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
        if max_bytes is None:
            max_bytes = os.environ.get("DINOSCOPE_CACHE_SIZE", "").strip() or DEFAULT_MAX_BYTES
        self.max_bytes = parse_size(max_bytes)
        self.hits = 0
        self.misses = 0
        self._write_failed = False
        self._bytes: int | None = None  # size of the folder as last known to this process

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.folder)!r}, max_bytes={self.max_bytes})"

    def path(self, key: CacheKey | str) -> Path:
        digest = key.digest if isinstance(key, CacheKey) else key
        return self.folder / digest[:2] / f"{digest}{_SUFFIX}"

    def get(self, key: CacheKey):
        """The cached Features for `key`, or None (missing, unreadable, damaged or not for this key)."""
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            self.misses += 1
            return None
        try:
            features = Features.from_bytes(data, path, framework=self.framework)
            intact = features.extra.get("cache_checksum") == tensor_checksum(data)
        except (InputError, ValueError, KeyError, TypeError):
            log.debug(f"ignoring the unreadable cache entry {path}")
            return self._drop(path)
        if not intact:
            log.warning(f"the cache entry {path} is damaged (its tensor data does not match its checksum); "
                        "recomputing it")
            return self._drop(path)
        if features.extra.get("cache_key") != key.digest or not _consistent(features):
            return self._drop(path)
        with contextlib.suppress(OSError):
            os.utime(path)  # mark as recently used for the LRU bound
        features.extra = {k: v for k, v in features.extra.items() if k not in ("cache_key", "cache_checksum")}
        self.hits += 1
        return features

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        self.misses += 1
        return None

    def put(self, key: CacheKey, features) -> Path | None:
        """Store `features` under `key` (atomically); returns the entry path, or None if it could not be written."""
        if self.max_bytes == 0 or self._write_failed:
            return None
        path = self.path(key)
        extra = {**features.extra, "cache_key": key.digest, "cache_checksum": _checksum_of(features)}
        try:
            with outside_transaction():  # an entry is useful at once, whatever becomes of the run's outputs
                replace(features, extra=extra).save(path)  # atomic: concurrent writers each leave a whole file
            # a running total, so a long run does not list the whole folder after every write; a scan
            # (which also sees other processes' entries) happens only when the bound may be exceeded
            if self._bytes is None:
                self._bytes = self.size()
            else:
                self._bytes += path.stat().st_size
            if self._bytes > self.max_bytes:
                self.evict()
                self._bytes = self.size()
        except (OSError, InputError) as exc:
            self._write_failed = True
            log.warning(f"the feature cache in {self.folder} cannot be written ({exc}); continuing without it")
            return None
        return path

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        found = []
        if not self.folder.is_dir():
            return found
        for sub in self.folder.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sub.iterdir():
                with contextlib.suppress(OSError):
                    if f.name.endswith(_SUFFIX) and not f.name.startswith("."):
                        found.append((f, f.stat()))
                    elif f.name.startswith(".") and time.time() - f.stat().st_mtime > _STALE_TEMP_SECONDS:
                        f.unlink()  # a temporary file left by a killed writer
        return found

    def size(self) -> int:
        return sum(st.st_size for _, st in self.entries())

    def evict(self, max_bytes: int | None = None) -> int:
        """Remove least recently used entries until the folder fits; returns bytes removed."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        entries = self.entries()
        total = sum(st.st_size for _, st in entries)
        removed = 0
        if total <= limit:
            return 0
        for path, st in sorted(entries, key=lambda e: max(e[1].st_mtime, e[1].st_atime)):
            if total <= limit:
                break
            with contextlib.suppress(FileNotFoundError):  # another process may have removed it already
                path.unlink()
            total -= st.st_size
            removed += st.st_size
        return removed

    def clear(self) -> int:
        return self.evict(0)


# CRC-32 (zlib, hardware-assisted): the cache guards against accidents (bit rot, a bad sector, a half-synced
# network folder), not against an attacker who can write the cache folder, and CRC-32 costs about 1 ms for a
# ViT-B 640x480 entry where blake2b costs ~30x more (figures in BENCHMARKS.md).


def _checksum_of(features) -> str:
    """The checksum `tensor_checksum` finds in the file these features are saved to."""
    tensors = {"cls": features.cls, "registers": features.registers, "patches": features.patches}
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(_as_array(tensors[name]).reshape(-1).view(np.uint8), crc)
    return f"crc32:{crc:08x}"


def tensor_checksum(data: bytes) -> str:
    """CRC-32 over the tensor data of a safetensors file's bytes, tensor by tensor in name order, read
    through the header's offsets (no copy): damaged tensor bytes change it, a rewritten header does not."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8:8 + size]))
    view = memoryview(data)[8 + size:]
    crc = 0
    for name in sorted(k for k in header if k != "__metadata__"):
        start, end = header[name]["data_offsets"]
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(view[start:end], crc)
    return f"crc32:{crc:08x}"


def _consistent(features) -> bool:
    g = features.geometry
    p = features.patches
    return (p.ndim == 3 and tuple(p.shape[:2]) == (g.rows, g.cols) and features.cls.shape == (p.shape[-1],)
            and features.registers.ndim == 2)


class MemoryCache:
    """The `max_entries` most recently used Features in this process (thread-safe).

    Entries are kept without their image, and every hit is a fresh shallow copy, so a caller
    that sets `features.image` never changes what another caller reads.
    """

    def __init__(self, max_entries: int = 64):
        if max_entries < 0:
            raise InputError(f"a memory cache holds 0 or more entries, not {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Features] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryCache(max_entries={self.max_entries}, held={len(self)})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Features | None:
        with self._lock:
            found = self._entries.get(key.digest)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key.digest)
            self.hits += 1
        return replace(found, extra=dict(found.extra))

    def put(self, key: CacheKey, features: Features) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key.digest] = replace(features, image=None, extra=dict(features.extra))
            self._entries.move_to_end(key.digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class LayeredCache:
    """A front cache before a back one (e.g. memory before disk): reads try the front first and copy
    back-cache hits forward; writes go to both. `back` may be None (the front alone)."""

    def __init__(self, front: Cache, back: Cache | None = None):
        self.front, self.back = front, back

    def __repr__(self) -> str:
        return f"LayeredCache({self.front!r}, {self.back!r})"

    @property
    def hits(self) -> int:
        return self.front.hits + (self.back.hits if self.back is not None else 0)

    def get(self, key: CacheKey) -> Features | None:
        found = self.front.get(key)
        if found is None and self.back is not None:
            found = self.back.get(key)
            if found is not None:
                self.front.put(key, found)
        return found

    def put(self, key: CacheKey, features: Features) -> None:
        self.front.put(key, features)
        if self.back is not None:
            self.back.put(key, features)


@contextlib.contextmanager
def scratch_layer(folder: Path, back: Cache | None) -> Iterator[LayeredCache]:
    """A layered cache for runs that read every image more than once (a collection's PCA fit, a video):
    a private, unbounded disk cache in a temporary folder inside `folder` (deleted at the end) in front of
    `back`, so no pass recomputes an image however small the user's cache is (a bounded cache would evict
    the run's own entries). Build the run's Extractor with it. The folder's name carries this process's id,
    so after kill -9 the next run into `folder` removes it (`files.clean_leftovers`)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=folder) as tmp:
        yield LayeredCache(FeatureCache(tmp, max_bytes=1 << 62), back)
