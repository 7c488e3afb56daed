"""Engine-independent request handling: generation settings, grouping of cloned requests, fan-out.

lmms-eval's ``repeats: K`` puts the *same* Instance K times into the request list
(``cloned_reqs.extend([req] * req.repeats)``). The backend answers each such run of identical
requests from one n=K generation: requests are grouped by (task, split, doc id, context,
generation settings), each group is generated once, and its samples are handed back to the
positions of its requests in order, so request i of a group receives sample i.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# lmms-eval's qwen2_5_vl chat backend defaults, so a task without generation_kwargs behaves alike.
DEFAULT_MAX_NEW_TOKENS = 128

# Keys that do not change what is generated (or are decided by temperature, as in lmms-eval's
# Qwen backends: temperature > 0 samples, temperature 0 is greedy whatever do_sample says).
_INERT_KEYS = {"do_sample", "use_cache"}
_KNOWN_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "until", "num_beams"} | _INERT_KEYS


@dataclass(frozen=True)
class SamplingSettings:
    """The generation settings of one request, normalised so equal settings compare equal."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    until: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def as_dict(self) -> dict[str, Any]:
        # Greedy decoding ignores top_p/top_k: drop them so greedy requests share one key.
        if self.greedy:
            return {"max_new_tokens": self.max_new_tokens, "temperature": 0.0, "until": list(self.until)}
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "until": list(self.until)}

    def fingerprint(self) -> str:
        return stable_hash(self.as_dict())


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (stable across processes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalize_gen_kwargs(gen_kwargs: Mapping[str, Any] | None, *, where: str = "request") -> SamplingSettings:
    """Turn a task's ``generation_kwargs`` into SamplingSettings; unknown or unsupported keys are
    errors (silently ignoring e.g. ``repetition_penalty`` would report numbers for other settings)."""
    kw = dict(gen_kwargs or {})
    unknown = sorted(set(kw) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{where}: generation_kwargs {unknown} are not supported by medbridge_vlm (supported: {sorted(_KNOWN_KEYS)})")
    if int(kw.get("num_beams") or 1) != 1:
        raise ValueError(f"{where}: num_beams={kw['num_beams']} is not supported (sampling backend; use num_beams: 1)")
    try:
        max_new = int(kw.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        temperature = float(kw.get("temperature") or 0.0)
        top_p = None if kw.get("top_p") is None else float(kw["top_p"])
        top_k = None if kw.get("top_k") is None else int(kw["top_k"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad generation_kwargs {kw}: {err}") from None
    if max_new < 1:
        raise ValueError(f"{where}: max_new_tokens must be >= 1, got {max_new}")
    if temperature < 0:
        raise ValueError(f"{where}: temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"{where}: top_p must be in (0, 1], got {top_p}")
    if top_p == 1.0:
        top_p = None
    if top_k is not None and top_k <= 0:
        top_k = None
    until = kw.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    elif isinstance(until, (list, tuple)):
        until = tuple(str(u) for u in until if u)
    else:
        raise TypeError(f"{where}: 'until' must be a string or a list of strings, got {type(until).__name__}")
    return SamplingSettings(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k, until=until)


@dataclass
class RequestGroup:
    """Identical requests (the clones of one Instance): one prompt, one generation of n samples."""

    task: str
    split: str
    doc_id: Any
    context: str
    doc_to_messages: Any
    settings: SamplingSettings
    positions: list[int] = field(default_factory=list)  # where the group's requests sit in the request list

    @property
    def n_requests(self) -> int:
        return len(self.positions)

    @property
    def n_samples(self) -> int:
        """Distinct samples to produce: greedy decoding is deterministic, one is enough."""
        return 1 if self.settings.greedy else self.n_requests


def chat_request_fields(args: Sequence[Any]) -> tuple[str, Any, Mapping[str, Any], Any, str, str]:
    """Unpack a chat-model generate_until request: (ctx, doc_to_messages, gen_kwargs, doc_id, task, split)."""
    if len(args) != 6 or not callable(args[1]):
        raise ValueError(
            "medbridge_vlm is a chat model: expected request arguments (ctx, doc_to_messages, gen_kwargs, doc_id, task, split), "
            f"got {len(args)} fields"
        )
    return tuple(args)  # type: ignore[return-value]


def group_requests(requests: Sequence[Any]) -> list[RequestGroup]:
    """Group lmms-eval Instances (or their ``args`` tuples) that ask for the same generation.

    Groups keep the order in which their first request appears; greedy and sampled requests for
    the same document never share a group because their settings differ.
    """
    groups: dict[tuple, RequestGroup] = {}
    for pos, req in enumerate(requests):
        args = req.args if hasattr(req, "args") else req
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = chat_request_fields(args)
        settings = normalize_gen_kwargs(gen_kwargs, where=f"task {task} doc {doc_id}")
        key = (task, split, json.dumps(doc_id, default=str), ctx, settings)
        group = groups.get(key)
        if group is None:
            group = groups[key] = RequestGroup(task, split, doc_id, ctx, doc_to_messages, settings)
        group.positions.append(pos)
    return list(groups.values())


def fan_out(groups: Sequence[RequestGroup], samples: Sequence[Sequence[Any]], n_requests: int) -> list[Any]:
    """Place each group's samples at its requests' positions (request i of a group gets sample i;
    a greedy group's single sample goes to all of its requests)."""
    if len(groups) != len(samples):
        raise ValueError(f"{len(groups)} groups but {len(samples)} sample lists")
    out: list[Any] = [None] * n_requests
    for group, group_samples in zip(groups, samples):
        if len(group_samples) != group.n_samples:
            raise ValueError(f"task {group.task} doc {group.doc_id}: expected {group.n_samples} samples, got {len(group_samples)}")
        for i, pos in enumerate(group.positions):
            out[pos] = group_samples[0] if group.settings.greedy else group_samples[i]
    missing = [i for i, x in enumerate(out) if x is None]
    if missing:
        raise ValueError(f"requests {missing[:5]} received no sample")
    return out
