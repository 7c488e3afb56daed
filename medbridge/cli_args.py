"""Argument conventions shared by every `medbridge` subcommand (medbridge/cli.py, training/cli.py,
leaderboard/cli.py, judges/cli.py).

- Numbers are checked when parsed, with bounds: ``int_range(1, 100_000)`` makes ``0``, ``-1`` and
  ``10**20`` usage errors (exit 2) instead of a traceback or an allocation that never ends.
- Flags that mean what an lmms-eval flag means are spelled as lmms-eval spells them (``--model_args``,
  ``--gen_kwargs``, ``--output_path``, ``--batch_size``); ``add_flag`` keeps older spellings working
  as hidden aliases, so a command line written for an earlier medbridge still runs.
- One name per concept: ``--run-name`` (a run's name on the leaderboard), ``--model-name``, ``--store``
  (the leaderboard store).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["SEED_MAX", "add_flag", "int_range"]

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most samplers take 32-bit seeds


def int_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum] (maximum None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:,}, got {number:,}")
        return number

    # argparse names the type in its message ("invalid integer >= 1 value")
    parse.__name__ = f"integer >= {minimum}" if maximum is None else f"integer in [{minimum}, {maximum}]"
    return parse


def add_flag(parser: argparse.ArgumentParser, name: str, *old_names: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(name, **kwargs)`` plus each of ``old_names`` as a hidden alias of it (not in
    --help; the first spelling given on the command line sets the value, as for any repeated flag)."""
    action = parser.add_argument(name, **kwargs)
    alias_kwargs = {k: v for k, v in kwargs.items() if k in ("type", "nargs", "choices", "action", "const")}
    for old in old_names:
        parser.add_argument(old, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **alias_kwargs)
    return action
