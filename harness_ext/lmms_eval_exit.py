"""Inside lmms-eval, an error in a medbridge task ends the run, loudly.

lmms-eval 0.7.3 retries a task's data loading and scoring (tenacity: 5 attempts, 2 s apart), then
``cli_evaluate`` catches whatever is left (``except Exception``), prints a traceback, logs "Error during
evaluation" and still exits 0. A run whose MedMNIST files are missing, or whose ``MEDBRIDGE_*`` setting
is unusable, thus looked like a finished run with no results.

``install()`` (called once by the plugin) wraps lmms-eval's ``ConfigurableTask.__init__`` so that every
function of medbridge's own that a task config hands lmms-eval (``process_docs``, ``doc_to_*``,
``process_results``, the metric aggregations) is guarded: an exception escaping it ends the process by
``SystemExit``, which neither tenacity's retry nor lmms-eval's ``except Exception`` catches:

- a user error (``MedbridgeError``, an unusable path, a bad YAML/JSON file: the `medbridge` command's own
  rule, error_handling.user_error_message) prints one paragraph naming the task and exits 2;
- anything else is a bug: its traceback goes to the same log folder the `medbridge` command uses, one
  paragraph names the log, and the process exits 1.

Functions of other packages (lmms-eval's own tasks) are left alone.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["GUARDED_KEYS", "end_run", "guard", "guard_task_config", "install"]

# The task-config keys whose values lmms-eval calls: data building, prompts, scoring.
GUARDED_KEYS = ("process_docs", "doc_to_visual", "doc_to_text", "doc_to_target", "doc_to_choice",
                "doc_to_messages", "process_results")
_MARK = "_medbridge_guarded"
_ended_with: int | None = None  # the exit code once a guarded call has ended the run


@functools.cache
def _our_folders() -> tuple[Path, ...]:
    """Where medbridge's code lives (a task YAML's ``!function utils.x`` is imported by file path, so its
    module is named ``utils``, not ``medbridge.tasks...``)."""
    import medbridge.harness_ext
    import medbridge.judges
    import medbridge.tasks

    return tuple(Path(m.__file__).resolve().parent for m in (medbridge.tasks, medbridge.harness_ext, medbridge.judges))


def _is_ours(fn: Any) -> bool:
    if not callable(fn):
        return False
    if str(getattr(fn, "__module__", "") or "").startswith("medbridge."):
        return True
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return False
    source = Path(code.co_filename).resolve()
    return any(source.is_relative_to(folder) for folder in _our_folders())


def _root_cause(err: BaseException) -> BaseException:
    """The error a user can act on: through tenacity's RetryError (its last attempt) and explicit causes."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        last = getattr(err, "last_attempt", None)  # tenacity.RetryError
        inner = last.exception() if last is not None and hasattr(last, "exception") else None
        if isinstance(inner, BaseException):
            err = inner
        elif err.__cause__ is not None:
            err = err.__cause__
        else:
            break
    return err


def end_run(err: BaseException, task: str, hook: str, argv: list[str] | None = None) -> NoReturn:
    """Print what went wrong in ``task``'s ``hook`` and leave the process (exit 2: user error, 1: bug)."""
    from medbridge.error_handling import BUG_EXIT, USER_ERROR_EXIT, user_error_message, write_traceback

    global _ended_with
    if _ended_with is not None:  # another call (a second document, a worker thread) already said it
        raise SystemExit(_ended_with)
    cause = _root_cause(err)
    message = user_error_message(cause)
    where = f"lmms-eval: medbridge task {task}"
    if message is not None:
        _ended_with = USER_ERROR_EXIT
        print(f"{where}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT)
    try:
        log = f"the full traceback is in {write_traceback(cause, list(sys.argv[1:] if argv is None else argv))}"
    except OSError as log_err:
        log = f"no log file could be written ({log_err})"
    _ended_with = BUG_EXIT
    detail = " ".join(str(cause).split())[:500]
    print(f"{where}: unexpected error in {hook}: {type(cause).__name__}: {detail}\n{log}. This is a bug in "
          "medbridge, not in your input: please report it with that file.", file=sys.stderr, flush=True)
    raise SystemExit(BUG_EXIT)


def guard(fn: Callable[..., Any], task: str, hook: str) -> Callable[..., Any]:
    """``fn`` that ends the run (``end_run``) instead of raising into lmms-eval (idempotent)."""
    if getattr(fn, _MARK, False):
        return fn

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - every escape from our code ends the run, named
            end_run(err, task, hook)

    setattr(guarded, _MARK, True)
    return guarded


def guard_task_config(config: MutableMapping[str, Any] | None) -> None:
    """Guard, in place, the medbridge functions of one task config (a dict as lmms-eval builds it)."""
    if not isinstance(config, MutableMapping):
        return
    task = str(config.get("task") or "?")
    for key in GUARDED_KEYS:
        if _is_ours(config.get(key)):
            config[key] = guard(config[key], task, key)
    for metric in config.get("metric_list") or ():
        if isinstance(metric, MutableMapping) and _is_ours(metric.get("aggregation")):
            metric["aggregation"] = guard(metric["aggregation"], task, f"aggregation of {metric.get('metric')}")


def install() -> None:
    """Wrap lmms-eval's ``ConfigurableTask.__init__`` (idempotent); subclasses call it through super()."""
    from lmms_eval.api.task import ConfigurableTask

    original = ConfigurableTask.__init__
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config=None, model_name=None):
        guard_task_config(config)
        return original(self, data_dir, cache_dir, download_mode, config, model_name)

    setattr(__init__, _MARK, True)
    ConfigurableTask.__init__ = __init__
