"""Helpers for the one-line errors interp raises when a library it calls fails on a user's input."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300, with_type: bool = True) -> str:
    """The first non-blank line of ``exc``'s message, cut to ``limit`` characters.

    With ``with_type`` (the default) it follows the exception's type name (``"OSError: no such file"``),
    and is the type name alone when the message is blank. Libraries such as transformers, the hub
    client and NDIF's client raise many kinds of exception with messages many lines long; a one-line
    error quotes this and keeps the cause chained (or drops it) as the caller decides.
    """
    line = next((text.strip() for text in str(exc).splitlines() if text.strip()), "")[:limit]
    if not with_type:
        return line
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
