"""The `dinoscope` command line (entry point `dinoscope.cli:main`; also `python -m dinoscope`).

The app and its commands load on the first call, so importing this package (as the reference
scripts do for the error mapper) costs nothing.
"""

from __future__ import annotations

from .output import stem as _stem  # noqa: F401  (the name under which output names are tested)


def main(argv: list[str] | None = None) -> int:
    from .app import main as run

    return run(argv)


__all__ = ["main"]
