"""User text inside a one-line message: escaped, so nothing reaches the terminal raw, and clipped.

A job file is untrusted input, and so is its name: a key holding a newline would split one problem
over two lines, and `ESC [`, `\\r`, BEL or a BiDi override would act on the terminal that shows it.
"""

from __future__ import annotations

CLIP_CHARS = 60  # of one value quoted in a message: enough to recognise it, short enough to keep the line


def printable(text: str) -> str:
    """`text` with every character a terminal would act on or not show as itself (controls, escapes,
    line separators, BiDi overrides, zero-width and unassigned characters, lone surrogates) written
    as Python writes it in a string literal (`\\n`, `\\x1b`, `\\u202e`)."""
    if text.isprintable():  # the common case, in C
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
