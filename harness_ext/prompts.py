"""The one multiple-choice prompt layout shared by every medbridge task and by training.

Options are laid out one per line as "A. text", the way MedVLThinker's evaluation set does,
and the model is asked for reasoning in <think> and the letter in <answer>.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

PROMPT_VERSION = "mcq-v1"
LETTERS = string.ascii_uppercase

INSTRUCTION = (
    "Think through the question step by step inside <think> </think> tags, "
    "then give only the letter of the correct option inside <answer> </answer> tags."
)


def letters_for(n: int) -> list[str]:
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 1..{len(LETTERS)} options, got {n}")
    return list(LETTERS[:n])


def lettered(texts: Sequence[str]) -> dict[str, str]:
    """Option texts in display order -> {"A": text, "B": text, ...}."""
    return dict(zip(letters_for(len(texts)), texts))


def format_mcq_prompt(question: str, options: Mapping[str, str]) -> str:
    lines = [question.strip(), "Options:"]
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    lines.append(INSTRUCTION)
    return "\n".join(lines)
