"""Served models: every request states every decoding field, so no server default can change decoding.

A vLLM server fills each sampling field a request leaves out from the checkpoint's generation_config.json
(unless it runs with ``--generation-config vllm``; ``--override-generation-config`` likewise): Qwen2.5-VL
would give top_k 1 and repetition_penalty 1.05, and Pass@K collapses onto the greedy answer. So medbridge
never leaves one out. ``request_fields(decoding)`` is the decoding part of a chat-completions request:

* the OpenAI fields: ``temperature``, ``top_p``, ``max_tokens``, ``n``, ``presence_penalty``,
  ``frequency_penalty``, ``seed`` (sampled requests), ``stop``;
* vLLM's sampling extras (accepted beside them in the body; the openai client's ``extra_body``):
  ``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``.

Together they cover every field vLLM's server takes from generation_config.json (its chat request's
``_DEFAULT_SAMPLING_PARAMS`` plus ``max_tokens``; tests/test_served_engine.py checks this against the
installed vLLM). A server that rejects one of them is refused by name (``rejected_field``): a run never
degrades to the server's defaults silently.

Two paths send them: ``medbridge_vlm engine=openai`` (harness_ext/backend/served_engine.py: the K
samples of an item in one ``n=K`` request, one prefill on the server) and lmms-eval's own ``openai``
backend, whose requests harness_ext/backend/lmms_eval_decoding.py completes (lmms-eval sends neither top_k
nor repetition_penalty, and drops temperature for served names containing o1/o3/o4/gpt-5).
``recorded_settings(decoding)`` is what both record per task: the values sent (the other fields are
always sent at their neutral values, shown by ``request_fields``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .decoding import Decoding, effective_settings

__all__ = [
    "served_vlm_args",
    "request_fields",
    "split_openai_fields",
    "recorded_settings",
    "rejected_field",
    "OPENAI_FIELDS",
    "VLLM_EXTRA_FIELDS",
    "DECODING_REQUEST_FIELDS",
]

# Top-level chat-completions fields of the OpenAI API that change decoding.
OPENAI_FIELDS = ("temperature", "top_p", "max_tokens", "n", "presence_penalty", "frequency_penalty", "seed", "stop")
# vLLM's sampling parameters beyond the OpenAI API (sent in the request body: the openai client's extra_body).
VLLM_EXTRA_FIELDS = ("top_k", "min_p", "repetition_penalty", "min_tokens")
# Everything a backend's own payload may say about decoding; replaced by ``request_fields``.
DECODING_REQUEST_FIELDS = frozenset(OPENAI_FIELDS + VLLM_EXTRA_FIELDS + ("max_completion_tokens",))


def served_vlm_args(*, min_pixels: int, max_pixels: int, max_images: int = 8) -> list[str]:
    """vLLM server flags (beyond model, name, host, port) for serving a VLM to medbridge.

    ``min_pixels``/``max_pixels``: those of the in-process run to compare with, so images become the same
    number of visual tokens (vLLM otherwise uses the checkpoint's processor defaults).
    ``--generation-config vllm`` is no longer needed for decoding (every request states every field); it
    stays so that a client other than medbridge's gets vLLM's neutral defaults too."""
    return [
        "--generation-config", "vllm",
        "--mm-processor-kwargs", json.dumps({"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}),
        "--limit-mm-per-prompt", json.dumps({"image": int(max_images)}),
    ]  # fmt: skip


def request_fields(decoding: Decoding, *, n: int = 1, seed: int | None = None,
                   stop: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Every decoding field of one chat-completions request for ``decoding`` (``n`` samples; ``seed`` is sent
    for sampled requests, where it makes the samples reproducible)."""
    if not decoding.do_sample and n != 1:
        raise ValueError(f"greedy decoding is one sample; got n={n}")
    settings = effective_settings(decoding)
    fields: dict[str, Any] = {
        "temperature": decoding.temperature,  # 0.0 for greedy: vLLM and OpenAI decode greedily at 0
        "top_p": settings["top_p"],
        "max_tokens": decoding.max_new_tokens,
        "n": int(n),
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "top_k": settings["top_k"],  # 0: off in vLLM
        "min_p": 0.0,
        "repetition_penalty": decoding.repetition_penalty,
        "min_tokens": 0,
    }
    if decoding.do_sample and seed is not None:
        fields["seed"] = int(seed)
    if stop:
        fields["stop"] = list(stop)
    return fields


def split_openai_fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the OpenAI API's top-level fields, vLLM's extras) of ``request_fields``' result."""
    top = {k: v for k, v in fields.items() if k in OPENAI_FIELDS}
    extra = {k: v for k, v in fields.items() if k not in OPENAI_FIELDS}
    return top, extra


def recorded_settings(decoding: Decoding) -> dict[str, Any]:
    """What a served run records per task: the decoding it sent, in the record's usual fields (the sent
    ``top_k`` 0 / ``repetition_penalty`` / ``temperature`` / ``top_p`` / ``max_tokens``); min_p 0,
    presence/frequency penalty 0 and min_tokens 0 are always sent besides."""
    return effective_settings(decoding)


# Words with which servers say they do not take a field (OpenAI: "Unrecognized request argument supplied:
# top_k"; pydantic-based servers: "Extra inputs are not permitted"; others: "unsupported parameter").
_REFUSAL_WORDS = ("unrecognized", "unsupported", "not supported", "unknown", "extra inputs", "not permitted",
                  "not allowed", "unexpected", "does not support", "invalid parameter")


def rejected_field(error: BaseException, fields: Mapping[str, Any]) -> str | None:
    """The decoding field a server refuses, if ``error`` is a 4xx answer saying it does not take one of
    ``fields`` (by name); None for any other failure (those are failed requests, not refusals)."""
    status = getattr(error, "status_code", None) or getattr(getattr(error, "response", None), "status_code", None)
    if status is None or not 400 <= int(status) < 500:
        return None
    message = str(error)
    body = getattr(error, "body", None)
    if body is not None:
        message += " " + json.dumps(body, default=str)
    lowered = message.lower()
    if not any(word in lowered for word in _REFUSAL_WORDS):
        return None
    padded = f" {message} "
    named = [name for name in fields if any(f"{a}{name}{b}" in padded for a in " '\":[`" for b in " '\":],.`")]
    return max(named, key=len) if named else None
