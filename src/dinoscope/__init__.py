"""dinoscope: see what a DINOv3 vision transformer sees.

In a notebook::

    import dinoscope as ds
    ex = ds.Extractor("vitb16", resolution="short:768")
    feats = ex.features("photo.jpg")
    ds.pca_view(feats)

The public API is imported lazily, so `import dinoscope` (and the CLI's --help) stays fast
until a name that needs torch is used; the same names are imported plainly for editors and
type checkers below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .analyses import (CLS, Matches, Patch, PCABasis, Pixel, attention_map, match_patches, minmax, patch_norms,
                           pca_rgb, query_index, register_share, similarity_map)
    from .cache import FeatureCache, LayeredCache, MemoryCache
    from .compat import (FeaturesLengthExperiment, MatchingExperiment, PCAExperiment, SimilarityExperiment,
                         load_dinov3_model, process_image)
    from .errors import DinoscopeError, InputError, ModelError
    from .features import Extractor, extract, extract_attention, extract_batch, extract_layers
    from .geometry import Geometry, Resolution
    from .images import SAMPLES, load_image
    from .models import DEFAULT_MODEL, MODELS, Backbone, ModelSpec, list_models, load_model
    from .tokens import Attention, Features
    from .views import attention_view, layers_view, matches_view, norms_view, pca_view, similarity_view

_EXPORTS = {
    "DinoscopeError": "errors", "InputError": "errors", "ModelError": "errors",
    "Geometry": "geometry", "Resolution": "geometry",
    "load_image": "images", "SAMPLES": "images",
    "DEFAULT_MODEL": "models", "Backbone": "models", "load_model": "models", "list_models": "models",
    "MODELS": "models", "ModelSpec": "models",
    "Features": "tokens", "Attention": "tokens",
    "Extractor": "features", "extract": "features", "extract_layers": "features",
    "extract_batch": "features", "extract_attention": "features",
    "FeatureCache": "cache", "MemoryCache": "cache", "LayeredCache": "cache",
    "attention_map": "analyses", "register_share": "analyses",
    "CLS": "analyses", "Patch": "analyses", "Pixel": "analyses", "Matches": "analyses", "PCABasis": "analyses",
    "patch_norms": "analyses", "minmax": "analyses", "pca_rgb": "analyses", "similarity_map": "analyses",
    "query_index": "analyses", "match_patches": "analyses",
    "norms_view": "views", "pca_view": "views", "similarity_view": "views", "matches_view": "views",
    "attention_view": "views", "layers_view": "views",
    # the reference project's names: at home in dinoscope.compat, still importable from here
    "FeaturesLengthExperiment": "compat", "PCAExperiment": "compat", "SimilarityExperiment": "compat",
    "MatchingExperiment": "compat", "load_dinov3_model": "compat", "process_image": "compat",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = exports(__name__, _EXPORTS, __all__)
