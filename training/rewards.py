"""Rewards for GRPO / GRPO-CARE, built on the evaluation's own extractor and format check.

Training and evaluation must agree on what counts as a correct, well-formed answer, so nothing here
parses a response: ``accuracy`` is ``extract_choice(...) == answer letter`` and ``format`` is
``has_strict_format`` from :mod:`medbridge.harness_ext.answers`.

TRL calls a reward function as ``fn(prompts=..., completions=..., completion_ids=..., **dataset columns)``
with one entry per completion; our datasets carry ``answer_letter`` and ``options`` (a JSON string or a
dict) columns. :func:`compute_score` exposes the same rewards in verl's form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medbridge.harness_ext.answers import extract_choice, has_strict_format
from medbridge.harness_ext.errors import MedbridgeError

__all__ = [
    "REWARDS",
    "RewardNameError",
    "accuracy_reward",
    "completion_text",
    "compute_score",
    "compute_score_batch",
    "format_reward",
    "get_reward_funcs",
    "parse_options",
    "score_response",
]


def completion_text(completion: Any) -> str:
    """The text of one completion: TRL passes plain strings, or a list of chat messages for
    conversational prompts (the assistant's content may itself be a list of typed parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], Mapping) else ""
        if isinstance(content, str):
            return content
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def parse_options(options: str | Mapping[str, str]) -> dict[str, str]:
    """Options as stored by the data builders (JSON string) or already a mapping."""
    if isinstance(options, Mapping):
        return dict(options)
    try:
        parsed = json.loads(options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"options must be a JSON object of letter -> text, got {options!r}") from err
    if not isinstance(parsed, dict):
        # Bad data, reported like a parse failure.
        raise ValueError(f"options must be a JSON object of letter -> text, got {options!r}")  # noqa: TRY004
    return parsed


def score_response(response: str, answer_letter: str, options: str | Mapping[str, str]) -> dict[str, float]:
    """accuracy (1/0 by the evaluation extractor) and format (1/0 by the strict format check)."""
    choice = extract_choice(response, parse_options(options))
    return {
        "accuracy": 1.0 if choice is not None and choice == answer_letter else 0.0,
        "format": 1.0 if has_strict_format(response) else 0.0,
    }


def accuracy_reward(completions: list, answer_letter: list[str], options: list, **kwargs: Any) -> list[float]:
    """1.0 when the evaluation extractor reads the right letter out of the completion, else 0.0."""
    return [
        score_response(completion_text(c), a, o)["accuracy"]
        for c, a, o in zip(completions, answer_letter, options, strict=True)
    ]


def format_reward(completions: list, **kwargs: Any) -> list[float]:
    """1.0 for exactly one <think> block followed by one non-blank <answer> block, else 0.0."""
    return [1.0 if has_strict_format(completion_text(c)) else 0.0 for c in completions]


REWARDS: dict[str, Callable[..., list[float]]] = {"accuracy": accuracy_reward, "format": format_reward}


class RewardNameError(MedbridgeError, ValueError):
    """A recipe's reward_names entry that names no reward (user error: exit 2 from the CLI)."""


def get_reward_funcs(names: Sequence[str]) -> list[Callable[..., list[float]]]:
    """Reward functions by name: one of :data:`REWARDS`, or ``package.module:function`` for a reward of your
    own (called the way TRL calls rewards: ``fn(prompts=..., completions=..., completion_ids=..., **columns)``)."""
    unknown = [n for n in names if n not in REWARDS and ":" not in n]
    if unknown:
        raise RewardNameError(
            f"reward_names: unknown reward(s) {unknown}; known: {sorted(REWARDS)}, or package.module:function"
        )
    return [REWARDS[n] if n in REWARDS else _import_reward(n) for n in names]


def _import_reward(spec: str) -> Callable[..., list[float]]:
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise RewardNameError(f"reward_names: {spec!r} cannot be imported: {err}") from None
    if not callable(func):
        raise RewardNameError(f"reward_names: {spec!r} is not a function")
    return func


# Special tokens a verl reward manager may leave at the end of the decoded response (some versions decode
# without skip_special_tokens): they are not part of the answer and must not fail the format check.
_TRAILING_SPECIAL_RE = re.compile(r"(?:\s*(?:<\|[A-Za-z0-9_]+\|>|</s>|<eos>))+\s*$")


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> dict[str, float]:
    """verl's custom reward hook (``custom_reward_function.path=.../rewards.py``, ``name=compute_score``).

    verl's naive reward manager calls ``compute_score(data_source=..., solution_str=..., ground_truth=...,
    extra_info=...)`` and newer reward loops add keyword arguments of their own (``**kwargs``, ignored here).
    ``ground_truth`` is the answer letter; ``extra_info["options"]`` holds the options (JSON string or dict).
    Returns ``score`` = accuracy + format (the total GRPO reward without the CARE bonus) plus its parts,
    which verl logs as extra metrics. Trailing special tokens (``<|im_end|>``) are ignored.
    """
    if not extra_info or "options" not in extra_info:
        raise ValueError(f"{data_source}: extra_info must carry the item's 'options' (letter -> text)")
    response = _TRAILING_SPECIAL_RE.sub("", solution_str or "")
    parts = score_response(response, str(ground_truth).strip(), extra_info["options"])
    return {"score": parts["accuracy"] + parts["format"], **parts}


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[str],
    extra_infos: Sequence[dict | None],
    **kwargs: Any,
) -> list[float]:
    """verl's batch reward manager form (``reward_model.reward_manager=batch``, ``name=compute_score_batch``):
    one float score per response (older batch managers turn anything but a number into 0)."""
    return [
        compute_score(d, s, g, e)["score"]
        for d, s, g, e in zip(data_sources, solution_strs, ground_truths, extra_infos, strict=True)
    ]
