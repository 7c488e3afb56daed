"""How lmms-eval finds medbridge: a model entry point that also registers our task folder.

lmms-eval 0.7.3 has an entry-point group for models (``lmms_eval.models``) but none for tasks,
and its ``LMMS_EVAL_PLUGINS`` variable is read after the TaskManager has indexed tasks. It loads
every ``lmms_eval.models`` entry point when ``lmms_eval.models`` is imported, which the evaluator
does before any TaskManager exists. Loading ours imports this module, which wraps
``TaskManager.initialize_tasks`` so that every TaskManager also indexes ``medbridge/tasks``,
exactly as if ``--include_path <that folder>`` had been given.

Its other job, decoding: lmms-eval's own backends (``qwen2_5_vl`` chat and ``--force_simple``, the
``openai`` backend, ...) decode medbridge tasks with exactly the task's settings through
``harness_ext/backend/lmms_eval_decoding.py``, installed here by ``enforce_task_decoding()``.

And errors: an error in a medbridge task (missing data, a bad setting) ends the lmms-eval process with
one paragraph and exit 2 instead of a logged traceback and exit 0 (``harness_ext/lmms_eval_exit.py``);
its log is plain text when redirected (``harness_ext/lmms_eval_console.py``); and with ``--wandb_args`` the
medbridge summary is logged beside lmms-eval's metrics (``harness_ext/wandb_summary.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import medbridge.tasks
from medbridge.harness_ext import lmms_eval_console, lmms_eval_exit, wandb_summary
from medbridge.harness_ext.backend.lmms_eval_decoding import enforce_task_decoding

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


def manifests() -> list:
    """Entry-point payload: medbridge's model backends for lmms-eval's registry (the classes are
    imported only when lmms-eval instantiates a model)."""
    from medbridge.harness_ext.backend import manifests as backend_manifests

    return backend_manifests()


register_tasks()
enforce_task_decoding()
lmms_eval_exit.install()
lmms_eval_console.install()
wandb_summary.install()
