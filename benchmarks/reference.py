"""The reference way of working, reproduced for the baseline: ONE analysis per process.

Each run imports the libraries, loads the model with eager attention in float32, runs it
with output_hidden_states=True (every layer's hidden states kept), computes its one
analysis and writes one picture. Matching runs two forward passes and solves the
assignment with SciPy. The pictures are drawn with dinoscope's views so that only the
way of working differs, not the drawing.

    python benchmarks/reference.py {norms,pca,similarity,match} IMAGE [IMAGE2] OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    analysis, *images, out = sys.argv[1:]
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModel

    from dinoscope import views
    from dinoscope.analyses.matching import Matches, cosine_matrix
    from dinoscope.features import Features, preprocess
    from dinoscope.geometry import Geometry, Resolution

    model = AutoModel.from_pretrained("facebook/dinov3-vitb16-pretrain-lvd1689m", attn_implementation="eager",
                                      dtype=torch.float32).eval()
    cfg = model.config

    def forward(path):
        image = Image.open(path).convert("RGB")
        geometry, _ = Geometry.for_image(image.width, image.height, cfg.patch_size, Resolution(max_tokens=None))
        pixels = preprocess(image, geometry, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[None]
        with torch.no_grad():
            out = model(pixel_values=pixels, output_hidden_states=True)
        h = out.last_hidden_state[0]
        r = cfg.num_register_tokens
        feats = Features(h[0], h[1:1 + r], h[1 + r:].reshape(geometry.rows, geometry.cols, -1), geometry)
        return image, feats

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, feats = forward(images[0])
    if analysis == "norms":
        picture = views.norms_view(feats, image)
    elif analysis == "pca":
        picture = views.pca_view(feats)
    elif analysis == "similarity":
        g = feats.geometry
        picture = views.similarity_view(feats, g.index(g.rows // 2, g.cols // 2), image)
    elif analysis == "match":
        from scipy.optimize import linear_sum_assignment

        image_b, feats_b = forward(images[1])  # the second forward pass
        sims = cosine_matrix(feats, feats_b)
        rows, cols = linear_sum_assignment(sims, maximize=True)
        matches = Matches(rows.astype(np.int64), cols.astype(np.int64), sims[rows, cols], "hungarian",
                          feats.geometry, feats_b.geometry)
        from dinoscope import render

        picture = render.draw_matches(image, image_b, matches)
    else:
        raise SystemExit(f"unknown analysis {analysis}")
    picture.save(out_dir / f"reference_{analysis}.png")


if __name__ == "__main__":
    main()
