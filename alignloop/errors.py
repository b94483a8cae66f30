"""The one error type for mistakes a user can make and fix.

A `UserError` carries a message that names the thing (a file, an option, a server), the reason
and, where there is one, the fix: ``"runs/sft/final: not a model folder (no config.json); pass
--model a folder written by `alignloop train sft`"``. `alignloop.cli` prints it as one line and
exits with code 2, without a traceback (``--debug`` or ``ALIGNLOOP_DEBUG=1`` shows one).
Anything else that escapes a command is a bug and keeps its traceback.

This module imports nothing, so every layer may use it (the one exception to the arrows of
DESIGN.md: `core` and `feedback` raise it too).
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
"""Exit code of a command stopped by a user's mistake."""


class UserError(Exception):
    """A mistake the user can fix; `str(error)` is the whole message shown to them."""
