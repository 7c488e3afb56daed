"""What decoding produced each task's numbers, and where it differs from the paper's.

The paper: Acc@1 greedy; Pass@K sampled at temperature 0.7, top_p 0.9, top-k off, repetition
penalty 1.0 (``decoding.GREEDY`` / ``decoding.PASSK``). A task's decoding comes from what its backend
recorded in every sample record (``record["decoding"]``: what it built or sent); when the backend
recorded nothing, from what the task asked lmms-eval for (its ``generation_kwargs`` in the results
file, ``--gen_kwargs`` included), marked as such: nothing observed it.

    used = task_decoding(records, asked)    # {"settings": {...}, "source": "recorded"|"asked"|"unknown", ...}
    describe(used["settings"])              # "T 0.7, top_p 0.9, top_k off, repetition_penalty 1.0"
    paper_differences(used["settings"], sampled=True)   # ["top_p 1.0 (paper: 0.9)"]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medbridge.harness_ext import decoding

RECORDED = "recorded"  # the backend recorded what it built or sent, per item
ASKED = "asked"  # only the task's generation_kwargs: the backend recorded nothing
UNKNOWN = "unknown"
SOURCE_TEXT = {
    RECORDED: "recorded by the backend",
    ASKED: "asked by the task; the backend recorded nothing",
    UNKNOWN: "not recorded",
}
# Fields that change decoding, with the value that leaves it unchanged; any other value is shown and
# counts as a difference from the paper. (Sampling fields only matter when sampling.)
_NEUTRAL_ALWAYS = {"num_beams": 1, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                   "min_new_tokens": 0, "min_tokens": 0, "length_penalty": 1.0}
_NEUTRAL_SAMPLING = {"typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
_CORE = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
# lmms-eval bookkeeping in generation_kwargs, not decoding.
_IGNORED = {"until", "image_aspect_ratio"}


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    return True if text in ("true", "1", "yes") else False if text in ("false", "0", "no") else None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def normalized(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The decoding ``settings`` (a backend's record or a task's generation_kwargs) amount to, in one
    spelling: sampling fields only when sampling, top_k None when off, other fields only when not neutral."""
    temperature = _as_number(settings.get("temperature"))
    do_sample = _as_bool(settings.get("do_sample"))
    if do_sample is None:  # lmms-eval's rule: an unstated do_sample follows the temperature
        do_sample = temperature is not None and temperature > 0
    out: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        top_k = _as_number(settings.get("top_k"))
        top_p = _as_number(settings.get("top_p"))
        out.update(temperature=temperature, top_p=1.0 if top_p is None else top_p,
                   top_k=None if top_k is None or top_k <= 0 else int(top_k))
    penalty = _as_number(settings.get("repetition_penalty"))
    out["repetition_penalty"] = 1.0 if penalty is None else penalty
    if _as_number(settings.get("max_new_tokens")) is not None:
        out["max_new_tokens"] = int(_as_number(settings["max_new_tokens"]))
    neutral = {**_NEUTRAL_ALWAYS, **(_NEUTRAL_SAMPLING if do_sample else {})}
    for key in sorted(settings):
        value = settings[key]
        if key in _CORE or key in _IGNORED or value is None:
            continue
        if key in neutral:
            if _as_number(value) != _as_number(neutral[key]):
                out[key] = value
        elif key not in _NEUTRAL_SAMPLING:
            out[key] = value  # anything else a backend recorded (a note, a seed) is shown as it is
    return out


def _key(settings: Any) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def task_decoding(records: Sequence[Mapping[str, Any]], asked: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What decoding produced a task's records: ``settings`` (normalized), ``source`` (RECORDED / ASKED /
    UNKNOWN), and ``variants`` when items were produced under different recorded settings."""
    seen = {_key(r.get("decoding")): r.get("decoding") for r in records}
    recorded = [s for s in seen.values() if isinstance(s, Mapping)]
    if recorded:
        variants = sorted({_key(normalized(s)) for s in recorded})
        out: dict[str, Any] = {"settings": json.loads(variants[0]), "source": RECORDED}
        if len(variants) > 1 or len(recorded) < len(seen):
            out["variants"] = len(variants) + (len(recorded) < len(seen))
        return out
    if isinstance(asked, Mapping):
        return {"settings": normalized(asked), "source": ASKED}
    return {"settings": None, "source": UNKNOWN}


def _fmt(value: Any) -> str:
    """A setting as it was given: an integer (top_k, num_beams) as one, a float with its point (T 1.0)."""
    number = _as_number(value)
    if number is None or isinstance(value, str | int):
        return str(value)
    return f"{number:.1f}" if number == int(number) and abs(number) < 1e6 else f"{number:g}"


def describe(settings: Mapping[str, Any] | None) -> str:
    """One line: ``greedy`` or ``T 0.7, top_p 0.9, top_k off, repetition_penalty 1.0``, then other fields."""
    if settings is None:
        return "unknown"
    if settings.get("do_sample"):
        top_k = settings.get("top_k")
        parts = [f"T {_fmt(settings.get('temperature'))}", f"top_p {_fmt(settings.get('top_p'))}",
                 f"top_k {'off' if top_k is None else _fmt(top_k)}"]
    else:
        parts = ["greedy"]
    parts.append(f"repetition_penalty {_fmt(settings.get('repetition_penalty', 1.0))}")
    parts += [f"{key} {_fmt(value)}" for key, value in settings.items() if key not in _CORE]
    if "max_new_tokens" in settings:
        parts.append(f"max_new_tokens {settings['max_new_tokens']}")
    return ", ".join(parts)


def paper_differences(settings: Mapping[str, Any] | None, *, sampled: bool) -> list[str]:
    """Each way ``settings`` (normalized) differ from the paper's decoding for a greedy or sampled task;
    empty when they match or are unknown (``describe`` then says "unknown")."""
    if settings is None:
        return []
    paper = normalized(decoding.PASSK.as_dict() if sampled else decoding.GREEDY.as_dict())
    found = []
    if bool(settings.get("do_sample")) != paper["do_sample"]:
        found.append("sampled (paper: greedy)" if settings.get("do_sample") else "greedy (paper: sampled)")
    else:
        for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
            if key not in paper:
                continue
            have, want = settings.get(key), paper[key]
            same = have == want if want is None or have is None else math.isclose(float(have), float(want))
            if not same:
                found.append(f"{key} {'off' if have is None else _fmt(have)} "
                             f"(paper: {'off' if want is None else _fmt(want)})")
    extra = [key for key in settings if key not in _CORE and (key in _NEUTRAL_ALWAYS or key in _NEUTRAL_SAMPLING)]
    found += [f"{key} {_fmt(settings[key])} (paper: {_fmt({**_NEUTRAL_ALWAYS, **_NEUTRAL_SAMPLING}[key])})"
              for key in extra]
    return found


def asked_decodings(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """task -> the generation_kwargs lmms-eval ran it with (its results file's per-task configs)."""
    configs = results.get("configs") if isinstance(results, Mapping) else None
    out = {}
    for task, config in (configs or {}).items() if isinstance(configs, Mapping) else ():
        kwargs = config.get("generation_kwargs") if isinstance(config, Mapping) else None
        if isinstance(kwargs, Mapping):
            out[str(task)] = kwargs
    return out


def degenerate(used: Mapping[str, Any]) -> str | None:
    """Why a task's decoding (``task_decoding``'s result) cannot sample, if its settings say so."""
    from medbridge.harness_ext.metrics import degenerate_settings

    return degenerate_settings(used.get("settings"))
