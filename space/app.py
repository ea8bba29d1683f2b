"""The dinoscope explorer as a Hugging Face Space: one file, on timm's ungated copy of DINOv3 ViT-B/16.

Spaces run `python app.py`; locally the same command serves it on http://127.0.0.1:7860/.
DINOSCOPE_MODEL picks another model (any `--model` value), PORT another port (0 = any free one).
"""

import os
import sys

from dinoscope.models.registry import lookup
from dinoscope.ui import launch, serve_until_interrupted

MODEL = os.environ.get("DINOSCOPE_MODEL") or lookup("vitb16").open_id  # ungated: no login on the Space

if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID"))
    app, url = launch(MODEL, host="0.0.0.0" if on_space else "127.0.0.1", port=int(os.environ.get("PORT", "7860")),
                      block=False, device="cpu")
    print(f"dinoscope explorer: {url}", flush=True)
    serve_until_interrupted(app)
    sys.exit(0)
