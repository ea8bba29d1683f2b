"""Inputs of a collection: what a command line names, expanded to files, URLs and samples with unique names.

A folder (searched recursively for image files), a glob pattern (``photos/**/*.jpg``), ``@list.txt``
(a text file with one path, URL or sample:NAME per line; blank lines and lines starting with # are
skipped; relative paths are read relative to the list file's folder), or any number of single
files, URLs and samples.

Each input gets a name: its path relative to the folder or the glob's fixed prefix, without the
extension (``cats/tom.jpg`` -> ``cats/tom``); outputs go to ``OUT/<name>_<what>.png`` (so the output
folder mirrors the input folder). Names that would collide get ``_2``, ``_3``.
"""

from __future__ import annotations

import glob as globmod
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import InputError
from .files import output_stem, read_bounded, safe_name

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm",
                            ".pgm", ".pbm", ".tga", ".ico", ".avif", ".heic"})


@dataclass(frozen=True)
class Item:
    """One input: where it comes from and the relative output name (posix, no extension)."""

    source: str
    name: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_remote(text: str) -> bool:
    return "://" in text or text.lower().startswith("sample:")


def is_collection(specs: Sequence[str]) -> bool:
    """True when the inputs name more than one image or a folder, glob or @list (the single-image commands
    keep their own behaviour otherwise)."""
    if len(specs) != 1:
        return len(specs) > 1
    spec = specs[0]
    if spec.startswith("@"):
        return True
    if _is_remote(spec):
        return False
    return os.path.isdir(spec) or (_is_glob(spec) and not os.path.exists(spec))


def _inside(path: Path | str, folder: Path | None) -> bool:
    """True when `path` is `folder` or lies under it (both resolved; None excludes nothing)."""
    if folder is None:
        return False
    try:
        Path(path).resolve().relative_to(folder)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _walk(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under `folder`, recursively, skipping hidden entries and the folder `exclude` (the output
    folder: a second run must not read its own pictures) unless `folder` itself lies inside it."""
    if exclude is not None and _inside(folder, exclude):
        exclude = None  # the user named the output folder (or a folder in it) on purpose
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(Path(root) / d, exclude))
        for f in files:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root) / f)
    return sorted(found)


def _rel_name(path: Path, base: Path) -> str:
    rel = path.relative_to(base) if base is not None else Path(path.name)
    parts = [safe_name(p) for p in rel.parent.parts if p not in ("", ".")]
    return "/".join([*parts, safe_name(rel.stem)])


# A list file larger than this is refused before it is read (a million paths fit easily).
MAX_LIST_BYTES = 64 * 2**20


def _read_list(spec: str) -> list[str]:
    path = Path(spec[1:]).expanduser()
    try:
        text = read_bounded(path, MAX_LIST_BYTES, "the list file").decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"no such list file: {path}; give @FILE with one image path or URL per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list file {path} ({exc}); give a UTF-8 text file, one path per line") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _is_remote(line) and not os.path.isabs(os.path.expanduser(line)):
            line = os.path.normpath(os.path.join(path.parent, line))
        out.append(line)
    return out


def expand_inputs(specs: Sequence[str], exclude: str | os.PathLike | None = None) -> list[Item]:
    """The inputs a command line names, in a stable order, each with a unique output name.

    `exclude`: the output folder; folders and globs skip it and everything under it (files named one by one
    are kept).
    """
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    raw: list[tuple[str, str]] = []
    for spec in specs:
        if spec.startswith("@"):
            for line in _read_list(spec):
                raw.extend(_expand_one(line, in_list=True, exclude=skip))
        else:
            raw.extend(_expand_one(spec, exclude=skip))
    return [Item(source, name) for (source, _), name in zip(raw, _unique_names([name for _, name in raw]))]


def _unique_names(names: Sequence[str]) -> list[str]:
    """`names` with repeats (case-insensitive) renamed NAME_2, NAME_3...: never a name taken by any other input."""
    taken = {n.lower() for n in names}
    used: set[str] = set()
    counters: dict[str, int] = {}
    out = []
    for name in names:
        key = name.lower()
        if key not in used:
            used.add(key)
            out.append(name)
            continue
        n = counters.get(key, 1)
        while True:
            n += 1
            candidate = f"{name}_{n}"
            if candidate.lower() not in taken:
                break
        counters[key] = n
        taken.add(candidate.lower())
        used.add(candidate.lower())
        out.append(candidate)
    return out


def _expand_one(spec: str, in_list: bool = False, exclude: Path | None = None) -> list[tuple[str, str]]:
    if _is_remote(spec):
        return [(spec, output_stem(spec))]
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _walk(path, exclude)
        if not files and not in_list:
            raise InputError(f"the folder {spec} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")
        return [(os.fspath(f), _rel_name(f, path)) for f in files]
    if _is_glob(spec) and not path.exists():
        matches = sorted(p for p in globmod.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
        fixed = []
        for part in Path(os.path.expanduser(spec)).parts:
            if _is_glob(part):
                break
            fixed.append(part)
        base = Path(*fixed) if fixed else Path(".")
        if exclude is not None and not _inside(base, exclude):
            matches = [m for m in matches if not _inside(m, exclude)]
        if not matches and not in_list:
            raise InputError(f"no files match {spec}; check the pattern (quote it so the shell does not expand it)")
        return [(m, _rel_name(Path(m), base)) for m in matches]
    return [(spec, safe_name(path.stem))]  # a file (or a missing one: its error is recorded when it is loaded)
