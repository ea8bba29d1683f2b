"""The collection manifest: one JSON line per input in ``OUT/manifest.jsonl``, appended, never rewritten.

Each line records one input's outcome: ``source``, ``name``, ``status`` (ok or failed), ``outputs``
(paths relative to the output folder), ``grid``, ``size``, ``error`` for failures, and ``made_from``:
what the outputs were made from (model and weights revision, every setting and drawing option that
changes them, the job's PCA basis digest, and for local files the input's size, modification time
and SHA-256). An input may appear on several lines (a resumed run appends its new outcome); the
last line counts. `--resume` redoes an input whose record no longer matches what this run would make.

Appending keeps a run of a million inputs from rewriting a million lines after each one; every line
is written whole with one append, so a killed run leaves at worst one damaged last line, which the
next reader skips with a notice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from .errors import redact
from .files import write_error

MANIFEST = "manifest.jsonl"
log = logging.getLogger("dinoscope")


def read_manifest(out: str | os.PathLike) -> dict[str, dict]:
    """The last record of every input by name; damaged lines are skipped with one notice."""
    records: dict[str, dict] = {}
    path = Path(out) / MANIFEST
    if not path.is_file():
        return records
    damaged = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("name"), str) and "source" in rec:
                records[rec["name"]] = rec
            else:
                damaged.append(number)
    if damaged:
        where = ", ".join(map(str, damaged[:5])) + (" ..." if len(damaged) > 5 else "")
        log.warning(f"{path}: {len(damaged)} damaged line(s) skipped (line {where}); the inputs they recorded are "
                    "redone on --resume. To recover by hand, delete those lines; to start over, run without --resume")
    return records


def input_digest(source: str) -> dict | None:
    """Size, modification time and SHA-256 of a local input file; None for URLs and samples."""
    try:
        st = os.stat(source)
        if not os.path.isfile(source):
            return None
        h = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def _same_input(recorded: dict | None, source: str) -> bool:
    """Whether a local input still has the recorded content (same size and time, or else the same digest)."""
    if not recorded:
        return True  # a URL or sample: nothing local to compare
    try:
        st = os.stat(source)
    except OSError:
        return False
    if st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    now = input_digest(source)
    return now is not None and now["sha256"] == recorded.get("sha256")


def why_redo(out: Path, name: str, source: str, outputs: Sequence[str] | None, record: dict | None,
             recipe: dict) -> str | None:
    """None when `record` shows this input complete and made as `recipe` would make it; else the reason.

    `outputs`: the files the job writes for this input (None when only known once written, as for shards).
    """
    if not record:
        return "not done yet"
    if record.get("source") != redact(source):  # recorded without credentials
        return "another input had this name"
    if record.get("status") != "ok":
        return "failed before"
    had = list(record.get("outputs", ()))
    wanted = had if outputs is None else list(outputs)
    if not wanted or not set(wanted) <= set(had) or not all((out / rel).is_file() for rel in wanted):
        return "outputs missing"
    made = record.get("made_from")
    if not isinstance(made, dict):
        return "made by an older dinoscope that did not record its settings"
    for key, value in recipe.items():
        if key == "revision" and (value is None or made.get(key) is None):
            continue  # not known without loading the model: the model name is compared
        if made.get(key) != value:
            return f"{key} changed"
    if not _same_input(made.get("input"), source):
        return "input content changed"
    return None


def explain(reasons: Counter, total: int) -> str | None:
    """The notice for inputs --resume redoes although a record existed (None when there are none)."""
    redone = {k: n for k, n in reasons.items() if k != "not done yet"}
    if not redone:
        return None
    why = ", ".join(f"{k} ({n})" for k, n in sorted(redone.items(), key=lambda kv: -kv[1]))
    return f"resume: redoing {sum(redone.values())} of {total} input(s) recorded before: {why}"


class ManifestLog:
    """Appends records to the manifest in input order (a record that arrives early waits for the ones
    before it), keeps each input's outcome for the summary, and writes what is pending when closed.

    Opening fails at once, as one InputError, when the output folder cannot be written."""

    def __init__(self, out: Path, order: Sequence[str]):
        self.path = Path(out) / MANIFEST
        self.order = list(order)
        self.outcomes: dict[str, tuple[str, str, str]] = {}  # name -> (status, source, error)
        self.writes = 0
        self._pending: dict[str, dict] = {}
        self._next = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if self.path.stat().st_size and not self._ends_with_newline():
                os.write(self._fd, b"\n")  # a line cut by a killed run stays apart from the next one
        except OSError as exc:
            raise write_error(self.path, exc) from exc

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def __enter__(self) -> "ManifestLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def failed(self) -> set[str]:
        return {name for name, (status, _, _) in self.outcomes.items() if status != "ok"}

    def add(self, record: dict) -> None:
        """Record one input's outcome (the first failure of an input is kept; a later ok replaces it)."""
        name = record["name"]
        if record.get("status") != "ok" and name in self.outcomes:
            return
        self.outcomes[name] = (record.get("status", "failed"), record.get("source", ""), record.get("error", ""))
        self._pending[name] = record
        while self._next < len(self.order) and self.order[self._next] in self._pending:
            self._append([self._pending.pop(self.order[self._next])])
            self._next += 1

    def _append(self, records: list[dict]) -> None:
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        try:
            os.write(self._fd, text.encode("utf-8"))
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self.writes += 1

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            rank = {name: i for i, name in enumerate(self.order)}
            self._append(sorted(self._pending.values(), key=lambda r: rank.get(r["name"], len(rank))))
            self._pending.clear()
        finally:
            os.close(self._fd)
            self._fd = None
