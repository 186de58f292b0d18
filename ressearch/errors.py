"""User-facing errors.

Anything a user can cause (a malformed file, a bad option, a missing data directory) raises a
:class:`UserError`. The CLI prints its message as one line and exits with code 2; everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input: shown as one line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """A dataset file is missing, truncated or not in the expected format."""


class SpecError(UserError):
    """A network specification is invalid."""


class CheckpointError(UserError):
    """A checkpoint directory is missing, truncated or tampered with."""
