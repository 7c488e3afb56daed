"""The README's documented option names and commands stay in sync with the code."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from medbridge.tasks.medmnist.catalog import SETS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_option_table_matches_catalog():
    for spec in SETS:
        row = "; ".join(f"{i}: {c}" for i, c in enumerate(spec.classes))
        assert f"| `medmnist_mcq_{spec.name}` | {spec.flag} | {spec.modality} |" in README
        assert row in README, spec.name


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/run_tests.sh" in README and "bash scripts/run_tests.sh" in ci


def test_medbridge_help_lists_every_command(capsys):
    from medbridge.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "report", "rescore", "data", "leaderboard", "recipe", "probe", "train", "eval-checkpoint"):
        assert command in out


# ------------------------------------------------------------------ install and the commands as written
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv the tests run in (its lmms-eval and medbridge commands)


def _block_after(marker: str) -> str:
    """The first fenced code block after ``marker`` in the README, continuation lines joined."""
    tail = README[README.index(marker):]
    block = re.search(r"```\n(.*?)```", tail, re.S)
    assert block, f"no code block after {marker!r}"
    return block.group(1).replace("\\\n", " ")


def test_package_states_ranges_and_the_tests_pin_exact_versions():
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    pins = {}
    for line in (REPO / "constraints" / "cpu-tests.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    for name in ("torch", "torchvision", "transformers", "lmms-eval"):
        spec = deps[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned exactly in pyproject.toml"
        assert pins[name] in spec, f"constraints/cpu-tests.txt pins {name} {pins[name]}, outside {spec}"
    assert not project["requires-python"].count("<"), "Python 3.12 and newer are allowed"
    extras = project["optional-dependencies"]
    assert any(Requirement(r).name == "vllm" for r in extras["vllm"])
    assert any(Requirement(r).name == "flash-attn" for r in extras["flash-attn"])
    trl = next(Requirement(r) for r in extras["training"] if Requirement(r).name == "trl")
    assert pins["trl"] in trl.specifier
    # Both README commands install through the constraints file.
    assert "-c constraints/cpu-tests.txt" in _block_after("Offline demo on a fresh machine")
    assert "-c constraints/cpu-tests.txt" in (REPO / "scripts" / "run_tests.sh").read_text()


def test_runs_folder_is_ignored():
    done = subprocess.run(["git", "check-ignore", "-q", "runs/qwen7b/results.json"], cwd=REPO)
    assert done.returncode == 0


def test_gpu_command_needs_no_flash_attn():
    block = _block_after("## Evaluating a real model")
    assert "attn_implementation=sdpa" in block and "flash_attention_2" not in block


def test_medbridge_models_lists_medbridge_vlm():
    done = subprocess.run([str(BIN / "medbridge"), "models"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "medbridge_vlm" in done.stdout


@pytest.mark.e2e
def test_cpu_chain_runs_as_written(tmp_path):
    from medbridge.tasks.medmnist.fixtures import build_all

    build_all(tmp_path / "data", test_per_class=1, train_per_class=1, val_per_class=1)
    block = _block_after("The same chain on a CPU")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MEDBRIDGE_MEDMNIST_ROOT": str(tmp_path / "data")}
    env.pop("LMMS_EVAL_PLUGINS", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny").is_dir()
    assert "blood" in done.stdout and "Pass@" in done.stdout
