"""How lmms-eval finds medbridge: a model entry point that also registers our task folder.

lmms-eval 0.7.3 has an entry-point group for models (``lmms_eval.models``) but none for tasks,
and its ``LMMS_EVAL_PLUGINS`` variable is read after the TaskManager has indexed tasks. It loads
every ``lmms_eval.models`` entry point when ``lmms_eval.models`` is imported, which the evaluator
does before any TaskManager exists. Loading ours imports this module, which wraps
``TaskManager.initialize_tasks`` so that every TaskManager also indexes ``medbridge/tasks``,
exactly as if ``--include_path <that folder>`` had been given.

It also makes lmms-eval's own Hugging Face backends (``qwen2_5_vl`` chat and ``--force_simple``, and
any other whose ``self.model`` is a transformers model) decode medbridge tasks with exactly the
task's settings (harness_ext/decoding.py). Those backends pass only some settings to
``generate()`` (the simple path drops ``top_k``, both drop ``repetition_penalty``), so the
checkpoint's ``generation_config.json`` fills the rest: Qwen2.5-VL's ``top_k=1`` made 16 "samples"
identical. ``get_model`` is wrapped so that the class it returns runs ``generate_until`` once per
decoding setting with ``model.generate`` receiving ``decoding.effective_settings`` on top of whatever
the backend passes, checks the merged result, and records it per task (``decoding.record_effective``).
Tasks that are not medbridge's keep lmms-eval's behaviour.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import medbridge.tasks
from medbridge.harness_ext import decoding, served
from medbridge.harness_ext.errors import MedbridgeError

log = logging.getLogger(__name__)

# Where `medbridge.tasks` lives: site-packages after `pip install .`, the repo's tasks/ when editable.
TASKS_DIR = str(Path(medbridge.tasks.__file__).resolve().parent)
_MARK = "_medbridge_tasks_registered"


def register_tasks() -> None:
    """Make every lmms-eval TaskManager index medbridge's tasks (idempotent)."""
    from lmms_eval.tasks import TaskManager

    original = TaskManager.initialize_tasks
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
        if not any(Path(p).resolve() == Path(TASKS_DIR) for p in paths):
            paths.append(TASKS_DIR)
        return original(self, include_path=paths, include_defaults=include_defaults)

    setattr(initialize_tasks, _MARK, True)
    TaskManager.initialize_tasks = initialize_tasks


def medbridge_task_names() -> frozenset[str]:
    """Every task medbridge ships (the family registry, tasks/families.py)."""
    from medbridge.tasks.families import all_task_names

    return all_task_names()


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


@contextmanager
def _forced_generate(model: Any, task_names: Sequence[str], want: decoding.Decoding,
                     settings: dict[str, Any]) -> Iterator[None]:
    """While active, ``model.generate`` decodes with ``settings`` whatever the caller passes, and
    refuses to run if the merged configuration would still differ from ``want``."""
    original = model.generate
    had_own = "generate" in vars(model)

    def generate(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(settings)
        merged = model.generation_config.to_dict()
        merged.update(kwargs)
        leaks = decoding.inherited_overrides(want, merged)
        if leaks:
            raise MedbridgeError(f"tasks {', '.join(task_names)} would decode with {', '.join(leaks)}; "
                                 "edit the checkpoint's generation_config.json or use --model medbridge_vlm.")
        return original(*args, **kwargs)

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
    return "openai" in type(lm).__module__.rsplit(".", 1)[-1]


def _check_and_record_served(requests: Sequence[Any], groups: dict[Any, list[int]]) -> None:
    """lmms-eval's ``openai`` backend sends temperature/top_p but never top_k or repetition_penalty: refuse a
    task that needs them, and record what a server started with ``--generation-config vllm`` decodes with."""
    for want, positions in groups.items():
        if want is None:
            continue
        for task in sorted({requests[p].task_name for p in positions}):
            served.check_openai_decoding(task, want)
            decoding.record_effective(task, served.served_effective_settings(want))


def wrap_generate_until(cls: type) -> type:
    """Make ``cls.generate_until`` decode medbridge tasks with exactly the task's settings (idempotent)."""
    original: Callable = cls.generate_until
    if getattr(original, _MARK, False):
        return cls
    ours = medbridge_task_names()

    @functools.wraps(original)
    def generate_until(self, requests, *args, **kwargs):
        model = _hf_model(self)
        groups = _decoding_groups(requests, ours)
        if set(groups) == {None}:
            return original(self, requests, *args, **kwargs)
        if model is None:
            if _is_openai_backend(self):
                _check_and_record_served(requests, groups)
            return original(self, requests, *args, **kwargs)
        responses: list[Any] = [None] * len(requests)
        for want, positions in groups.items():
            part = [requests[p] for p in positions]
            if want is None:
                out = original(self, part, *args, **kwargs)
            else:
                tasks = sorted({r.task_name for r in part})
                settings = decoding.effective_settings(want, model.generation_config)
                with _forced_generate(model, tasks, want, settings):
                    out = original(self, part, *args, **kwargs)
                for task in tasks:
                    decoding.record_effective(task, settings)
                log.info("medbridge: %s decoded with %s", ", ".join(tasks), settings)
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
        cls = original(self, *args, **kwargs)
        if cls.__module__.startswith("lmms_eval.") and hasattr(cls, "generate_until"):
            wrap_generate_until(cls)
        return cls

    setattr(get_model_class, _MARK, True)
    ModelRegistryV2.get_model_class = get_model_class


def manifests() -> list:
    """Entry-point payload: medbridge's model backends for lmms-eval's registry (the classes are
    imported only when lmms-eval instantiates a model)."""
    from medbridge.harness_ext.backend import manifests as backend_manifests

    return backend_manifests()


register_tasks()
enforce_task_decoding()
