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

from medbridge.harness_ext.decoding import Decoding, task_decoding
from medbridge.harness_ext.errors import MedbridgeError

# lmms-eval's qwen2_5_vl chat backend defaults, so a task without generation_kwargs behaves alike.
DEFAULT_MAX_NEW_TOKENS = 128

# Keys that do not change what is generated (or are decided by temperature, as in lmms-eval's
# Qwen backends: temperature > 0 samples, temperature 0 is greedy whatever do_sample says).
_INERT_KEYS = {"do_sample", "use_cache"}
_KNOWN_KEYS = {
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "until",
    "num_beams",
    "repetition_penalty",
} | _INERT_KEYS


@dataclass(frozen=True)
class SamplingSettings:
    """The generation settings of one request, normalised so equal settings compare equal."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    until: tuple[str, ...] = ()
    repetition_penalty: float = 1.0  # 1.0: off (the paper's setting; a checkpoint's own value never applies)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def as_dict(self) -> dict[str, Any]:
        # Greedy decoding ignores top_p/top_k: drop them so greedy requests share one key.
        if self.greedy:
            d = {"max_new_tokens": self.max_new_tokens, "temperature": 0.0, "until": list(self.until)}
        else:
            d = {
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
                "until": list(self.until),
            }
        if self.repetition_penalty != 1.0:  # only when on, so caches written before it existed stay valid
            d["repetition_penalty"] = self.repetition_penalty
        return d

    def fingerprint(self) -> str:
        return stable_hash(self.as_dict())

    def decoding(self) -> Decoding:
        """The same settings as harness_ext/decoding.py's Decoding."""
        return Decoding(
            do_sample=not self.greedy,
            temperature=self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
        )


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (stable across processes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalize_gen_kwargs(gen_kwargs: Mapping[str, Any] | None, *, where: str = "request") -> SamplingSettings:
    """Turn a task's ``generation_kwargs`` into SamplingSettings through the one definition of
    decoding (harness_ext/decoding.py ``task_decoding``: unstated settings are off, whatever the
    checkpoint's generation_config says). Unknown or unsupported keys are errors (silently ignoring
    one would report numbers for other settings than the task states)."""
    kw = dict(gen_kwargs or {})
    unknown = sorted(set(kw) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: generation_kwargs {unknown} are not supported by medbridge_vlm "
            f"(supported: {sorted(_KNOWN_KEYS)})"
        )
    if int(kw.get("num_beams") or 1) != 1:
        raise ValueError(f"{where}: num_beams={kw['num_beams']} is not supported (sampling backend; use num_beams: 1)")
    try:
        decoding = task_decoding(kw)
    except MedbridgeError as err:
        raise MedbridgeError(f"{where}: {err}") from None
    until = kw.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    elif isinstance(until, (list, tuple)):
        until = tuple(str(u) for u in until if u)
    else:
        raise TypeError(f"{where}: 'until' must be a string or a list of strings, got {type(until).__name__}")
    # lmms-eval's Qwen backends default to 128 new tokens when a task states none; so do we.
    max_new = decoding.max_new_tokens if kw.get("max_new_tokens") is not None else DEFAULT_MAX_NEW_TOKENS
    return SamplingSettings(
        max_new_tokens=max_new,
        temperature=decoding.temperature,
        top_p=None if decoding.top_p == 1.0 else decoding.top_p,
        top_k=decoding.top_k,
        until=until,
        repetition_penalty=decoding.repetition_penalty,
    )


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
            "medbridge_vlm is a chat model: expected request arguments "
            "(ctx, doc_to_messages, gen_kwargs, doc_id, task, split), "
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
        # id(req): lmms-eval's clones are one object repeated; the copies it adds to even out ranks
        # (data parallel) are new objects and must not grow the original's group (and its seed).
        key = (task, split, json.dumps(doc_id, default=str), ctx, settings, id(req))
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
            raise ValueError(
                f"task {group.task} doc {group.doc_id}: expected {group.n_samples} samples, got {len(group_samples)}"
            )
        for i, pos in enumerate(group.positions):
            out[pos] = group_samples[0] if group.settings.greedy else group_samples[i]
    missing = [i for i, x in enumerate(out) if x is None]
    if missing:
        raise ValueError(f"requests {missing[:5]} received no sample")
    return out


def bundle_groups(groups: Sequence[RequestGroup], size: int) -> list[list[RequestGroup]]:
    """Chunks of at most ``size`` documents, each document's groups kept together.

    An item's greedy task and its ``_passk`` twin reach the model far apart in the request list
    (lmms-eval lists them task by task); putting them in one chunk lets the engine prefill their
    shared prompt once. Groups with the same (split, doc id, context) are one document here; the
    engine still shares a prefill only between prompts that render identically.
    """
    docs: dict[tuple, list[RequestGroup]] = {}
    for group in groups:
        docs.setdefault((group.split, json.dumps(group.doc_id, default=str), group.context), []).append(group)
    ordered = list(docs.values())
    return [[g for doc in ordered[i : i + size] for g in doc] for i in range(0, len(ordered), max(1, size))]
