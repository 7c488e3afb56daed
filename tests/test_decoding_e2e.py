"""lmms-eval's own qwen2_5_vl backend (chat and --force_simple) decodes medbridge tasks with exactly the
task's settings, although the tiny model's generation_config.json carries Qwen2.5-VL's top_k=1,
top_p=0.001, temperature=0.1, repetition_penalty=1.05 (which made every Pass@K sample identical)."""

from __future__ import annotations

import pytest
from medbridge.harness_ext import decoding, metrics, plugin
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.report import load_run
from medbridge.tasks.medmnist.fixtures import build_all
from transformers import GenerationConfig

from .conftest import run_lmms_eval
from .test_decoding import QWEN_GENERATION_CONFIG

PASSK_TASK = "medmnist_mcq_retina_passk"
GREEDY_TASK = "medmnist_mcq_retina"


class _FakeHFModel:
    """Stands in for a transformers model: merges generate() kwargs over its generation_config the way
    transformers does, and records what it decoded with."""

    def __init__(self) -> None:
        self.generation_config = GenerationConfig(**QWEN_GENERATION_CONFIG)
        self.seen: list[dict] = []

    def generate(self, **kwargs):
        merged = self.generation_config.to_dict()
        merged.update(kwargs)
        self.seen.append(merged)
        return "out"


class _Request:
    def __init__(self, task: str, gen_kwargs: dict, chat: bool) -> None:
        self.task_name = task
        self.args = ("ctx", (lambda doc: doc), gen_kwargs, 0, task, "test") if chat else ("ctx", gen_kwargs, 0, task)


class _FakeBackend:
    """Like lmms-eval's simple qwen2_5_vl path: passes do_sample/temperature/top_p only."""

    def __init__(self) -> None:
        self.model = _FakeHFModel()

    def generate_until(self, requests):
        out = []
        for request in requests:
            gen = next(a for a in request.args if isinstance(a, dict))
            sample = gen.get("temperature", 0) > 0
            self.model.generate(
                do_sample=sample,
                temperature=gen["temperature"] if sample else None,
                top_p=gen.get("top_p") if sample else None,
                max_new_tokens=gen["max_new_tokens"],
            )
            out.append(f"{request.task_name}:{len(out)}")
        return out


@pytest.mark.parametrize("chat", [False, True], ids=["simple-args", "chat-args"])
def test_wrapped_backend_generates_with_the_task_settings(chat):
    cls = plugin.wrap_generate_until(type("Backend", (_FakeBackend,), {}))
    assert plugin.wrap_generate_until(cls) is cls  # idempotent
    backend = cls()
    sampled = decoding.generation_kwargs(decoding.PASSK)
    greedy = decoding.generation_kwargs(decoding.GREEDY)
    requests = [
        _Request(PASSK_TASK, sampled, chat),
        _Request(GREEDY_TASK, greedy, chat),
        _Request(PASSK_TASK, sampled, chat),
        _Request("someone_elses_task", greedy, chat),
    ]
    decoding.clear_effective()
    out = backend.generate_until(requests)
    # Responses come back in request order although requests ran grouped by decoding.
    assert [o.split(":")[0] for o in out] == [PASSK_TASK, GREEDY_TASK, PASSK_TASK, "someone_elses_task"]
    sampled_calls = [s for s in backend.model.seen if s["do_sample"]]
    greedy_calls = [s for s in backend.model.seen if not s["do_sample"]]
    assert len(sampled_calls) == 2 and len(greedy_calls) == 2
    for merged in sampled_calls:
        assert decoding.inherited_overrides(decoding.PASSK, merged) == []
        assert (merged["top_k"], merged["repetition_penalty"], merged["top_p"]) == (0, 1.0, 0.9)
    # Our greedy task lost the checkpoint's repetition penalty; the other task kept lmms-eval's behaviour.
    assert sorted(m["repetition_penalty"] for m in greedy_calls) == [1.0, 1.05]
    assert decoding.effective_for(PASSK_TASK)["top_k"] == 0
    assert decoding.effective_for(GREEDY_TASK)["do_sample"] is False
    assert decoding.effective_for("someone_elses_task") is None
    assert "generate" not in vars(backend.model)  # the temporary override is gone


def test_request_without_generation_kwargs_is_refused():
    cls = plugin.wrap_generate_until(type("Backend2", (_FakeBackend,), {}))
    request = _Request(PASSK_TASK, {}, False)
    request.args = ("ctx", 0, PASSK_TASK)
    with pytest.raises(MedbridgeError, match="no generation_kwargs"):
        cls().generate_until([request])


class _FakeOpenAIBackend:
    """Like lmms-eval's ``openai`` backend: no transformers model, sends temperature/top_p only."""

    def generate_until(self, requests):
        return [f"{r.task_name}:served" for r in requests]


_FakeOpenAIBackend.__module__ = "lmms_eval.models.chat.openai"


def test_openai_backend_records_served_settings_and_refuses_what_it_cannot_send():
    served_cls = type("Served", (_FakeOpenAIBackend,), {"__module__": _FakeOpenAIBackend.__module__})
    cls = plugin.wrap_generate_until(served_cls)
    decoding.clear_effective()
    out = cls().generate_until([_Request(PASSK_TASK, decoding.generation_kwargs(decoding.PASSK), True)])
    assert out == [f"{PASSK_TASK}:served"]
    recorded = decoding.effective_for(PASSK_TASK)
    assert (recorded["temperature"], recorded["top_p"], recorded["top_k"]) == (0.7, 0.9, 0)
    assert recorded["server_generation_config"].startswith("vllm")
    needs_top_k = dict(decoding.generation_kwargs(decoding.PASSK), top_k=20)
    with pytest.raises(MedbridgeError, match="top_k=20"):
        cls().generate_until([_Request(PASSK_TASK, needs_top_k, True)])


@pytest.fixture(scope="module")
def retina_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding_e2e")
    build_all(root / "data", test_per_class=1, train_per_class=1, val_per_class=1)
    return root


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["chat", "simple"])
def test_tiny_qwen_samples_diverse_answers_through_lmms_eval_qwen2_5_vl(path, retina_root, tiny_model_dir):
    model_args = (
        f"pretrained={tiny_model_dir},device=cpu,device_map=cpu,attn_implementation=sdpa,"
        "min_pixels=3136,max_pixels=50176"
    )
    out = retina_root / f"out_{path}"
    proc = run_lmms_eval(
        [
            "--model",
            "qwen2_5_vl",
            *(["--force_simple"] if path == "simple" else []),
            "--model_args",
            model_args,
            "--tasks",
            f"{PASSK_TASK},{GREEDY_TASK}",
            "--gen_kwargs",
            "max_new_tokens=8",
            "--batch_size",
            "16",
            "--limit",
            "2",
            "--output_path",
            str(out),
            "--log_samples",
        ],
        retina_root / "data",
        module="lmms_eval",
        env_extra={"MEDBRIDGE_MEDMNIST_PER_CLASS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = load_run(out)
    sampled = run.records[PASSK_TASK]
    assert len(sampled) == 2 and all(r["n"] == 16 for r in sampled)
    assert metrics.sampling_diversity(sampled) > 1 and not metrics.is_collapsed(sampled)
    assert run.results["results"][PASSK_TASK]["distinct_per_item,none"] == metrics.sampling_diversity(sampled)
    for record in sampled:
        assert record["decoding"] == {
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 0,
            "repetition_penalty": 1.0,
            "max_new_tokens": 8,
            "num_beams": 1,
        }
        assert record["subset"] == "balanced1-seed1234"
    for record in run.records[GREEDY_TASK]:
        assert record["decoding"]["do_sample"] is False and record["decoding"]["repetition_penalty"] == 1.0
