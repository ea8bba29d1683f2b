"""What a forward pass gives: the token types (Features, Attention) and the features file format.

A leaf module: it knows geometry and errors, nothing about models, caches or pictures, so
every other layer can read these types without importing each other. It does not import torch:
the tensors are torch tensors after extraction, or NumPy arrays when read with
``Features.load(path, framework="numpy")`` (a cached rerun that never starts torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load as load_arrays, save as serialize

from .errors import InputError
from .files import atomic_path
from .geometry import Geometry

if TYPE_CHECKING:
    import torch


@dataclass
class Features:
    """Tokens of one image from one layer: CLS (D,), registers (R, D), patches (rows, cols, D).

    Tensors are float32 on the CPU whatever the model ran in, so analyses give the same
    numbers everywhere; `dtype` records what the model computed in. `image` is the RGB
    photo the tokens came from when known (the views draw over it); it is not saved.
    """

    cls: "torch.Tensor"  # or a NumPy array (see load)
    registers: "torch.Tensor"
    patches: "torch.Tensor"
    geometry: Geometry
    model: str = ""
    revision: str = ""
    dtype: str = "float32"
    layer: int = -1
    normed: bool = True
    extra: dict = field(default_factory=dict)
    image: object = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        g = self.geometry
        where = f", image {g.image_size[0]}x{g.image_size[1]}" if self.image is not None else ""
        return (f"Features({self.model or 'model'!r}, layer {self.layer}{'' if self.normed else ' pre-norm'}, "
                f"{g.rows}x{g.cols} {_cells(g)}, dim {self.dim}, {self.registers.shape[0]} registers"
                f"{where})")

    @property
    def flat(self):
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

    def to_bytes(self) -> bytes:
        """The .safetensors file's bytes: keys cls, registers, patches; geometry and provenance in the metadata."""
        # written from NumPy: the same bytes as safetensors.torch writes for float32, without importing torch
        tensors = {"cls": _as_array(self.cls), "registers": _as_array(self.registers),
                   "patches": _as_array(self.patches)}
        return serialize(tensors, metadata=self.metadata())

    def save(self, path: str | os.PathLike) -> Path:
        """Write a .safetensors file (see `to_bytes`), atomically."""
        data = self.to_bytes()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)  # written by Python, so a full disk is an OSError with its errno
        return Path(path)

    @classmethod
    def from_bytes(cls, data: bytes, label: str | os.PathLike = "features", *, framework: str = "pt") -> "Features":
        """Features from the bytes of a features file already read (e.g. read once and checksummed)."""
        try:
            size = int.from_bytes(data[:8], "little")
            meta = json.loads(bytes(data[8:8 + size])).get("__metadata__") or {}
            tensors = load_arrays(bytes(data))
            geometry = Geometry.from_json(meta["geometry"])
            extra = json.loads(meta.get("extra", "{}"))
        except (KeyError, ValueError, RuntimeError, AttributeError, SafetensorError) as exc:
            raise InputError(f"{label} is not a dinoscope features file ({exc}); write one with `dinoscope extract`") from exc
        if framework == "pt":
            import torch  # asked for torch tensors: torch is loaded already

            tensors = {k: torch.from_numpy(v) for k, v in tensors.items()}
        return cls(tensors["cls"], tensors["registers"], tensors["patches"], geometry,
                   model=meta.get("model", ""), revision=meta.get("revision", ""), dtype=meta.get("dtype", "float32"),
                   layer=int(meta.get("layer", -1)), normed=meta.get("normed", "true") == "true", extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, *, framework: str = "pt") -> "Features":
        """Read a features file; `framework` "pt" gives torch tensors, "numpy" NumPy arrays (torch not imported)."""
        try:
            with safe_open(os.fspath(path), framework=framework) as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("cls", "registers", "patches")}
            geometry = Geometry.from_json(meta["geometry"])
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
            raise InputError(f"{path} is not a dinoscope features file ({exc}); write one with `dinoscope extract`") from exc
        return cls(tensors["cls"], tensors["registers"], tensors["patches"], geometry,
                   model=meta.get("model", ""), revision=meta.get("revision", ""), dtype=meta.get("dtype", "float32"),
                   layer=int(meta.get("layer", -1)), normed=meta.get("normed", "true") == "true",
                   extra=json.loads(meta.get("extra", "{}")))


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, converted without importing torch here
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(values)


@dataclass
class Attention:
    """One query's attention weights in one block, split by what is attended to.

    Per head, the weights to the CLS token, the registers and the patches sum to 1.
    """

    cls: "torch.Tensor"  # (H,)
    registers: "torch.Tensor"  # (H, R)
    patches: "torch.Tensor"  # (H, rows, cols)
    geometry: object
    query: int = -1  # -1: the CLS token; else a row-major patch index
    layer: int = -1
    model: str = ""
    extra: dict = field(default_factory=dict)
    image: object = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        who = "CLS" if self.query < 0 else f"patch {self.query}"
        return f"Attention({self.model or 'model'!r}, layer {self.layer}, query {who}, {self.heads} heads)"

    @property
    def heads(self) -> int:
        return self.patches.shape[0]

    def shares(self) -> dict[str, float]:
        """Mean over heads of the attention that goes to the CLS token, the registers and the patches."""
        return {"cls": float(self.cls.mean()), "registers": float(self.registers.sum(-1).mean()),
                "patches": float(self.patches.sum((-2, -1)).mean())}


def split_row(weights, num_registers: int, geometry, *, query: int = -1, layer: int = -1, model: str = "") -> Attention:
    """(H, 1 + R + N) weights over [CLS, registers, patches] -> an Attention."""
    h = weights.shape[0]
    r = num_registers
    if weights.shape[1] != 1 + r + geometry.num_patches:
        raise ValueError(f"{weights.shape[1]} attention weights for 1 + {r} + {geometry.num_patches} tokens")
    return Attention(weights[:, 0], weights[:, 1:1 + r], weights[:, 1 + r:].reshape(h, geometry.rows, geometry.cols),
                     geometry, query, layer, model)


def _cells(geometry) -> str:
    if geometry.density == 1:
        return f"patches of {geometry.patch_size} px"
    return f"cells of {geometry.cell_size} px (density {geometry.density}, {geometry.patch_size}-px patches)"
