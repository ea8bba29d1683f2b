"""Load images from anywhere a user might point at one, as fully decoded RGB.

Sources: a file path, an http(s) URL, ``sample:NAME`` for a bundled photo, a PIL
image, a numpy array or raw bytes. Every problem with the input -- a missing or
unreadable file, a web page instead of an image, a truncated or corrupt file, a
decompression bomb, a failed download -- is raised as a one-line
:class:`~dinoscope.errors.InputError` that says what was wrong and what to do.

This module deliberately imports only the standard library, numpy and Pillow,
so it is cheap to import (no torch).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import errno
import hashlib
import http.client
import io
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .errors import InputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SAMPLES",
    "fetch_url",
    "image_digest",
    "load_image",
    "sample_path",
]

#: Largest image (width * height) decoded unless the caller raises the limit.
DEFAULT_MAX_PIXELS = 100_000_000
#: Largest download accepted from a URL.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

SAMPLES_DIR = Path(__file__).parent / "samples"
#: Bundled sample photos (public domain, from scikit-image): name -> file path.
SAMPLES: dict[str, Path] = {
    "astronaut": SAMPLES_DIR / "astronaut.jpg",
    "chelsea": SAMPLES_DIR / "chelsea.jpg",
    "coffee": SAMPLES_DIR / "coffee.jpg",
}

SAMPLE_PREFIX = "sample:"

# Pillow formats never tried: EPS hands the file to Ghostscript, an external program.
_BLOCKED_FORMATS = frozenset({"EPS"})

# Content types accepted from a web server besides image/*; other types are refused.
_BINARY_CONTENT_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "application/binary",
        "application/x-binary",
        "application/unknown",
        "application/download",
        "application/x-download",
        "application/force-download",
    }
)

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_USER_AGENT = "dinoscope/0.1 (+https://github.com/; python-urllib)"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_LABEL_MAX = 200


# ---------------------------------------------------------------------------
# small helpers


def _one_line(text: str) -> str:
    """Replace line breaks and other control characters so a message never spans lines."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", text)


def _label(text: str) -> str:
    text = _one_line(str(text))
    if len(text) > _LABEL_MAX:
        text = text[: _LABEL_MAX - 3] + "..."
    return text


def _brief(exc: BaseException) -> str:
    """A short one-line description of a library exception for a message."""
    detail = _one_line(str(exc)).strip()
    name = type(exc).__name__
    if not detail:
        return name
    if len(detail) > 120:
        detail = detail[:117] + "..."
    return detail


def _error(message: str) -> InputError:
    return InputError(_one_line(message))


def _check_limit(max_pixels: int | None) -> int | None:
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise _error(f"max_pixels must be a positive whole number, not {max_pixels!r}; for example 100000000")
    return max_pixels


def _check_size(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise _error(f"{label} is {width}x{height} pixels, smaller than 1x1; give an image with at least one pixel")
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise _error(
            f"{label} is {width}x{height} ({pixels:,} pixels), more than the limit of {max_pixels:,} pixels; "
            "shrink it, or if you trust the file raise the limit with --max-pixels"
        )


def _bomb_error(label: str, exc: BaseException, max_pixels: int | None) -> InputError:
    """Turn Pillow's DecompressionBombError/Warning into our one-line message."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(match.group(1)) if match else None
    count = f" ({pixels:,} pixels)" if pixels is not None else ""
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        return _error(
            f"{label} is too large{count}, more than the limit of {max_pixels:,} pixels; "
            "shrink it, or if you trust the file raise the limit with --max-pixels"
        )
    # The caller raised max_pixels above Pillow's own decompression-bomb limit.
    return _error(
        f"{label} is too large{count} for Pillow's decompression-bomb limit; if you trust the file "
        "raise PIL.Image.MAX_IMAGE_PIXELS as well as --max-pixels"
    )


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "WebP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _sniff(head: bytes) -> str:
    """Describe non-image content from its first bytes, for the error message."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        text.startswith(b"<") and b"<html" in text
    ):
        return "a web page (HTML), not an image; save the image itself (for example right-click > Save image as)"
    if text.startswith(b"<?xml") or text.startswith(b"<svg"):
        if b"<svg" in text:
            return "an SVG drawing, which cannot be read; export it as PNG first"
        return "an XML text file, not an image; give a JPEG, PNG, WebP, GIF, TIFF or BMP file"
    if text.startswith(b"%pdf"):
        return "a PDF document, not an image; export the page as PNG first"
    for magic, name in _MAGIC:
        if head.startswith(magic) and (name != "WebP" or head[8:12] == b"WEBP"):
            return f"damaged: it starts like a {name} file but its header cannot be read; re-download or re-export it"
    if head:
        try:
            decoded = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            decoded = None
        if decoded and all(ch.isprintable() or ch in "\r\n\t" for ch in decoded):
            return "a text file, not an image; give a JPEG, PNG, WebP, GIF, TIFF or BMP file"
    return "not an image format that can be read; give a JPEG, PNG, WebP, GIF, TIFF or BMP file"


def _formats() -> list[str]:
    Image.init()
    return [fmt for fmt in Image.ID if fmt not in _BLOCKED_FORMATS]


# ---------------------------------------------------------------------------
# colour conversion


def _scale_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images -> 8-bit L, scaled rather than clipped.

    16-bit images map 0..65535 to 0..255. Integer ("I") and float ("F") images that
    already lie in 0..255 keep their values, floats in [0, 1] are multiplied by 255,
    "I" images in 0..65535 are treated as 16-bit, and anything else is stretched from
    its minimum to its maximum. Works in place on one float32 copy to bound memory.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.uint32)
        wide *= 255
        wide += 32767
        wide //= 65535
        return Image.fromarray(wide.astype(np.uint8))
    values = np.array(image, dtype=np.float32)
    if mode == "F":
        finite = np.isfinite(values)
        if not finite.all():
            values[~finite] = 0.0
        del finite
    lo = float(values.min())
    hi = float(values.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        values *= 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        values /= 257.0
    elif hi > lo:
        values -= lo
        values *= 255.0 / (hi - lo)
    else:
        values[...] = 0.0
    np.clip(values, 0.0, 255.0, out=values)
    np.rint(values, out=values)
    return Image.fromarray(values.astype(np.uint8))


def _composite_on_white(image: Image.Image) -> Image.Image:
    if image.mode == "La":  # premultiplied; Pillow only un-premultiplies to LA
        image = image.convert("LA")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha and transparency are composited on white.

    May return `image` itself when it is already RGB without transparency.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _scale_to_l(image)
    mode = image.mode
    if mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        return _composite_on_white(image)
    if mode == "P" and getattr(image.palette, "mode", "RGB") != "RGB":  # e.g. an RGBA palette
        return _composite_on_white(image)
    if mode == "RGB":
        return image
    return image.convert("RGB")


# ---------------------------------------------------------------------------
# decoding


def _decode(fp: BinaryIO, label: str, max_pixels: int | None) -> Image.Image:
    """Decode the first frame of an image file object into a new, loaded RGB image."""
    head = fp.read(512)
    fp.seek(0)
    if not head:
        raise _error(f"{label} is empty (0 bytes); give a non-empty image file")
    try:
        image = Image.open(fp, formats=_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(label, exc, max_pixels) from exc
    except Image.UnidentifiedImageError as exc:
        raise _error(f"{label} is {_sniff(head)}") from exc
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise _error(f"{label} is damaged or not a supported image ({_brief(exc)}); re-download or re-export it") from exc

    with image:
        _load_within_limits(image, label, max_pixels, "re-download or re-export it")
        return _finish(image, label)


def _load_within_limits(image: Image.Image, label: str, max_pixels: int | None, remedy: str) -> None:
    """Decode `image`'s pixels, refusing it from its header alone when it is too large."""
    try:
        size = image.size
    except Exception as exc:
        raise _error(f"{label} is damaged ({_brief(exc)}); {remedy}") from exc
    _check_size(size, label, max_pixels)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(label, exc, max_pixels) from exc
    except MemoryError as exc:
        raise _error(f"{label} needs more memory to decode than is available; shrink the image") from exc
    except Exception as exc:
        raise _error(f"{label} is truncated or damaged ({_brief(exc)}); {remedy}") from exc
    # Some formats (GIF frames, ICO, JPEG draft) settle their size only while loading.
    _check_size(image.size, label, max_pixels)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation tag, 1 when absent or unreadable."""
    try:
        value = image.getexif().get(0x0112, 1)
        return value if isinstance(value, int) and value in _TRANSPOSE else 1
    except Exception:
        # A malformed EXIF block only loses the orientation; the pixels are fine.
        return 1


def _finish(image: Image.Image, label: str) -> Image.Image:
    """Convert to RGB and apply the EXIF orientation, as a new image sharing nothing with `image`.

    The result carries no metadata: orientation, transparency and profile have been used up.
    """
    method = _TRANSPOSE.get(_orientation(image))
    try:
        rgb = _to_rgb(image)
        if method is not None:
            rgb = rgb.transpose(method)
        elif rgb is image:
            rgb = image.copy()
        rgb.load()
    except MemoryError as exc:
        raise _error(f"{label} needs more memory to convert than is available; shrink the image") from exc
    except Exception as exc:
        raise _error(
            f"{label} has colour mode {image.mode} which cannot be converted to RGB ({_brief(exc)}); "
            "save it as an RGB PNG or JPEG"
        ) from exc
    rgb.info = {}
    return rgb


def _decode_bytes(data: bytes, label: str, max_pixels: int | None) -> Image.Image:
    if not data:
        raise _error(f"{label} is empty (0 bytes); give the bytes of an image file")
    return _decode(io.BytesIO(data), label, max_pixels)


def _load_path(raw: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    try:
        text = os.fspath(raw)
    except TypeError as exc:
        raise _error(f"cannot use {raw!r} as a file path; pass a str or pathlib.Path") from exc
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise _error("the image path is empty; give the path of an image file")
    path = Path(text)
    if text.startswith("~") and "\x00" not in text and not os.path.lexists(path):
        path = path.expanduser()
    label = _label(text)
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise _error(f"{label} is a broken symbolic link; point it at an existing image file") from exc
        hint = ""
        if text.strip().lower() in SAMPLES:
            hint = f" (for the bundled sample use sample:{text.strip().lower()})"
        raise _error(f"no such file: {label}{hint}; check the path") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _error(f"{label} is a symbolic link loop; point the link at a real image file") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise _error(f"cannot read {label}: permission denied; check the file's permissions") from exc
        if exc.errno == errno.ENOTDIR:
            raise _error(f"no such file: {label} (a part of the path is not a folder); check the path") from exc
        raise _error(f"cannot open {label}: {exc.strerror or _brief(exc)}; check the path") from exc
    except ValueError as exc:  # embedded NUL byte
        raise _error(f"{label} is not a valid file path ({_brief(exc)}); check the path") from exc
    if stat.S_ISDIR(info.st_mode):
        raise _error(f"{label} is a folder, not an image file; give the path of an image file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise _error(f"{label} is not a regular file (a device, pipe or socket); give the path of an image file")
    if info.st_size == 0:
        raise _error(f"{label} is empty (0 bytes); give a non-empty image file")
    try:
        handle = open(path, "rb")
    except PermissionError as exc:
        raise _error(f"cannot read {label}: permission denied; check the file's permissions") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _error(f"{label} is a symbolic link loop; point the link at a real image file") from exc
        raise _error(f"cannot open {label}: {exc.strerror or _brief(exc)}; check the path") from exc
    with handle:
        try:
            return _decode(handle, label, max_pixels)
        except OSError as exc:  # a read error on the file itself (e.g. EIO), not bad content
            raise _error(f"cannot read {label}: {exc.strerror or _brief(exc)}; check the file or disk") from exc


def _load_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    label = "the PIL image"
    _load_within_limits(image, label, max_pixels, "re-open or re-create it")
    return _finish(image, label)


def _load_array(array: Any, max_pixels: int | None) -> Image.Image:
    try:
        arr = np.asarray(array)
    except Exception as exc:
        raise _error(f"cannot read the array ({_brief(exc)}); pass a numpy array of shape HxW or HxWxC") from exc
    label = f"the array of shape {tuple(arr.shape)}"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        channels = 1
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        channels = arr.shape[2]
    else:
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
            hint = " (for a channels-first CHW array use arr.transpose(1, 2, 0))"
        raise _error(f"{label} is not HxW, HxWx1, HxWx3 or HxWx4{hint}; pass an image-shaped array")
    _check_size((arr.shape[1], arr.shape[0]), label, max_pixels)
    kind = arr.dtype.kind
    if arr.dtype == np.bool_:
        data = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint8:
        data = arr
    elif arr.dtype == np.uint16:
        data = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif kind == "f":
        if not np.all(np.isfinite(arr)):
            raise _error(f"{label} contains NaN or infinite values; replace them before loading")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise _error(
                f"{label} has float values from {lo:g} to {hi:g}, outside [0, 1]; "
                "scale it to [0, 1] (for example divide 0-255 data by 255)"
            )
        data = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    elif kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise _error(
                f"{label} has {arr.dtype} values from {lo} to {hi}; "
                "use uint8 (0-255), uint16, bool or float in [0, 1]"
            )
        data = arr.astype(np.uint8)
    else:
        raise _error(f"{label} has unsupported dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    try:
        if channels == 1:
            image = Image.fromarray(data).convert("RGB")
        elif channels == 3:
            image = Image.fromarray(data).copy()  # never share memory with the caller's array
        else:
            image = _composite_on_white(Image.fromarray(data))
    except MemoryError as exc:
        raise _error(f"{label} needs more memory to convert than is available; shrink it") from exc
    return image


# ---------------------------------------------------------------------------
# public API


def sample_path(name: str) -> Path:
    """The file of a bundled sample photo; InputError listing the valid names otherwise."""
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key not in SAMPLES:
        names = ", ".join(sorted(SAMPLES))
        raise _error(f"unknown sample {_label(repr(name))}; choose one of: {names}")
    return SAMPLES[key]


def load_image(
    source: Any,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    timeout: float = 20.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Load `source` as a new, fully decoded RGB ("RGB" mode) PIL image.

    `source` may be a file path (str or os.PathLike), an http(s) URL, ``"sample:NAME"``
    for a bundled photo (see :data:`SAMPLES`), a PIL image, a numpy array (HxW, HxWx1,
    HxWx3 or HxWx4 of uint8, uint16, bool, or float in [0, 1]) or the raw bytes of an
    image file.

    EXIF orientation is applied; palette, grey, 16-bit, CMYK, 1-bit and alpha images
    are converted to RGB with transparency composited on white; animated or
    multi-page files give their first frame (a PIL image gives its current frame).
    Images with more than `max_pixels` pixels (width * height) are refused from the
    header, before decoding; ``max_pixels=None`` lifts the limit (Pillow's own
    ``PIL.Image.MAX_IMAGE_PIXELS`` still applies). `timeout` and `max_bytes` apply
    to URLs (see :func:`fetch_url`).

    Every problem with the source raises :class:`InputError` with a one-line message.
    """
    max_pixels = _check_limit(max_pixels)
    if isinstance(source, Image.Image):
        return _load_pil(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode_bytes(data, f"the image data ({len(data):,} bytes)", max_pixels)
    if isinstance(source, np.ndarray):
        return _load_array(source, max_pixels)
    if isinstance(source, str):
        text = source.strip()
        if text.lower().startswith(SAMPLE_PREFIX):
            path = sample_path(text[len(SAMPLE_PREFIX):])
            if not path.is_file():
                raise _error(f"the bundled sample file {path} is missing; reinstall dinoscope")
            return _load_path(path, max_pixels)
        match = _URL_SCHEME.match(text)
        if match:
            scheme = match.group(1).lower()
            if scheme in ("http", "https"):
                data = fetch_url(text, timeout=timeout, max_bytes=max_bytes)
                return _decode_bytes(data, _url_label(text), max_pixels)
            raise _error(
                f"cannot load {_label(text)}: {scheme}:// addresses are not supported; "
                "use an http(s) URL or download the file and pass its path"
            )
        return _load_path(source, max_pixels)
    if isinstance(source, os.PathLike):
        return _load_path(source, max_pixels)
    if hasattr(source, "__array__") or hasattr(source, "__array_interface__"):
        return _load_array(source, max_pixels)
    raise _error(
        f"cannot load an image from a {type(source).__name__}; "
        "pass a file path, an http(s) URL, sample:NAME, a PIL image, a numpy array or bytes"
    )


def image_digest(image: Image.Image) -> str:
    """SHA-256 hex digest of an image's size and RGB pixel bytes, for use as a cache key.

    Two images with the same pixels give the same digest whatever file they came from.
    """
    if not isinstance(image, Image.Image):
        raise _error(f"image_digest needs a PIL image, not a {type(image).__name__}; load it with load_image first")
    try:
        rgb = image if image.mode == "RGB" else _to_rgb(image)
        pixels = rgb.tobytes()
    except Exception as exc:
        raise _error(f"cannot read the pixels of the image ({_brief(exc)}); load it with load_image first") from exc
    width, height = rgb.size
    digest = hashlib.sha256()
    digest.update(f"dinoscope-rgb-v1:{width}x{height}:".encode("ascii"))
    digest.update(pixels)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# downloads


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Let 3xx responses surface as HTTPError so fetch_url follows them itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect())


def _check_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise _error(f"{_label(url)} is not a valid URL ({_brief(exc)}); check the address") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}://" if scheme else "an address without http:// or https://"
        raise _error(f"cannot download {_url_label(url)}: {shown} is not supported; use an http or https URL")
    if not parts.hostname:
        raise _error(f"{_url_label(url)} has no host name; give a full URL such as https://example.com/photo.jpg")
    return parts


def _url_label(url: str) -> str:
    """The URL for messages, without any user:password@ part."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None or parts.password is not None:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = host + (f":{parts.port}" if parts.port else "")
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return _label(url)


def _quote_url(url: str) -> str:
    """Percent-encode spaces and non-ASCII characters that http.client refuses."""
    return urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc).lower()


def _network_error(label: str, exc: BaseException, timeout: float) -> InputError:
    reason = getattr(exc, "reason", exc)
    if _is_timeout(reason) or _is_timeout(exc):
        return _error(f"could not download {label}: no answer within the timeout of {timeout:g} s; try again later or download the file and pass its path")
    return _error(
        f"could not download {label}: {_brief(reason) if isinstance(reason, BaseException) else _one_line(str(reason))}; "
        "check the address or your network; or download the file and pass its path"
    )


def fetch_url(
    url: str,
    *,
    timeout: float = 20.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = 5,
    deadline: float | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> bytes:
    """Download an image over http(s) with the standard library and return its bytes.

    `timeout` (seconds) bounds connecting and each wait for data; `deadline`
    (seconds, default ``3 * timeout``) bounds the whole download, so a server that
    trickles bytes forever is cut off. At most `max_bytes` are accepted, checked on
    Content-Length and while streaming. Redirects are followed by hand, at most
    `max_redirects` of them, only to http(s), and a loop is refused. A Content-Type
    that is neither image/* nor a generic binary type (or absent) is refused.

    `opener` replaces the default urllib opener (it must not follow redirects itself);
    the web explorer passes one whose connections refuse private addresses.

    Every failure raises :class:`InputError` with a one-line message.
    """
    if not isinstance(url, str):
        raise _error(f"a URL must be a str, not {type(url).__name__}; pass it as text")
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if value is None and name == "deadline":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _error(f"the download {name} must be a positive number of seconds, not {value!r}")
    for name, value in (("max_bytes", max_bytes), ("max_redirects", max_redirects)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "max_bytes" else 0):
            raise _error(f"{name} must be a {'positive' if name == 'max_bytes' else 'non-negative'} whole number, not {value!r}")
    total = 3.0 * timeout if deadline is None else float(deadline)
    started = time.monotonic()
    current = url.strip()
    original = _url_label(current)
    seen: set[str] = set()
    opener = opener or _opener()
    redirects = 0
    while True:
        _check_url(current)
        seen.add(current)
        label = _url_label(current)
        remaining = total - (time.monotonic() - started)
        if remaining <= 0:
            raise _error(
                f"could not download {original}: it took longer than {total:g} s; "
                "try again later or download the file and pass its path"
            )
        try:
            request = _request(current)
            response = opener.open(request, timeout=min(timeout, remaining))
        except urllib.error.HTTPError as exc:
            try:
                target = _redirect_target(exc, current, label)
            finally:
                with contextlib.suppress(Exception):
                    exc.close()
            redirects += 1
            if target in seen:
                raise _error(f"could not download {original}: the server redirects in a loop; give the final image URL") from exc
            if redirects > max_redirects:
                raise _error(f"could not download {original}: more than {max_redirects} redirects; give the final image URL") from exc
            if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                raise _error(f"could not download {original}: it redirects to a non-http(s) address; give the final image URL") from exc
            current = target
            continue
        except urllib.error.URLError as exc:
            raise _network_error(label, exc, timeout) from exc
        except (http.client.HTTPException, OSError, ValueError, UnicodeError) as exc:
            raise _network_error(label, exc, timeout) from exc
        with response:
            return _read_body(response, label, timeout, max_bytes, started, total)


def _request(url: str) -> urllib.request.Request:
    """A GET request; user:password@ in the URL becomes a Basic Authorization header."""
    headers = {"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.Request(_quote_url(url), headers=headers)


def _redirect_target(exc: urllib.error.HTTPError, current: str, label: str) -> str:
    """The absolute URL a 3xx answer points to; InputError for any other HTTP error."""
    if exc.code not in _REDIRECT_CODES:
        reason = _one_line(str(exc.reason or http.client.responses.get(exc.code, ""))).strip()
        raise _error(f"could not download URL: HTTP {exc.code} {reason} ({label}); check the address") from exc
    location = exc.headers.get("Location") if exc.headers is not None else None
    if not location or not location.strip():
        raise _error(f"could not download {label}: HTTP {exc.code} redirect without a Location; give the final image URL") from exc
    try:
        return urllib.parse.urljoin(current, location.strip())
    except ValueError as exc2:
        raise _error(f"could not download {label}: it redirects to an invalid address; give the final image URL") from exc2


def _read_body(response, label: str, timeout: float, max_bytes: int, started: float, total: float) -> bytes:
    headers = response.headers
    raw_type = headers.get("Content-Type") if headers is not None else None
    if raw_type and raw_type.strip():
        content_type = headers.get_content_type().lower()
        if not (content_type.startswith("image/") or content_type in _BINARY_CONTENT_TYPES):
            if content_type in ("text/html", "application/xhtml+xml"):
                raise _error(f"the URL returned a web page ({content_type}), not an image; give the direct image URL ({label})")
            raise _error(f"the URL returned {content_type}, not an image; give the direct image URL ({label})")
    length = headers.get("Content-Length") if headers is not None else None
    declared = None
    if length is not None:
        try:
            declared = int(length.strip())
        except ValueError:
            declared = None
        if declared is not None and declared > max_bytes:
            raise _error(
                f"could not download {label}: the file is {declared:,} bytes, more than the limit of {max_bytes:,} bytes; "
                "download it yourself and pass its path"
            )
    body = bytearray()
    try:
        while True:
            if time.monotonic() - started > total:
                raise _error(f"could not download {label}: it took longer than {total:g} s; try again later or download the file and pass its path")
            chunk = response.read1(65536)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise _error(
                    f"could not download {label}: it is larger than the limit of {max_bytes:,} bytes; "
                    "download it yourself and pass its path"
                )
    except InputError:
        raise
    except (http.client.HTTPException, OSError, ValueError) as exc:
        if _is_timeout(exc):
            raise _error(f"could not download {label}: no data within the timeout of {timeout:g} s; try again later or download the file and pass its path") from exc
        raise _error(f"could not download {label}: the connection broke ({_brief(exc)}); try again") from exc
    if declared is not None and len(body) < declared:
        raise _error(
            f"could not download {label}: the connection broke after {len(body):,} of {declared:,} bytes; try again"
        )
    return bytes(body)
