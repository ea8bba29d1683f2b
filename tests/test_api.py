"""The notebook-facing API: string arguments, Features that carry their photo, views that find it,
and exports that editors see and that load lazily."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch
from PIL import Image

import dinoscope as ds
from dinoscope.errors import InputError
from helpers import SRC, run_cli


def test_every_export_resolves_and_editors_see_the_same_names():
    tree = ast.parse((SRC / "dinoscope" / "__init__.py").read_text())
    typed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            typed |= {alias.name for imp in node.body for alias in imp.names}
    exported = set(ds.__all__) - {"__version__"}
    assert typed == exported
    for name in exported:
        assert getattr(ds, name) is not None
    from dinoscope import compat

    assert ds.load_dinov3_model is compat.load_dinov3_model and ds.PCAExperiment is compat.PCAExperiment


def test_import_stays_light():
    code = ("import sys, dinoscope, dinoscope.models.registry; from dinoscope.models import DEFAULT_MODEL; "
            "print('torch' in sys.modules)")
    out = run_cli("-c", code, module=None, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_list_models_filters_by_pattern():
    names = ds.list_models()
    assert "vitb16" in names and "convnext-tiny" in names
    assert ds.list_models("*convnext*") == [n for n in names if "convnext" in n]


def test_strings_are_accepted_for_resolution_and_model(tiny_model_dir, tiny_backbone):
    ex = ds.Extractor(str(tiny_model_dir), device="cpu", resolution="short:64")
    assert ex.resolution == ds.Resolution("short", 64) and "short:64" in repr(ex)
    feats = ex.features("sample:coffee")
    assert feats.geometry.rows == 4 and feats.image.size == (600, 400)
    one_off = ds.extract("sample:coffee", model=str(tiny_model_dir), resolution="short:64", device="cpu")
    classic = ds.extract(tiny_backbone, "sample:coffee", resolution=ds.Resolution("short", 64))
    torch.testing.assert_close(one_off.patches, feats.patches)
    torch.testing.assert_close(classic.patches, feats.patches)
    assert classic.image.size == (600, 400)
    image, same = ex("sample:coffee")  # the tuple shape existing callers use
    assert image.size == (600, 400) and torch.equal(same.patches, feats.patches)
    with pytest.raises(InputError, match="short:N"):
        ds.Extractor(str(tiny_model_dir), resolution="tall:3")


def test_features_repr_is_one_short_line(tiny_backbone):
    feats = ds.extract(tiny_backbone, "sample:chelsea", resolution="short:48")
    text = repr(feats)
    assert "\n" not in text and len(text) < 200 and "3x5 patches" in text and "image 451x300" in text


def test_views_find_the_photo_on_the_features(tiny_backbone):
    feats = ds.extract(tiny_backbone, "sample:chelsea", resolution="short:48")
    photo = feats.image
    same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    assert same(ds.norms_view(feats, alpha=0.5), ds.norms_view(feats, photo, alpha=0.5))
    assert not same(ds.norms_view(feats, alpha=0.5), ds.norms_view(feats, None, alpha=0.5))  # None: a bare map
    assert same(ds.similarity_view(feats, ds.Patch(1, 2)), ds.similarity_view(feats, ds.Patch(1, 2), photo))
    other = ds.extract(tiny_backbone, "sample:coffee", resolution="short:48")
    picture, matches = ds.matches_view(feats, other)
    assert same(picture, ds.matches_view(feats, other, photo, other.image)[0]) and len(matches) > 0
    assert same(ds.layers_view([feats]), ds.layers_view([feats], photo))
    att = ds.extract_attention(tiny_backbone, "sample:chelsea", resolution="short:48")
    assert att.image is not None and same(ds.attention_view(att), ds.attention_view(att, att.image))
    for picture in (ds.pca_view(feats), ds.norms_view(feats), ds.attention_view(att)):
        assert isinstance(picture, Image.Image)
    feats.image = None
    with pytest.raises(InputError, match="image_a and image_b"):
        ds.matches_view(feats, other)


def test_extractor_notebook_methods(tiny_model_dir):
    ex = ds.Extractor(str(tiny_model_dir), device="cpu", resolution="short:48")
    layers = ex.layer_features("sample:chelsea", [0, -1])
    assert [f.layer for f in layers] == [0, 1] and all(f.image is not None for f in layers)
    att = ex.attention_weights("sample:chelsea", ds.Patch(1, 1))
    assert att.query == 6 and att.layer == 1 and "patch 6" in repr(att)
