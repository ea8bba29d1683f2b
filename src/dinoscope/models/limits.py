"""What a checkpoint would cost, read without inflating it: tensor sizes from a safetensors header or a
zip directory, and the parameters a config.json asks for. Torch-free, so a hostile file is refused before
any memory grows (a zip bomb, a header claiming terabytes, a config asking for a width of a billion)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from ..errors import ModelError

# torch saves checkpoints uncompressed (ratio 1); deflated real weights shrink little. Far above that is a bomb.
MAX_COMPRESSION_RATIO = 20
MAX_HEADER_BYTES = 100 * 2**20
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _bad(path, why: str) -> ModelError:
    return ModelError(f"{path} is not a usable checkpoint ({why}); pass an official DINOv3 .pth/.safetensors file "
                      "or a folder written by save_pretrained")


def safetensors_bytes(path: str | os.PathLike) -> int:
    """Bytes of tensor data a .safetensors file holds, checked against its header and its real size."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise _bad(path, "no safetensors header")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise _bad(path, "its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "its safetensors header is not a table of tensors")
    data, total = size - 8 - length, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            count = 1
            for d in entry["shape"]:
                count *= int(d)
            nbytes = count * _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise _bad(path, f"its header entry {str(name)[:40]!r} is malformed") from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data and end - start == nbytes):
            raise _bad(path, f"tensor {str(name)[:40]!r} lies outside the file")
        total += nbytes
    return total


def zip_bytes(path: str | os.PathLike) -> int | None:
    """Bytes a zip checkpoint (torch.save's format) would inflate to, from its directory; None if not a zip."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _bad(path, f"a damaged zip: {exc}") from None
    for entry in entries:
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > 2**20 and ratio > MAX_COMPRESSION_RATIO:
            raise _bad(path, f"{entry.filename[:60]!r} would inflate {ratio:,.0f}-fold to {entry.file_size:,} bytes; "
                             "torch never writes that")
    return sum(entry.file_size for entry in entries)


def checkpoint_bytes(path: str | os.PathLike) -> int | None:
    """Tensor bytes a checkpoint file would take in memory (None when its format does not say)."""
    if Path(path).suffix.lower() == ".safetensors":
        return safetensors_bytes(path)
    return zip_bytes(path)


def config_params(config: dict, what: str) -> int | None:
    """Parameters a transformers DINOv3 config.json asks for (ViT or ConvNeXt); None when it does not say."""
    def whole(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"the config of {what} gives {key} = {str(value)[:40]}; it must be a positive whole number")
        return value

    if "hidden_sizes" in config or "depths" in config:
        widths, depths = config.get("hidden_sizes") or [], config.get("depths") or []
        if not isinstance(widths, list) or not isinstance(depths, list):
            raise ModelError(f"the config of {what} gives hidden_sizes/depths that are not lists")
        return sum(13 * whole("hidden_sizes", w) ** 2 * whole("depths", d) for w, d in zip(widths, depths)) or None
    if "hidden_size" not in config:
        return None
    width = whole("hidden_size", config["hidden_size"])
    depth = whole("num_hidden_layers", config.get("num_hidden_layers", 1))
    mlp = whole("intermediate_size", config.get("intermediate_size", 4 * width))
    return depth * (4 * width * width + 3 * width * mlp)
