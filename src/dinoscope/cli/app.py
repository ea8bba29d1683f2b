"""The `dinoscope` command line root: the app, its commands, and main() with its error handling.

Torch and transformers are imported only inside commands, so --help and argument errors answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import typer

from ..errors import redact
from . import analyses, collections, explorer, insights, output
from .errors import INTERRUPTED, as_flags, run_guarded, say

app = typer.Typer(
    name="dinoscope",
    help="See what a DINOv3 vision transformer sees: feature norms, PCA colours, similarity maps, patch matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for command in (analyses.norms, analyses.pca, analyses.similarity, analyses.match):
    app.command()(command)
app.command(name="all")(analyses.run_all)
app.command()(collections.extract)
app.command()(collections.video)
app.command()(analyses.models)
app.command()(analyses.layers)
app.command()(analyses.attention)
app.command()(explorer.ui)
for command in (insights.segments, insights.search, insights.atlas, insights.propagate):
    app.command()(command)


class _NoticeFormatter(logging.Formatter):
    """Notices name API parameters, read as flags on the command line; credentials in URLs never show."""

    def format(self, record: logging.LogRecord) -> str:
        return as_flags(redact(super().format(record)))


@contextlib.contextmanager
def _notices_on_stderr():
    """Library notices (logger "dinoscope") as "dinoscope: ..." lines on stderr for the run, then as before."""
    logger = logging.getLogger("dinoscope")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NoticeFormatter("dinoscope: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _invoke(args: list[str]) -> int:
    """Run the command line; click's own outcomes (help, usage errors, exits) become exit codes here."""
    command = typer.main.get_command(app)
    output.RUN = output.RunRecord()
    try:
        with _notices_on_stderr():
            code = command.main(args=args, prog_name="dinoscope", standalone_mode=False)
        output.RUN.status.clear()
        summary = output.RUN.summary()
        if summary:
            print(f"dinoscope: {summary}", file=sys.stderr)
    except Exception as exc:
        # typer vendors click in recent releases, so its exceptions are recognised by shape, not class
        name = type(exc).__name__
        if name == "Exit":
            return getattr(exc, "exit_code", 0)
        if name == "NoArgsIsHelpError":
            command.main(args=["--help"], prog_name="dinoscope", standalone_mode=False)
            return 0
        if name != "Abort" and hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            hint = f"dinoscope {args[0]} --help" if args and args[0] in getattr(command, "commands", {}) \
                else "dinoscope --help"
            say(f"error: {exc.format_message()} (see {hint})", "dinoscope")
            return exc.exit_code
        raise
    # typer reports Ctrl-C (and explicit exits) as a returned exit code when not standalone
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == INTERRUPTED:
            say("interrupted", "dinoscope")
        return code
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and exit code 2 for bad input; tracebacks only with --debug.

    Notices go to stderr for the run only (`_notices_on_stderr` restores the "dinoscope" logger), so
    calling main() in-process (tests, notebooks) leaves logging as it found it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DINOSCOPE_DEBUG") == "1"
    return run_guarded(lambda: _invoke(args), debug=debug, prog="dinoscope")
