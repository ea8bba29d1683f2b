"""Finding, loading and running DINOv3 backbones."""

from .loading import DEFAULT_MODEL, Backbone, available_memory, list_models, load_model, resolve_device
from .registry import MODELS, ModelSpec, lookup

__all__ = ["DEFAULT_MODEL", "MODELS", "Backbone", "ModelSpec", "available_memory", "list_models", "load_model",
           "lookup", "resolve_device"]
