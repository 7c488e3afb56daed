"""scripts/gpu_smoke.sh on the CPU: the dry run checks its files, builds what needs no GPU (fixtures, the
tiny model and judge), runs the checkpoint comparison, and prints the four prepared GPU checks with one
line each; a checkout missing a file the checks need is refused before anything runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_smoke.sh"


def _smoke(*args: str, script: Path = SCRIPT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VLLM_PYTHON")}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_script_parses_and_refuses_bad_arguments():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    proc = _smoke("--frobnicate")
    assert proc.returncode == 2 and "unknown argument --frobnicate" in proc.stderr
    assert _smoke("--help").stdout.startswith("GPU smoke checks")


def test_a_checkout_without_the_benchmarks_is_refused(tmp_path):
    (tmp_path / "scripts").mkdir()
    copy = tmp_path / "scripts" / "gpu_smoke.sh"
    shutil.copy(SCRIPT, copy)
    proc = _smoke("--dry-run", "--workdir", str(tmp_path / "w"), script=copy)
    assert proc.returncode == 1
    assert "missing in" in proc.stderr and "benchmarks/passk_cost.py" in proc.stderr
    assert "tests/training_rewards.py" in proc.stderr


@pytest.mark.slow
def test_dry_run_prepares_every_check(tmp_path):
    work = tmp_path / "w"
    proc = _smoke("--dry-run", "--workdir", str(work))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    checks = [line for line in out.splitlines() if line.startswith("CHECK ")]
    names = [c.split(":")[0].removeprefix("CHECK ") for c in checks]
    # The single-GPU checks, in order (sections for more GPUs may follow them).
    assert names[:4] == ["passk_transformers", "passk_vllm", "judge_vllm", "care_zero2_colocate"]
    assert all(": DRY " in c for c in checks)
    assert (work / "figures.txt").read_text().count("CHECK ") == len(checks)
    # What needs no GPU was built and run.
    assert (work / "tiny" / "config.json").is_file() and (work / "tiny-judge" / "config.json").is_file()
    assert (work / "medmnist").is_dir() and "checkpoint comparison helper ok" in out
    assert "preflight: torch=" in out
    # The prepared commands.
    assert "benchmarks/passk_cost.py --random-7b" in out and "--device cuda" in out
    assert "engine=vllm" in out and "medmnist_mcq_blood_passk" in out
    assert "judge serve --model" in out and "benchmarks/judge_throughput.py --base-url http://127.0.0.1:" in out
    care = [line for line in out.splitlines() if "medbridge.training.grpo care" in line]
    assert len(care) == 2 and all("training/accelerate/zero2.yaml" in c for c in care)
    assert all("--use_vllm true --vllm_mode colocate" in c and "--max_steps 20" in c for c in care)
    assert care[1].endswith("--resume_from_checkpoint true") and "MEDBRIDGE_TEST_STALL_AT_CALL=13" in out

    only = _smoke("--dry-run", "--workdir", str(work), "--only", "judge_vllm")
    assert [line for line in only.stdout.splitlines() if line.startswith("CHECK ")] == [
        "CHECK judge_vllm: DRY commands prepared"
    ]
