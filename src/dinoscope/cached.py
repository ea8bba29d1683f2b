"""Cached reruns without torch: when every image of a command is already in the disk cache, its
Features are read with NumPy (safetensors) and drawn by the same views, and torch is never imported.

The cache key is computed as the Extractor computes it (`cache.key_for`, the model identified from
its files by `models.loading.identify`); anything that cannot be settled this way (a model that must
be loaded to be known, an image not in the cache) hands the whole call to a real Extractor, built on
first need, so the pictures are those of the torch path either way (the analyses run the same NumPy
code on both).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from .cache import FeatureCache, key_for
from .geometry import Resolution
from .images import image_digest, load_image
from .models.loading import dtype_name, identify


class CachedReader:
    """(image, Features) of sources, from `cache` (a FeatureCache) when all are there, else from
    `fallback()` (an Extractor with the same settings). Offers what single-image commands and the
    collection runner's one-input path ask of an Extractor: calling it, `extract_many`, `load`,
    `features_of`, and the settings the runner records."""

    def __init__(self, model, *, resolution: Resolution, layer: int, normed: bool, dtype: str,
                 max_pixels: int | None, cache: FeatureCache, fallback: Callable[[], object]):
        self.model = model
        self.resolution = resolution
        self.layer = layer
        self.normed = normed
        self.dtype = dtype_name(dtype)
        self.max_pixels = max_pixels
        self.cache = FeatureCache(cache.folder, max_bytes=cache.max_bytes, framework="numpy")
        self._fallback = fallback
        self._extractor = None
        self.from_cache = 0  # images this reader gave without torch

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = self._fallback()
        return self._extractor

    def __call__(self, source):
        return self.extract_many([source])[0]

    def load(self, source):
        return load_image(source) if self.max_pixels is None else load_image(source, max_pixels=self.max_pixels)

    def extract_many(self, sources: Sequence) -> list[tuple[object, object]]:
        images = [self.load(s) for s in sources]
        return list(zip(images, self.features_of(images)))

    def features_of(self, images: Sequence) -> list:
        """Features of loaded RGB images, in order: all from the cache (NumPy arrays), or all from the Extractor."""
        found = self.cached(images)
        if found is None:
            return self.extractor.features_of(images)
        self.from_cache += len(found)
        return found

    def cached(self, images: Sequence) -> list | None:
        """NumPy-backed Features of every image (each carrying its image), or None unless all are cached."""
        identity = self._model_identity()
        if identity is None:
            return None
        found = []
        for image in images:
            key = key_for(identity, image_digest(image), self.resolution, self.layer, self.normed, self.dtype)
            features = self.cache.get(key)
            if features is None:
                return None
            features.image = image
            found.append(features)
        return found

    # what the collection runner's one-input path reads of an Extractor (collections.stream_features, recipe)
    @property
    def model_source(self):
        return self.model

    @property
    def forward_passes(self) -> int:
        return 0 if self._extractor is None else self._extractor.forward_passes

    def _model_identity(self) -> tuple[str, str, int] | None:
        """(source, revision, patch size) from the model's files, as the Extractor finds it before loading."""
        if self._extractor is not None:
            return self._extractor._model_identity()
        if not isinstance(self.model, (str, os.PathLike)):
            return None  # a loaded model: the Extractor has it already
        known = identify(self.model)
        return None if known is None else (os.fspath(self.model), *known)
