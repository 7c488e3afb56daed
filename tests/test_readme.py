"""The README as a newcomer meets it: its option tables and names match the code, and every command block
runs as written.

Each fenced block of README.md is one of:

- a CPU block (no marker): run verbatim here, in README order, as one terminal session would (exports
  carry from one block to the next) in a scratch folder that holds the checkout's files (symlinks) but
  none of the outputs the blocks create, with ``.venv/bin`` first on ``PATH`` (the README says to
  activate the venv). A block that starts vLLM's CPU server is also marked ``vllm_venv``.
- ``# GPU-only ...`` on its first line: needs a GPU (or a real model / judge served on one); not run.
- ``# run verbatim by tests/test_demo.py``: the demo, run there (it takes most of an hour on two cores).
- ``# not run by tests/test_readme.py: <why>``: installs from the network or is the test suite itself.

``test_every_block_is_cpu_or_marked`` keeps the classification honest: an unmarked block that carries
a GPU sign (cuda, torchrun, vllm serve, a hub checkpoint) fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from medbridge.tasks.medmnist.catalog import SETS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent  # the venv the tests run in (its lmms-eval and medbridge commands)

GPU_ONLY = "# GPU-only"
DEMO = "# run verbatim by tests/test_demo.py"
NOT_RUN = "# not run by tests/test_readme.py:"
# What the README's blocks create in the folder they run in (all of it in .gitignore).
OUTPUTS = {"data", "models", "runs", "site", "medbridge_leaderboard", "demo_out", "wandb"}
GPU_SIGNS = re.compile(r"cuda|torchrun|--multi_gpu|vllm serve|--model vllm|\bQwen/|OctoMed|engine=vllm")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    heading: str  # the section it is in
    text: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0] if self.text.strip() else ""

    @property
    def kind(self) -> str:
        for marker, kind in ((GPU_ONLY, "gpu"), (DEMO, "demo"), (NOT_RUN, "not-run")):
            if self.first_line.startswith(marker):
                return kind
        return "cpu"

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:40]
        return f"L{self.line}-{slug}"


def readme_blocks(text: str = README) -> list[Block]:
    blocks, heading, fence, body = [], "", None, []
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None and line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            if fence is None:
                fence, body = number, []
            else:
                blocks.append(Block(fence, heading, "\n".join(body) + "\n"))
                fence = None
        elif fence is not None:
            body.append(line)
    assert fence is None, f"README.md: the code block opened at line {fence} is never closed"
    return blocks


def scratch_checkout(folder: Path) -> Path:
    """``folder`` with a symlink to every top-level entry of the checkout but the blocks' outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name not in OUTPUTS and entry.name != ".git":
            (folder / entry.name).symlink_to(entry)
    return folder


def block_env(folder: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MEDBRIDGE_LOG_DIR": str(folder / ".logs"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra}
    for name in ("LMMS_EVAL_PLUGINS", "MEDBRIDGE_LEADERBOARD", "MEDBRIDGE_MEDMNIST_ROOT", "MEDBRIDGE_MEDVQA_SOURCE"):
        env.pop(name, None)
    return env


def run_block(block: Block, folder: Path, env: dict[str, str], *, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run ``block`` verbatim with bash in ``folder``; the exports of earlier blocks (``.session.sh``) are
    sourced first and this block's are saved after it. Whatever it leaves running is stopped."""
    script = folder / f".block-{block.line}.sh"
    script.write_text(block.text)
    state = folder / ".session.sh"
    state.touch()
    command = f'source {state}; source {script}; export -p > {state}.new && mv {state}.new {state}'
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", command], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[test_readme: timed out after {timeout} s]"
    finally:
        try:  # a server the block started in the background, if it did not stop it itself
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLOCKS = readme_blocks()
CPU_BLOCKS = [b for b in BLOCKS if b.kind == "cpu"]


# ------------------------------------------------------------------ the blocks: classified, then run


def test_every_block_is_cpu_or_marked():
    kinds = {b.id: b.kind for b in BLOCKS}
    assert len(CPU_BLOCKS) >= 6, kinds
    for block in CPU_BLOCKS:
        sign = GPU_SIGNS.search(block.text)
        assert sign is None, f"README line {block.line}: an unmarked block uses {sign.group()!r}; mark it {GPU_ONLY}"
        assert "..." not in block.text and "<" not in block.text, f"README line {block.line}: a placeholder"
    assert [b.id for b in BLOCKS if b.kind == "demo"] == [b.id for b in BLOCKS if "medbridge demo" in b.text]
    not_run = [b for b in BLOCKS if b.kind == "not-run"]
    assert all(("pip install" in b.text or "scripts/" in b.text) for b in not_run), [b.id for b in not_run]
    assert len(not_run) <= 3  # the install, the test suite, the upstream check


def test_readme_test_command_is_what_ci_runs_and_installs_through_the_constraints():
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/run_tests.sh" in ci
    suite = next(b for b in BLOCKS if "bash scripts/run_tests.sh" in b.text)
    assert suite.kind == "not-run"
    install = next(b for b in BLOCKS if "python3 -m venv .venv" in b.text)
    assert "-c constraints/cpu-tests.txt" in install.text
    assert "-c constraints/cpu-tests.txt" in (REPO / "scripts" / "run_tests.sh").read_text()


def test_the_fast_lane_is_one_expression_in_readme_and_check_latest():
    lane = '-m "not slow and not e2e and not judge_server and not vllm_venv"'
    assert lane in README
    printed = subprocess.run(["bash", str(REPO / "scripts" / "check_latest.sh"), "--print", "--no-vllm", "-x"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    install = next(line for line in lines if "pip install -q -e" in line)
    assert "constraints" not in install and install.endswith("[test,training]")  # newest, not pinned
    assert lines[-1].endswith("-m not slow and not e2e and not judge_server and not vllm_venv -x")
    assert "check_latest" not in (REPO / ".ci" / "run").read_text() + (REPO / "scripts" / "run_tests.sh").read_text()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One scratch checkout for all CPU blocks, as one newcomer's terminal."""
    folder = scratch_checkout(tmp_path_factory.mktemp("readme") / "checkout")
    return folder, block_env(folder, PORT=str(_free_port()))


def _cpu_param(block: Block):
    marks = [pytest.mark.e2e, pytest.mark.slow]
    if "vllm.entrypoints" in block.text:
        marks.append(pytest.mark.vllm_venv)
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_cpu_param(b) for b in CPU_BLOCKS])
def test_cpu_block_runs_as_written(block, session):
    folder, env = session
    if "vllm.entrypoints" in block.text:
        from .vllm_server import vllm_python_or_skip

        vllm_python_or_skip()
    done = run_block(block, folder, env)
    logs = "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                   for log in re.findall(r"> *(\S+\.log)", block.text) for log in [folder / log] if log.is_file())
    assert done.returncode == 0, (f"README line {block.line} failed (exit {done.returncode}):\n{block.text}\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-4000:]}{logs}")
    assert "request_failed" not in done.stderr, done.stderr[-3000:] + logs  # a served run whose requests all failed
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for line in block.text.splitlines():
        if line.startswith("medbridge report "):
            assert "Pass@" in done.stdout and "run: " in done.stdout, done.stdout[-2000:]


# ------------------------------------------------------------------ names and tables


def test_option_table_matches_catalog():
    for spec in SETS:
        row = "; ".join(f"{i}: {c}" for i, c in enumerate(spec.classes))
        assert f"| `medmnist_mcq_{spec.name}` | {spec.flag} | {spec.modality} |" in README
        assert row in README, spec.name


def test_medbridge_help_lists_every_command(capsys):
    from medbridge.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "report", "rescore", "data", "leaderboard", "recipe", "probe", "train", "eval-checkpoint"):
        assert command in out


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


@pytest.mark.parametrize("created", [f"{name}/x" for name in sorted(OUTPUTS)] + [
    ".venv/bin/python", "build/lib/x", "demo_out/leaderboard/site/index.html",
    "medbridge_leaderboard/leaderboard.sqlite", "runs/tiny/tiny/x_results.json"])
def test_what_the_readme_creates_is_ignored(created):
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", created], cwd=REPO)
    assert done.returncode == 0, f"{created} is not in .gitignore"


def test_gpu_command_needs_no_flash_attn():
    block = next(b for b in BLOCKS if b.heading == "Evaluating a real model" and b.kind == "gpu")
    assert "attn_implementation=sdpa" in block.text and "flash_attention_2" not in block.text


def test_cpu_served_model_command_names_the_model_and_the_venvs_real_path():
    block = next(b for b in CPU_BLOCKS if "vllm.entrypoints.openai.api_server" in b.text)
    assert "--model models/" in block.text  # the module ignores a positional model
    assert "${MEDBRIDGE_VLLM_VENV:-$HOME/.cache/medbridge/vllm-cpu-venv}" in block.text
    from medbridge.harness_ext import settings

    assert settings.default("MEDBRIDGE_VLLM_VENV") == "~/.cache/medbridge/vllm-cpu-venv"
    assert "vllm serve" not in block.text  # the CPU venv's `vllm` command does not start


@pytest.mark.slow
def test_medbridge_models_lists_medbridge_vlm():
    done = subprocess.run([str(BIN / "medbridge"), "models"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "medbridge_vlm" in done.stdout
