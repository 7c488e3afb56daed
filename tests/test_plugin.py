"""lmms-eval finds medbridge's tasks with no --include_path and no environment variable."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from medbridge.tasks import families

TASKS = families.all_task_names()  # every task of every family (tasks/families.py)
# Every lmms-eval group the generators wrote (one group file per family folder at least).
GROUPS = {
    match
    for family in families.FAMILIES
    for path in (Path(families.__file__).parent / family.folder).glob("_group*.yaml")
    for match in re.findall(r"^group: (\S+)$", path.read_text(), re.M)
}


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
    missing = (TASKS | GROUPS) - listed
    assert not missing, proc.stderr[-3000:]


def test_every_family_has_its_groups():
    assert {f.name for f in families.FAMILIES} <= GROUPS and "medmnist_mcq_radiology" in GROUPS


@pytest.mark.slow  # indexes lmms-eval's own task folder (over 10 s)
def test_our_task_names_do_not_clash_with_lmms_eval_builtins():
    import medbridge.harness_ext.plugin  # noqa: F401  (installs the hook)
    from lmms_eval.tasks import TaskManager
    from loguru import logger

    bare = TaskManager.__new__(TaskManager)  # index the built-in folder alone, without our hook
    bare.logger = logger
    builtin = TaskManager.initialize_tasks.__wrapped__(bare, include_path=None)
    assert len(builtin) > 100 and "medmnist_mcq" not in builtin
    ours = TASKS | GROUPS
    assert not ours & set(builtin)


@pytest.mark.slow  # imports lmms-eval and indexes its tasks
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
        "tm = TaskManager('ERROR'); print(p.TASKS_DIR); print(tm.task_index['medmnist_mcq_oct']['yaml_path']); "
        "print(sorted(t for t in tm.all_tasks if t.startswith('med')))"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tasks_dir, yaml_path, indexed = out.stdout.strip().splitlines()[-3:]
    assert tasks_dir.startswith(str(target)) and yaml_path.startswith(str(target))
    assert (Path(yaml_path).parent / "_template.yaml").exists()
    assert (Path(yaml_path).parent / "data_pointers" / "octmnist.jsonl").exists()
    # Every family's tasks and groups are in the installed copy (its YAML and pointer files are package data).
    assert (TASKS | GROUPS) <= set(__import__("ast").literal_eval(indexed))


@pytest.mark.slow  # imports lmms-eval (the plugin installs its hook)
def test_tasks_path_command_prints_the_indexed_folder(capsys):
    from medbridge.harness_ext.plugin import TASKS_DIR

    from medbridge.cli import main

    assert main(["tasks-path"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == TASKS_DIR
    from pathlib import Path

    assert (Path(path) / "medmnist" / "_template.yaml").is_file()
