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

import codecs
import errno
import hashlib
import io
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .download import DEFAULT_MAX_BYTES, fetch_url, url_label as _url_label
from .errors import InputError, brief as _brief, clipped as _label, input_error as _error
from .files import file_kind
from .geometry import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SAMPLES",
    "fetch_url",
    "image_digest",
    "load_image",
    "sample_path",
]

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

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


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
            "shrink it, or if you trust the file raise the limit with max_pixels="
        )


def _bomb_error(label: str, exc: BaseException, max_pixels: int | None) -> InputError:
    """Turn Pillow's DecompressionBombError/Warning into our one-line message."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(match.group(1)) if match else None
    count = f" ({pixels:,} pixels)" if pixels is not None else ""
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        return _error(
            f"{label} is too large{count}, more than the limit of {max_pixels:,} pixels; "
            "shrink it, or if you trust the file raise the limit with max_pixels="
        )
    # The caller raised max_pixels above Pillow's own decompression-bomb limit.
    return _error(
        f"{label} is too large{count} for Pillow's decompression-bomb limit; if you trust the file "
        "raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels="
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
        raise _error(f"{label} is {file_kind(path) or 'something else'}, not a regular file; give the path of an "
                     "image file")
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
