"""Issue 20 item 1, decoding from nothing: on every in-process backend, a checkpoint whose
generation_config.json sets every field transformers' GenerationConfig knows to a non-default value
(tests/generation_config_fields.py, enumerated from GenerationConfig itself) gives exactly the greedy
answers and the samples of the same checkpoint with a neutral generation_config.json (its special token
ids only).

Backends: lmms-eval's ``qwen2_5_vl`` (chat, and simple as ``--force_simple`` runs it) through our
wrapper, ``medbridge_vlm`` with the transformers engine, and (CPU vLLM venv) with the vLLM engine. Each
test also shows it could fail: unprotected, the hostile file changes the outputs (or breaks generation),
and the two checkpoints have different fingerprints.

Run as ``python -m medbridge.tests.test_decoding_from_scratch ENGINE CHECKPOINT OUT.json`` it writes one
backend's outputs (the vLLM engine runs that way inside the vLLM venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .generation_config_fields import (
    BOOKKEEPING,
    UNLOADABLE,
    generation_config_fields,
    hostile_and_neutral_checkpoints,
    refused_from_a_file,
)

TASK = "medmnist_mcq_blood"  # a medbridge task name: the wrapper acts on medbridge tasks only
K = 4
MAX_NEW = 12
SAMPLED = {"until": [], "max_new_tokens": MAX_NEW, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
           "repetition_penalty": 1.0}
GREEDY = {"until": [], "max_new_tokens": MAX_NEW, "do_sample": False, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
          "repetition_penalty": 1.0}


def _docs() -> list[dict]:
    """Three MCQ items whose grey levels make the answering tiny model pick different letters."""
    from medbridge.harness_ext.prompts import format_mcq_prompt, lettered
    from PIL import Image

    options = lettered(["basophil", "eosinophil", "erythroblast", "lymphocyte", "monocyte", "neutrophil"])
    return [{"image": Image.new("RGB", (56, 56), (level, level, level)),
             "prompt": format_mcq_prompt("Which cell type is shown?", options)} for level in (105, 140, 175)]


def _messages(doc: dict) -> list[dict]:
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["prompt"]}]
    return [{"role": "user", "content": content}]


def _visual(doc: dict) -> list:
    return [doc["image"]]


def _requests(chat: bool, n_docs: int) -> list:
    """Greedy requests for every doc, then K clones of each doc's sampled request (lmms-eval's repeats)."""
    from lmms_eval.api.instance import Instance

    out = []
    for gen, repeats in ((GREEDY, 1), (SAMPLED, K)):
        for d in range(n_docs):
            args = ((f"q{d}", _messages, dict(gen), d, TASK, "test") if chat
                    else (f"q{d}", dict(gen), _visual, d, TASK, "test"))
            inst = Instance("generate_until", args, idx=0, metadata={"task": TASK, "doc_id": d, "repeats": repeats})
            out.extend([inst] * repeats)
    return out


def build_backend(kind: str, checkpoint: Path):
    """One backend on ``checkpoint``, its documents attached (what lmms-eval's evaluator does)."""
    if kind in ("qwen2_5_vl_chat", "qwen2_5_vl_simple"):
        from medbridge.harness_ext.backend.lmms_eval_decoding import wrap_generate_until

        if kind == "qwen2_5_vl_chat":
            from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL
        else:
            from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
        lm = wrap_generate_until(Qwen2_5_VL)(pretrained=str(checkpoint), device="cpu", device_map="cpu",
                                             attn_implementation="sdpa", min_pixels=3136, max_pixels=50176)
    else:
        from medbridge.harness_ext.backend.model import MedbridgeVLM

        engine = kind.removeprefix("medbridge_vlm_")
        extra = {"max_model_len": 4096} if engine == "vllm" else {"device": "cpu", "attn_implementation": "sdpa"}
        lm = MedbridgeVLM(pretrained=str(checkpoint), engine=engine, dtype="float32", min_pixels=3136,
                          max_pixels=50176, seed=5, **extra)
    lm.task_dict = {TASK: {"test": _docs()}}
    return lm


def generate(lm, kind: str, *, protected: bool = True, n_docs: int = 3) -> list[str]:
    """Every request's answer (greedy first, then the samples), torch's RNG seeded alike for every run."""
    import torch

    requests = _requests(kind != "qwen2_5_vl_simple", n_docs)
    method = type(lm).generate_until
    if not protected:
        method = method.__wrapped__  # lmms-eval's own generate_until, without medbridge's wrapper
    torch.manual_seed(1234)
    return [getattr(r, "text", r) for r in method(lm, requests)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_answering_model_dir):
    """The answering tiny model (its answers depend on the item) with a hostile and a neutral config."""
    return hostile_and_neutral_checkpoints(tiny_answering_model_dir, tmp_path_factory.mktemp("generation_configs"))


def test_the_hostile_config_sets_every_field_transformers_knows(checkpoints, tmp_path):
    from medbridge.harness_ext.decoding import SPECIAL_TOKEN_FIELDS
    from transformers import GenerationConfig

    hostile, _neutral = checkpoints
    written = json.loads((hostile / "generation_config.json").read_text())
    fields = generation_config_fields()
    assert set(fields) - set(written) == set(UNLOADABLE)
    # The ones a file cannot carry are refused by transformers when a file tries.
    assert all(refused_from_a_file(field, tmp_path / field) for field in UNLOADABLE)
    loaded = GenerationConfig.from_pretrained(hostile).to_dict()
    defaults = {**GenerationConfig().to_dict(), **GenerationConfig._get_default_generation_params()}
    same = [f for f in fields if f not in UNLOADABLE and f not in SPECIAL_TOKEN_FIELDS and loaded[f] == defaults[f]]
    assert same == [], f"fields left at their default: {same}"
    assert not set(BOOKKEEPING) & set(fields)


IN_PROCESS = ["qwen2_5_vl_chat", "qwen2_5_vl_simple", "medbridge_vlm_transformers"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", IN_PROCESS)
def test_every_field_of_generation_config_json_leaves_outputs_unchanged(kind, checkpoints):
    hostile, neutral = checkpoints
    clean_lm, hostile_lm = build_backend(kind, neutral), build_backend(kind, hostile)
    clean = generate(clean_lm, kind)
    got = generate(hostile_lm, kind)
    n_greedy = 3
    assert len(set(clean[:n_greedy])) > 1, clean[:n_greedy]  # answers that depend on the item
    assert len(set(clean[n_greedy:n_greedy + K])) > 1  # real samples, not K copies of one answer
    assert got[:n_greedy] == clean[:n_greedy], "greedy answers changed"
    assert got[n_greedy:] == clean[n_greedy:], "samples changed"
    # The test can fail: unprotected, the same file changes the outputs or breaks generation.
    if kind.startswith("qwen2_5_vl"):
        try:
            unprotected = generate(hostile_lm, kind, protected=False)
        except Exception:  # noqa: BLE001 - a leaked field that crashes generate() is a leak too
            unprotected = None
        assert unprotected != clean
    else:
        assert hostile_lm.model_fp != clean_lm.model_fp  # different files, same samples: seeds ignore them


@pytest.mark.e2e
@pytest.mark.vllm_venv
def test_every_field_of_generation_config_json_leaves_the_vllm_engine_unchanged(checkpoints, tmp_path):
    from .vllm_server import vllm_python_or_skip

    python = vllm_python_or_skip(need_medbridge=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    outputs = {}
    for name, checkpoint in zip(("hostile", "neutral"), checkpoints):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([python, "-m", "medbridge.tests.test_decoding_from_scratch", "medbridge_vlm_vllm",
                               str(checkpoint), str(out)], env=env, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stderr[-5000:]
        outputs[name] = json.loads(out.read_text())
    assert len(set(outputs["neutral"][3:3 + K])) > 1
    assert outputs["hostile"] == outputs["neutral"]


def main(argv: list[str]) -> int:
    kind, checkpoint, out = argv
    lm = build_backend(kind, Path(checkpoint))
    Path(out).write_text(json.dumps(generate(lm, kind)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
