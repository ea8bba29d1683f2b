"""Atomic file output: every file appears whole under its final name or not at all."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
import secrets
import shutil
import signal
import stat
import threading
from pathlib import Path, PurePath
from typing import Iterator, Sequence
from urllib.parse import unquote, urlparse

from .errors import InputError


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
            errno.EEXIST: "something stands where the file goes; move it away",
            errno.EROFS: "the file system is read-only; choose a writable output folder",
            errno.EACCES: "choose a folder you can write to",
            errno.EPERM: "choose a folder you can write to"}.get(exc.errno,
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
        joined = _current.get()
        if joined is not None:  # inside a command's transaction: renamed with the command's other outputs
            joined.staged.extend(zip(temps, targets))
            temps = []
            return
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


# The transaction the writes of this run join, if any (see `transaction`).
_current: contextvars.ContextVar["Transaction | None"] = contextvars.ContextVar("dinoscope_transaction", default=None)


class Transaction:
    """Outputs written under temporary names beside their targets, renamed into place together by `commit`."""

    def __init__(self):
        self.staged: list[tuple[Path, Path]] = []  # (temporary, target)
        self.after: list = []  # what to do once every output is in place (e.g. print "wrote ...")

    def commit(self) -> None:
        done = 0
        try:
            for _, target in self.staged:  # every target checked first: nothing is renamed when one is blocked
                check_writable_file(target)
            for tmp, target in self.staged:
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    raise write_error(target, exc) from exc
                done += 1
        except BaseException:
            for _, target in self.staged[:done]:  # a half-committed run leaves none of its outputs
                with contextlib.suppress(OSError):
                    target.unlink()
            self.staged = self.staged[done:]
            self.abort()
            raise
        self.staged = []
        for action in self.after:
            action()

    def abort(self) -> None:
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.staged = []


@contextlib.contextmanager
def transaction() -> Iterator[Transaction]:
    """Every `atomic_path` write inside the block is held under a temporary name and renamed into place
    only when the whole block succeeds; a failure anywhere leaves none of the block's outputs behind."""
    current = Transaction()
    token = _current.set(current)
    try:
        yield current
    except BaseException:
        current.abort()
        raise
    finally:
        _current.reset(token)
    current.commit()


@contextlib.contextmanager
def outside_transaction() -> Iterator[None]:
    """Writes in the block take effect at once even inside a transaction (e.g. feature cache entries)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def after_writes(action) -> None:
    """Run `action` once the outputs of the current transaction are in place (at once when there is none)."""
    current = _current.get()
    if current is None:
        action()
    else:
        current.after.append(action)


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Whether files can be made in `folder` (or in the folders that would be made for it), creating nothing;
    the real cause otherwise. Cheap enough to run before a model loads."""
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            code = errno.EEXIST if existing == folder else errno.ENOTDIR
            raise OSError(code, os.strerror(code))
        if len(os.fsencode(folder.name)) > 255:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        if not os.access(existing, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only(existing) else errno.EACCES
            raise OSError(code, os.strerror(code))
    except OSError as exc:
        raise write_error(existing if exc.errno != errno.ENAMETOOLONG else folder, exc) from exc
    return folder


def check_writable_file(path: str | os.PathLike) -> Path:
    """Whether a file can be written at `path`: a usable name, no folder in its place, a writable folder."""
    path = Path(path)
    try:
        if len(os.fsencode(path.name)) > 255:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    except OSError as exc:
        raise write_error(path, exc) from exc
    check_writable_folder(path.parent)
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Writers write to the yielded path. A failure or interruption inside the block
    removes the temporary file, so a half-written output never carries the real name.
    Inside a `transaction` the rename waits for the transaction's commit. An OS error
    becomes an InputError naming `path` and the cause.
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
        where = directory if isinstance(exc, FileExistsError) else target
        raise write_error(where, exc) from exc
    current = _current.get()
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that replaced the file (safetensors does) must not leave it private
        if current is not None:
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(target))
            current.staged.append((tmp, target))
            return
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(target, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def file_kind(path: str | os.PathLike) -> str | None:
    """What stands at `path` when it is not a regular file ("a folder", "a named pipe (FIFO)", ...);
    None for a regular file or when nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; pipes, devices and larger files are refused
    before reading (a FIFO would block, /dev/zero never ends)."""
    kind = file_kind(path)
    if kind is not None:
        raise InputError(f"{what} {path} is {kind}, not a regular file; give a text file")
    # O_NONBLOCK: should the path be swapped for a FIFO after the check, opening it still does not hang
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{what} {path} is not a regular file; give a text file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{what} {path} is larger than {limit // 2**20} MiB; split it into smaller lists")
    return data


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
