"""Reference-compatible entry point: python -m scripts.run_similarity --help"""

import sys

from dinoscope.compat import run_similarity

if __name__ == "__main__":
    sys.exit(run_similarity())
