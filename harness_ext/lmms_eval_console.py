"""Plain text from lmms-eval when its output is not a terminal.

lmms-eval 0.7.3 resets its logger with ``logger.add(sys.stdout, colorize=True, ...)``: ANSI colour codes
go into every redirected log and CI transcript. ``install()`` (called once by the plugin, which lmms-eval
imports before it sets up that logger) makes loguru's ``add`` colour a stream sink only when the stream
is a terminal and ``NO_COLOR`` (https://no-color.org) is not set; ``FORCE_COLOR`` keeps the colours.
Nothing else about lmms-eval's logging changes.
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["install", "wants_colour"]

_MARK = "_medbridge_plain_when_redirected"


def wants_colour(stream: Any) -> bool:
    """Colour for ``stream``: FORCE_COLOR wins, then NO_COLOR, then whether it is a terminal."""
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def install() -> None:
    """Wrap loguru's ``Logger.add`` (idempotent): ``colorize=True`` on a stream that is not a terminal
    becomes ``False``."""
    from loguru._logger import Logger

    original = Logger.add
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def add(self, sink, *args, **kwargs):
        if kwargs.get("colorize") is True and hasattr(sink, "write") and not wants_colour(sink):
            kwargs["colorize"] = False
        return original(self, sink, *args, **kwargs)

    setattr(add, _MARK, True)
    Logger.add = add
