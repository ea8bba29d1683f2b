"""Reference-compatible entry point: python -m scripts.run_matching --help"""

import sys

from dinoscope.compat import run_matching

if __name__ == "__main__":
    sys.exit(run_matching())
