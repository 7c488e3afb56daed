"""A dense reward for training tests through the command line (``--reward_names
medbridge.tests.training_rewards:low_token_share``).

A random tiny model earns 0 on accuracy and format, so every advantage is 0 and nothing moves; this reward
(the share of completion tokens from the lower half of the vocabulary) moves the weights from the first step.

For kill -9 tests: with ``MEDBRIDGE_TEST_STALL_AT_CALL=N`` and ``MEDBRIDGE_TEST_STALL_MARKER=PATH`` set, the
N-th call (1-based; one call per GRPO generation batch) writes PATH and then waits forever, so a test can
kill the process at a known point: inside step N, after the checkpoints of the earlier steps were saved.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

VOCAB_HALF_ENV = "MEDBRIDGE_TEST_VOCAB_HALF"
_calls = 0


def low_token_share(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    global _calls
    _calls += 1
    stall_at = os.environ.get("MEDBRIDGE_TEST_STALL_AT_CALL")
    if stall_at is not None and _calls == int(stall_at):
        Path(os.environ["MEDBRIDGE_TEST_STALL_MARKER"]).write_text(f"{os.getpid()}\n")
        while True:  # killed here by the test
            time.sleep(1)
    half = int(os.environ[VOCAB_HALF_ENV])  # half the tokenizer's vocabulary size
    return [sum(t < half for t in ids) / max(len(ids), 1) for ids in completion_ids]
