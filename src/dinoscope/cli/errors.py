"""The one place that turns an exception into a line on stderr and an exit code.

Used by `dinoscope` and by the reference-compatible scripts (dinoscope.compat, scripts/run_*.py):
bad input is one line and exit code 2, Ctrl+C (or SIGTERM) is exit code 130, anything else is an
internal error, exit code 1; a traceback only with --debug.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

from ..errors import DinoscopeError, redact
from ..files import sigterm_as_interrupt

USAGE, INTERRUPTED, INTERNAL = 2, 130, 1

# Library messages name API parameters (device='cpu', max_tokens=); on the command line they are flags.
_PARAMETER = re.compile(r"\b(model|device|dtype|max_tokens|max_pixels|stride|max_frames)=(?:'([^']*)')?")


def as_flags(message: str) -> str:
    """`message` with the API's parameter names written as the CLI's flags (max_tokens= -> --max-tokens)."""
    return _PARAMETER.sub(lambda m: f"--{m[1].replace('_', '-')}" + (f" {m[2]}" if m[2] is not None else ""), message)


def say(line: str, prog: str | None) -> None:
    line = redact(line)  # a URL's password never reaches the terminal or a log
    print(f"{prog}: {line}" if prog else line, file=sys.stderr)


def exit_code(exc: BaseException, *, debug: bool, prog: str | None) -> int:
    """Report `exc` in one line and return its exit code; with `debug`, re-raise it instead (interrupts excepted)."""
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Abort":  # click's Abort is Ctrl+C at a prompt
        say("interrupted", prog)
        return INTERRUPTED
    if debug:
        raise exc
    if isinstance(exc, DinoscopeError):
        say(f"error: {as_flags(str(exc))}", prog)
        return USAGE
    say(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", prog)
    return INTERNAL


def run_guarded(body: Callable[[], int | None], *, debug: bool, prog: str | None) -> int:
    """Run `body` with SIGTERM treated as Ctrl+C; its exit code, or the one its exception maps to."""
    try:
        with sigterm_as_interrupt():
            return body() or 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        return exit_code(exc, debug=debug, prog=prog)
    except KeyboardInterrupt as exc:
        return exit_code(exc, debug=debug, prog=prog)
