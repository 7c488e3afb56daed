"""``medbridge_vlm engine=openai`` (harness_ext/backend/served_engine.py), issue 20 item 2: a served model
answers an item's K samples from one ``n=K`` request that states every decoding field, so the server's
defaults and the served name cannot change decoding, and the run records what it sent.

Fast tests run against a stub OpenAI-compatible server (tests/fake_chat_server.py); the ``vllm_venv`` test
against a real CPU vLLM server serving a checkpoint whose generation_config.json says top_k 2 and
repetition_penalty 1.3, with and without ``--generation-config vllm``.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from medbridge.harness_ext import decoding
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.served import request_fields
from PIL import Image

from .fake_chat_server import FakeChatServer

K = 4
SAMPLED = {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.9, "do_sample": True, "top_k": 0,
           "repetition_penalty": 1.0}
GREEDY = {"max_new_tokens": 8, "temperature": 0, "do_sample": False}
TASK = "t"


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((56, 56, 3)) * 255).astype("uint8"))


DOCS = [{"image": _image(i), "prompt": f"Question {i}: which class? Options: A. x B. y"} for i in range(3)]


def _messages(doc):
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["prompt"]}]
    return [{"role": "user", "content": content}]


def _requests(n_docs: int = 2, gen: dict | None = None, repeats: int = K, task: str = TASK):
    from lmms_eval.api.instance import Instance

    out = []
    for d in range(n_docs):
        inst = Instance("generate_until", (f"q{d}", _messages, dict(gen or SAMPLED), d, task, "test"), idx=0,
                        metadata={"task": task, "doc_id": d, "repeats": repeats})
        out.extend([inst] * repeats)
    return out


def _backend(server: FakeChatServer, tmp_path: Path | None = None, **args):
    from medbridge.harness_ext.backend.model import MedbridgeVLM

    lm = MedbridgeVLM(pretrained=server.served_name, engine="openai", base_url=server.base_url, seed=3,
                      max_retries=2, cache_dir=str(tmp_path / "cache") if tmp_path else None, **args)
    lm.engine.retry_backoff_s = 0.0
    lm.task_dict = {TASK: {"test": DOCS}, "g": {"test": DOCS}}
    return lm


@pytest.mark.slow
def test_one_request_per_item_carries_every_decoding_field_even_for_an_o_series_name():
    with FakeChatServer("HuatuoGPT-o1-7B") as server:
        lm = _backend(server)
        decoding.clear_effective()
        out = [r.text for r in lm.generate_until(_requests() + _requests(1, GREEDY, 1, "g"))]
        bodies = server.chat_bodies()
    # 2 items x K samples in two n=K requests, and the greedy item in one n=1 request.
    assert len(out) == 2 * K + 1 and len(bodies) == 3
    assert len(set(out[:K])) == K and out[:K] != out[K : 2 * K]
    sampled = [b for b in bodies if b["n"] == K]
    assert len(sampled) == 2
    for body in sampled:
        sent = {k: v for k, v in body.items() if k not in ("model", "messages", "return_token_ids")}
        assert sent == request_fields(decoding.task_decoding(SAMPLED), n=K, seed=body["seed"])
        assert body["temperature"] == 0.7  # the o1 name does not drop it, as lmms-eval's openai backend would
        assert body["model"] == "HuatuoGPT-o1-7B"
        parts = body["messages"][0]["content"]
        assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,") and parts[1]["type"] == "text"
    assert sampled[0]["seed"] != sampled[1]["seed"]  # per-item seeds
    (greedy,) = [b for b in bodies if b["n"] == 1]
    assert greedy["temperature"] == 0.0 and "seed" not in greedy and greedy["top_k"] == 0
    # The record says what was sent; so do the stats.
    assert decoding.effective_for(TASK) == decoding.effective_settings(decoding.task_decoding(SAMPLED))
    stats = lm.stats()
    assert sorted(f["n"] for f in stats["decoding_sent"].values()) == [1, K]
    assert stats["model"]["served"]["root"] == "/models/tiny" and stats["model"]["weights"].startswith("not observed")
    assert stats["engine"]["generated_samples"] == 2 * K + 1 and stats["engine"]["prefill_calls"] == 3


@pytest.mark.slow
def test_the_same_seed_asks_for_the_same_samples_and_a_rerun_comes_from_the_cache(tmp_path):
    with FakeChatServer() as server:
        first = [r.text for r in _backend(server, tmp_path).generate_until(_requests())]
        again = _backend(server, tmp_path)
        assert [r.text for r in again.generate_until(_requests())] == first
        assert again.items_from_cache == 2 and len(server.chat_bodies()) == 2


@pytest.mark.slow
def test_a_server_refusing_a_decoding_field_is_refused_by_name():
    with FakeChatServer(refuse="top_k") as server:
        with pytest.raises(MedbridgeError, match="refuses the decoding field 'top_k'"):
            _backend(server).generate_until(_requests(1))
        assert len(server.chat_bodies()) == 1  # not retried


@pytest.mark.slow
def test_a_server_ignoring_n_is_refused():
    with FakeChatServer(one_choice=True) as server:
        with pytest.raises(MedbridgeError, match="answered 1 choices to a request for n=4"):
            _backend(server).generate_until(_requests(1))


@pytest.mark.slow
def test_failed_requests_are_request_failed_never_cached_and_asked_again(tmp_path):
    from medbridge.harness_ext.metrics import is_request_failure

    with FakeChatServer(fail_first=2) as server:  # both tries of the first item fail
        lm = _backend(server, tmp_path, batch_size=1)
        out = [r.text for r in lm.generate_until(_requests())]
        assert all(is_request_failure(t) for t in out[:K]) and not any(is_request_failure(t) for t in out[K:])
        assert lm.stats()["failed_requests"] == 1 and lm.cache.count() == K
        rerun = _backend(server, tmp_path)
        again = [r.text for r in rerun.generate_until(_requests())]
        assert not any(is_request_failure(t) for t in again) and again[K:] == out[K:]
        assert rerun.items_generated == 1 and rerun.items_from_cache == 1


@pytest.mark.slow
def test_a_name_the_server_does_not_serve_is_refused():
    from medbridge.harness_ext.backend.served_engine import OpenAIEngine

    with FakeChatServer("served-a") as server:
        with pytest.raises(MedbridgeError, match="not 'served-b'"):
            OpenAIEngine("served-b", base_url=server.base_url)
    with pytest.raises(MedbridgeError, match="needs base_url"):
        OpenAIEngine("served-b", base_url="")


# ------------------------------------------------------------------ a real CPU vLLM server

SERVED = "medbridge-tiny-vlm"
# vLLM 0.32's CPU build intermittently kills its engine on a seeded request whose prompt is split across
# scheduler steps ("CPU Generator does not use offset"); whole prompts per step avoid it (README, served models).
CPU_WHOLE_PROMPTS = ["--max-num-batched-tokens", "65536"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lmms_eval_style(base_url: str, doc: dict, n: int, seed: int) -> list[list[int]]:
    """What lmms-eval's openai backend sends for a Pass@K sample (temperature, top_p, max_tokens only), n at once."""
    from medbridge.harness_ext.backend.served_engine import openai_messages
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="EMPTY")
    hf = [{"role": "user", "content": [{"type": "image", "image": doc["image"]}, {"type": "text",
                                                                                  "text": doc["prompt"]}]}]
    reply = client.chat.completions.create(model=SERVED, messages=openai_messages(hf), temperature=0.7, top_p=0.9,
                                           max_tokens=24, n=n, seed=seed, extra_body={"return_token_ids": True})
    return [c.model_extra["token_ids"] for c in reply.choices]


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_served_decoding_does_not_depend_on_the_servers_generation_config(tmp_path, tiny_model_dir):
    """A checkpoint whose generation_config.json says top_k 2 and repetition_penalty 1.3, served by vLLM
    without and with ``--generation-config vllm``: medbridge_vlm engine=openai gets the same greedy answers
    and the same samples from both (every field is sent); requests that state only temperature and top_p
    (lmms-eval's) collapse on the server without the flag."""
    from medbridge.harness_ext.served import served_vlm_args
    from medbridge.judges import server as S

    from .generation_config_fields import checkpoint_with_generation_config, special_tokens_of
    from .vllm_server import vllm_python_or_skip

    vllm_python_or_skip()
    ckpt = checkpoint_with_generation_config(tiny_model_dir, tmp_path / "topk2", {
        **special_tokens_of(tiny_model_dir), "do_sample": True, "top_k": 2, "repetition_penalty": 1.3})
    args = served_vlm_args(min_pixels=3136, max_pixels=50176)
    without_flag = args[2:]  # drop "--generation-config vllm": the server fills fields from the checkpoint
    assert "--generation-config" not in without_flag
    gen = {**SAMPLED, "max_new_tokens": 24}
    results, report = {}, {}
    for label, extra in (("without_flag", without_flag), ("with_flag", args)):
        opts = S.ServeOptions(model=str(ckpt), served_name=SERVED, port=_free_port(), max_model_len=4096,
                              dtype="float32", enforce_eager=True, extra_args=extra + CPU_WHOLE_PROMPTS)
        proc = S.start_server(opts, log_path=tmp_path / f"{label}.log")
        try:
            try:
                S.wait_healthy(opts.base_url, timeout_s=420, proc=proc)
            except (RuntimeError, TimeoutError):
                pytest.fail(f"vLLM did not start; log tail:\n{(tmp_path / f'{label}.log').read_text()[-4000:]}")
            t0 = time.monotonic()
            lm = _backend(type("S", (), {"served_name": SERVED, "base_url": opts.base_url})())
            out = [r.text for r in lm.generate_until(_requests(2, gen, K) + _requests(2, {**GREEDY,
                                                                                       "max_new_tokens": 24}, 1, "g"))]
            results[label] = out
            old = [_lmms_eval_style(opts.base_url, DOCS[d], K, seed=d) for d in range(2)]
            report[label] = {
                "seconds": round(time.monotonic() - t0, 1),
                "distinct_samples_per_item": [len(set(out[i * K:(i + 1) * K])) for i in range(2)],
                "lmms_eval_style_distinct_token_ids_per_item": [len({t for ids in item for t in ids}) for item in old],
            }
        finally:
            S.stop_server(proc)
    print("\n" + json.dumps(report, indent=1))
    assert results["without_flag"] == results["with_flag"]
    assert all(d > 1 for d in report["with_flag"]["distinct_samples_per_item"])
    # Without the flag the server applies top_k 2 to requests that do not state it: few distinct tokens.
    old_without = report["without_flag"]["lmms_eval_style_distinct_token_ids_per_item"]
    old_with = report["with_flag"]["lmms_eval_style_distinct_token_ids_per_item"]
    assert all(a < b for a, b in zip(old_without, old_with)), report


@pytest.mark.slow
@pytest.mark.vllm_venv
def test_every_field_vllm_fills_from_generation_config_is_sent():
    """Enumerated from the installed vLLM: its chat request's server-default fields (plus max_tokens)."""
    import subprocess

    from medbridge.harness_ext.served import OPENAI_FIELDS, VLLM_EXTRA_FIELDS

    from .vllm_server import vllm_python_or_skip

    python = vllm_python_or_skip()
    code = ("import json; from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as R; "
            "print(json.dumps(sorted(R.__private_attributes__['_DEFAULT_SAMPLING_PARAMS'].default)))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    filled = set(json.loads(proc.stdout.strip().splitlines()[-1])) | {"max_tokens"}
    assert filled <= set(OPENAI_FIELDS) | set(VLLM_EXTRA_FIELDS), filled
    assert filled <= set(request_fields(decoding.PASSK, n=2, seed=1))
