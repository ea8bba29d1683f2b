"""Reference-compatible entry point: python -m scripts.run_pca --help"""

import sys

from dinoscope.compat import run_pca

if __name__ == "__main__":
    sys.exit(run_pca())
