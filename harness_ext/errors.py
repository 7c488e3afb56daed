"""The one error type a user can fix: bad input, a missing file, a wrong setting.

The `medbridge` command prints a ``MedbridgeError`` as one paragraph and exits 2; anything else is a
bug, printed with the path of the log file that holds its traceback.
"""

from __future__ import annotations


class MedbridgeError(Exception):
    """A problem with the user's input or environment. The message names the file, row, field or
    variable at fault and how to fix it."""


class SettingError(MedbridgeError, ValueError):
    """An environment variable (or the flag that stands for it) holds a value we cannot use."""
