"""One loader for every place weights live, with errors that say what to do."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..files import file_kind, read_bounded
from . import limits, timm_config
from .registry import DEFAULT_MODEL, IMAGENET_MEAN, IMAGENET_STD, MODELS, SAT_MEAN, SAT_STD, lookup

DEMO_RANDOM_MODEL = "random:vitb16"
RANDOM_REVISION = "random-seed0"  # random_model always seeds 0
HUB_PREFIX = "hf-hub:"
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
log = logging.getLogger("dinoscope")


class WeightsUnavailable(ModelError):
    """The hub would not give these weights here (gated, refused, not logged in, or offline and not cached)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


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
    def adapter(self):
        """The family's adapter (models.adapters): the one way extraction reads tokens and attention."""
        # imported on use: the adapters need torch, and identifying a cached model (`identify`) must not
        from .adapters import adapter_for

        return adapter_for(self.module, self.kind, source=self.source, num_registers=self.num_registers,
                           patch_size=self.patch_size)

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
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"device {device!r} is not offered; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available here; use device='cpu' or device='auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device {device!r} asked for but MPS is not available here; use device='cpu' or device='auto'")
    return dev


def resolve_dtype(dtype):
    import torch

    return getattr(torch, dtype_name(dtype))


def dtype_name(dtype) -> str:
    """"float32" or "bfloat16" for a dtype name or torch dtype, without importing torch (cache keys need it)."""
    name = str(dtype or "float32").lower().removeprefix("torch.")
    if name in ("float16", "fp16", "half"):
        raise ModelError("float16 is not offered: DINOv3 overflows in fp16; use dtype='bfloat16' or dtype='float32'")
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
    return DTYPES[name]


def load_model(source: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = "auto", dtype="float32",
               attention: str = "sdpa", check_memory: bool = True) -> Backbone:
    """Load a DINOv3 (or DINOv2) backbone from wherever its weights are.

    `source` is a short name (`dinoscope models` lists them), a Hugging Face hub id (official, or
    timm's ungated copy, `hf-hub:` prefix allowed), a local folder (`save_pretrained` or timm's hub
    layout), an official DINOv3 checkpoint (`.pth`), or a single `.safetensors` file (official,
    transformers or timm key layout). A short name or official id whose repository cannot be had
    here falls back to the release's ungated copy, with a notice (see `download_release`); the
    Backbone's source and revision name what was used. Before any weights are read, the model's
    size is checked against the free memory of the device.
    `attention` is "sdpa" (fast, the default) or "eager"; dinoscope computes attention maps
    itself, so eager is never needed for them.
    """
    torch_dtype = resolve_dtype(dtype)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    dev = resolve_device(device)
    text = os.fspath(source)
    text = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    path = Path(text).expanduser()
    spec, folder = None, None
    if text.startswith("random:"):
        name = text[len("random:"):]
        if check_memory and lookup(name) is not None:
            _check_memory(lookup(name).params, "float32", dev, text)  # built in float32 before any cast
        module, revision = random_model(name), RANDOM_REVISION
    elif path.is_dir():
        _check_folder_limits(path, dtype_name, dev, text, check_memory)
        if check_memory:
            _check_memory(_count_folder(path), dtype_name, dev, text)
        folder, revision = path, _fingerprint(path)
        module = _load_transformers_folder(folder, text, attention)
    elif path.is_file():
        limits.checkpoint_bytes(path)  # a zip bomb or a broken header refused before anything is inflated
        if check_memory:
            _check_memory(_count_file(path), dtype_name, dev, text)
        module, revision = _load_file(path, torch_dtype), _fingerprint_file(path)
        if attention != "sdpa" and hasattr(module, "set_attn_implementation") and "convnext" not in str(
                module.config.model_type):
            module.set_attn_implementation(attention)
    elif (spec := lookup(text)) is not None:
        if check_memory:
            _check_memory(spec.params, dtype_name, dev, f"{spec.name} ({spec.hub_id})")
        repo, folder, revision = download_release(spec, text)
        text = text if repo.lower() in (spec.hub_id.lower(), text.lower()) else repo  # provenance: what was used
        module = _load_transformers_folder(folder, repo, attention)
    elif _looks_like_hub_id(text):
        folder, revision = _download(text)
        if check_memory:
            _check_memory(_count_folder(folder), dtype_name, dev, text)
        module = _load_transformers_folder(folder, text, attention)
    else:
        raise ModelError(_unknown_message(text))
    module = module.to(device=dev, dtype=torch_dtype).eval()
    backbone = describe(module, source=text, revision=revision, folder=folder)
    timm_normalisation = timm_config.mean_std(timm_config.read_config(folder if folder is not None else path.parent))
    if spec is not None:
        backbone.mean, backbone.std = spec.mean, spec.std
    elif timm_normalisation is not None:
        backbone.mean, backbone.std = timm_normalisation
    elif folder is None and "sat493m" in path.name.lower():
        backbone.mean, backbone.std = SAT_MEAN, SAT_STD
    return backbone


def download_release(spec, asked: str) -> tuple[str, Path, str]:
    """(repository used, snapshot folder, commit) for a registry release.

    A short name or the official id tries the official repository first; when the hub will not
    give it here (gated, refused, not logged in, offline and not cached), the ungated copy of the
    same weights is used instead, with a one-line notice. An explicit ungated id is used as is.
    """
    explicit = asked.strip().lower().removeprefix(HUB_PREFIX)
    if explicit != spec.name and explicit != spec.hub_id.lower():  # an ungated id given by name: only that one
        repo = next(i for i in spec.ids if i.lower() == explicit)
        return (repo, *_download(repo))
    try:
        return (spec.hub_id, *_download(spec.hub_id))
    except WeightsUnavailable as official_failure:
        if not spec.open_id:
            raise
        try:
            folder, revision = _download(spec.open_id)
        except ModelError as open_failure:
            why = getattr(open_failure, "reason", None) or str(open_failure).split(";")[0]
            raise WeightsUnavailable(f"{official_failure}; its ungated copy {spec.open_id} could not be had either: "
                                     f"it {why}", official_failure.reason) from open_failure
        log.warning("using %s, the ungated copy of the same weights (revision %s), because %s %s",
                    spec.open_id, revision[:12], spec.hub_id, official_failure.reason)
        return spec.open_id, folder, revision


def demo_backbone(*, device: str | None = "auto", dtype="float32") -> Backbone:
    """The model of the no-argument demo: the default release (official or its ungated copy), or, when
    no real weights can be had here at all, random weights, said loudly. Only the demo does this."""
    try:
        return load_model(DEFAULT_MODEL, device=device, dtype=dtype)
    except WeightsUnavailable as exc:
        log.warning("REAL WEIGHTS UNREACHABLE: neither %s nor its ungated copy %s can be had here (the first %s). "
                    "Drawing the demo with RANDOM weights (%s): the pictures show the layout only, not what DINOv3 "
                    "sees. Connect to the Hugging Face hub once and run again for real features.",
                    DEFAULT_MODEL, lookup(DEFAULT_MODEL).open_id, exc.reason, DEMO_RANDOM_MODEL)
        return load_model(DEMO_RANDOM_MODEL, device=device, dtype=dtype)


def list_models(pattern: str = "*") -> list[str]:
    """Short names of the released models (`load_model` and `Extractor` take them), optionally filtered by
    a shell-style pattern such as "vit*16" or "*convnext*"."""
    return [name for name in MODELS if fnmatch.fnmatchcase(name, pattern)]


def vit_architecture(name: str) -> dict:
    """DINOv3ViTConfig arguments for registry entry `name` (a DINOv3 ViT), as released."""
    from .registry import MODELS

    spec = MODELS.get(name)
    if spec is None or spec.family != "dinov3-vit":
        choices = ", ".join(n for n, m in MODELS.items() if m.family == "dinov3-vit")
        raise ModelError(f"no random architecture {name!r}; use random:NAME with NAME one of {choices}")
    return dict(hidden_size=spec.width, num_hidden_layers=spec.depth, num_attention_heads=spec.heads,
                intermediate_size=spec.width * (2 if name.startswith("vit7b") else 4),
                num_register_tokens=spec.registers, patch_size=spec.patch_size,
                use_gated_mlp=name.endswith("plus") or name.startswith("vit7b"),  # S+, H+ and 7B use SwiGLU
                key_bias=False, query_bias=True, value_bias=True, proj_bias=True, mlp_bias=True,
                layerscale_value=1.0, rope_theta=100.0, layer_norm_eps=1e-5, image_size=224)


def random_model(name: str):
    """A DINOv3 ViT with the architecture of registry entry `name` and random weights (seed 0).

    For trying dinoscope, benchmarks and tests where the gated weights are out of reach: the
    pictures show the layout, not what trained features look like.
    """
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(**vit_architecture(name))
    with torch.random.fork_rng(devices=[]):  # a fixed seed without touching the caller's random state
        torch.manual_seed(0)
        return DINOv3ViTModel(config).eval()


def _unknown_message(text: str) -> str:
    from .registry import closest

    kind = file_kind(Path(text).expanduser())
    if kind is not None:
        return f"{text} is {kind}, not a checkpoint file or model folder; pass a .pth/.safetensors file or a folder"
    looks_like_path = any(c in text for c in "/\\") or text.endswith((".pth", ".pt", ".safetensors"))
    if looks_like_path:
        return (f"no file or folder {text!r} exists; check the path, or pass a short name (`dinoscope models`) "
                f"or a hub id")
    suggestions = ", ".join(closest(text))
    return (f"{text!r} is not a known model name; closest known names: {suggestions} (`dinoscope models` lists "
            f"all), or pass a hub id, a save_pretrained folder or a checkpoint file")


def available_memory(device) -> int | None:
    """Free bytes on `device`: CUDA from the driver, CPU from /proc/meminfo; None where unknown."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _check_memory(params: int | None, dtype: str, device, what: str) -> None:
    from .registry import DTYPE_BYTES, HEADROOM, human_bytes, human_count

    if not params:
        return
    need = params * DTYPE_BYTES[dtype] * HEADROOM
    free = available_memory(device)
    if free is not None and need > free:
        hint = "use --dtype bfloat16, " if dtype == "float32" else ""
        raise ModelError(
            f"{what} has {human_count(params)} parameters and needs about {human_bytes(need)} in {dtype}, but only "
            f"{human_bytes(free)} is free on {device.type}; {hint}pick a smaller model (`dinoscope models`) or free memory"
        )


def _check_folder_limits(folder: Path, dtype: str, device, what: str, check_memory: bool) -> None:
    """A folder's weights files (headers, without inflating) and the model its config.json asks for (against
    memory), before anything is built."""
    for weights in sorted(folder.glob("*.safetensors")):
        limits.safetensors_bytes(weights)
    config = folder / "config.json"
    if check_memory and config.is_file():
        try:
            parsed = json.loads(read_bounded(config, 2**20, "the model config").decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {config}: {exc}; pass a folder written by save_pretrained") from exc
        if isinstance(parsed, dict):
            _check_memory(limits.config_params(parsed, what), dtype, device, what)


def _count_safetensors(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(os.fspath(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _count_folder(folder: Path) -> int | None:
    try:
        return sum(_count_safetensors(f) for f in sorted(folder.glob("*.safetensors"))) or None
    except Exception:  # an unreadable file is reported by the loader itself, with its own message
        return None


def _count_file(path: Path) -> int | None:
    try:
        if path.suffix.lower() == ".safetensors":
            return _count_safetensors(path)
        import torch

        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
        state = state.get("model", state.get("teacher", state)) if isinstance(state, dict) else state
        return sum(t.numel() for t in state.values() if hasattr(t, "numel")) or None
    except Exception:  # not readable this way: the loader says what is wrong with it
        return None


FINGERPRINT_BLOCK = 1 << 16


def _fingerprint_file(path: Path) -> str:
    """Identify a weights file cheaply: name, size, modification time and a hash of its first and last 64 KiB
    (a safetensors header, or a zip's directory at the end of a .pth, sits there)."""
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    with path.open("rb") as f:
        h.update(f.read(FINGERPRINT_BLOCK))
        f.seek(max(0, st.st_size - FINGERPRINT_BLOCK))
        h.update(f.read(FINGERPRINT_BLOCK))
    return "file-" + h.hexdigest()[:16]


def _file_patch_size(path: Path) -> int | None:
    """The patch size of a single weights file from its tensor shapes, without reading the weights
    (the safetensors header, or a memory-mapped .pth); None when it cannot be told."""
    try:
        if path.suffix.lower() == ".safetensors":
            with path.open("rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            shapes = {k: v.get("shape") for k, v in header.items() if isinstance(v, dict)}
        else:
            import torch  # deferred: identifying hub and folder models stays torch-free

            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else {}
            shapes = {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    except Exception:  # noqa: BLE001 - unreadable here: loading the model says what is wrong
        return None
    for key, shape in shapes.items():
        if key.endswith(("patch_embed.proj.weight", "patch_embeddings.weight")) and shape and len(shape) == 4:
            return int(shape[-1])
    return None


def _random_patch_size(name: str) -> int | None:
    spec = lookup(name)
    return spec.patch_size if spec is not None and spec.family == "dinov3-vit" else None


def _load_file(path: Path, torch_dtype):
    """A single weights file: an official DINOv3 checkpoint (.pth or .safetensors, architecture inferred from
    the tensors), or a transformers-layout state dict with its config.json beside it."""
    from . import official, timm_layout

    if path.suffix.lower() == ".safetensors" and timm_config.is_timm_state(_safetensors_keys(path)):
        module, _config = timm_layout.load_file(path)
        return module.to(torch_dtype)
    return official.load_official_model(path, dtype=torch_dtype)


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return list(f.keys())
    except Exception:  # not readable as safetensors: the official reader says what is wrong
        return []


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

    A `random:` model is known by its name (always seed 0); a single weights file by a cheap
    fingerprint (size, time, head and tail blocks) and the patch size in its tensor shapes;
    a local folder gives the fingerprint `load_model` records; a hub id gives the commit
    of the snapshot already in the local Hugging Face cache (the one an offline load
    would use). None when this cannot be known cheaply (not downloaded yet, unreadable
    config): the caller then loads the model and takes the revision from it.
    """
    text = os.fspath(source)
    text = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    path = Path(text).expanduser()
    try:
        if text.startswith("random:"):  # built from the registry with seed 0: the name says it all
            patch = _random_patch_size(text[len("random:"):])
            return (RANDOM_REVISION, patch) if patch else None
        if path.is_file():
            patch = _file_patch_size(path)
            return (_fingerprint_file(path), patch) if patch else None
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
    if isinstance(config.get("architecture"), str):  # timm's hub layout
        patch = timm_config.patch_size(config)
        return (revision, patch) if patch else None
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


DINOV3_LICENCE = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"


def _is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an odd cache only costs the licence notice a repeat
        return False


def _licence_notice(repo_id: str) -> None:
    """Say once, when DINOv3 weights have just been downloaded, which licence they come under."""
    if "dinov3" in repo_id.lower():
        log.info("downloaded %s: Meta's DINOv3 weights, under the DINOv3 License (%s)", repo_id, DINOV3_LICENCE)


def _download(repo_id: str) -> tuple[Path, str]:
    """Find (or download) a hub snapshot, turning every hub failure into a message that says what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    from .registry import closest

    page = f"https://huggingface.co/{repo_id}"
    alternatives = "or pass model= a local folder (save_pretrained layout) or an official checkpoint file"
    first_time = not _is_cached(repo_id)
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"],
        )
    except hf_errors.GatedRepoError as exc:
        raise WeightsUnavailable(
            f"access to {repo_id} is gated: accept the licence at {page}, then log in with `hf auth login` "
            f"(or set HF_TOKEN); {alternatives}", "is gated (licence not accepted or not logged in)"
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise WeightsUnavailable(
            f"{repo_id} was not found on the Hugging Face hub, or your token may not read it: check the name "
            f"(closest known: {', '.join(closest(repo_id))}; `dinoscope models` lists all), log in with `hf auth login` if it is private; {alternatives}",
            "was refused (not found, or not readable without logging in)"
        ) from exc
    except hf_errors.LocalEntryNotFoundError as exc:
        raise WeightsUnavailable(
            f"{repo_id} is not in the Hugging Face cache and the hub cannot be reached ({_hub_cause(exc)}); "
            f"connect once to download it, {alternatives}", f"is not cached and the hub cannot be reached ({_hub_cause(exc)})"
        ) from exc
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightsUnavailable(
                f"the hub refused access to {repo_id} (HTTP {status}): accept the licence at {page} and log in "
                f"with `hf auth login`; {alternatives}", f"was refused (HTTP {status})"
            ) from exc
        raise ModelError(f"downloading {repo_id} failed: {str(exc).splitlines()[0]}; {alternatives}") from exc
    except OSError as exc:
        raise ModelError(f"downloading {repo_id} failed: {exc}; {alternatives}") from exc
    except Exception as exc:  # the HTTP library's own errors (a timeout, a dropped connection) mid-download
        if "timeout" in type(exc).__name__.lower() or "connect" in type(exc).__name__.lower():
            raise WeightsUnavailable(f"downloading {repo_id} failed: the hub did not answer ({type(exc).__name__}); "
                                     f"run again to resume, {alternatives}", "did not download (the hub did not "
                                     "answer)") from exc
        raise ModelError(f"downloading {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}; "
                         f"{alternatives}") from exc
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):  # a snapshot left incomplete by an interrupted download
        raise WeightsUnavailable(
            f"the cached snapshot of {repo_id} has no weights file (an interrupted download?) and the hub did not "
            f"complete it; connect and run again, {alternatives}", "is only partly cached")
    if first_time:
        _licence_notice(repo_id)
    return folder, folder.name


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _hub_cause(exc: BaseException) -> str:
    """Why huggingface_hub fell back to the cache: offline mode, an HTTP status, or a network failure."""
    cause = exc.__cause__ or exc.__context__
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if status is not None:
        return f"the hub answered HTTP {status}"
    if cause is not None and "offline" in type(cause).__name__.lower() or "HF_HUB_OFFLINE" in str(exc):
        return "offline mode, HF_HUB_OFFLINE=1"
    if cause is not None:
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return "offline, or HF_HUB_OFFLINE=1"


def _load_transformers_folder(folder: Path, source: str, attention: str):
    if timm_config.read_config(folder) is not None:  # timm's hub layout (the ungated copies)
        from . import timm_layout

        return timm_layout.load_folder(folder, source)[0]
    if not (folder / "config.json").is_file():
        raise ModelError(f"{source} has no config.json; pass a folder written by save_pretrained")
    if attention == "sdpa":  # the common case skips importing transformers (about 2 s per process)
        from . import vit

        config = vit.read_config(folder)
        model = vit.load_folder(folder, config) if config is not None else None
        if model is not None:
            return model
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config in {source}: {str(exc).splitlines()[0]}") from exc
    try:
        # ConvNeXt has no attention, and transformers refuses an attention implementation for it
        extra = {} if "convnext" in str(config.model_type) else {"attn_implementation": attention}
        with _quiet_transformers():
            return AutoModel.from_pretrained(folder, config=config, local_files_only=True, **extra)
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
