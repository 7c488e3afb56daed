"""``resume_from_checkpoint`` as the README states it, checked before training starts.

``true`` / ``last``: the newest *complete* ``output_dir/checkpoint-N`` (a kill -9 during a save leaves a
folder without the Trainer's last write, ``trainer_state.json``, or without a trainer's own files such as
CARE's ``care_ema.pt``: such folders are skipped with a warning); a folder: that checkpoint, which must be
complete; ``false`` / unset: start fresh. Light on purpose (no torch / transformers import).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from medbridge.harness_ext.errors import MedbridgeError

__all__ = ["TRAINER_STATE_NAME", "ResumeError", "resolve_resume_checkpoint"]

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, written last in a save
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_LAST = ("true", "last")
_NONE = ("", "false", "none", "no")


class ResumeError(MedbridgeError):
    """``resume_from_checkpoint`` names nothing that can be resumed (user error: exit 2 from the CLI)."""


def _missing_files(folder: Path, required: Sequence[str]) -> list[str]:
    # trainer_state.json is the Trainer's last write to a checkpoint: without it the save was cut short.
    return [name for name in (TRAINER_STATE_NAME, *required) if not (folder / name).is_file()]


def resolve_resume_checkpoint(
    value: str | bool | None, output_dir: str | os.PathLike[str], required: Sequence[str] = ()
) -> str | None:
    """The checkpoint folder to resume from, or None to start fresh.

    ``value``: None / False / ``"false"`` -> None; True / ``"true"`` / ``"last"`` -> the newest
    ``output_dir/checkpoint-N`` that is complete (holds ``trainer_state.json`` and every name in
    ``required``), skipping, with a warning, newer ones a killed save left incomplete; anything else is a
    checkpoint folder that must be complete. Raises :class:`ResumeError` naming the folder otherwise.
    """
    if value is None or value is False:
        return None
    text = "true" if value is True else str(value).strip()
    if text.lower() in _NONE:
        return None
    if text.lower() in _LAST:
        root = Path(output_dir)
        entries = list(root.iterdir()) if root.is_dir() else []
        numbered = sorted(
            ((int(m.group(1)), p) for p in entries if (m := _CHECKPOINT_RE.match(p.name))), reverse=True
        )
        incomplete = []
        for _, folder in numbered:
            if not folder.is_dir():
                continue
            missing = _missing_files(folder, required)
            if not missing:
                if incomplete:
                    logger.warning(
                        "resume_from_checkpoint=%s: skipping incomplete checkpoint(s) %s (a save cut short); "
                        "resuming from %s",
                        text,
                        ", ".join(incomplete),
                        folder,
                    )
                return str(folder)
            incomplete.append(f"{folder.name} (no {', '.join(missing)})")
        found = f"; incomplete: {', '.join(incomplete)}" if incomplete else ""
        raise ResumeError(
            f"resume_from_checkpoint={text}: {root} holds no complete checkpoint-N folder to resume from{found}. "
            "Start without resume_from_checkpoint, or name a checkpoint folder."
        )
    folder = Path(text)
    if not folder.is_dir():
        raise ResumeError(
            f"resume_from_checkpoint={text}: no such checkpoint folder (use a checkpoint-N folder of a run, "
            "or 'true' / 'last' for the newest complete one in output_dir)"
        )
    missing = _missing_files(folder, required)
    if missing:
        raise ResumeError(
            f"resume_from_checkpoint={text}: the checkpoint is incomplete (no {', '.join(missing)}); "
            "its save was cut short or it was written by another trainer. Resume from an earlier checkpoint."
        )
    return str(folder)
