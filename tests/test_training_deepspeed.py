"""GRPO-CARE under DeepSpeed with two processes on the CPU (accelerate launch, gloo): ZeRO-2 and ZeRO-3.

Against one process without DeepSpeed: the same gathered rewards and CARE bonus for one group split across
the processes; every rank runs the same number of reference forwards (each one is a collective under
ZeRO-3, so unequal counts would hang); after two optimizer steps the EMA reference equals the exact EMA of
the policies it saw, and under ZeRO-3 each process saved its own shard of the fp32 average, which reassemble
into the reference. ZeRO-3 runs twice: with DeepSpeed's default persistence threshold (every parameter of
the tiny model stays gathered, as the norms and biases of a 7B model do) and with none persistent.
Worker: tests/care_deepspeed_worker.py (its docstring says what DeepSpeed's batch-size assertion needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'medbridge[deepspeed]')")

WORKER = Path(__file__).resolve().parent / "care_deepspeed_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.fixtures import build_medmnist_fixture
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("deepspeed")
    root = tmp / "medmnist"
    build_medmnist_fixture(get_set("breastmnist"), root, {"train": 4, "val": 1, "test": 2}, 0)
    env = dict(
        os.environ,
        MEDBRIDGE_MEDMNIST_ROOT=str(root),
        MEDBRIDGE_TEST_VOCAB_HALF=str(len(AutoTokenizer.from_pretrained(tiny_model_dir)) // 2),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    accelerate = Path(sys.executable).with_name("accelerate")
    results = {}
    for stage in ("none", "2", "3", "3-nopersist"):
        out = tmp / f"{stage}.json"
        if stage == "none":
            cmd = [sys.executable, str(WORKER), str(tiny_model_dir), str(out), stage]
        else:  # --multi_gpu: accelerate's torchrun launcher; the trainer runs with use_cpu, over gloo
            cmd = [
                str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                str(WORKER), str(tiny_model_dir), str(out), stage,
            ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, (stage, proc.stdout[-2000:], proc.stderr[-6000:])
        results[stage] = json.loads(out.read_text())
    return results


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["2", "3", "3-nopersist"])
def test_two_processes_under_zero_give_the_rewards_and_forwards_of_one(runs, stage):
    one, two = runs["none"], runs[stage]
    assert (one["world"], two["world"]) == (1, 2)
    assert two["distributed_type"] == "DistributedType.DEEPSPEED" and two["backend"] == "gloo"
    assert one["names"] == two["names"] == ["accuracy_reward", "format_reward", "low_token_share", "care_bonus"]
    flat = [x for row in one["rewards"] for x in row]
    assert [x for row in two["rewards"] for x in row] == pytest.approx(flat, abs=1e-5)
    assert sum(row[3] > 0 for row in two["rewards"]) >= 1  # a bonus, from a group split across the ranks
    # Rank 0 holds one completion with an answer span, rank 1 four: one forward per completion on both.
    assert two["forwards_after_rewards"] == [4, 4] and one["forwards_after_rewards"] == [8]
    f0, f1 = two["forwards_after_training"]
    assert f0 == f1 and f0 > 4


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["none", "2", "3", "3-nopersist"])
def test_ema_reference_is_the_exact_ema_under_zero(runs, stage):
    run = runs[stage]
    print(
        f"{stage}: policy moved {run['policy_moved']:.3g}, reference moved {run['reference_moved']:.3g}, "
        f"EMA error vs exact {run['ema_error_vs_exact']:.2g}, shards {run['shards']}"
    )
    assert run["steps"] == 2 and run["ema_updates"] == 2 and run["model_saved"]
    assert run["policy_moved"] > 1e-3 and run["reference_moved"] > 1e-3
    # fp32 arithmetic against the exact EMA in fp64 (seen: 1.6e-7 in all four runs).
    assert run["ema_error_vs_exact"] < 1e-6
    assert run["shards"]["updates_per_rank"] == [2] * (2 if stage.startswith("3") else 1)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["3", "3-nopersist"])
def test_zero3_saves_one_ema_shard_per_process_that_reassemble_into_the_reference(runs, stage):
    shards = runs[stage]["shards"]
    assert runs[stage]["ema_files"] == ["care_ema_rank0.pt", "care_ema_rank1.pt"]
    a, b = shards["numel_per_rank"]
    assert a == b and shards["full_numel"] <= a + b < shards["full_numel"] + 2 * 1024  # halves, plus padding
    assert shards["reassembled_error"] == 0.0
    assert runs["2"]["ema_files"] == ["care_ema.pt"]  # ZeRO-2: the reference is whole on every rank
