"""GRPO-CARE across processes on the CPU: two processes (``accelerate launch``, gloo) holding halves of one
group give the same gathered rewards and CARE bonus as one process holding the whole group, and both ranks
run the same number of reference forwards although their completions differ (ZeRO-3 would hang otherwise)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "care_gather_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict, cwd: Path) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])


@pytest.mark.e2e
def test_care_gather_and_bonus_match_between_two_processes_and_one(tiny_model_dir, tmp_path):
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.fixtures import build_medmnist_fixture

    root = tmp_path / "medmnist"
    build_medmnist_fixture(get_set("breastmnist"), root, {"train": 4, "val": 1, "test": 2}, 0)
    env = dict(
        os.environ,
        MEDBRIDGE_MEDMNIST_ROOT=str(root),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _run([sys.executable, str(WORKER), str(tiny_model_dir), str(one)], env, tmp_path)
    # --multi_gpu selects accelerate's torchrun launcher; the trainer runs with use_cpu, so the
    # processes join over gloo (accelerate's --cpu flag would start a single process here).
    accelerate = Path(sys.executable).with_name("accelerate")
    _run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            str(WORKER),
            str(tiny_model_dir),
            str(two),
        ],
        env,
        tmp_path,
    )
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["world"], double["world"]) == (1, 2) and double["backend"] == "gloo"
    assert single["names"] == double["names"] == ["accuracy_reward", "format_reward", "care_bonus"]
    assert len(double["rewards"]) == len(single["rewards"]) == 8  # gathered: the whole group on every rank
    flat_single = [x for row in single["rewards"] for x in row]
    assert [x for row in double["rewards"] for x in row] == pytest.approx(flat_single, abs=1e-6)
    bonus = [row[2] for row in double["rewards"]]
    assert sum(b > 0 for b in bonus) >= 1 and bonus[:4] != [0.0] * 4  # a bonus that needs the other rank's half
    # Rank 0 holds one completion with an answer span, rank 1 four; forwards are one per completion on both.
    assert double["forwards_per_rank"] == [4, 4] and single["forwards_per_rank"] == [8]
