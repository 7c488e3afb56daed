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


def test_inherited_overrides_name_every_leaking_setting():
    found = decoding.inherited_overrides(PASSK, QWEN_GENERATION_CONFIG)
    assert found == [
        f"{setting} from generation_config.json"
        for setting in ("repetition_penalty=1.05", "temperature=0.1", "top_p=0.001", "top_k=1")
    ]
    # Greedy: only what changes a greedy decode (sampling fields do not apply).
    assert decoding.inherited_overrides(GREEDY, QWEN_GENERATION_CONFIG) == [
        "do_sample=true from generation_config.json",
        "repetition_penalty=1.05 from generation_config.json",
    ]
    assert decoding.inherited_overrides(PASSK, None) == []
    assert decoding.inherited_overrides(PASSK, {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "do_sample": True}) == []
    assert decoding.inherited_overrides(GREEDY, {"num_beams": 4}) == ["num_beams=4 from generation_config.json"]


def test_effective_settings_override_the_checkpoint():
    config = {**QWEN_GENERATION_CONFIG, "min_p": 0.05, "num_beams": 1}
    sampled = decoding.effective_settings(PASSK, config)
    assert sampled == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "max_new_tokens": PASSK.max_new_tokens,
        "num_beams": 1,
        "min_p": None,
    }
    greedy = decoding.effective_settings(GREEDY, QWEN_GENERATION_CONFIG)
    assert greedy["do_sample"] is False and greedy["repetition_penalty"] == 1.0
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"]) == (1.0, 1.0, 0)


def test_effective_settings_win_inside_transformers():
    """Merged the way transformers' generate() merges kwargs over the model's generation_config, the
    effective settings leave nothing of the checkpoint's in place."""
    from transformers import GenerationConfig

    model_config = GenerationConfig(**{k: v for k, v in QWEN_GENERATION_CONFIG.items()})
    merged = GenerationConfig()
    merged.update(**model_config.to_dict(), defaults_only=True, allow_custom_entries=True)
    merged.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    merged.update(**decoding.effective_settings(PASSK, model_config))
    assert decoding.inherited_overrides(PASSK, merged) == []
    assert (merged.top_k, merged.top_p, merged.temperature, merged.repetition_penalty) == (0, 0.9, 0.7, 1.0)


def test_registry_is_per_task_and_copies():
    decoding.clear_effective()
    assert decoding.effective_for("medmnist_mcq_retina_passk") is None
    settings = decoding.effective_settings(PASSK, None)
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
