"""harness_ext/decoding.py: the paper's two settings, parsing a task's generation_kwargs, what a backend
must pass over a checkpoint's generation_config, and the per-task registry."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from medbridge.harness_ext import decoding
from medbridge.harness_ext.decoding import GREEDY, PASSK, Decoding
from medbridge.harness_ext.errors import MedbridgeError

# What every Qwen2.5-VL checkpoint ships (and the tiny test model carries).
QWEN_GENERATION_CONFIG = {
    "do_sample": True,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
    "repetition_penalty": 1.05,
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
}


def test_paper_settings():
    assert (GREEDY.do_sample, GREEDY.temperature, GREEDY.top_k, GREEDY.repetition_penalty) == (False, 0.0, None, 1.0)
    assert (PASSK.do_sample, PASSK.temperature, PASSK.top_p, PASSK.top_k, PASSK.repetition_penalty) == (
        True,
        0.7,
        0.9,
        None,
        1.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        PASSK.temperature = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("decoding_", [GREEDY, PASSK, dataclasses.replace(PASSK, top_k=20, max_new_tokens=2048)])
def test_yaml_block_round_trips(decoding_):
    block = decoding.generation_kwargs(decoding_)
    assert block["until"] == []
    assert set(block) >= {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"}
    assert decoding.task_decoding(block) == decoding_


def test_task_decoding_fills_unstated_settings_with_off():
    got = decoding.task_decoding({"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "until": []})
    assert got == dataclasses.replace(PASSK, max_new_tokens=64)
    assert decoding.task_decoding({"temperature": 0, "do_sample": False}) == GREEDY
    assert decoding.task_decoding({}) == GREEDY
    # top_k 0, -1 and null all mean off; strings from --gen_kwargs are numbers too.
    for off in (0, -1, None, "0"):
        assert decoding.task_decoding({"do_sample": "true", "temperature": "0.7", "top_k": off}).top_k is None


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"do_sample": True, "temperature": 0}, "temperature > 0"),
        ({"do_sample": True}, "without a temperature"),
        ({"do_sample": False, "temperature": 0.7}, "do_sample=false with temperature=0.7"),
        ({"temperature": 0.7, "top_p": 0}, "top_p"),
        ({"temperature": 0.7, "top_p": 1.5}, "top_p"),
        ({"temperature": "warm"}, "temperature='warm'"),
        ({"temperature": 0.7, "top_k": 2.5}, "top_k=2.5"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"do_sample": "maybe", "temperature": 0.7}, "do_sample='maybe'"),
    ],
)
def test_task_decoding_rejects_contradictions(bad, words):
    with pytest.raises(MedbridgeError, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        decoding.task_decoding(bad)


def test_effective_settings_state_every_field():
    assert decoding.effective_settings(PASSK) == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "max_new_tokens": PASSK.max_new_tokens,
        "num_beams": 1,
    }
    greedy = decoding.effective_settings(GREEDY)
    assert greedy["do_sample"] is False and greedy["repetition_penalty"] == 1.0
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"]) == (1.0, 1.0, 0)
    assert decoding.effective_settings(dataclasses.replace(PASSK, top_k=20))["top_k"] == 20


def test_only_special_token_ids_pass_the_allow_list():
    from transformers import GenerationConfig

    config = {**QWEN_GENERATION_CONFIG, "suppress_tokens": [5], "min_new_tokens": 9, "pad_token_id": None}
    assert decoding.special_token_ids(config) == {"bos_token_id": 1, "eos_token_id": [2, 3]}
    assert decoding.special_token_ids(GenerationConfig(**QWEN_GENERATION_CONFIG)) == {
        "bos_token_id": 1, "eos_token_id": [2, 3]}
    assert decoding.special_token_ids(None) == {}
    with pytest.raises(TypeError, match="mapping or a GenerationConfig"):
        decoding.special_token_ids(["top_k"])


@pytest.mark.parametrize("want", [PASSK, GREEDY, dataclasses.replace(PASSK, top_k=20, repetition_penalty=1.1)])
def test_generation_config_from_scratch_holds_the_task_settings_and_nothing_else(want):
    """Every field but the task's settings and the allow-listed token ids keeps transformers' default,
    whatever the checkpoint's config sets (enumerated from GenerationConfig itself)."""
    from transformers import GenerationConfig

    checkpoint = GenerationConfig(**QWEN_GENERATION_CONFIG, suppress_tokens=[7, 8], min_new_tokens=5, num_beams=2,
                                  no_repeat_ngram_size=3)
    built = decoding.generation_config_from_scratch(want, checkpoint).to_dict()
    default = GenerationConfig().to_dict()
    stated = decoding.effective_settings(want) if want.do_sample else {
        k: v for k, v in decoding.effective_settings(want).items() if k not in ("temperature", "top_p", "top_k")}
    expected = {**default, **stated, "bos_token_id": 1, "eos_token_id": [2, 3]}
    assert {k: v for k, v in built.items() if k != "transformers_version"} == {
        k: v for k, v in expected.items() if k != "transformers_version"}


def test_generation_config_from_scratch_wins_inside_transformers():
    """Merged the way transformers' generate() merges a passed config over the model's generation_config
    (here the model's is the built one too, as the lmms-eval wrapper arranges), nothing of the checkpoint's
    survives."""
    from transformers import GenerationConfig

    built = decoding.generation_config_from_scratch(PASSK, GenerationConfig(**QWEN_GENERATION_CONFIG))
    merged = GenerationConfig(**built.to_dict())
    merged.update(**built.to_dict(), defaults_only=True, allow_custom_entries=True)
    merged.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    assert (merged.top_k, merged.top_p, merged.temperature, merged.repetition_penalty) == (0, 0.9, 0.7, 1.0)
    assert merged.do_sample is True and merged.num_beams == 1


def test_registry_is_per_task_and_copies():
    decoding.clear_effective()
    assert decoding.effective_for("medmnist_mcq_retina_passk") is None
    settings = decoding.effective_settings(PASSK)
    decoding.record_effective("medmnist_mcq_retina_passk", settings)
    settings["temperature"] = 99  # the registry kept its own copy
    got = decoding.effective_for("medmnist_mcq_retina_passk")
    assert got["temperature"] == 0.7
    got["top_p"] = 0.1  # and hands out copies
    assert decoding.effective_for("medmnist_mcq_retina_passk")["top_p"] == 0.9
    assert decoding.effective_for("medmnist_mcq_retina") is None

    threads = [threading.Thread(target=decoding.record_effective, args=(f"t{i}", {"i": i})) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [decoding.effective_for(f"t{i}") for i in range(20)] == [{"i": i} for i in range(20)]
    decoding.clear_effective()
    assert decoding.effective_for("t0") is None


def test_invalid_decoding_is_a_user_error():
    with pytest.raises(MedbridgeError, match="repetition_penalty"):
        Decoding(do_sample=True, temperature=0.7, top_p=0.9, top_k=None, repetition_penalty=0, max_new_tokens=8)
    with pytest.raises(MedbridgeError, match="greedy decoding takes temperature 0"):
        Decoding(do_sample=False, temperature=0.7, top_p=1.0, top_k=None, repetition_penalty=1.0, max_new_tokens=8)


@pytest.mark.slow  # imports lmms-eval's model registry
def test_a_new_evaluation_forgets_the_previous_models_records():
    """lmms-eval looks up the model class once per evaluation: what an earlier evaluation in the same
    process recorded (its model and its decoding) must not be stamped on the next one's records."""
    from lmms_eval.models import get_model
    from medbridge.harness_ext.backend.identity import record_model, recorded_model

    record_model({"name": "earlier-model", "fingerprint": "sha256:0"})
    decoding.record_effective("medmnist_mcq_breast", {"temperature": 0.0})
    get_model("qwen2_5_vl")
    assert recorded_model() is None
    assert decoding.effective_for("medmnist_mcq_breast") is None
