"""Atomic file output: every file appears whole under its final name or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from pathlib import Path, PurePath
from typing import Iterator
from urllib.parse import unquote, urlparse

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Writers write to the yielded path. A failure or interruption inside the block
    removes the temporary file, so a half-written output never carries the real name.
    """
    target = Path(path)
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{target.name}.{secrets.token_hex(6)}.part{target.suffix}"
        # created like any new file (mode 0666 less the umask), unlike mkstemp's private 0600
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise InputError(f"cannot write to {directory}: {exc.strerror or exc}; choose a writable output folder") from exc
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def safe_name(text: str, default: str = "image") -> str:
    """A file-name part of letters, digits, "-", "_" and "."; never empty, hidden, "." or ".."."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".")
    return safe or default


def output_stem(source: str, default: str = "image") -> str:
    """The name the outputs of `source` (a path, an http(s) URL or sample:NAME) are called by."""
    if source.lower().startswith("sample:"):
        return safe_name(source[len("sample:"):], default)
    path = unquote(urlparse(source).path) if "://" in source else source
    return safe_name(PurePath(path).stem, default)


def save_image(image, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically; the format follows the file extension (PNG if none is known)."""
    target = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(target.suffix.lower(), "PNG")
    with atomic_path(target) as tmp:
        image.save(tmp, format=fmt)
    return target


def write_text(text: str, path: str | os.PathLike) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs, so that a terminated run unwinds
    like Ctrl-C and `atomic_path` removes its temporary files instead of leaving them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
