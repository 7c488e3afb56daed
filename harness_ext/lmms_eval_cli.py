"""The lmms-eval command line of this environment, for every medbridge caller that starts lmms-eval
in its own process (the demo, checkpoint evaluation during training, tests).

It lives in harness_ext so training and the leaderboard can start lmms-eval without importing the demo.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["lmms_eval_command"]


def lmms_eval_command() -> list[str]:
    """The lmms-eval console script next to this Python (or on PATH), else ``python -m lmms_eval``."""
    exe = Path(sys.executable).with_name("lmms-eval")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("lmms-eval")
    return [found] if found else [sys.executable, "-m", "lmms_eval"]
