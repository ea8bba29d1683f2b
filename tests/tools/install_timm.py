"""Install timm's model code (no dependencies) into a private folder, for the equality tests only.

`pip install timm` would pull a CUDA torchvision (gigabytes, and it breaks `import transformers`
beside CPU torch), so timm goes in with --no-deps into a folder of its own that only the reference
subprocess of tests/test_timm_layout.py puts on its path. CI runs this before the test command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TIMM_VERSION = "1.0.31"


def timm_dir() -> Path:
    """Where the tests look for timm: $DINOSCOPE_TEST_TIMM, else a versioned folder in the user cache."""
    given = os.environ.get("DINOSCOPE_TEST_TIMM")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dinoscope-tests" / f"timm-{TIMM_VERSION}"


def main() -> int:
    target = timm_dir()
    if (target / "timm" / "__init__.py").is_file():
        print(f"timm {TIMM_VERSION} already in {target}")
        return 0
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
               f"timm=={TIMM_VERSION}"]
    print("+ " + " ".join(command))
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
