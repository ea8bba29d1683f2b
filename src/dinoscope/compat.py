"""The reference project's names ("DINOv3 Experiments"), as thin wrappers over dinoscope.

`load_dinov3_model`, `process_image` and the four `*Experiment` classes keep the reference
call shapes; the `scripts/run_*.py` shims keep its command-line flags and file names. Images
are processed at native size, like the reference, but maps are placed on exactly the pixels
their patches cover, the CLS query gets no box, matching works whichever image is larger,
and the default inputs are bundled photos instead of downloads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .analyses import match_patches, minmax, patch_norms, pca_rgb, similarity_map
from .errors import InputError
from .features import Features, forward_tokens, preprocess
from .geometry import Geometry, Resolution
from .images import load_image
from .models import DEFAULT_MODEL, load_model, resolve_device
from .models.loading import IMAGENET_MEAN, IMAGENET_STD, describe

__all__ = ["FeaturesLengthExperiment", "MatchingExperiment", "PCAExperiment", "SimilarityExperiment",
           "load_dinov3_model", "process_image", "run_feat_len", "run_matching", "run_pca", "run_similarity"]

NATIVE = Resolution("native", None, max_tokens=None)  # for model inputs the caller already sized
NATIVE_WITH_BUDGET = Resolution("native")  # the scripts: native size, downscaled with a notice past the token budget


def load_dinov3_model(model_name: str = DEFAULT_MODEL, device: str | None = None, dtype: str = "float32"):
    """Load a backbone (a `dinoscope.Backbone`; `.module` is the torch model, callable like transformers')."""
    return load_model(model_name, device=device or "auto", dtype=dtype)


def process_image(image, device: str | None = None, mean=None, std=None):
    """(RGB PIL image, {"pixel_values": (1, 3, H, W) tensor}) at native size, normalised for the model."""
    pil = load_image(image)
    full = Geometry(1, pil.height, pil.width, pil.size, pil.size, False)  # patch size 1: every pixel kept
    pixels = preprocess(pil, full, mean or IMAGENET_MEAN, std or IMAGENET_STD).unsqueeze(0)
    return pil, {"pixel_values": pixels.to(resolve_device(device or "auto"))}


class _Experiment:
    def __init__(self, dinov3_model=None, device: str | None = None):
        if dinov3_model is None:
            dinov3_model = load_model(DEFAULT_MODEL, device=device or "auto")
        elif not hasattr(dinov3_model, "module"):  # a bare transformers model
            dinov3_model = describe(dinov3_model.eval(), source=getattr(dinov3_model, "name_or_path", "") or "model",
                                    revision="in-memory")
        self.model = dinov3_model
        self.device = device

    def run(self, *args, **kwargs):
        """What `run_dict` returns, without the dict: its one value, or a tuple of its values (matching)."""
        values = tuple(self.run_dict(*args, **kwargs).values())
        return values[0] if len(values) == 1 else values

    def features(self, inputs) -> list:
        """One Features per image of a batch of model inputs (native size)."""
        pixels = inputs["pixel_values"] if isinstance(inputs, dict) else inputs
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(0)
        height, width = pixels.shape[-2:]
        geometry, _ = Geometry.for_image(width, height, self.model.patch_size, NATIVE)
        rows, cols = geometry.grid
        p = self.model.patch_size
        cls_t, regs, patches = forward_tokens(self.model, pixels[..., : rows * p, : cols * p], [-1 % self.model.num_layers],
                                              True)[0]
        return [Features(cls_t[i], regs[i], patches[i], geometry, model=self.model.source) for i in range(len(cls_t))]


def _one(inputs, preprocessed, name: str, alias: str):
    """The model inputs given either by our name or by the reference's keyword (exactly one of them)."""
    if (inputs is None) == (preprocessed is None):
        raise InputError(f"give the model inputs once, as {name} or {alias}")
    return inputs if inputs is not None else preprocessed


class FeaturesLengthExperiment(_Experiment):
    def run_dict(self, inputs=None, *, preprocessed_inputs=None) -> dict:
        """{"norm_feat_lens": (B, Hp, Wp)}: L2 norm of each patch token, min-max scaled per image."""
        inputs = _one(inputs, preprocessed_inputs, "inputs", "preprocessed_inputs")
        return {"norm_feat_lens": torch.stack([minmax(patch_norms(f)) for f in self.features(inputs)])}


class PCAExperiment(_Experiment):
    def run_dict(self, inputs=None, *, preprocessed_inputs=None) -> dict:
        """{"pca": (3, Hp, Wp)}: the first three components of the (first) image, scaled to [0, 1]."""
        inputs = _one(inputs, preprocessed_inputs, "inputs", "preprocessed_inputs")
        return {"pca": pca_rgb(self.features(inputs)[0]).permute(2, 0, 1)}


class SimilarityExperiment(_Experiment):
    def run_dict(self, inputs=None, patch_idx: int = -1, *, preprocessed_inputs=None) -> dict:
        """{"similarity": (B, Hp, Wp, 1)}: cosine similarity to patch `patch_idx` (-1 = CLS), negatives set to 0."""
        inputs = _one(inputs, preprocessed_inputs, "inputs", "preprocessed_inputs")
        maps = [similarity_map(f, patch_idx).clamp(min=0) for f in self.features(inputs)]
        return {"similarity": torch.stack(maps)[..., None]}


class MatchingExperiment(_Experiment):
    def run_dict(self, inputs1=None, inputs2=None, *, preprocessed_inputs1=None, preprocessed_inputs2=None) -> dict:
        """{"matching": (B, N1), "scores": (B, N1)}: for each patch of image 1 its match in image 2.

        Patches of image 1 left unmatched (when image 1 has more patches) get -1 and score 0.
        """
        inputs1 = _one(inputs1, preprocessed_inputs1, "inputs1", "preprocessed_inputs1")
        inputs2 = _one(inputs2, preprocessed_inputs2, "inputs2", "preprocessed_inputs2")
        matching, scores = [], []
        for fa, fb in zip(self.features(inputs1), self.features(inputs2)):
            m = match_patches(fa, fb, "hungarian")
            row = torch.full((fa.geometry.num_patches,), -1, dtype=torch.long)
            score = torch.zeros(fa.geometry.num_patches)
            row[torch.from_numpy(m.index_a)] = torch.from_numpy(m.index_b)
            score[torch.from_numpy(m.index_a)] = torch.from_numpy(m.scores)
            matching.append(row)
            scores.append(score)
        return {"matching": torch.stack(matching), "scores": torch.stack(scores)}


# --- the reference scripts -------------------------------------------------------------------------

def _parser(description: str, pair: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if pair:
        parser.add_argument("--input_path1", default="sample:chelsea", help="first image (default: bundled sample)")
        parser.add_argument("--input_path2", default="sample:coffee", help="second image (default: bundled sample)")
    else:
        parser.add_argument("--input_path", default="sample:chelsea", help="image path or URL (default: bundled sample)")
    parser.add_argument("--output_dir", default="outputs", help="folder for the picture (default: outputs)")
    parser.add_argument("--device", default=None, choices=["cuda", "mps", "cpu"], help="default: best available")
    parser.add_argument("--model_name", default=DEFAULT_MODEL, help="hub id or local model folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _run(parser: argparse.ArgumentParser, body, argv) -> int:
    from .cli.errors import run_guarded

    args = parser.parse_args(argv)
    return run_guarded(lambda: body(args), debug=args.debug, prog=None)


def _native(args, *sources):
    """(image, Features) for each source at native size, from one model load; one pair for one source."""
    from .cache import FeatureCache, cache_disabled_by_env
    from .features import Extractor

    cache = None if cache_disabled_by_env() else FeatureCache()  # the CLI's cache: a rerun does no forward pass
    extractor = Extractor(args.model_name, device=args.device or "auto", resolution=NATIVE_WITH_BUDGET, cache=cache)
    results = extractor.extract_many(sources)
    return results[0] if len(sources) == 1 else results


def _save(picture, args, name: str) -> None:
    from .files import save_image

    path = save_image(picture, Path(args.output_dir) / name)
    print(f"saved {path}")


def run_feat_len(argv=None) -> int:
    def body(args):
        from . import render
        from .analyses import minmax, patch_norms

        _, feats = _native(args, args.input_path)
        _save(render.place(render.gray(minmax(patch_norms(feats))), feats.geometry), args, "norm_feat_lens.png")

    return _run(_parser("Feature-norm map of the patch tokens."), body, argv)


def run_pca(argv=None) -> int:
    def body(args):
        from . import render
        from .analyses import pca_rgb

        _, feats = _native(args, args.input_path)
        _save(render.place(render.rgb(pca_rgb(feats)), feats.geometry), args, "pca.png")

    return _run(_parser("PCA of the patch tokens as RGB."), body, argv)


def run_similarity(argv=None) -> int:
    parser = _parser("Similarity of every patch to one patch (or the CLS token).")
    parser.add_argument("--patch_idx", type=int, required=True, help="query patch index, row-major; -1 = CLS token")

    def body(args):
        from . import render
        from .analyses import query_index, similarity_map

        _, feats = _native(args, args.input_path)
        index = query_index(feats, args.patch_idx)
        sims = similarity_map(feats, index).clamp(min=0)
        gray = render.place(render.gray(sims), feats.geometry).convert("RGB")
        _save(render.fill_patch(gray, feats.geometry, index), args, "similarity.png")

    return _run(parser, body, argv)


def run_matching(argv=None) -> int:
    parser = _parser("One-to-one patch matching between two images.", pair=True)
    parser.add_argument("--out_name", default="matching_vis.png", help="file name of the picture")
    parser.add_argument("--max_lines", type=int, default=800, help="draw at most this many random pairs")
    parser.add_argument("--top_k", type=int, default=0, help="draw only the K best pairs (0 = use --max_lines)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random line sample")

    def body(args):
        from .views import matches_view

        name = Path(args.out_name)
        if name.name != args.out_name or name.name in ("", ".", ".."):
            raise InputError(f"--out_name {args.out_name!r} must be a plain file name; put folders in --output_dir")
        (img1, f1), (img2, f2) = _native(args, args.input_path1, args.input_path2)
        picture, _ = matches_view(f1, f2, img1, img2, top_k=args.top_k, max_lines=args.max_lines, seed=args.seed)
        _save(picture, args, args.out_name)

    return _run(parser, body, argv)
