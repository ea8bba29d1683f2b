"""dinoscope: see what a DINOv3 vision transformer sees.

The public API is imported lazily, so `import dinoscope` (and the CLI's --help) stays fast
until a function that needs torch is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DinoscopeError": "errors", "InputError": "errors", "ModelError": "errors",
    "Geometry": "geometry", "Resolution": "geometry",
    "load_image": "images", "SAMPLES": "images",
    "DEFAULT_MODEL": "models", "Backbone": "models", "load_model": "models",
    "Features": "features", "Extractor": "features", "extract": "features", "extract_layers": "features",
    "extract_batch": "features", "extract_attention": "features",
    "MODELS": "models", "ModelSpec": "models",
    "Attention": "analyses", "attention_map": "analyses", "register_share": "analyses",
    "attention_view": "views", "layers_view": "views",
    "CLS": "analyses", "Patch": "analyses", "Pixel": "analyses", "Matches": "analyses", "PCABasis": "analyses",
    "patch_norms": "analyses", "minmax": "analyses", "pca_rgb": "analyses", "similarity_map": "analyses",
    "query_index": "analyses", "match_patches": "analyses",
    "norms_view": "views", "pca_view": "views", "similarity_view": "views", "matches_view": "views",
    "FeaturesLengthExperiment": "compat", "PCAExperiment": "compat", "SimilarityExperiment": "compat",
    "MatchingExperiment": "compat", "load_dinov3_model": "compat", "process_image": "compat",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dinoscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
