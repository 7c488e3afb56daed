"""lmms-eval's own backends decode medbridge tasks with exactly the task's settings.

``enforce_task_decoding()`` (called by harness_ext/plugin.py when lmms-eval loads our entry point) wraps
lmms-eval's model-class lookup, so every backend class it returns runs ``generate_until`` once per
decoding setting of the medbridge requests it is given. Tasks that are not medbridge's keep lmms-eval's
behaviour.

* **Hugging Face backends** (``qwen2_5_vl`` chat and ``--force_simple``, and any other whose
  ``self.model`` is a transformers model): ``model.generate`` receives a ``GenerationConfig`` built from
  nothing (``decoding.generation_config_from_scratch``: the task's settings plus the checkpoint's bos /
  eos / pad token ids), and ``model.generation_config`` is that same object while it runs, because
  transformers fills every field a passed config leaves unset from ``model.generation_config``. So no
  other field of the checkpoint's ``generation_config.json`` (``suppress_tokens``, ``bad_words_ids``,
  ``min_new_tokens``, whatever transformers adds next) reaches decoding. The backend's own decoding
  arguments are dropped; a ``generate()`` argument that is neither a model input nor a generation field
  is refused by name.
* **lmms-eval's ``openai`` backend**: every request carries every decoding field (harness_ext/served.py
  ``request_fields``), whatever the backend put in it; see ``_SendEveryField``.

Each backend records per task what it passed or sent (``decoding.record_effective``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from medbridge.harness_ext import decoding, served
from medbridge.harness_ext.backend.identity import clear_model
from medbridge.harness_ext.errors import MedbridgeError

log = logging.getLogger(__name__)

_MARK = "_medbridge_decoding_wrapped"
# generate() arguments that are neither generation fields nor model inputs and do not change what is
# decoded; any other one is refused.
_INERT_GENERATE_ARGS = frozenset({"synced_gpus", "streamer"})


def _task_names() -> frozenset[str]:
    from medbridge.tasks.families import all_task_names

    return frozenset(all_task_names())


def _hf_model(lm: Any) -> Any | None:
    """The transformers model behind an lmms-eval backend, or None when it has none."""
    for name in ("model", "_model"):
        try:
            model = getattr(lm, name, None)
        except Exception:  # a property that needs state the backend does not have
            model = None
        if model is not None and hasattr(model, "generation_config") and callable(getattr(model, "generate", None)):
            return model
    return None


@functools.cache
def _generation_fields() -> frozenset[str]:
    """Every field transformers' GenerationConfig knows (enumerated from it, so new fields are included)."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict()) | {"generation_config"}


def _is_model_input(value: Any) -> bool:
    import torch

    return value is None or isinstance(value, torch.Tensor)


@contextmanager
def _generate_from_scratch(model: Any, task_names: Sequence[str], want: decoding.Decoding) -> Iterator[None]:
    """While active, ``model.generate`` decodes with a generation config built from nothing for ``want``."""
    original = model.generate
    had_own = "generate" in vars(model)
    checkpoint_tokens = decoding.special_token_ids(model.generation_config)
    lock = threading.Lock()

    def generate(*args: Any, **kwargs: Any) -> Any:
        fields = _generation_fields()
        passed = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        unknown = sorted(k for k, v in kwargs.items() if k not in _INERT_GENERATE_ARGS and not _is_model_input(v))
        if unknown:
            raise MedbridgeError(
                f"tasks {', '.join(task_names)}: the backend passes {', '.join(unknown)} to generate(), which "
                "medbridge cannot show leaves decoding unchanged; use --model medbridge_vlm.")
        # The backend's own token ids (lmms-eval passes its tokenizer's eos/pad) win over the checkpoint's,
        # as they would in transformers; its decoding arguments are replaced by the task's.
        tokens = {**checkpoint_tokens, **decoding.special_token_ids(passed)}
        config = decoding.generation_config_from_scratch(want, tokens)
        with lock:
            saved = model.generation_config
            model.generation_config = config
            try:
                return original(*args, generation_config=config, **kwargs)
            finally:
                model.generation_config = saved

    model.generate = generate
    try:
        yield
    finally:
        if had_own:
            model.generate = original
        else:
            del model.generate


def _decoding_groups(requests: Sequence[Any], ours: frozenset[str]) -> dict[Any, list[int]]:
    """Request positions by decoding setting; medbridge requests get their task's Decoding, others None."""
    groups: dict[Any, list[int]] = {}
    for pos, request in enumerate(requests):
        task = getattr(request, "task_name", None)
        key = None
        if task in ours:
            # The simple backends' args are (context, gen_kwargs, ...), the chat ones' (context,
            # doc_to_messages, gen_kwargs, ...): the task's settings are the one dict among them.
            gen_kwargs = next((a for a in request.args if isinstance(a, dict)), None)
            if gen_kwargs is None:
                raise MedbridgeError(f"a {task} request carries no generation_kwargs; cannot set its decoding.")
            key = decoding.task_decoding(gen_kwargs)
        groups.setdefault(key, []).append(pos)
    return groups


def _is_openai_backend(lm: Any) -> bool:
    return "openai" in type(lm).__module__.rsplit(".", 1)[-1] and hasattr(lm, "client")


class _SendEveryField:
    """Stands in for an ``openai`` client while lmms-eval's ``openai`` backend answers one decoding group:
    each ``chat.completions.create(**payload)`` goes out with every decoding field of ``want``
    (``served.request_fields``), so lmms-eval's choices (its o1/o3/o4/gpt-5 rule drops temperature; it never
    sends top_k or repetition_penalty) and the server's defaults cannot change decoding. A field the server
    rejects is remembered and named after the group."""

    def __init__(self, client: Any, want: decoding.Decoding) -> None:
        self._client = client
        self._want = want
        self.sent: dict[str, Any] | None = None
        self.rejected: list[str] = []
        self.chat = self
        self.completions = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def create(self, **payload: Any) -> Any:
        model = payload.get("model")
        fields = served.request_fields(self._want, n=int(payload.get("n") or 1), seed=payload.get("seed"))
        top, extra = served.split_openai_fields(fields)
        payload = {k: v for k, v in payload.items() if k not in served.DECODING_REQUEST_FIELDS}
        payload.update(top)
        payload["extra_body"] = {**(payload.get("extra_body") or {}), **extra}
        self.sent = fields
        try:
            return self._client.chat.completions.create(**payload)
        except Exception as err:
            rejected = served.rejected_field(err, fields)
            if rejected:
                self.rejected.append(f"{rejected} (server {getattr(self._client, 'base_url', '?')}, model {model})")
            raise


def _generate_served(lm: Any, original: Callable, requests: Sequence[Any], groups: dict[Any, list[int]],
                     args: tuple, kwargs: dict) -> list[Any]:
    responses: list[Any] = [None] * len(requests)
    for want, positions in groups.items():
        part = [requests[p] for p in positions]
        if want is None:
            out = original(lm, part, *args, **kwargs)
        else:
            client = lm.client
            proxy = lm.client = _SendEveryField(client, want)
            try:
                out = original(lm, part, *args, **kwargs)
            finally:
                lm.client = client
            if proxy.rejected:
                raise MedbridgeError(
                    f"The served model refused decoding field {proxy.rejected[0]}. medbridge sends every decoding "
                    "field so that no server default can change decoding; serve the model with vLLM (which accepts "
                    "them all) or run it in-process (--model medbridge_vlm).")
            for task in sorted({r.task_name for r in part}):
                decoding.record_effective(task, served.recorded_settings(want))
        for pos, response in zip(positions, out, strict=True):
            responses[pos] = response
    return responses


def wrap_generate_until(cls: type) -> type:
    """Make ``cls.generate_until`` decode medbridge tasks with exactly the task's settings (idempotent)."""
    original: Callable = cls.generate_until
    if getattr(original, _MARK, False):
        return cls
    ours = _task_names()

    @functools.wraps(original)
    def generate_until(self, requests, *args, **kwargs):
        groups = _decoding_groups(requests, ours)
        if set(groups) == {None}:
            return original(self, requests, *args, **kwargs)
        model = _hf_model(self)
        if model is None:
            if _is_openai_backend(self):
                return _generate_served(self, original, requests, groups, args, kwargs)
            return original(self, requests, *args, **kwargs)
        responses: list[Any] = [None] * len(requests)
        for want, positions in groups.items():
            part = [requests[p] for p in positions]
            if want is None:
                out = original(self, part, *args, **kwargs)
            else:
                tasks = sorted({r.task_name for r in part})
                with _generate_from_scratch(model, tasks, want):
                    out = original(self, part, *args, **kwargs)
                settings = decoding.effective_settings(want)
                for task in tasks:
                    decoding.record_effective(task, settings)
                log.info("medbridge: %s decoded with %s (generation config built from scratch)",
                         ", ".join(tasks), settings)
            for pos, response in zip(positions, out, strict=True):
                responses[pos] = response
        return responses

    setattr(generate_until, _MARK, True)
    cls.generate_until = generate_until
    return cls


def enforce_task_decoding() -> None:
    """Wrap lmms-eval's model-class lookup so every backend class it returns decodes medbridge tasks with
    the task's own settings (idempotent). medbridge's own backends set their decoding themselves.

    The lookup is ``ModelRegistryV2.get_model_class`` (what ``lmms_eval.models.get_model`` calls): this
    runs while ``lmms_eval.models`` is still importing, before ``get_model`` exists."""
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    original = ModelRegistryV2.get_model_class
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def get_model_class(self, *args, **kwargs):
        # lmms-eval looks a class up once per evaluation, right before building the model: forget what an
        # earlier evaluation in this process recorded, so its model and decoding never reach these records.
        clear_model()
        decoding.clear_effective()
        cls = original(self, *args, **kwargs)
        if cls.__module__.startswith("lmms_eval.") and hasattr(cls, "generate_until"):
            wrap_generate_until(cls)
        return cls

    setattr(get_model_class, _MARK, True)
    ModelRegistryV2.get_model_class = get_model_class
