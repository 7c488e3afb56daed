"""Data parallel on the CPU: two processes (torchrun / accelerate launch, gloo) give exactly the
results of one process on the same items: the numbers, every logged response and every logged
record (verdicts included), in rules mode with medbridge_vlm on the tiny model and in judge mode
with the rank-aware oracle model against a judge (a local stub; the real CPU vLLM judge).

Each run is the real lmms-eval CLI in fresh processes. Ranks share one sample cache and one judge
endpoint; a rerun on the same cache under the other launcher generates nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from medbridge.tests.vllm_server import vllm_judge  # noqa: F401  (session fixture)

BACKEND_LAUNCHER = "medbridge.tests.test_backend_e2e"
ORACLE_LAUNCHER = "medbridge.tests.run_lmms_eval"
RULES_TASKS = ["medmnist_mcq_blood", "medmnist_mcq_blood_passk", "medmnist_mcq_oct_passk"]
JUDGE_TASKS = ["medmnist_mcq_derma", "medmnist_mcq_derma_passk"]
LIMIT = 4  # two documents per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    launcher: str, module: str, args: list[str], data_root: Path, env_extra: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """lmms-eval through ``module`` in one process, or two under torchrun / accelerate launch."""
    env = dict(os.environ)
    env.pop("LMMS_EVAL_PLUGINS", None)
    # Two processes on two cores: one thread each, so they do not fight over the cores.
    env.update(MEDBRIDGE_MEDMNIST_ROOT=str(data_root), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    port = str(_free_port())
    prefix = {
        "single": [sys.executable, "-m", module],
        "torchrun": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            module,
        ],
        "accelerate": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            # accelerate's --cpu starts one process; --multi_gpu starts N through torchrun, and on a machine
            # without a GPU the model forms a CPU (gloo) group (harness_ext/backend/distributed.py).
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            port,
            "-m",
            module,
        ],
    }[launcher]
    return subprocess.run(prefix + args, env=env, capture_output=True, text=True, timeout=timeout)


def _results(out: Path):
    from medbridge.harness_ext.report import load_run

    assert list(out.rglob("*_results.json")), f"no results under {out}"
    return load_run(out)


def same_results(a, b, tasks: list[str]) -> None:
    """Numbers, logged responses and logged records (in item order: ranks interleave them) agree."""
    from medbridge.harness_ext.report import responses_of

    def metrics(run):
        return {
            t: {m: v for m, v in r.items() if "," in m and "stderr" not in m}
            for t, r in run.results["results"].items()
            if t in tasks
        }

    def responses(run):
        return {t: {str(s["doc_id"]): responses_of(s) for s in run.samples[t]} for t in tasks}

    def records(run):
        return {t: sorted(run.records[t], key=lambda r: json.dumps(r, sort_keys=True, default=str)) for t in tasks}

    assert {t: len(a.samples[t]) for t in tasks} == {t: len(b.samples[t]) for t in tasks} == {t: LIMIT for t in tasks}
    assert responses(a) == responses(b)
    assert metrics(a) == metrics(b)
    assert records(a) == records(b)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from medbridge.tasks.medmnist.fixtures import build_all

    root = tmp_path_factory.mktemp("dp") / "data"
    build_all(root, test_per_class=1, train_per_class=1, val_per_class=1)
    return root


def _backend_args(model_dir: Path, out: Path, cache: Path) -> list[str]:
    model_args = (
        f"pretrained={model_dir},dtype=float32,attn_implementation=sdpa,min_pixels=3136,max_pixels=50176,"
        f"seed=7,cache_dir={cache},stats_path={out / 'stats.json'}"
    )
    return [
        "--model",
        "medbridge_vlm",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(RULES_TASKS),
        "--limit",
        str(LIMIT),
        "--gen_kwargs",
        "max_new_tokens=8",
        "--output_path",
        str(out / "results"),
        "--log_samples",
    ]


@pytest.mark.e2e
def test_medbridge_vlm_two_processes_equal_one_and_resume_from_the_shared_cache(
    tmp_path, data_root, tiny_answering_model_dir
):
    # The tiny model fine-tuned to answer from the image (conftest): greedy answers differ between items.
    tiny_model_dir = tiny_answering_model_dir
    one = launch(
        "single", BACKEND_LAUNCHER, _backend_args(tiny_model_dir, tmp_path / "one", tmp_path / "c1"), data_root
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(
        "torchrun", BACKEND_LAUNCHER, _backend_args(tiny_model_dir, tmp_path / "two", tmp_path / "c2"), data_root
    )
    assert two.returncode == 0, two.stderr[-3000:]
    same_results(_results(tmp_path / "one" / "results"), _results(tmp_path / "two" / "results"), RULES_TASKS)
    from medbridge.harness_ext.report import responses_of

    greedy = [responses_of(s)[0] for s in _results(tmp_path / "one" / "results").samples["medmnist_mcq_blood"]]
    assert len(set(greedy)) > 1, greedy  # the runs agree on answers that differ by item, not on a constant

    single = json.loads((tmp_path / "one" / "stats.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"stats.rank{r}.json").read_text()) for r in (0, 1)]
    assert [(s["rank"], s["world_size"]) for s in ranks] == [(0, 2), (1, 2)]
    # Each rank generated its own shard (half the documents), none twice.
    assert all(s["items_generated"] == single["items_generated"] // 2 for s in ranks)
    assert sum(s["engine"]["prefill_prompts"] for s in ranks) == single["engine"]["prefill_prompts"]

    # The same two-process run again, under accelerate launch, on the shared cache: nothing to generate.
    again = launch(
        "accelerate", BACKEND_LAUNCHER, _backend_args(tiny_model_dir, tmp_path / "again", tmp_path / "c2"), data_root
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [json.loads((tmp_path / "again" / f"stats.rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["items_generated"] for s in resumed] == [0, 0]
    assert sum(s["items_from_cache"] for s in resumed) == single["items_generated"]
    same_results(_results(tmp_path / "one" / "results"), _results(tmp_path / "again" / "results"), RULES_TASKS)


def _judge_run(launcher: str, out: Path, data_root: Path, base_url: str, model: str, cache: Path):
    env = {
        "MEDBRIDGE_JUDGE_MODE": "judge",
        "MEDBRIDGE_JUDGE_BASE_URL": base_url,
        "MEDBRIDGE_JUDGE_MODEL": model,
        "MEDBRIDGE_JUDGE_CACHE": str(cache),
    }
    args = [
        "--model",
        "oracle",
        "--model_args",
        "p=0.5,seed=3",
        "--tasks",
        ",".join(JUDGE_TASKS),
        "--limit",
        str(LIMIT),
        "--output_path",
        str(out),
        "--log_samples",
    ]
    proc = launch(launcher, ORACLE_LAUNCHER, args, data_root, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _results(out)


@pytest.mark.e2e
def test_judge_mode_two_processes_equal_one_with_a_stub_judge(tmp_path, data_root):
    from medbridge.tests.fake_judge_server import MODEL_NAME, FakeJudgeServer

    with FakeJudgeServer(delay_s=0.01) as server:
        one = _judge_run("single", tmp_path / "one", data_root, server.base_url, MODEL_NAME, tmp_path / "j1.sqlite")
        two = _judge_run("torchrun", tmp_path / "two", data_root, server.base_url, MODEL_NAME, tmp_path / "j2.sqlite")
    same_results(one, two, JUDGE_TASKS)
    n_by_judge = {t: two.results["results"][t].get("n_by_judge,none") for t in JUDGE_TASKS}
    assert all(n for n in n_by_judge.values()), n_by_judge  # the judge really decided, on both ranks' items


@pytest.mark.e2e
def test_judge_mode_two_processes_equal_one_with_the_cpu_vllm_judge(tmp_path, data_root, vllm_judge):  # noqa: F811
    one = _judge_run(
        "single", tmp_path / "one", data_root, vllm_judge.base_url, vllm_judge.model, tmp_path / "j1.sqlite"
    )
    two = _judge_run(
        "torchrun", tmp_path / "two", data_root, vllm_judge.base_url, vllm_judge.model, tmp_path / "j2.sqlite"
    )
    same_results(one, two, JUDGE_TASKS)


@pytest.mark.e2e
def test_multinode_script_two_nodes_on_one_machine_one_results_folder_ingested(tmp_path, data_root, tiny_model_dir):
    """scripts/eval_torchrun.sh started twice (NNODES=2, NODE_RANK 0 and 1, one process each, a
    localhost rendezvous): one process group across the two 'nodes', one results folder, both ranks
    generating (two writers in the shared sample cache), and node 0 ingests into the leaderboard."""
    import sqlite3

    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_torchrun.sh"
    out, store = tmp_path / "run", tmp_path / "store.sqlite"
    env = dict(os.environ)
    env.pop("LMMS_EVAL_PLUGINS", None)
    env.update(
        MODEL=str(tiny_model_dir),
        OUT=str(out),
        TASKS="medmnist_mcq_blood,medmnist_mcq_blood_passk",
        NNODES="2",
        NPROC_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        DEVICE="cpu",
        MODEL_ARGS="dtype=float32,attn_implementation=sdpa,min_pixels=3136,max_pixels=50176",
        LIMIT=str(LIMIT),
        EXTRA_ARGS="--gen_kwargs max_new_tokens=8",
        LEADERBOARD=str(store),
        PYTHON=sys.executable,
        MEDBRIDGE_MEDMNIST_ROOT=str(data_root),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    nodes = [
        subprocess.Popen(
            ["bash", str(script)],
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    run = _results(out / "results")
    assert {t: len(run.samples[t]) for t in ("medmnist_mcq_blood", "medmnist_mcq_blood_passk")} == {
        "medmnist_mcq_blood": LIMIT,
        "medmnist_mcq_blood_passk": LIMIT,
    }
    cache = sqlite3.connect(out / "sample_cache" / "medbridge_samples.sqlite")
    assert cache.execute("SELECT COUNT(DISTINCT run_id) FROM samples").fetchone()[0] == 2  # both nodes generated
    assert store.exists() and sqlite3.connect(store).execute("SELECT name FROM sqlite_master").fetchall()
