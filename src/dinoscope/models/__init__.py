"""Finding, loading and running DINOv3 backbones.

Exported lazily (like the package root), so reading the registry (`dinoscope models`) does not
import torch; the same names are imported plainly for editors and type checkers.
"""

from __future__ import annotations

from ..lazy import exports
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loading import Backbone, available_memory, list_models, load_model, resolve_device
    from .registry import DEFAULT_MODEL, MODELS, ModelSpec, lookup

_EXPORTS = {"DEFAULT_MODEL": "registry", "Backbone": "loading", "available_memory": "loading",
            "list_models": "loading", "load_model": "loading", "resolve_device": "loading",
            "MODELS": "registry", "ModelSpec": "registry", "lookup": "registry"}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = exports(__name__, _EXPORTS, __all__)
