"""Count what a model really computes: every forward call's input tokens, split into prefill
(the KV cache was empty when the call started) and decode. Used by the tests and
benchmarks/passk_cost.py to measure prompt tokens prefilled by any backend (ours or lmms-eval's)
without trusting the backend's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ForwardLog:
    calls: list[tuple[int, int, int]] = field(default_factory=list)  # (rows, tokens per row, cache length at entry)

    @property
    def prefill_calls(self) -> int:
        return sum(1 for _, _, cached in self.calls if cached == 0)

    @property
    def prefill_rows(self) -> int:
        """Prompts prefilled (a batched prefill of B prompts counts B)."""
        return sum(rows for rows, _, cached in self.calls if cached == 0)

    @property
    def prefill_tokens(self) -> int:
        return sum(rows * seq for rows, seq, cached in self.calls if cached == 0)

    @property
    def decode_tokens(self) -> int:
        return sum(rows * seq for rows, seq, cached in self.calls if cached > 0)

    def summary(self) -> dict[str, int]:
        return {
            "forward_calls": len(self.calls),
            "prefill_calls": self.prefill_calls,
            "prefill_rows": self.prefill_rows,
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
        }


def _cache_length(kwargs: dict[str, Any]) -> int:
    for name in ("cache", "past_key_values"):
        cache = kwargs.get(name)
        if cache is not None:
            if hasattr(cache, "get_seq_length"):
                return int(cache.get_seq_length())
            if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuple cache
                return int(cache[0][0].shape[-2])
    return 0


@contextlib.contextmanager
def count_forward_tokens(model_cls: type) -> Iterator[ForwardLog]:
    """Patch ``model_cls.forward`` (for every instance, in this process) to log each call's
    input_ids shape and the cache length it started from."""
    log = ForwardLog()
    original = model_cls.__dict__.get("forward")
    if original is None:
        raise TypeError(f"{model_cls.__name__} defines no forward of its own to instrument")

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            log.calls.append((int(ids.shape[0]), int(ids.shape[1]), _cache_length(kwargs)))
        return original(self, *args, **kwargs)

    model_cls.forward = forward
    try:
        yield log
    finally:
        model_cls.forward = original
