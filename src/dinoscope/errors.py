"""The one exception type that front ends turn into a one-line message."""


class DinoscopeError(Exception):
    """A problem with the user's input or environment.

    The message is one line that says what was wrong and what to do about it.
    The CLI prints it and exits with code 2; the web UI shows it in the page.
    """


class InputError(DinoscopeError):
    """An image, index, pixel or option that cannot be used."""


class ModelError(DinoscopeError):
    """A model that cannot be found, downloaded, loaded or fitted in memory."""
