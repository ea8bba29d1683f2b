"""Where a search looks: what `dinoscope search --in` and the explorer's search folder name.

Three kinds of collection, told apart by what the folder holds:

- `features`: the output folder of `dinoscope extract` (.safetensors files; read one at a time);
- `shards`: the output folder of `dinoscope extract --engine ray` (Parquet shards under features/);
- `images`: a folder, a glob or @LIST.txt of images, whose features come from an extractor (so from
  the feature cache when they were seen before).

Each yields (name, Features) pairs for `analyses.search.search`, one image at a time, and gives back
the photo of a hit by its name (for the contact sheet); for saved features the photo is found through
the collection's manifest, when it has one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .analyses.search import BASIS_FILE, saved_features
from .collections import stream_features
from .errors import DinoscopeError, InputError
from .images import load_image
from .inputs import Item, expand_inputs
from .manifest import read_manifest

log = logging.getLogger("dinoscope")
SHARDS = "features"  # ray_engine.SHARDS, named here because ray_engine needs pyarrow (the ray extra) to import


@dataclass
class SearchCollection:
    """A collection to search: its kind, where it is, and the photo of each image by name (when known)."""

    kind: str  # "features", "shards" or "images"
    root: Path | None
    sources: dict[str, str] = field(default_factory=dict)  # name -> image path or URL
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, why) of images that could not be read
    max_pixels: int | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def features(self, extractor=None) -> Iterator[tuple[str, object]]:
        """(name, Features) of every image, one at a time; `images` collections need the extractor."""
        if self.kind == "features":
            yield from saved_features(self.root)
        elif self.kind == "shards":
            from .ray_engine import load_feature_shard  # the ray extra: only for a Ray collection

            for shard in sorted((self.root / SHARDS).glob("*.parquet")):
                yield from sorted(load_feature_shard(shard).items())
        else:
            if extractor is None:
                raise InputError("searching a folder of images needs a model to compute their features")
            self.failures.clear()
            items = [Item(source, name) for name, source in self.sources.items()]

            def failed(item, message):
                self.failures.append((item.source, message))
                log.warning("skipped %s: %s", item.source, message)

            for item, _, feats in stream_features(extractor, items, failed):
                yield item.name, feats

    def photo(self, name: str):
        """The RGB photo of `name`, or None when the collection does not say where it is or it cannot be read."""
        source = self.sources.get(name)
        if source is None:
            return None
        try:
            return load_image(source) if self.max_pixels is None else load_image(source, max_pixels=self.max_pixels)
        except DinoscopeError as exc:
            log.warning("no photo for %s: %s", name, exc)
            return None


def _saved_kind(folder: Path) -> str | None:
    if (folder / SHARDS).is_dir() and any((folder / SHARDS).glob("*.parquet")):
        return "shards"
    if any(p.name != BASIS_FILE for p in folder.rglob("*.safetensors")):
        return "features"
    return None


def open_collection(spec: str | os.PathLike, *, exclude: str | os.PathLike | None = None,
                    max_pixels: int | None = None) -> SearchCollection:
    """The collection `spec` names: an `extract` output folder (plain or Ray) or images (a folder, a glob,
    @LIST.txt). A folder holding .safetensors features is searched as saved features, not as images."""
    text = os.fspath(spec)
    folder = Path(text).expanduser()
    kind = _saved_kind(folder) if folder.is_dir() else None
    if kind is not None:
        sources = {}
        for name, record in read_manifest(folder).items():
            source = record.get("source")
            if record.get("status") == "ok" and source:
                sources[name] = source if os.path.isabs(source) or "://" in source or source.startswith("sample:") \
                    else os.fspath(Path(source).resolve())
        return SearchCollection(kind, folder, sources, max_pixels=max_pixels)
    named_otherwise = any(c in text for c in "*?[") or text.startswith(("@", "sample:")) or "://" in text
    if not folder.exists() and not named_otherwise:
        raise InputError(f"--in {text}: no such folder; give a folder of images, a quoted glob, @LIST.txt or the "
                         "output folder of `dinoscope extract`")
    items = expand_inputs([text], exclude=exclude)
    if not items:
        raise InputError(f"--in {text} names no images; give a folder of images, a quoted glob or @LIST.txt")
    return SearchCollection("images", folder if folder.is_dir() else None, {it.name: it.source for it in items},
                            max_pixels=max_pixels)
