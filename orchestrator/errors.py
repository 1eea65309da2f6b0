"""Errors a user can fix. The CLI prints them as one message with a hint, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad input, a missing resource, a refused request."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

