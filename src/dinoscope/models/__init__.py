"""Finding, loading and running DINOv3 backbones."""

from .loading import DEFAULT_MODEL, Backbone, load_model, resolve_device

__all__ = ["DEFAULT_MODEL", "Backbone", "load_model", "resolve_device"]
