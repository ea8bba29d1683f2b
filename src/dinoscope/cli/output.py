"""What commands write and print: output names, pictures and pair files, progress bars."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from ..errors import InputError
from ..files import after_writes, check_writable_file, output_stem, save_image, write_text


def stem(source: str | None) -> str:
    """The name part of the files written for `source` (the default sample when None)."""
    return "chelsea" if source is None else output_stem(source)


class StatusLine:
    """One line on stderr, rewritten in place, saying what long work is under way (model load, forward
    passes); shown when stderr is a terminal, or when asked (--progress), never otherwise."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.width = 0

    def __call__(self, text: str) -> None:
        if self.enabled:
            line = f"dinoscope: {text}"
            print("\r" + line.ljust(self.width), end="", file=sys.stderr, flush=True)
            self.width = len(line)

    def clear(self) -> None:
        if self.width:
            print("\r" + " " * self.width + "\r", end="", file=sys.stderr, flush=True)
            self.width = 0


class RunRecord:
    """What one command did, for the closing summary line: pictures written, time in the model and passes."""

    def __init__(self):
        self.pictures, self.out, self.extractors, self.status = 0, None, [], StatusLine(False)

    def watch(self, extractor, enabled: bool | None) -> None:
        self.status = StatusLine(enabled)
        extractor.status = self.status
        self.extractors.append(extractor)

    def summary(self) -> str | None:
        if not self.status.enabled or not self.pictures:
            return None
        model = sum(e.seconds["model"] for e in self.extractors)
        features = sum(e.seconds["features"] for e in self.extractors)
        noun = "picture" if self.pictures == 1 else "pictures"
        return f"{self.pictures} {noun} in {self.out}/ (model {model:.1f} s, features {features:.1f} s)"


RUN = RunRecord()  # reset by the CLI root before each command


def announce(path: Path) -> Path:
    """Say "wrote PATH" once the file is really there (after the run's outputs are committed), counting
    pictures for the closing summary."""
    path = Path(path)

    def say() -> None:
        RUN.status.clear()
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            RUN.pictures += 1
            RUN.out = RUN.out or path.parent
        typer.echo(f"wrote {path}")

    after_writes(say)
    return path


def save(picture, out: Path, name: str) -> Path:
    RUN.out = out
    return announce(save_image(picture, out / name))


def check_pairs_path(path: Path | None) -> None:
    if path is not None and path.suffix.lower() not in (".csv", ".json"):
        raise InputError(f"cannot tell the format of {path}; name it .csv or .json")
    check_file_target(path)


def check_file_target(path: Path | None) -> None:
    """Before any work: the folder of an extra output file (--pairs, --save-basis) can take it."""
    if path is not None:
        check_writable_file(path)


def write_pairs(matches, path: Path) -> None:
    check_pairs_path(path)
    write_text(matches.to_csv() if path.suffix.lower() == ".csv" else matches.to_json(), path)
    announce(path)


class PhaseBars:
    """One progress bar per phase of a run (fitting PCA, colour range, writing)."""

    def __init__(self, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.phase, self.bar = None, None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase, self.bar = phase, Bar(total, phase)
        self.bar.update_to(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Bar:
    """A minimal stderr progress bar (tqdm when installed), driven by progress(done, total) calls."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label
        self._started = time.perf_counter()
        try:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self._tqdm = None

    def update_to(self, done: int, total: int | None = None) -> None:
        if done <= self.done:
            return
        if self._tqdm is not None:
            self._tqdm.update(done - self.done)
        else:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            print(f"\rdinoscope: {self.label} {done}/{self.total} ({done / elapsed:.2f} images/s)", end="",
                  file=sys.stderr, flush=True)
        self.done = done

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.done:
            print(file=sys.stderr)
