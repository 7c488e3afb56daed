"""Issue 26 item 1: under torchrun / accelerate launch, each rank's vLLM engine is built on its own GPU(s).

Fast tests: the selection (``distributed.vllm_device_plan``) on made-up CUDA_VISIBLE_DEVICES lists, and
the environment a rank's engine starts in. End to end (CPU vLLM venv): two processes under torchrun with a
made-up ``CUDA_VISIBLE_DEVICES=3,5`` each build their engine (vLLM's CPU backend here) for their own
device, record it, and give the numbers and responses of one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from medbridge.harness_ext.backend.distributed import (
    LAUNCHER_VARIABLES,
    engine_environment,
    local_topology,
    visible_gpus,
    vllm_device_plan,
)
from medbridge.harness_ext.errors import MedbridgeError


def _plans(gpus: list[str], ranks: int, tp: int = 1, memory: float = 0.9) -> list[tuple[list[str], float]]:
    return [(list(p.devices), round(p.gpu_memory_utilization, 4)) for p in (
        vllm_device_plan(gpus, local_rank=r, local_world_size=ranks, tensor_parallel_size=tp,
                         gpu_memory_utilization=memory) for r in range(ranks))]


EIGHT = [str(i) for i in range(8)]


def test_one_gpu_per_rank_in_the_order_cuda_lists_them():
    assert _plans(EIGHT, 8) == [([str(i)], 0.9) for i in range(8)]
    # Six evaluation ranks on the first six GPUs of a node whose last two serve the judge.
    assert _plans(["0", "1", "2", "3", "4", "5"], 6) == [([str(i)], 0.9) for i in range(6)]
    # A made-up list: the ranks take its entries (ids or UUIDs), not 0..n-1.
    assert _plans(["3", "5"], 2) == [(["3"], 0.9), (["5"], 0.9)]
    assert _plans(["GPU-aa", "GPU-bb"], 2) == [(["GPU-aa"], 0.9), (["GPU-bb"], 0.9)]


def test_tensor_parallel_groups_of_consecutive_gpus():
    assert _plans(EIGHT, 4, tp=2) == [(["0", "1"], 0.9), (["2", "3"], 0.9), (["4", "5"], 0.9), (["6", "7"], 0.9)]
    assert _plans(EIGHT, 2, tp=4) == [(["0", "1", "2", "3"], 0.9), (["4", "5", "6", "7"], 0.9)]
    assert _plans(EIGHT, 1, tp=8) == [(EIGHT, 0.9)]


def test_more_ranks_than_gpus_share_them_with_a_memory_fraction_each():
    assert _plans(["0", "1"], 4) == [(["0"], 0.45), (["0"], 0.45), (["1"], 0.45), (["1"], 0.45)]
    assert _plans(EIGHT, 8, tp=4) == [(["0", "1", "2", "3"], 0.225)] * 4 + [(["4", "5", "6", "7"], 0.225)] * 4


def test_fewer_ranks_than_gpus_leave_the_rest_free():
    assert _plans(EIGHT, 3) == [(["0"], 0.9), (["1"], 0.9), (["2"], 0.9)]


@pytest.mark.parametrize("gpus, ranks, tp, words", [
    (EIGHT, 2, 3, "do not divide into groups of 3"),
    (["0", "1", "2", "3"], 6, 1, "6 ranks on this node cannot share 4 group"),
    (EIGHT, 3, 4, "3 ranks on this node cannot share 2 group"),
    (EIGHT, 2, 0, "tensor_parallel_size must be >= 1"),
])
def test_layouts_that_do_not_fit_are_clear_errors(gpus, ranks, tp, words):
    with pytest.raises(MedbridgeError, match=words):
        vllm_device_plan(gpus, local_rank=0, local_world_size=ranks, tensor_parallel_size=tp,
                         gpu_memory_utilization=0.9)


def test_no_gpu_means_the_cpu_backend():
    plan = vllm_device_plan([], local_rank=1, local_world_size=2, tensor_parallel_size=1, gpu_memory_utilization=0.9)
    assert plan.devices == () and plan.gpu_memory_utilization == 0.9


def test_visible_gpus_and_topology_come_from_the_launcher(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_topology() == (1, 2)
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(MedbridgeError, match="LOCAL_RANK='one'"):
        local_topology()


def test_a_ranks_engine_starts_seeing_only_its_gpus_and_no_launcher_group(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "7")
    plan = vllm_device_plan(["3", "5"], local_rank=1, local_world_size=2, tensor_parallel_size=1,
                            gpu_memory_utilization=0.9)
    with engine_environment(plan):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert not set(LAUNCHER_VARIABLES) & set(os.environ)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5" and os.environ["MASTER_PORT"] == "7"


# ------------------------------------------------------------------ two processes, CPU vLLM

TASKS = ["medmnist_mcq_blood", "medmnist_mcq_blood_passk"]
LIMIT = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(python: str, nproc: int, model_dir: Path, data_root: Path, out: Path) -> subprocess.CompletedProcess:
    args = {"pretrained": model_dir, "engine": "vllm", "dtype": "float32", "min_pixels": 3136, "max_pixels": 50176,
            "seed": 7, "max_model_len": 4096, "stats_path": out / "stats.json"}
    launch = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
              str(_free_port())] if nproc > 1 else [python]
    cmd = [*launch, "-m", "medbridge.tests.test_backend_e2e", "--model", "medbridge_vlm",
           "--model_args", ",".join(f"{k}={v}" for k, v in args.items()), "--tasks", ",".join(TASKS),
           "--limit", str(LIMIT), "--gen_kwargs", "max_new_tokens=8", "--output_path", str(out / "results"),
           "--log_samples"]
    env = {**os.environ, "MEDBRIDGE_MEDMNIST_ROOT": str(data_root), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
           "CUDA_VISIBLE_DEVICES": "3,5"}
    env.pop("LMMS_EVAL_PLUGINS", None)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_two_ranks_build_their_engines_on_their_own_devices(tmp_path, tiny_model_dir, monkeypatch):
    from medbridge.harness_ext.report import load_run
    from medbridge.tasks.medmnist.fixtures import build_all

    from . import test_backend_dp
    from .vllm_server import vllm_python_or_skip

    python = vllm_python_or_skip(need_medbridge=True)
    build_all(tmp_path / "data", test_per_class=1, train_per_class=1, val_per_class=1)
    two = _run(python, 2, tiny_model_dir, tmp_path / "data", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-5000:]
    ranks = [json.loads((tmp_path / "two" / f"stats.rank{r}.json").read_text()) for r in (0, 1)]
    devices = [s["devices"] for s in ranks]
    print("\nper-rank engine devices:", json.dumps(devices))
    assert [(d["local_rank"], d["devices"], d["gpu_memory_utilization"]) for d in devices] == [
        (0, ["3"], 0.9), (1, ["5"], 0.9)]
    assert all(s["items_generated"] == LIMIT for s in ranks)  # each rank generated its own shard
    one = _run(python, 1, tiny_model_dir, tmp_path / "data", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-5000:]
    monkeypatch.setattr(test_backend_dp, "LIMIT", LIMIT)  # same_results checks the item count against it
    test_backend_dp.same_results(load_run(tmp_path / "one" / "results"), load_run(tmp_path / "two" / "results"),
                                 TASKS)
