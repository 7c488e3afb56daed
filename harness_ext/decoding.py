"""The one definition of how medbridge decodes: greedy for Acc@1, temperature 0.7 / top_p 0.9 for Pass@K.

The paper's settings: Acc@1 is greedy; Pass@K samples at temperature 0.7 and top_p 0.9 and nothing
else (top-k off, repetition penalty 1.0) unless a task says otherwise. A checkpoint's
``generation_config.json`` must never change that: Qwen2.5-VL ships ``top_k=1, top_p=0.001,
temperature=0.1, repetition_penalty=1.05``, and a backend that lets those through turns 16 "samples"
into 16 copies of one greedy answer.

API (stable; backends, the task generator and scoring build on it):

* ``Decoding`` -- frozen dataclass: ``do_sample``, ``temperature``, ``top_p``, ``top_k`` (``None`` = off),
  ``repetition_penalty``, ``max_new_tokens``. ``Decoding.as_dict()`` gives the fields as a plain dict.
* ``GREEDY``, ``PASSK`` -- the paper's two settings (``max_new_tokens`` 1024; a task may
  ``dataclasses.replace`` it).
* ``task_decoding(gen_kwargs)`` -- the ``Decoding`` a task's ``generation_kwargs`` state (the lmms-eval
  spelling: ``do_sample``, ``temperature``, ``top_p``, ``top_k`` (0, -1 or null = off),
  ``repetition_penalty``, ``max_new_tokens``; ``until`` and other keys are ignored). Contradictions
  (``do_sample: true`` with ``temperature: 0``) and out-of-range values raise ``MedbridgeError``.
* ``generation_kwargs(decoding)`` -- the explicit ``generation_kwargs`` block a task YAML carries
  (every setting written out, ``top_k: 0`` for off, ``until: []``).
* ``effective_settings(decoding)`` -- every decoding field a backend states, explicitly: ``do_sample``,
  ``temperature``, ``top_p``, ``top_k`` (``0`` when off), ``repetition_penalty``, ``max_new_tokens``,
  ``num_beams`` 1 (greedy: the sampling fields at their neutral values 1.0 / 1.0 / 0). This is what a
  backend passes and records.
* ``SPECIAL_TOKEN_FIELDS`` / ``special_token_ids(generation_config)`` -- the allow-list: the only fields of
  a checkpoint's ``generation_config.json`` that may reach decoding (bos, eos and pad token ids).
* ``generation_config_from_scratch(decoding, special_tokens)`` -- a transformers ``GenerationConfig``
  built from nothing: the task's settings plus the allow-listed token ids; every other field keeps
  transformers' own default, whatever the checkpoint's file says or transformers adds in future.
* ``record_effective(task_name, settings)`` / ``effective_for(task_name)`` -- a process-global
  registry: a backend records what it actually passed for a task; scoring (``process_results`` cannot
  see the model) copies ``effective_for(task)`` into each sample record as ``decoding``.
  ``clear_effective()`` empties it (the plugin does so before each evaluation builds its model).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import MedbridgeError

__all__ = [
    "Decoding",
    "GREEDY",
    "PASSK",
    "task_decoding",
    "generation_kwargs",
    "effective_settings",
    "SPECIAL_TOKEN_FIELDS",
    "special_token_ids",
    "generation_config_from_scratch",
    "record_effective",
    "effective_for",
    "clear_effective",
]

DEFAULT_MAX_NEW_TOKENS = 1024
GENERATION_CONFIG_NAME = "generation_config.json"
# The only fields of a checkpoint's generation_config.json that may reach decoding (an allow-list).
SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class Decoding:
    do_sample: bool
    temperature: float  # 0.0 when greedy
    top_p: float  # 1.0 = off
    top_k: int | None  # None = off
    repetition_penalty: float  # 1.0 = off
    max_new_tokens: int

    def __post_init__(self) -> None:
        problems = []
        if self.do_sample and not self.temperature > 0:
            problems.append(f"sampling needs temperature > 0, got {self.temperature}")
        if not self.do_sample and self.temperature != 0:
            problems.append(f"greedy decoding takes temperature 0, got {self.temperature}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be None (off) or >= 1, got {self.top_k}")
        if not self.repetition_penalty > 0 or not math.isfinite(self.repetition_penalty):
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if problems:
            raise MedbridgeError("Invalid decoding settings: " + "; ".join(problems) + ".")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


GREEDY = Decoding(do_sample=False, temperature=0.0, top_p=1.0, top_k=None, repetition_penalty=1.0,
                  max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
PASSK = Decoding(do_sample=True, temperature=0.7, top_p=0.9, top_k=None, repetition_penalty=1.0,
                 max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

def _number(gen_kwargs: Mapping, key: str, kind: type) -> Any:
    value = gen_kwargs.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MedbridgeError(f"generation_kwargs {key}={value!r} is not a number; write a plain number.")
    try:
        number = float(value)
        if kind is int:
            if number != int(number):
                raise ValueError
            return int(number)
        return number
    except ValueError:
        raise MedbridgeError(f"generation_kwargs {key}={value!r} is not {'an integer' if kind is int else 'a number'}; "
                             "write a plain number.") from None


def _flag(value: Any, key: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise MedbridgeError(f"generation_kwargs {key}={value!r} is not true/false.")


def task_decoding(gen_kwargs: Mapping[str, Any]) -> Decoding:
    """The decoding a task's ``generation_kwargs`` state; unstated settings are off (top_p 1.0, top-k off,
    repetition penalty 1.0), an unstated ``do_sample`` follows the temperature (lmms-eval's rule)."""
    temperature = _number(gen_kwargs, "temperature", float)
    do_sample = _flag(gen_kwargs.get("do_sample"), "do_sample")
    if do_sample is None:
        do_sample = temperature is not None and temperature > 0
    elif not do_sample and temperature is not None and temperature > 0:
        # lmms-eval's backends sample whenever temperature > 0, whatever do_sample says.
        raise MedbridgeError(f"generation_kwargs say do_sample=false with temperature={temperature}: set "
                             "temperature: 0 for greedy, or do_sample: true to sample.")
    if do_sample and temperature is not None and temperature <= 0:
        raise MedbridgeError(f"generation_kwargs say do_sample=true with temperature={temperature}: set a "
                             "temperature > 0 (the paper samples at 0.7) or do_sample: false for greedy.")
    if do_sample and temperature is None:
        raise MedbridgeError("generation_kwargs say do_sample=true without a temperature: state one "
                             "(the paper samples at 0.7).")
    top_k = _number(gen_kwargs, "top_k", int)
    top_p = _number(gen_kwargs, "top_p", float)
    penalty = _number(gen_kwargs, "repetition_penalty", float)
    max_new = _number(gen_kwargs, "max_new_tokens", int)
    if do_sample:
        return Decoding(do_sample=True, temperature=temperature, top_p=1.0 if top_p is None else top_p,
                        top_k=None if top_k is None or top_k <= 0 else top_k,
                        repetition_penalty=1.0 if penalty is None else penalty,
                        max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new)
    # Greedy: the sampling fields do not apply; only the penalty and the length change the output.
    return replace(GREEDY, repetition_penalty=1.0 if penalty is None else penalty,
                   max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new)


def generation_kwargs(decoding: Decoding) -> dict[str, Any]:
    """The ``generation_kwargs`` block of a task YAML, every decoding setting written out."""
    return {
        # No stop string: lmms-eval would otherwise stop at the first blank line of the reasoning.
        "until": [],
        "max_new_tokens": decoding.max_new_tokens,
        "do_sample": decoding.do_sample,
        "temperature": decoding.temperature,
        "top_p": decoding.top_p,
        "top_k": 0 if decoding.top_k is None else decoding.top_k,  # 0 = off, in transformers and vLLM alike
        "repetition_penalty": decoding.repetition_penalty,
    }


def _config_dict(generation_config: Any) -> dict[str, Any]:
    if generation_config is None:
        return {}
    if isinstance(generation_config, Mapping):
        return dict(generation_config)
    to_dict = getattr(generation_config, "to_dict", None)  # a transformers GenerationConfig
    if callable(to_dict):
        return dict(to_dict())
    kind = type(generation_config).__name__
    raise TypeError(f"generation_config must be a mapping or a GenerationConfig, not {kind}")


def effective_settings(decoding: Decoding) -> dict[str, Any]:
    """Every decoding field, stated: what a backend passes (and records) so that it decodes exactly as ``decoding``."""
    return {
        "do_sample": decoding.do_sample,
        # Greedy: the sampling fields at their neutral values (they do not apply).
        "temperature": decoding.temperature if decoding.do_sample else 1.0,
        "top_p": decoding.top_p if decoding.do_sample else 1.0,
        # transformers fills an unset top_k with 50: off must be an explicit 0 (vLLM reads 0 as off too).
        "top_k": 0 if decoding.top_k is None or not decoding.do_sample else decoding.top_k,
        "repetition_penalty": decoding.repetition_penalty,
        "max_new_tokens": decoding.max_new_tokens,
        "num_beams": 1,
    }


def special_token_ids(generation_config: Any) -> dict[str, Any]:
    """The checkpoint's bos/eos/pad token ids (``SPECIAL_TOKEN_FIELDS``): all of its generation config that
    may reach decoding. ``generation_config``: a mapping, a transformers GenerationConfig or None."""
    config = _config_dict(generation_config)
    return {name: config[name] for name in SPECIAL_TOKEN_FIELDS if config.get(name) is not None}


def generation_config_from_scratch(decoding: Decoding, special_tokens: Any = None) -> Any:
    """A transformers ``GenerationConfig`` built from nothing: ``decoding`` plus the allow-listed special token
    ids of ``special_tokens`` (a checkpoint's generation config, a mapping, or None). Every other field keeps
    transformers' default. Greedy leaves the sampling fields unset (they do not apply, and transformers
    warns about them)."""
    from transformers import GenerationConfig

    settings = effective_settings(decoding)
    if not decoding.do_sample:
        settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_p", "top_k")}
    return GenerationConfig(**settings, **special_token_ids(special_tokens))


_EFFECTIVE: dict[str, dict[str, Any]] = {}
_EFFECTIVE_LOCK = threading.Lock()


def record_effective(task_name: str, settings: Mapping[str, Any]) -> None:
    """Record the decoding settings a backend actually used for ``task_name`` (last write wins)."""
    with _EFFECTIVE_LOCK:
        _EFFECTIVE[task_name] = dict(settings)


def effective_for(task_name: str) -> dict[str, Any] | None:
    """The settings recorded for ``task_name`` in this process, or None when no backend recorded any."""
    with _EFFECTIVE_LOCK:
        settings = _EFFECTIVE.get(task_name)
        return None if settings is None else dict(settings)


def clear_effective() -> None:
    with _EFFECTIVE_LOCK:
        _EFFECTIVE.clear()
