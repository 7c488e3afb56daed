"""lmms-eval's own qwen2_5_vl backend (chat and --force_simple) decodes medbridge tasks with exactly the
task's settings, although the tiny model's generation_config.json carries Qwen2.5-VL's top_k=1,
top_p=0.001, temperature=0.1, repetition_penalty=1.05 (which made every Pass@K sample identical)."""

from __future__ import annotations

import pytest
from medbridge.harness_ext import decoding, metrics
from medbridge.harness_ext.backend.lmms_eval_decoding import wrap_generate_until
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.report import load_run
from medbridge.tasks.medmnist.fixtures import build_all
from transformers import GenerationConfig

from .conftest import run_lmms_eval
from .test_decoding import QWEN_GENERATION_CONFIG

PASSK_TASK = "medmnist_mcq_retina_passk"
GREEDY_TASK = "medmnist_mcq_retina"


class _FakeHFModel:
    """Stands in for a transformers model: records, per generate() call, the arguments it received and the
    generation_config it held at that moment."""

    def __init__(self) -> None:
        self.generation_config = GenerationConfig(**QWEN_GENERATION_CONFIG, suppress_tokens=[4, 5], min_new_tokens=3)
        self.seen: list[dict] = []

    def generate(self, **kwargs):
        self.seen.append({"kwargs": kwargs, "model_config": self.generation_config})
        return "out"


class _Request:
    def __init__(self, task: str, gen_kwargs: dict, chat: bool) -> None:
        self.task_name = task
        self.args = ("ctx", (lambda doc: doc), gen_kwargs, 0, task, "test") if chat else ("ctx", gen_kwargs, 0, task)


class _FakeBackend:
    """Like lmms-eval's qwen2_5_vl: passes its own decoding arguments and the tokenizer's eos/pad ids."""

    def __init__(self) -> None:
        self.model = _FakeHFModel()

    def generate_until(self, requests):
        out = []
        for request in requests:
            gen = next(a for a in request.args if isinstance(a, dict))
            sample = gen.get("temperature", 0) > 0
            self.model.generate(
                input_ids=None,
                eos_token_id=9,
                pad_token_id=8,
                do_sample=sample,
                temperature=gen["temperature"] if sample else None,
                top_p=gen.get("top_p") if sample else None,
                top_k=None,
                num_beams=1,
                max_new_tokens=gen["max_new_tokens"],
                use_cache=True,
            )
            out.append(f"{request.task_name}:{len(out)}")
        return out


@pytest.mark.parametrize("chat", [False, True], ids=["simple-args", "chat-args"])
def test_wrapped_backend_generates_from_a_config_built_from_scratch(chat):
    cls = wrap_generate_until(type("Backend", (_FakeBackend,), {}))
    assert wrap_generate_until(cls) is cls  # idempotent
    backend = cls()
    checkpoint_config = backend.model.generation_config
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
    ours = [call for call in backend.model.seen if "generation_config" in call["kwargs"]]
    theirs = [call for call in backend.model.seen if "generation_config" not in call["kwargs"]]
    assert len(ours) == 3 and len(theirs) == 1
    default = GenerationConfig().to_dict()
    for call in ours:
        config = call["kwargs"]["generation_config"]
        # The model held the built config during the call (transformers fills unset fields from it) ...
        assert call["model_config"] is config
        # ... no decoding argument of the backend's got through, only model inputs ...
        assert set(call["kwargs"]) == {"input_ids", "generation_config"}
        built = config.to_dict()
        want = decoding.PASSK if built["do_sample"] else decoding.GREEDY
        # ... and the config is the task's settings, the backend's token ids, and defaults for the rest.
        assert built == decoding.generation_config_from_scratch(want, {"eos_token_id": 9, "pad_token_id": 8,
                                                                       "bos_token_id": 1}).to_dict()
        assert built["suppress_tokens"] is None and built["min_new_tokens"] is None
        assert {k for k in built if built[k] != default[k]} <= {
            *decoding.effective_settings(want), "bos_token_id", "eos_token_id", "pad_token_id", "transformers_version"}
    # The other task kept lmms-eval's behaviour; the model's own config is back after the call.
    assert theirs[0]["kwargs"]["do_sample"] is False and theirs[0]["model_config"] is checkpoint_config
    assert backend.model.generation_config is checkpoint_config
    assert decoding.effective_for(PASSK_TASK) == decoding.effective_settings(decoding.PASSK)
    assert decoding.effective_for(GREEDY_TASK)["do_sample"] is False
    assert decoding.effective_for("someone_elses_task") is None
    assert "generate" not in vars(backend.model)  # the temporary override is gone


def test_generate_arguments_that_could_change_decoding_are_refused_by_name():
    class Backend(_FakeBackend):
        def generate_until(self, requests):
            return [self.model.generate(input_ids=None, logits_processor=[object()], max_new_tokens=4)]

    cls = wrap_generate_until(Backend)
    with pytest.raises(MedbridgeError, match="logits_processor"):
        cls().generate_until([_Request(PASSK_TASK, decoding.generation_kwargs(decoding.PASSK), True)])


def test_request_without_generation_kwargs_is_refused():
    cls = wrap_generate_until(type("Backend2", (_FakeBackend,), {}))
    request = _Request(PASSK_TASK, {}, False)
    request.args = ("ctx", 0, PASSK_TASK)
    with pytest.raises(MedbridgeError, match="no generation_kwargs"):
        cls().generate_until([request])


class _Refusal(Exception):
    status_code = 400


class _FakeClient:
    """The openai client's chat.completions.create, recording each payload (``refuse``: a field it rejects)."""

    def __init__(self, refuse: str | None = None) -> None:
        self.payloads: list[dict] = []
        self.refuse = refuse
        self.chat = self
        self.completions = self
        self.base_url = "http://127.0.0.1:1/v1"

    def create(self, **payload):
        self.payloads.append(payload)
        if self.refuse and self.refuse in {**payload, **payload.get("extra_body", {})}:
            raise _Refusal(f"Unrecognized request argument supplied: {self.refuse}")
        return "answer"


class _FakeOpenAIBackend:
    """Like lmms-eval's ``openai`` backend: builds its own payload (temperature dropped for o-series names,
    no top_k, no repetition_penalty), turns a failed request into a marker text."""

    model_version = "HuatuoGPT-o1-7B"

    def __init__(self, refuse: str | None = None) -> None:
        self.client = _FakeClient(refuse)

    def generate_until(self, requests):
        out = []
        for request in requests:
            gen = next(a for a in request.args if isinstance(a, dict))
            payload = {"model": self.model_version, "messages": [], "max_tokens": gen["max_new_tokens"],
                       "temperature": gen["temperature"], "top_p": gen["top_p"]}
            if "o1" in self.model_version:
                payload.pop("temperature")
                payload["max_completion_tokens"] = payload.pop("max_tokens")
            try:
                out.append(self.client.chat.completions.create(**payload))
            except Exception as err:
                out.append(f"[LMMS_EVAL_REQUEST_FAILED after 1 retries] {err}")
        return out


_FakeOpenAIBackend.__module__ = "lmms_eval.models.chat.openai"


def test_openai_backend_sends_every_decoding_field_whatever_the_served_name():
    cls = wrap_generate_until(type("Served", (_FakeOpenAIBackend,), {"__module__": _FakeOpenAIBackend.__module__}))
    backend = cls()
    decoding.clear_effective()
    needs_top_k = dict(decoding.generation_kwargs(decoding.PASSK), top_k=20, repetition_penalty=1.1)
    requests = [_Request(PASSK_TASK, needs_top_k, True), _Request(GREEDY_TASK, decoding.generation_kwargs(
        decoding.GREEDY), True)]
    assert backend.generate_until(requests) == ["answer", "answer"]
    sampled, greedy = backend.client.payloads
    # temperature is back although the o1 name rule dropped it; top_k and repetition_penalty are sent.
    assert (sampled["temperature"], sampled["top_p"], sampled["max_tokens"]) == (0.7, 0.9, 1024)
    assert "max_completion_tokens" not in sampled
    assert sampled["extra_body"] == {"top_k": 20, "min_p": 0.0, "repetition_penalty": 1.1, "min_tokens": 0}
    assert (greedy["temperature"], greedy["extra_body"]["top_k"]) == (0.0, 0)
    assert decoding.effective_for(PASSK_TASK)["top_k"] == 20
    assert decoding.effective_for(GREEDY_TASK) == decoding.effective_settings(decoding.GREEDY)
    assert backend.client.__class__ is _FakeClient  # the backend's own client is back


def test_openai_backend_server_refusing_a_field_is_refused_by_name():
    cls = wrap_generate_until(type("Served2", (_FakeOpenAIBackend,), {"__module__": _FakeOpenAIBackend.__module__}))
    with pytest.raises(MedbridgeError, match="refused decoding field top_k"):
        cls(refuse="top_k").generate_until([_Request(PASSK_TASK, decoding.generation_kwargs(decoding.PASSK), True)])


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
