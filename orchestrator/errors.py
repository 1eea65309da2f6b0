"""Errors a user can fix, and spotctl's exit codes. The CLI prints an error as one message with a
hint, without a traceback (unless --debug)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What `spotctl` exits with (README.md, "Exit codes")."""

    OK = 0  # done; `watch`: every job succeeded
    FAILED = 1  # an error (one message says what and how to fix it); `watch`: a job did not succeed
    USAGE = 2  # bad arguments or an invalid job file
    GAVE_UP = 4  # `watch`: a job could not be followed (its record.json or job.yaml unreadable) and was given up
    ABORTED = 130  # Ctrl-C


class UserError(Exception):
    """Something the user can fix: bad input, a missing resource, a refused request."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
