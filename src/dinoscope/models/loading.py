"""One loader for every place weights live, with errors that say what to do."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError

DEFAULT_MODEL = "facebook/dinov3-vitb16-pretrain-lvd1689m"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass
class Backbone:
    """A loaded model plus what extraction needs to know about it."""

    module: object  # a transformers PreTrainedModel in eval mode
    source: str  # what the user asked for (name, hub id, folder, file)
    revision: str  # hub commit or a fingerprint of the weight files: part of every cache key
    kind: str  # "vit" (DINOv3 ViT), "convnext" (DINOv3 ConvNeXt) or "dinov2"
    patch_size: int  # pixels per grid cell of the output feature map
    num_registers: int
    hidden_size: int
    num_layers: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

    @property
    def device(self):
        return next(self.module.parameters()).device

    @property
    def dtype(self):
        return next(self.module.parameters()).dtype

    def layer_index(self, layer: int) -> int:
        """A 0-based block index from a Python-style index (negative counts from the end)."""
        from ..errors import InputError

        if not -self.num_layers <= layer < self.num_layers:
            raise InputError(
                f"layer {layer} does not exist: this model has {self.num_layers} blocks (0..{self.num_layers - 1}, or -1 for the last)"
            )
        return layer % self.num_layers


def resolve_device(device: str | None = "auto"):
    """'auto' picks cuda, then mps, then cpu; anything else must be available."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device {device!r} asked for but MPS is not available here; use --device cpu or auto")
    return dev


def resolve_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = str(dtype or "float32").lower()
    if name in ("float16", "fp16", "half"):
        raise ModelError("float16 is not offered: DINOv3 overflows in fp16; use --dtype bfloat16 or float32")
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
    return getattr(torch, DTYPES[name])


def load_model(source: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = "auto", dtype="float32",
               attention: str = "sdpa") -> Backbone:
    """Load a DINOv3 backbone from a hub id or a local `save_pretrained` folder.

    `attention` is "sdpa" (fast, the default) or "eager" (only needed to read attention weights).
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        folder, revision = path, _fingerprint(path)
    elif path.exists():
        raise ModelError(f"{text} is a file, not a model folder; pass a folder saved with save_pretrained or a hub id")
    elif _looks_like_hub_id(text):
        folder, revision = _download(text)
    else:
        raise ModelError(f"no model folder or hub id {text!r}; pass a hub id like {DEFAULT_MODEL} or an existing folder")
    module = _load_transformers_folder(folder, text, attention)
    module = module.to(device=dev, dtype=torch_dtype).eval()
    return describe(module, source=text, revision=revision, folder=folder)


def describe(module, *, source: str, revision: str, folder: Path | None = None) -> Backbone:
    """Wrap a transformers DINO model in a Backbone, reading its architecture from its config."""
    cfg = module.config
    model_type = cfg.model_type
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        try:
            pre = json.loads((folder / "preprocessor_config.json").read_text())
            mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        except (OSError, ValueError):
            pass
    if model_type == "dinov3_vit":
        return Backbone(module, source, revision, "vit", cfg.patch_size, cfg.num_register_tokens, cfg.hidden_size,
                        cfg.num_hidden_layers, mean, std)
    if model_type == "dinov3_convnext":
        return Backbone(module, source, revision, "convnext", 32, 0, cfg.hidden_sizes[-1], len(cfg.depths), mean, std)
    if model_type in ("dinov2", "dinov2_with_registers"):
        regs = getattr(cfg, "num_register_tokens", 0) if model_type == "dinov2_with_registers" else 0
        return Backbone(module, source, revision, "dinov2", cfg.patch_size, regs, cfg.hidden_size,
                        cfg.num_hidden_layers, mean, std)
    raise ModelError(f"{source} is a {model_type!r} model, not DINOv3 or DINOv2; pass a DINOv3 model")


def identify(source: str | os.PathLike) -> tuple[str, int] | None:
    """(weights revision, patch size) of a model without loading it or touching the network.

    A local folder gives the fingerprint `load_model` records; a hub id gives the commit
    of the snapshot already in the local Hugging Face cache (the one an offline load
    would use). None when this cannot be known cheaply (not downloaded yet, unreadable
    config): the caller then loads the model and takes the revision from it.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            folder, revision = path, _fingerprint(path)
        elif not path.exists() and _looks_like_hub_id(text):
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(text, "config.json")
            if not isinstance(found, str):
                return None
            folder = Path(found).parent
            revision = folder.name
        else:
            return None
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    patch = config.get("patch_size", 32 if config.get("model_type") == "dinov3_convnext" else None)
    if config.get("model_type") == "dinov3_convnext":
        patch = 32
    if not isinstance(patch, int):
        return None
    return revision, patch


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def _fingerprint(folder: Path) -> str:
    """Identify the weights in a folder cheaply: names, sizes and modification times of its files."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "local-" + h.hexdigest()[:16]


def _download(repo_id: str) -> tuple[Path, str]:
    """Find (or download) a hub snapshot, turning every hub failure into a message that says what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    page = f"https://huggingface.co/{repo_id}"
    alternatives = "or pass --model a local folder (save_pretrained layout) or an official checkpoint file"
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"],
        )
    except hf_errors.GatedRepoError as exc:
        raise ModelError(
            f"access to {repo_id} is gated: accept the licence at {page}, then log in with `hf auth login` "
            f"(or set HF_TOKEN); {alternatives}"
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise ModelError(
            f"{repo_id} was not found on the Hugging Face hub, or your token may not read it: check the name "
            f"(`dinoscope models` lists known ones), log in with `hf auth login` if it is private; {alternatives}"
        ) from exc
    except hf_errors.LocalEntryNotFoundError as exc:
        raise ModelError(
            f"{repo_id} is not in the Hugging Face cache and the hub cannot be reached (offline or HF_HUB_OFFLINE=1); "
            f"connect once to download it, {alternatives}"
        ) from exc
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelError(
                f"the hub refused access to {repo_id} (HTTP {status}): accept the licence at {page} and log in "
                f"with `hf auth login`; {alternatives}"
            ) from exc
        raise ModelError(f"downloading {repo_id} failed: {str(exc).splitlines()[0]}; {alternatives}") from exc
    except OSError as exc:
        raise ModelError(f"downloading {repo_id} failed: {exc}; {alternatives}") from exc
    folder = Path(folder)
    return folder, folder.name


def _load_transformers_folder(folder: Path, source: str, attention: str):
    from transformers import AutoConfig, AutoModel

    if not (folder / "config.json").is_file():
        raise ModelError(f"{source} has no config.json; pass a folder written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config in {source}: {str(exc).splitlines()[0]}") from exc
    try:
        with _quiet_transformers():
            return AutoModel.from_pretrained(folder, config=config, local_files_only=True, attn_implementation=attention)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the weights in {source}: {str(exc).splitlines()[0]}") from exc


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' loading progress bars and notices for the duration of a load."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
