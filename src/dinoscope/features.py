"""One forward pass per image, one typed result that every analysis reads."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .errors import InputError
from .geometry import Geometry, Resolution

if TYPE_CHECKING:
    import torch


log = logging.getLogger("dinoscope")


@dataclass
class Features:
    """Tokens of one image from one layer: CLS (D,), registers (R, D), patches (rows, cols, D).

    Tensors are float32 on the CPU whatever the model ran in, so analyses give the same
    numbers everywhere; `dtype` records what the model computed in.
    """

    cls: "torch.Tensor"
    registers: "torch.Tensor"
    patches: "torch.Tensor"
    geometry: Geometry
    model: str = ""
    revision: str = ""
    dtype: str = "float32"
    layer: int = -1
    normed: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def flat(self) -> "torch.Tensor":
        """Patch tokens as (N, D) in row-major order."""
        return self.patches.reshape(-1, self.patches.shape[-1])

    @property
    def dim(self) -> int:
        return self.patches.shape[-1]

    def metadata(self) -> dict[str, str]:
        return {
            "geometry": self.geometry.to_json(),
            "model": self.model,
            "revision": self.revision,
            "dtype": self.dtype,
            "layer": str(self.layer),
            "normed": str(self.normed).lower(),
            "extra": json.dumps(self.extra),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write a .safetensors file: keys cls, registers, patches; geometry and provenance in the metadata."""
        from safetensors.torch import save_file

        from .files import atomic_path

        tensors = {"cls": self.cls.contiguous(), "registers": self.registers.contiguous(),
                   "patches": self.patches.contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, os.fspath(tmp), metadata=self.metadata())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Features":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("cls", "registers", "patches")}
            geometry = Geometry.from_json(meta["geometry"])
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
            raise InputError(f"{path} is not a dinoscope features file ({exc}); write one with `dinoscope extract`") from exc
        return cls(tensors["cls"], tensors["registers"], tensors["patches"], geometry,
                   model=meta.get("model", ""), revision=meta.get("revision", ""), dtype=meta.get("dtype", "float32"),
                   layer=int(meta.get("layer", -1)), normed=meta.get("normed", "true") == "true",
                   extra=json.loads(meta.get("extra", "{}")))


def preprocess(image, geometry: Geometry, mean, std) -> "torch.Tensor":
    """RGB PIL image -> normalised (3, H, W) float32 tensor of the model input size.

    Native resolution crops the top-left whole-patch area (what the model would see
    anyway); other policies resize the whole image with antialiased bicubic filtering.
    """
    import numpy as np
    import torch
    from PIL import Image

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


def extract(backbone, image, *, resolution: Resolution | None = None, layer: int = -1, normed: bool = True) -> Features:
    """Run the model once on one image and return its tokens from `layer`.

    `image` is anything `load_image` accepts. `normed` applies the model's final norm
    (the default, matching `last_hidden_state`); False gives the raw block output.
    """
    return extract_layers(backbone, image, resolution=resolution, layers=[layer], normed=normed)[0]


def extract_layers(backbone, image, *, resolution: Resolution | None = None, layers: Sequence[int] = (-1,),
                   normed: bool = True) -> list[Features]:
    """Tokens from several layers of one forward pass (the pass stops at the deepest one asked for)."""
    from .images import load_image

    image = load_image(image)
    return extract_batch(backbone, [image], resolution=resolution, layers=layers, normed=normed)[0]


def extract_batch(backbone, images: Sequence, *, resolution: Resolution | None = None, layers: Sequence[int] = (-1,),
                  normed: bool = True, batch_size: int = 8, progress=None) -> list[list[Features]]:
    """Extract many RGB PIL images; images of the same model input size share a forward pass.

    Returns, per image, a list with one Features per requested layer. `progress(done)`
    is called after each forward pass with the number of images finished so far.
    """
    import torch

    resolution = resolution or Resolution()
    blocks = [backbone.layer_index(layer) for layer in layers]
    geometries = []
    for image in images:
        geometry, notice = Geometry.for_image(image.width, image.height, backbone.patch_size, resolution)
        if notice:
            log.warning(notice)
        geometries.append(geometry)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, geometry in enumerate(geometries):
        groups.setdefault(geometry.input_size, []).append(i)
    results: list[list[Features] | None] = [None] * len(images)
    finished = 0
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            pixels = torch.stack([preprocess(images[i], geometries[i], backbone.mean, backbone.std) for i in chunk])
            outputs = forward_tokens(backbone, pixels, blocks, normed)
            for j, i in enumerate(chunk):
                results[i] = [
                    Features(cls_t[j], regs[j], patches[j], geometries[i], model=backbone.source,
                             revision=backbone.revision, dtype=str(backbone.dtype).removeprefix("torch."),
                             layer=block, normed=normed)
                    for block, (cls_t, regs, patches) in zip(blocks, outputs)
                ]
            finished += len(chunk)
            if progress is not None:
                progress(finished)
    return results  # type: ignore[return-value]


def forward_tokens(backbone, pixels, blocks: Sequence[int], normed: bool):
    """Run the model on a batch; per block return (cls (B, D), registers (B, R, D), patches (B, rows, cols, D)).

    The pass stops after the deepest block asked for. For ConvNeXt, "blocks" are its four
    stages: earlier stages are average-pooled onto the stride-32 grid of the last one, and
    the mean of the map stands in for CLS (as the transformers model's pooled output does).
    """
    import torch

    module = backbone.module
    pixels = pixels.to(device=backbone.device, dtype=backbone.dtype)
    rows, cols = pixels.shape[-2] // backbone.patch_size, pixels.shape[-1] // backbone.patch_size
    wanted = sorted(set(blocks))
    with torch.inference_mode():
        if backbone.kind == "convnext":
            states = _convnext_stage_outputs(module, pixels, wanted)
            return [_convnext_tokens(module, states[b], normed, (rows, cols)) for b in blocks]
        states = run_vit_blocks(backbone, pixels, wanted)
        outputs = []
        for b in blocks:
            h = states[b]
            if normed:
                h = vit_parts(backbone)[3](h)
            h = h.float().cpu()
            r = backbone.num_registers
            outputs.append((h[:, 0], h[:, 1:1 + r], h[:, 1 + r:].reshape(h.shape[0], rows, cols, -1)))
    return outputs


def vit_parts(backbone):
    """(embeddings, rope or None, blocks, final norm) of a DINOv3 ViT or DINOv2 transformers model."""
    module = backbone.module
    if backbone.kind == "vit":
        blocks = module.model.layer if hasattr(module, "model") else module.layer  # transformers 5 / 4.56
        return module.embeddings, module.rope_embeddings, blocks, module.norm
    if backbone.kind == "dinov2":
        return module.embeddings, None, module.encoder.layer, module.layernorm
    from .errors import InputError

    raise InputError(f"{backbone.source} is a ConvNeXt: it has no transformer blocks or attention; use a ViT model")


def run_vit_blocks(backbone, pixels, wanted: Sequence[int], on_input=None):
    """Run the blocks up to the deepest wanted one, keeping only the wanted outputs.

    `on_input(i, hidden, position)` is called with each wanted block's input (used for attention).
    """
    embeddings, rope, layers, _norm = vit_parts(backbone)
    hidden = embeddings(pixels)
    position = rope(pixels) if rope is not None else None
    keep = {}
    for i, block in enumerate(layers):
        if i > wanted[-1]:
            break
        if on_input is not None and i in wanted:
            on_input(i, hidden, position)
        hidden = block(hidden, position_embeddings=position) if rope is not None else block(hidden)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        if i in wanted:
            keep[i] = hidden
    return keep


def _convnext_stage_outputs(module, pixels, wanted: Sequence[int]):
    keep = {}
    hidden = pixels
    for i, stage in enumerate(module.model.stages):
        if i > wanted[-1]:
            break
        hidden = stage(hidden)
        if i in wanted:
            keep[i] = hidden
    return keep


def _convnext_tokens(module, h, normed: bool, grid: tuple[int, int]):
    """ConvNeXt stage output (B, C, H, W) on the output grid: patches are the map, its mean stands in for CLS.

    The final norm belongs to the last stage; earlier stages (other widths) are returned as they are.
    """
    import torch

    if tuple(h.shape[-2:]) != grid:
        h = torch.nn.functional.adaptive_avg_pool2d(h, grid)
    patches = h.permute(0, 2, 3, 1)
    pooled = patches.mean(dim=(1, 2))
    if normed and module.layer_norm.normalized_shape[0] == patches.shape[-1]:
        patches, pooled = module.layer_norm(patches), module.layer_norm(pooled)
    empty = torch.zeros(h.shape[0], 0, patches.shape[-1])
    return pooled.float().cpu(), empty, patches.float().cpu()


def extract_attention(backbone, image, *, layer: int = -1, query=-1, resolution: Resolution | None = None):
    """Attention of one query token (CLS by default, or a patch / Patch / Pixel) in block `layer`, per head.

    Computed from the block's own q/k projections (with RoPE on the patch tokens for DINOv3),
    for the query's row only: the model keeps its fast attention and is not reloaded.
    """
    from types import SimpleNamespace

    from .analyses import query_index
    from .images import load_image

    image = load_image(image)
    resolution = resolution or Resolution()
    block = backbone.layer_index(layer)
    vit_parts(backbone)  # ConvNeXt: a clear error before any work
    geometry, notice = Geometry.for_image(image.width, image.height, backbone.patch_size, resolution)
    if notice:
        log.warning(notice)
    index = query_index(SimpleNamespace(geometry=geometry), query)
    pixels = preprocess(image, geometry, backbone.mean, backbone.std)[None]
    return attention_rows(backbone, pixels, block, [index], geometry)[0]


def attention_rows(backbone, pixels, block: int, queries: Sequence[int], geometry) -> list:
    """For one image (pixels (1, 3, H, W)), the Attention of each query index (-1 = CLS) in `block`."""
    import torch

    from .analyses import query_attention, split_row

    r = backbone.num_registers
    rows: list = []

    def on_input(i, hidden, position):
        blk = _vit_layers_of(backbone)[i]
        attn = blk.attention
        x = blk.norm1(hidden)[0]  # (T, D)
        heads = backbone.module.config.num_attention_heads
        head_dim = attn.q_proj.out_features // heads
        k = attn.k_proj(x).view(-1, heads, head_dim).transpose(0, 1)  # (H, T, d)
        tokens = [0 if q < 0 else 1 + r + q for q in queries]
        q = attn.q_proj(x[tokens]).view(len(tokens), heads, head_dim).transpose(0, 1)  # (H, Q, d)
        if position is not None:  # RoPE rotates patch tokens only; CLS and registers pass as they are
            cos, sin = position
            k = torch.cat([k[:, :1 + r], _rotate(k[:, 1 + r:], cos, sin)], dim=1)
            for j, t in enumerate(tokens):
                if t >= 1 + r:
                    q[:, j] = _rotate(q[:, j:j + 1], cos[t - 1 - r:t - r], sin[t - 1 - r:t - r])[:, 0]
        for j, qi in enumerate(queries):
            w = query_attention(q[:, j], k, head_dim ** -0.5).cpu()
            rows.append(split_row(w, r, geometry, query=qi, layer=i, model=backbone.source))

    with torch.inference_mode():
        run_vit_blocks(backbone, pixels.to(device=backbone.device, dtype=backbone.dtype), [block], on_input=on_input)
    return rows


def _vit_layers_of(backbone):
    return vit_parts(backbone)[2]


def _rotate(x, cos, sin):
    """Rotary embedding on the last dim: x * cos + rotate_half(x) * sin (halves swapped, first negated)."""
    import torch

    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


class Extractor:
    """A model plus extraction settings: call it on images to get (RGB image, Features).

    The model is loaded on first use. This is the one place front ends get features from,
    so every picture they draw for one image comes from one forward pass.

    `cache` (a :class:`~dinoscope.cache.FeatureCache`, or None for no cache) keeps the
    tokens on disk: an image seen before with the same model, weights, resolution, layer
    and dtype is read back without loading the model or running it.
    """

    def __init__(self, model="facebook/dinov3-vitb16-pretrain-lvd1689m", *, device: str | None = "auto",
                 dtype="float32", resolution: Resolution | None = None, layer: int = -1, normed: bool = True,
                 max_pixels: int | None = None, cache=None, batch_size: int = 8):
        self.model_source = model
        self.device = device
        self.dtype = dtype
        self.resolution = resolution or Resolution()
        self.layer = layer
        self.normed = normed
        self.max_pixels = max_pixels
        self.cache = cache
        self.batch_size = batch_size
        self.forward_passes = 0  # images run through the model by this extractor (cache hits excluded)
        self._backbone = None if isinstance(model, (str, os.PathLike)) else model
        self._identity = None

    @property
    def backbone(self):
        if self._backbone is None:
            from .models import load_model

            self._backbone = load_model(self.model_source, device=self.device, dtype=self.dtype)
        return self._backbone

    def load(self, source):
        from .images import load_image

        if self.max_pixels is None:
            return load_image(source)
        return load_image(source, max_pixels=self.max_pixels)

    def _model_identity(self) -> tuple[str, str, int] | None:
        """(source, revision, patch size), from the loaded model or, before loading, from its files."""
        if self._backbone is not None:
            b = self._backbone
            return b.source, b.revision, b.patch_size
        if self._identity is None:
            from .models.loading import identify

            found = identify(self.model_source)
            if found is None:
                return None
            self._identity = (os.fspath(self.model_source), *found)
        return self._identity

    def cache_key(self, image, digest: str | None = None):
        """The cache key of `image` under these settings, or None when the model cannot be identified unloaded.

        `digest` is `image_digest(image)` when the caller already has it (hashing a large image is not free).
        """
        from .cache import CacheKey
        from .images import image_digest
        from .models.loading import resolve_dtype

        identity = self._model_identity()
        if identity is None:
            return None
        source, revision, patch = identity
        dtype = str(resolve_dtype(self.dtype)).removeprefix("torch.")
        return CacheKey(source, revision, patch, digest or image_digest(image), str(self.resolution),
                        self.resolution.max_tokens,
                        self.layer, self.normed, dtype)

    def __call__(self, source):
        return self.extract_many([source])[0]

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
        from .images import image_digest

        results: list = [None] * len(images)
        digests = [image_digest(image) for image in images] if self.cache is not None else []
        todo = []
        done = 0
        for i, image in enumerate(images):
            if self.cache is not None:
                key = self.cache_key(image, digests[i])
                hit = self.cache.get(key) if key is not None else None
                if hit is not None:
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
                if progress is not None:
                    progress(base + n)

            fresh = extract_batch(backbone, [images[i] for i in todo], resolution=self.resolution,
                                  layers=[self.layer], normed=self.normed, batch_size=self.batch_size,
                                  progress=step)
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
                                    normed=self.normed)[0]

    def attention(self, source, query=-1):
        """(RGB image, Attention) of `query` (CLS by default) in this extractor's layer."""
        image = self.load(source)
        return image, extract_attention(self.backbone, image, layer=self.layer, query=query,
                                        resolution=self.resolution)
