"""From images to Features: sizing, preprocessing, batching and caching.

What a model computes is asked of its adapter (`backbone.adapter`, see models/adapters.py);
the token types and their file format live in tokens.py (`Features` is importable from here too).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import models
from .cache import key_for
from .errors import InputError
from .geometry import Geometry, Resolution
from .images import image_digest, load_image
from .models import DEFAULT_MODEL, Backbone
from .models.loading import identify, resolve_dtype
from .sampling import Sampling, grid_tokens
from .tokens import Attention, Features, split_row

__all__ = ["Extractor", "Features", "attention_rows", "extract", "extract_attention", "extract_batch",
           "extract_layers", "forward_tokens", "preprocess"]

log = logging.getLogger("dinoscope")


def preprocess(image, geometry: Geometry, mean, std) -> torch.Tensor:
    """RGB PIL image -> normalised (3, H, W) float32 tensor of the model input size.

    Native resolution crops the top-left whole-patch area (what the model would see
    anyway); other policies resize the whole image with antialiased bicubic filtering.
    """
    w, h = geometry.input_size
    if geometry.resized:
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    elif image.size != (w, h):
        image = image.crop((0, 0, w, h))
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def _as_backbone(model, device="auto", dtype="float32") -> Backbone:
    return model if isinstance(model, Backbone) else models.load_model(model, device=device, dtype=dtype)


def extract(backbone_or_image, image=None, *, model=None, resolution: Resolution | str | None = None,
            layer: int = -1, normed: bool = True, device: str | None = "auto", dtype="float32", density: int = 1,
            tiles: bool = False) -> Features:
    """Run the model once on one image and return its tokens from `layer`, carrying the image.

    Two call shapes: ``extract("photo.jpg", model="vitb16")`` (the model loaded for this call;
    keep an :class:`Extractor` to reuse one) and ``extract(backbone, image)``. The image is
    anything `load_image` accepts. `normed` applies the model's final norm (the default,
    matching `last_hidden_state`); False gives the raw block output. `density` 2 or 4 gives a grid
    that many times denser along each axis (shift-and-stitch, density^2 passes); `tiles` keeps a
    large photo at full resolution, run in tiles within the token budget.
    """
    if image is None:
        backbone, image = _as_backbone(model or DEFAULT_MODEL, device, dtype), backbone_or_image
    else:
        backbone = _as_backbone(backbone_or_image, device, dtype)
    return extract_layers(backbone, image, resolution=resolution, layers=[layer], normed=normed, density=density,
                          tiles=tiles)[0]


def extract_layers(backbone, image, *, resolution: Resolution | str | None = None, layers: Sequence[int] = (-1,),
                   normed: bool = True, density: int = 1, tiles: bool = False) -> list[Features]:
    """Tokens from several layers of one forward pass (the pass stops at the deepest one asked for)."""
    image = load_image(image)
    sampling = Sampling.within(Resolution.coerce(resolution).max_tokens, density=density, tiles=tiles)
    return extract_batch(backbone, [image], resolution=resolution, layers=layers, normed=normed, sampling=sampling)[0]


def _geometry(image, patch_size: int, resolution: Resolution) -> Geometry:
    geometry, notice = Geometry.for_image(image.width, image.height, patch_size, resolution)
    if notice:
        log.warning(notice)
    return geometry


def extract_batch(backbone, images: Sequence, *, resolution: Resolution | str | None = None,
                  layers: Sequence[int] = (-1,), normed: bool = True, batch_size: int = 8,
                  progress=None, sampling: Sampling | None = None) -> list[list[Features]]:
    """Extract many RGB PIL images; images of the same model input size share a forward pass.

    Returns, per image, a list with one Features per requested layer (each carrying its image).
    `progress(done)` is called after each forward pass with the number of images finished so far.
    `sampling` asks for a denser grid and/or tiles (see `dinoscope.sampling`); each Features records it.
    """
    resolution = Resolution.coerce(resolution)
    sampling = sampling or Sampling()
    blocks = [backbone.layer_index(layer) for layer in layers]
    geometries = [_geometry(image, backbone.patch_size, sampling.sizing(resolution)) for image in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, geometry in enumerate(geometries):
        groups.setdefault(geometry.input_size, []).append(i)
    results: list[list[Features] | None] = [None] * len(images)
    finished = 0
    provenance = dict(model=backbone.source, revision=backbone.revision,
                      dtype=str(backbone.dtype).removeprefix("torch."), normed=normed)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            pixels = torch.stack([preprocess(images[i], geometries[i], backbone.mean, backbone.std) for i in chunk])
            outputs, grids = grid_tokens(lambda x: forward_tokens(backbone, x, blocks, normed), pixels,
                                         [geometries[i] for i in chunk], sampling, dim=backbone.hidden_size,
                                         batch_size=min(4, batch_size))
            for j, i in enumerate(chunk):
                results[i] = [Features(cls_t[j], regs[j], patches[j], grids[j], layer=block, image=images[i],
                                       extra=sampling.record(), **provenance)
                              for block, (cls_t, regs, patches) in zip(blocks, outputs)]
            finished += len(chunk)
            if progress is not None:
                progress(finished)
    return results  # type: ignore[return-value]


def forward_tokens(backbone, pixels, blocks: Sequence[int], normed: bool):
    """Run the model on a batch; per block return (cls (B, D), registers (B, R, D), patches (B, rows, cols, D)).

    The adapter's `forward_intermediates`: the pass stops after the deepest block asked for; for a
    ConvNeXt the "blocks" are its four stages, pooled onto the output grid.
    """
    return backbone.adapter.forward_intermediates(pixels, blocks, normed)


def extract_attention(backbone, image, *, layer: int = -1, query=-1,
                      resolution: Resolution | str | None = None) -> Attention:
    """Attention of one query token (CLS by default, or a patch / Patch / Pixel) in block `layer`, per head.

    Computed from the block's own q/k projections (with RoPE on the patch tokens for DINOv3),
    for the query's row only: the model keeps its fast attention and is not reloaded.
    The result carries the image, so `attention_view` can draw over it.
    """
    image = load_image(image)
    block = backbone.layer_index(layer)
    backbone.adapter.require_attention()  # ConvNeXt: a clear error before any work
    geometry = _geometry(image, backbone.patch_size, Resolution.coerce(resolution))
    index = geometry.query_index(query)
    pixels = preprocess(image, geometry, backbone.mean, backbone.std)[None]
    attention = attention_rows(backbone, pixels, block, [index], geometry)[0]
    attention.image = image
    return attention


def attention_rows(backbone, pixels, block: int, queries: Sequence[int], geometry) -> list[Attention]:
    """For one image (pixels (1, 3, H, W)), the Attention of each query index (-1 = CLS) in `block`."""
    weights = backbone.adapter.attention_rows(pixels, block, queries)
    return [split_row(w, backbone.num_registers, geometry, query=q, layer=block, model=backbone.source)
            for q, w in zip(queries, weights)]


class Extractor:
    """A model plus extraction settings: ``Extractor("vitb16", resolution="short:768").features("photo.jpg")``.

    `model` is a short name (`list_models()`), hub id, folder, checkpoint file or a loaded
    Backbone; it is loaded on first use. This is the one place front ends get features from,
    so every picture they draw for one image comes from one forward pass. `features(src)` gives
    Features (carrying the image); calling the extractor gives (RGB image, Features).

    `cache` (anything with ``get(key)`` / ``put(key, features)``: a :class:`~dinoscope.cache.FeatureCache`
    on disk, a MemoryCache, a LayeredCache, or None for no cache) keeps the tokens: an image seen
    before with the same model, weights, resolution, layer and dtype is read back without loading
    the model or running it.
    """

    def __init__(self, model=DEFAULT_MODEL, *, device: str | None = "auto",
                 dtype="float32", resolution: Resolution | str | None = None, layer: int = -1, normed: bool = True,
                 max_pixels: int | None = None, cache=None, batch_size: int = 8, density: int = 1,
                 tiles: bool = False):
        self.model_source = model
        self.device = device
        self.dtype = dtype
        self.resolution = Resolution.coerce(resolution)
        self.layer = layer
        self.normed = normed
        self.max_pixels = max_pixels
        self.cache = cache
        self.batch_size = batch_size
        self.sampling = Sampling.within(self.resolution.max_tokens, density=density, tiles=tiles)
        self.forward_passes = 0  # images run through the model by this extractor (cache hits excluded)
        self._backbone = None if isinstance(model, (str, os.PathLike)) else model
        self._identity = None
        self.status = None  # optional callable(text) told what long work is under way (the CLI's status line)
        self.seconds = {"model": 0.0, "features": 0.0}  # time spent loading the model and computing features

    def _say(self, text: str) -> None:
        if self.status is not None:
            self.status(text)

    def __repr__(self) -> str:
        model = self.model_source if isinstance(self.model_source, (str, os.PathLike)) else self.backbone.source
        return (f"Extractor({os.fspath(model)!r}, resolution={str(self.resolution)!r}, layer={self.layer}, "
                f"normed={self.normed}, dtype={str(self.dtype)!r}, cache={self.cache!r}"
                + "".join(f", {k}={v!r}" for k, v in self.sampling.record().items() if k != "pad") + ")")

    @property
    def backbone(self):
        if self._backbone is None:
            self._say(f"loading model {os.fspath(self.model_source)}")
            started = time.perf_counter()
            # through the package, so a caller (or test) that replaces models.load_model is heard
            self._backbone = models.load_model(self.model_source, device=self.device, dtype=self.dtype)
            self.seconds["model"] += time.perf_counter() - started
        return self._backbone

    def load(self, source):
        if self.max_pixels is None:
            return load_image(source)
        return load_image(source, max_pixels=self.max_pixels)

    def _model_identity(self) -> tuple[str, str, int] | None:
        """(source, revision, patch size), from the loaded model or, before loading, from its files."""
        if self._backbone is not None:
            b = self._backbone
            return b.source, b.revision, b.patch_size
        if self._identity is None:
            found = identify(self.model_source)
            if found is None:
                return None
            self._identity = (os.fspath(self.model_source), *found)
        return self._identity

    def cache_key(self, image, digest: str | None = None):
        """The cache key of `image` under these settings, or None when the model cannot be identified unloaded.

        `digest` is `image_digest(image)` when the caller already has it (hashing a large image is not free).
        """
        identity = self._model_identity()
        if identity is None:
            return None
        dtype = str(resolve_dtype(self.dtype)).removeprefix("torch.")
        return key_for(identity, digest or image_digest(image), self.resolution, self.layer, self.normed, dtype,
                       sampling=self.sampling.key())

    def __call__(self, source):
        """(RGB image, Features) of one source; `features(source)` gives the Features alone."""
        return self.extract_many([source])[0]

    def features(self, source) -> Features:
        """The Features of one image (a path, URL, PIL image, array, bytes or sample:NAME), carrying the image."""
        return self.extract_many([source])[0][1]

    def layer_features(self, source, layers: Sequence[int]) -> list[Features]:
        """One Features per layer of one image, from one forward pass (for `layers_view`)."""
        return self.layers(source, layers)[1]

    def attention_weights(self, source, query=-1) -> Attention:
        """Attention of `query` (CLS by default, or a patch index / Patch / Pixel) in this extractor's layer."""
        return self.attention(source, query)[1]

    def extract_many(self, sources: Sequence, *, progress=None) -> list[tuple[object, Features]]:
        """(image, Features) for each source, in order: cache hits first, misses batched by input size.

        `progress(done, total)` is called as images complete (hits count at once).
        """
        return list(self.iter_many(sources, progress=progress))

    def iter_many(self, sources: Sequence, *, progress=None, window: int = 64):
        """Like `extract_many` but yields results in order, holding at most `window` images at a time."""
        sources = list(sources)
        total, done = len(sources), 0
        for start in range(0, total, window):
            images = [self.load(s) for s in sources[start:start + window]]

            def step(n, _base=done):
                if progress is not None:
                    progress(_base + n, total)

            results = self.features_of(images, progress=step)
            done += len(images)
            for image, feats in zip(images, results):
                yield image, feats

    def features_of(self, images: Sequence, *, progress=None) -> list[Features]:
        """Features of already loaded RGB images, in order: cache hits first, misses batched by input size.

        `progress(done)` is called as images complete (hits count at once).
        """
        results: list = [None] * len(images)
        digests = [image_digest(image) for image in images] if self.cache is not None else []
        todo = []
        done = 0
        for i, image in enumerate(images):
            if self.cache is not None:
                key = self.cache_key(image, digests[i])
                hit = self.cache.get(key) if key is not None else None
                if hit is not None:
                    hit.image = image
                    results[i] = hit
                    done += 1
                    continue
            todo.append(i)
        if progress is not None and done:
            progress(done)
        if todo:
            backbone = self.backbone
            backbone.layer_index(self.layer)  # bad layer: fail before the forward pass
            base = done

            def step(n):
                self._say(f"computing features {n}/{len(todo)}")
                if progress is not None:
                    progress(base + n)

            self._say(f"computing features 0/{len(todo)}")
            started = time.perf_counter()
            fresh = extract_batch(backbone, [images[i] for i in todo], resolution=self.resolution,
                                  layers=[self.layer], normed=self.normed, batch_size=self.batch_size,
                                  progress=step, sampling=self.sampling)
            self.seconds["features"] += time.perf_counter() - started
            self.forward_passes += len(todo)
            for i, feats in zip(todo, fresh):
                results[i] = feats[0]
                if self.cache is not None:
                    key = self.cache_key(images[i], digests[i])  # after loading: the revision actually used
                    if key is not None:
                        self.cache.put(key, results[i])
        return results

    def layers(self, source, layers: Sequence[int]):
        """(RGB image, [Features per layer]) from one forward pass."""
        image = self.load(source)
        for layer in layers:
            self.backbone.layer_index(layer)
        return image, extract_batch(self.backbone, [image], resolution=self.resolution, layers=list(layers),
                                    normed=self.normed, sampling=self.sampling)[0]

    def attention(self, source, query=-1):
        """(RGB image, Attention) of `query` (CLS by default) in this extractor's layer."""
        if not self.sampling.plain:
            raise InputError("attention is read from one pass on the patch grid; drop --density and --tiles for "
                             "attention (a dense grid's cells come from different shifted passes)")
        image = self.load(source)
        return image, extract_attention(self.backbone, image, layer=self.layer, query=query,
                                        resolution=self.resolution)
