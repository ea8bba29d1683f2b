"""Reference-compatible entry point: python -m scripts.run_feat_len --help"""

import sys

from dinoscope.compat import run_feat_len

if __name__ == "__main__":
    sys.exit(run_feat_len())
