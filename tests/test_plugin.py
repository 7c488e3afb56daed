"""lmms-eval finds medbridge's tasks with no --include_path and no environment variable."""

import subprocess
import sys

import pytest

from .conftest import GREEDY_TASKS, SAMPLED_TASKS

GROUPS = [
    "medmnist_mcq",
    "medmnist_mcq_radiology",
    "medmnist_mcq_microscopy",
    "medmnist_mcq_photography",
    "medmnist_mcq_greedy",
]


def _listed(output: str) -> set[str]:
    return {line.strip()[2:].strip() for line in output.splitlines() if line.strip().startswith("- ")}


@pytest.mark.e2e
def test_lmms_eval_lists_our_tasks_from_a_fresh_process(tmp_path):
    from medbridge.demo import lmms_eval_command

    # The venv's own console script, as a user who activated it would run it.
    proc = subprocess.run(
        lmms_eval_command() + ["--tasks", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in __import__("os").environ.items() if k != "LMMS_EVAL_PLUGINS"},
    )
    listed = _listed(proc.stdout + proc.stderr)
    missing = set(GREEDY_TASKS + SAMPLED_TASKS + GROUPS) - listed
    assert not missing, proc.stderr[-3000:]


def test_our_task_names_do_not_clash_with_lmms_eval_builtins():
    import medbridge.harness_ext.plugin  # noqa: F401  (installs the hook)
    from lmms_eval.tasks import TaskManager
    from loguru import logger

    bare = TaskManager.__new__(TaskManager)  # index the built-in folder alone, without our hook
    bare.logger = logger
    builtin = TaskManager.initialize_tasks.__wrapped__(bare, include_path=None)
    assert len(builtin) > 100 and "medmnist_mcq" not in builtin
    ours = set(GREEDY_TASKS + SAMPLED_TASKS + GROUPS)
    assert not ours & set(builtin)


def test_hook_is_idempotent_and_keeps_user_include_paths(tmp_path):
    from lmms_eval.tasks import TaskManager
    from medbridge.harness_ext import plugin

    plugin.register_tasks()
    plugin.register_tasks()
    (tmp_path / "mine.yaml").write_text("task: my_private_task\ndataset_path: json\n")
    tm = TaskManager("ERROR", include_path=str(tmp_path))
    assert "my_private_task" in tm.all_tasks and "medmnist_mcq_breast" in tm.all_tasks


@pytest.mark.e2e
def test_non_editable_install_registers_the_installed_copy(tmp_path):
    """`pip install .` (not editable): the installed package's own task folder is indexed."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(target),
            str(repo),
        ],
        check=True,
        timeout=600,
    )
    # Importing lmms_eval.models loads the entry points, as the evaluator does.
    code = (
        "import lmms_eval.models, sys; from lmms_eval.tasks import TaskManager; "
        "p = sys.modules['medbridge.harness_ext.plugin']; "
        "tm = TaskManager('ERROR'); print(p.TASKS_DIR); print(tm.task_index['medmnist_mcq_oct']['yaml_path'])"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tasks_dir, yaml_path = out.stdout.strip().splitlines()[-2:]
    assert tasks_dir.startswith(str(target)) and yaml_path.startswith(str(target))
    assert (Path(yaml_path).parent / "_template.yaml").exists()
    assert (Path(yaml_path).parent / "data_pointers" / "octmnist.jsonl").exists()


def test_tasks_path_command_prints_the_indexed_folder(capsys):
    from medbridge.harness_ext.plugin import TASKS_DIR

    from medbridge.cli import main

    assert main(["tasks-path"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == TASKS_DIR
    from pathlib import Path

    assert (Path(path) / "medmnist" / "_template.yaml").is_file()
