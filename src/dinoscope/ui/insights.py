"""The explorer's Segments and Search tabs: plain callbacks of an engine, a session and widget values (no Gradio).

Segments draws k-means segments of image A (or co-segments of A and B, one clustering); Search takes
the last point clicked on image A and finds the most similar patches in image B or in the folder the
server was started with (`dinoscope ui --search-folder DIR`), as a contact sheet and a table.
"""

from __future__ import annotations

import time

from .. import render
from ..analyses import Pixel
from ..errors import InputError
from ..features import Extractor
from ..insights import HIT_COLUMNS, hits_sheet, hits_table, search_hits, segments_pictures
from ..search_sources import SearchCollection, open_collection
from .callbacks import Settings, _into_grid, _unit
from .state import Engine, Session

IN_B, IN_FOLDER = "image B", "the server's folder"
MAX_K = 20
MAX_HITS = 100


def segments(engine: Engine, session: Session, settings: Settings, *, k=6, foreground: bool = False,
             both: bool = False, alpha: float = 0.6, seed: int = 0, sharpen: bool = False):
    """Segments of image A, or co-segments of A and B side by side (one clustering: one colour, one part)."""
    k = int(k) if isinstance(k, (int, float)) and float(k).is_integer() else k
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"the number of segments must be a whole number from 1 to {MAX_K}, not {k!r}")
    names = ["A", "B"] if both else ["A"]
    slots = [session.slot(n) for n in names]
    feats = [engine.features(settings.model, s, settings.resolution, settings.layer) for s in slots]
    result, pictures = segments_pictures(feats, [s.image for s in slots], k, seed=int(seed),
                                         foreground=bool(foreground), alpha=_unit(alpha, "opacity"),
                                         sharpen=bool(sharpen))
    picture = pictures[0] if len(pictures) == 1 else render.side_by_side(pictures, gap=8)
    what = "co-segments of A and B (one clustering)" if both else "segments of image A"
    return picture, f"{result.k} {what}" + (", foreground only" if foreground else "") + (
        ", edges following the photo" if sharpen else "")


def search_folder(engine: Engine) -> SearchCollection:
    """The server's search folder, opened once (its file list is read at the first search)."""
    folder = getattr(engine, "search_folder", None)
    if not folder:
        raise InputError("this server has no search folder; whoever runs it can add one with "
                         "dinoscope ui --search-folder DIR")
    collection = getattr(engine, "search_collection", None)
    if collection is None:
        collection = open_collection(folder, max_pixels=engine.max_pixels)
        engine.search_collection = collection
    return collection


def search(engine: Engine, session: Session, settings: Settings, *, scope: str = IN_B, top=20):
    """The patches most similar to the last point clicked on image A: (contact sheet, table rows, message)."""
    started = time.perf_counter()
    if scope not in (IN_B, IN_FOLDER):
        raise InputError(f"unknown search scope {scope!r}; choose one from the list")
    top = int(top) if isinstance(top, (int, float)) and float(top).is_integer() else top
    if not isinstance(top, int) or not 1 <= top <= MAX_HITS:
        raise InputError(f"the number of hits must be a whole number from 1 to {MAX_HITS}, not {top!r}")
    if not session.query or session.query[0] != "A" or session.query[1] is None:
        raise InputError("click a point on image A first: the search looks for the patch under it")
    a = session.slot("A")
    feats = engine.features(settings.model, a, settings.resolution, settings.layer)
    x, y, _ = _into_grid(feats.geometry, session.query[1], session.query[2])
    if scope == IN_B:
        b = session.slot("B")
        photos = {f"B: {b.label}": b.image}
        sources = [(f"B: {b.label}", engine.features(settings.model, b, settings.resolution, settings.layer))]
        index, hits = search_hits(feats, Pixel(x, y), sources, top=top)
        photo_of = photos.get
    else:
        collection = search_folder(engine)
        with engine.model_lock:  # the folder's images may need forward passes
            extractor = Extractor(engine.backbone(settings.model), resolution=engine.resolution(settings.resolution),
                                  layer=settings.layer, max_pixels=engine.max_pixels, cache=engine.disk_cache)
            index, hits = search_hits(feats, Pixel(x, y), collection.features(extractor), top=top)
        photo_of = collection.photo
    sheet = hits_sheet(hits, photo_of, query=(a.image, feats.geometry.box(index)), made_from=[feats])
    ms = (time.perf_counter() - started) * 1000
    message = (f"{len(hits)} patches most like patch {index} of image A in {scope}; best {hits[0].name} "
               f"({hits[0].row},{hits[0].col}) {hits[0].score:.3f} ({ms:.0f} ms)")
    return sheet, hits_table(hits), message


__all__ = ["HIT_COLUMNS", "IN_B", "IN_FOLDER", "MAX_HITS", "MAX_K", "search", "search_folder", "segments"]
