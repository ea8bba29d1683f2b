"""Atomic file output: every file appears whole under its final name or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import threading
from pathlib import Path, PurePath
from typing import Iterator, Sequence
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
        tmp = directory / temporary_name(target.name)
        # created like any new file (mode 0666 less the umask), unlike mkstemp's private 0600
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = os.stat(tmp).st_mode & 0o777
    except OSError as exc:
        raise InputError(f"cannot write to {directory}: {exc.strerror or exc}; choose a writable output folder") from exc
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that replaced the file (safetensors does) must not leave it private
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ".NAME.PID-TOKEN.part.EXT": the writer's process id lets a later run tell a killed writer's leftover
# (removed by `clean_leftovers`) from a file another live run is still writing
_TEMP = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\.part(\.[^.]*)?$")
SCRATCH_PREFIX = ".dinoscope-scratch-"
_SCRATCH = re.compile(r"^\.dinoscope-scratch-(\d+)-")


def temporary_name(name: str) -> str:
    return f".{name}.{os.getpid()}-{secrets.token_hex(6)}.part{PurePath(name).suffix}"


def write_error(path: str | os.PathLike, exc: OSError) -> InputError:
    """One line naming `path`, the real cause and what to do about it."""
    cause = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some space or choose another output folder",
            errno.EDQUOT: "free some space or choose another output folder",
            errno.ENAMETOOLONG: "the name is too long for this file system; shorten it or the output folder's path",
            errno.EISDIR: "a folder stands where the file goes; move it away",
            errno.ENOTDIR: "a file stands where a folder goes; move it away",
            errno.EEXIST: "something stands where the file goes; move it away"}.get(exc.errno,
                                                                                   "choose a writable output folder")
    return InputError(f"cannot write {os.fspath(path)}: {cause}; {hint}")


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """`atomic_path` for several files at once (one transaction): temporary paths are yielded, and all are
    renamed into place only when the block succeeded; any failure removes every temporary file. An OS
    error becomes one InputError naming the path (see `write_error`)."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    current = targets[0] if targets else Path(".")
    try:
        for target in targets:
            current = target
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / temporary_name(target.name)
            temps.append(tmp)  # before it exists: an interruption right after creating it still removes it
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield temps
        for target in targets:  # what would stop a rename, found before any rename
            current = target
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(target))
        renamed = []
        try:
            for tmp, target in zip(temps, targets):
                current = target
                os.replace(tmp, target)
                renamed.append(target)
        except OSError:
            for done in renamed:  # all or none of them
                with contextlib.suppress(OSError):
                    done.unlink()
            raise
        temps = []
    except OSError as exc:
        raise write_error(current, exc) from exc
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def clean_leftovers(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Remove what a killed run (kill -9) left in `folder` (and below, when `recursive`): dinoscope's own
    temporary files and scratch folders whose writing process is gone on this machine. Anything else is
    never touched. Returns how many were removed."""
    removed = 0
    for root, dirs, files in os.walk(folder):
        if not recursive:
            dirs_here = list(dirs)
            dirs[:] = []
            dirs.extend(d for d in dirs_here if _SCRATCH.match(d))
        for d in list(dirs):
            m = _SCRATCH.match(d)
            if m:
                dirs.remove(d)
                if not _alive(int(m.group(1))):
                    shutil.rmtree(Path(root) / d, ignore_errors=True)
                    removed += 1
        for f in files:
            m = _TEMP.match(f)
            if m and not _alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(Path(root) / f)
                    removed += 1
    return removed


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
