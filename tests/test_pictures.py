"""Pictures that explain themselves: colour bar, caption, photo beside, bare mode, uncovered strip; output names."""

import numpy as np
import pytest
from PIL import Image

from dinoscope import names, render, views
from dinoscope.analyses import CLS, Patch, Pixel
from dinoscope.features import Extractor


@pytest.fixture(scope="module")
def seen(tiny_model_dir):
    extractor = Extractor(str(tiny_model_dir), device="cpu", cache=None)
    return extractor("sample:chelsea"), extractor("sample:coffee")


def _has_colorbar(picture: Image.Image, cmap: str, right_of: int) -> bool:
    """Some column right of the map holds the colormap's ramp from top (high) to bottom (low)."""
    import matplotlib

    a = np.asarray(picture).astype(int)
    top = (np.array(matplotlib.colormaps[cmap](1.0)[:3]) * 255 + 0.5).astype(int)
    bottom = (np.array(matplotlib.colormaps[cmap](0.0)[:3]) * 255 + 0.5).astype(int)
    for x in range(right_of, a.shape[1]):
        column = a[:, x]
        hit_top = np.where(np.abs(column - top).max(-1) <= 2)[0]
        hit_bottom = np.where(np.abs(column - bottom).max(-1) <= 2)[0]
        if len(hit_top) and len(hit_bottom) and hit_top.min() < hit_bottom.max():
            return True
    return False


def test_bare_views_are_the_old_maps_and_explained_ones_add_bar_caption_photo(seen):
    (img, f), _ = seen
    bare = views.similarity_view(f, 10, img)
    assert bare.size == img.size
    told = views.similarity_view(f, 10, img, explained=True)
    assert told.height > img.height and told.width > img.width
    cw, ch = f.geometry.covered
    assert np.array_equal(np.asarray(told)[:ch, :cw], np.asarray(bare)[:ch, :cw])  # the same map, not covered
    assert _has_colorbar(told, "turbo", img.width)
    caption = np.asarray(told)[img.height + 2:]
    assert (caption < 80).all(-1).any()  # the caption's dark text, below the map
    norms = views.norms_view(f, img, explained=True)
    assert norms.width > 2 * img.width  # photo beside the map
    assert np.array_equal(np.asarray(norms)[:img.height, :img.width], np.asarray(img.convert("RGB")))
    assert _has_colorbar(norms, "inferno", 2 * img.width)
    pca = views.pca_view(f, explained=True, image=img)
    assert pca.width > 2 * img.width and np.asarray(views.pca_view(f)).shape[:2] == (img.height, img.width)


def test_uncovered_strip_drawn_in_explained_pictures(seen):
    (img, f), _ = seen
    g = f.geometry
    assert g.covered != g.image_size  # chelsea: 451x300 on a 16 px grid
    a = np.asarray(views.norms_view(f, img, explained=True))
    strip = a[:img.height, img.width + 8 + g.covered[0]:img.width + 8 + img.width]  # right of the covered area
    assert {tuple(p) for p in strip.reshape(-1, 3)} <= {(225, 225, 225), render.UNCOVERED_GREY}


def test_caption_names_model_layer_query_and_resolution(seen):
    (_, f), _ = seen
    text = views.caption(f, Pixel(220, 140))
    assert f.model in text and "pixel (220, 140)" in text and "448x288 input" in text and "layer" in text
    assert "CLS" in views.caption(f, CLS) and "cell (row 5, col 9)" in views.caption(f, Patch(5, 9))


def test_matching_picture_draws_the_best_pairs_with_a_score_bar(seen):
    (img_a, fa), (img_b, fb) = seen
    picture, matches = views.matches_view(fa, fb, img_a, img_b, top_k=50, explained=True)
    assert _has_colorbar(picture, "viridis", img_a.width + 8 + img_b.width)
    assert picture.height > max(img_a.height, img_b.height)


@pytest.mark.parametrize("query, tag", [(Pixel(220, 140), "px220-140"), (Patch(5, 9), "cell5-9"), (149, "patch149"),
                                        (CLS, "cls"), (None, "centre")])
def test_similarity_names_say_the_query(query, tag):
    assert names.similarity_name("photo", query) == f"photo_sim_{tag}.png"


def test_names_never_collide():
    made = [names.similarity_name("p", q) for q in (Pixel(1, 2), Patch(1, 2), 1, CLS, None)]
    made += [names.pca_name("p"), names.pca_name("p", foreground=True), names.pca_name("p", [3]),
             names.pca_name("p", [1, 2, 3]), names.norms_name("p"), names.matches_name("p", "q", "mnn"),
             names.matches_name("p", "q", "hungarian"), names.similarity_name("p", CLS, "q")]
    assert len(set(made)) == len(made)
    assert names.pca_name("photo", foreground=True) == "photo_pca_fg.png"
    assert names.pca_name("photo", [3]) == "photo_pca4.png"
    assert names.matches_name("a", "b", "mnn") == "a_b_matches_mnn.png"


def test_collection_jobs_draw_explained_pictures_when_asked(seen):
    from dinoscope.jobs import Job

    (img, f), _ = seen
    bare = Job("norms").render(img, f)[0]
    told = Job("norms", {"explained": True}).render(img, f)[0]
    assert bare.size == img.size and told.width > 2 * img.width
    assert Job("similarity", {"query": CLS}).outputs("p") == ["p_sim_cls.png"]
