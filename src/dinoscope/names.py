"""Output file names that say what a picture shows, so no two queries or methods overwrite each other.

One naming function per picture kind; the CLI and the collection jobs both name files through these.
"""

from __future__ import annotations

from .analyses.similarity import CLS, Patch, Pixel


def query_tag(query) -> str:
    """`px220-140`, `cell5-9`, `patch149`, `cls`, or `centre` for the default (no query given)."""
    if query is None:
        return "centre"
    if isinstance(query, Pixel):
        return f"px{query.x:g}-{query.y:g}"
    if isinstance(query, Patch):
        return f"cell{query.row}-{query.col}"
    return "cls" if query == CLS else f"patch{int(query)}"


def norms_name(stem: str) -> str:
    return f"{stem}_norms.png"


def pca_name(stem: str, components=(0, 1, 2), foreground: bool = False) -> str:
    """`_pca` for components 1-3, `_pca4` for one component, `_pca2-3-4` for another triple; `_fg` when fitted on
    the foreground."""
    picked = list(components)
    which = "" if picked == [0, 1, 2] else "-".join(str(c + 1) for c in picked)
    return f"{stem}_pca{which}{'_fg' if foreground else ''}.png"


def similarity_name(stem: str, query=None, target: str | None = None) -> str:
    return f"{stem}{f'_to_{target}' if target else ''}_sim_{query_tag(query)}.png"


def matches_name(stem_a: str, stem_b: str, method: str = "hungarian") -> str:
    return f"{stem_a}_{stem_b}_matches_{method}.png"


def all_names(stem: str) -> list[str]:
    """What `all` draws for one image: norms, PCA, similarity to the centre patch and to CLS."""
    return [norms_name(stem), pca_name(stem), similarity_name(stem), similarity_name(stem, CLS)]
