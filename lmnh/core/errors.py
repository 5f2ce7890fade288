"""An error as operators read it in a log: one line, never a traceback."""

from __future__ import annotations


def one_line(error: BaseException | None) -> str:
    """The error's text with every run of whitespace (line breaks included) as one space;
    its type's name when it has no text."""
    if error is None:
        return "unknown error"
    return " ".join(str(error).split()) or type(error).__name__
