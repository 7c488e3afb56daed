"""Which model produced this process's samples, for the records and the leaderboard's provenance.

``medbridge_vlm`` records the identity of the model it loaded (``cache.model_identity``: name, hub
revision, the sha256 fingerprint of its config, tokenizer and weight files; for a served model, what the
server reports) with ``record_model``; scoring copies ``recorded_model()`` into each sample record as
``model`` (only when a backend recorded one), and the leaderboard pins it with the rest of the
provenance, so two runs of one name over different weights never share a column.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["record_model", "recorded_model", "clear_model"]

_MODEL: dict[str, Any] | None = None
_LOCK = threading.Lock()
# What a sample record carries (the per-file hashes stay in the run's stats).
_FIELDS = ("name", "revision", "fingerprint", "weights")


def record_model(identity: Mapping[str, Any]) -> None:
    """Record the model this process generates with (last write wins)."""
    global _MODEL
    with _LOCK:
        _MODEL = {k: identity[k] for k in _FIELDS if identity.get(k) is not None}


def recorded_model() -> dict[str, Any] | None:
    """The recorded model (a copy), or None when no backend recorded one."""
    with _LOCK:
        return None if _MODEL is None else dict(_MODEL)


def clear_model() -> None:
    global _MODEL
    with _LOCK:
        _MODEL = None
