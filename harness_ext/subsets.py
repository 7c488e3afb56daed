"""How many items a task or data builder draws: one parser for every "N items or the whole set"
setting (environment variables and command-line flags alike), and the seed that goes with it.

The variables are read through harness_ext/settings.py, so a bad value names the variable.
"""

from __future__ import annotations

from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import SettingError

FULL_WORDS = ("all", "full")


def parse_size(value: int | str, *, name: str, what: str, full_word: str) -> int | None:
    """A positive item count, or None for the whole set ("all" or "full", any case).

    ``name`` is the setting (variable or flag) named in a format error, ``what`` the count named in a
    range error, ``full_word`` the word the error suggests for the whole set. Errors are
    ``SettingError`` (a ``ValueError`` and a ``MedbridgeError``)."""
    if isinstance(value, str):
        if value.strip().lower() in FULL_WORDS:
            return None
        try:
            value = int(value)
        except ValueError:
            raise SettingError(f"{name} must be a positive integer or '{full_word}', got {value!r}") from None
    if value < 1:
        raise SettingError(f"{what} must be >= 1, got {value} (set {name} to a positive integer or '{full_word}')")
    return value


def size_from_env(value: int | str | None, *, env: str, what: str, full_word: str) -> int | None:
    """``value`` when given, else $env or its default in the settings table; parsed by parse_size."""
    if value is None:
        value = settings.get_str(env)
    return parse_size(value, name=env, what=what, full_word=full_word)


def seed_from_env(seed: int | None, *, env: str) -> int:
    """``seed`` when given, else $env or its default in the settings table."""
    return settings.get_int(env) if seed is None else int(seed)
