"""How lmms-eval finds medbridge: a model entry point that also registers our task folder.

lmms-eval 0.7.3 has an entry-point group for models (``lmms_eval.models``) but none for tasks,
and its ``LMMS_EVAL_PLUGINS`` variable is read after the TaskManager has indexed tasks. It loads
every ``lmms_eval.models`` entry point when ``lmms_eval.models`` is imported, which the evaluator
does before any TaskManager exists. Loading ours imports this module, which wraps
``TaskManager.initialize_tasks`` so that every TaskManager also indexes ``medbridge/tasks``,
exactly as if ``--include_path <that folder>`` had been given. Nothing else in lmms-eval changes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import medbridge.tasks

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


def manifests() -> list:
    """Entry-point payload: medbridge's model backends for lmms-eval's registry (the classes are
    imported only when lmms-eval instantiates a model)."""
    from medbridge.harness_ext.backend import manifests as backend_manifests

    return backend_manifests()


register_tasks()
