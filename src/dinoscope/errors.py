"""The one exception type that front ends turn into a one-line message."""

import re


class DinoscopeError(Exception):
    """A problem with the user's input or environment.

    The message is one line that says what was wrong and what to do about it.
    The CLI prints it and exits with code 2; the web UI shows it in the page.
    """


class InputError(DinoscopeError):
    """An image, index, pixel or option that cannot be used."""


class ModelError(DinoscopeError):
    """A model that cannot be found, downloaded, loaded or fitted in memory."""


# Messages are one line: whatever text they quote (a file name, a URL, a library's error) is flattened and clipped.

def one_line(text: str) -> str:
    """Replace line breaks and other control characters so a message never spans lines."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", text)


_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@]*@")


def redact(text: str) -> str:
    """`text` with the user:password@ part of every URL in it removed (for logs, messages and manifests)."""
    return _CREDENTIALS.sub(r"\1", str(text))


def clipped(text, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = one_line(str(text))
    return text[: limit - 3] + "..." if len(text) > limit else text


def brief(exc: BaseException) -> str:
    """A short one-line description of a library exception for a message."""
    detail = one_line(str(exc)).strip()
    if not detail:
        return type(exc).__name__
    return detail[:117] + "..." if len(detail) > 120 else detail


def input_error(message: str) -> InputError:
    return InputError(one_line(message))
