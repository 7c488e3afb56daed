"""medbridge_vlm in-process: request grouping, the sample cache, and the one-prefill engine on the tiny model."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from lmms_eval.api.instance import Instance
from medbridge.harness_ext.backend.cache import (
    ItemKey,
    SampleCache,
    model_fingerprint,
    model_identity,
    prompt_fingerprint,
)
from medbridge.harness_ext.backend.grouping import (
    SamplingSettings,
    fan_out,
    group_requests,
    normalize_gen_kwargs,
)
from medbridge.harness_ext.decoding import effective_for, generation_config_from_scratch
from medbridge.harness_ext.errors import MedbridgeError
from PIL import Image

SAMPLED = {"max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "do_sample": True}
GREEDY = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}


def _messages(doc):
    return [
        {"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["prompt"]}]}
    ]


def _instance(doc_id: int, gen_kwargs: dict, *, task: str = "t", repeats: int = 16, ctx: str | None = None) -> Instance:
    return Instance(
        "generate_until",
        (ctx or f"question {doc_id}", _messages, dict(gen_kwargs), doc_id, task, "test"),
        idx=0,
        metadata={"task": task, "doc_id": doc_id, "repeats": repeats},
    )


def _cloned(reqs: list[Instance]) -> list[Instance]:
    """What lmms-eval's evaluator hands the model: each Instance repeated `repeats` times."""
    out = []
    for r in reqs:
        out.extend([r] * r.repeats)
    return out


# ---------------------------------------------------------------------------- grouping
def test_clones_group_per_item_and_greedy_never_mixes_with_sampled():
    reqs = [
        _instance(0, SAMPLED),
        _instance(1, SAMPLED),
        _instance(0, GREEDY, repeats=1),
        _instance(0, GREEDY, task="u", repeats=1),
    ]
    cloned = _cloned(reqs)
    groups = group_requests(cloned)
    assert [(g.task, g.doc_id, g.settings.greedy, g.n_requests, g.n_samples) for g in groups] == [
        ("t", 0, False, 16, 16),
        ("t", 1, False, 16, 16),
        ("t", 0, True, 1, 1),
        ("u", 0, True, 1, 1),
    ]
    assert groups[0].positions == list(range(16)) and groups[2].positions == [32]
    samples = [[f"a{i}" for i in range(16)], [f"b{i}" for i in range(16)], ["g"], ["h"]]
    out = fan_out(groups, samples, len(cloned))
    assert out[:16] == samples[0] and out[16:32] == samples[1] and out[32:] == ["g", "h"]


def test_different_settings_or_context_are_different_items():
    a, b = _instance(0, SAMPLED), _instance(0, {**SAMPLED, "top_p": 0.5})
    c = _instance(0, SAMPLED, ctx="another prompt")
    assert len(group_requests(_cloned([a, b, c]))) == 3
    # A greedy group with repeats gets its one sample everywhere.
    g = _instance(3, GREEDY, repeats=4)
    groups = group_requests(_cloned([g]))
    assert groups[0].n_samples == 1 and fan_out(groups, [["x"]], 4) == ["x"] * 4


def test_generation_kwargs_are_normalised_and_bad_ones_rejected():
    s = normalize_gen_kwargs({"max_new_tokens": "12", "temperature": 0.7, "top_p": 1.0, "until": "</answer>"})
    assert s == SamplingSettings(max_new_tokens=12, temperature=0.7, top_p=None, top_k=None, until=("</answer>",))
    assert (
        normalize_gen_kwargs({"temperature": 0, "top_p": 0.9}).fingerprint()
        == normalize_gen_kwargs({"do_sample": False}).fingerprint()
    )
    with pytest.raises(ValueError, match="top_a"):
        normalize_gen_kwargs({"top_a": 1.1}, where="task x")
    # The one definition of decoding: unstated settings are off, contradictions are refused.
    assert normalize_gen_kwargs(
        {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0}
    ) == normalize_gen_kwargs({"temperature": 0.7, "top_p": 0.9})
    assert normalize_gen_kwargs({"temperature": 0.7, "repetition_penalty": 1.05}).repetition_penalty == 1.05
    with pytest.raises(MedbridgeError, match="task x: .*do_sample=true with temperature=0"):
        normalize_gen_kwargs({"do_sample": True, "temperature": 0}, where="task x")
    with pytest.raises(ValueError, match="num_beams"):
        normalize_gen_kwargs({"num_beams": 4})
    with pytest.raises(ValueError, match="chat model"):
        group_requests([("ctx", {"temperature": 0}, None, 0, "t", "test")])


# ---------------------------------------------------------------------------- cache
def test_sample_cache_stores_each_sample_and_keys_on_everything(tmp_path):
    cache = SampleCache(tmp_path / "c.sqlite")
    key = ItemKey("model", "prompt", "task", "0", 7, "gen")
    cache.put(key, {0: ("first", 3), 2: ("third", 4)})
    assert cache.get(key, 3) == {0: ("first", 3), 2: ("third", 4)}
    assert (cache.hits, cache.misses, cache.writes) == (2, 1, 2)
    for other in (
        ItemKey("model2", "prompt", "task", "0", 7, "gen"),
        ItemKey("model", "prompt", "task", "0", 8, "gen"),
        ItemKey("model", "prompt", "task", "0", 7, "gen2"),
        ItemKey("model", "prompt2", "task", "0", 7, "gen"),
        ItemKey("model", "prompt", "task", "1", 7, "gen"),
    ):
        assert cache.get(other, 3) == {}
    # Another process (connection) sees the rows; the journal is WAL.
    again = SampleCache(tmp_path / "c.sqlite")
    assert again.get(key, 1) == {0: ("first", 3)}
    assert sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.count(run_id=cache.run_id) == 2 and again.count(run_id=again.run_id) == 0


def test_corrupt_sample_cache_is_moved_aside_and_the_run_goes_on(tmp_path, caplog):
    path = tmp_path / "cache" / "medbridge_samples.sqlite"
    path.parent.mkdir()
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with caplog.at_level("WARNING"):
        cache = SampleCache(path)
    aside = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept, never deleted
    assert str(path) in caplog.text  # reported by path
    key = ItemKey("model", "prompt", "task", "0", 7, "gen")
    cache.put(key, {0: ("fresh", 1)})
    assert SampleCache(path).get(key, 1) == {0: ("fresh", 1)}


def test_sample_cache_works_from_the_prepare_thread_and_the_generating_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cache = SampleCache(tmp_path / "c.sqlite")
    key = ItemKey("model", "prompt", "task", "0", 7, "gen")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(cache.put, key, {0: ("a", 1)}).result()
        assert pool.submit(cache.get, key, 1).result() == {0: ("a", 1)}
    assert cache.get(key, 1) == {0: ("a", 1)}
    cache.close()


def test_fingerprints_follow_weights_config_prompt_and_pixels(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(tmp_path / "memo"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"a": 1}')
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    fp = model_fingerprint(ckpt)
    assert model_fingerprint(ckpt) == fp
    # New weights of the same size and the same mtime (a copy that kept its timestamps) are new weights.
    stat = weights.stat()
    weights.write_bytes(b"y" * 10)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fp2 = model_fingerprint(ckpt)
    assert fp2 != fp
    (ckpt / "config.json").write_text('{"a": 2}')
    assert model_fingerprint(ckpt) != fp2
    assert model_identity(ckpt)["files"]["model.safetensors"] == __import__("hashlib").sha256(b"y" * 10).hexdigest()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_fingerprint(tmp_path)
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    assert prompt_fingerprint("t", "q", [red]) == prompt_fingerprint("t", "q", [Image.new("RGB", (8, 8), "red")])
    assert (
        len(
            {
                prompt_fingerprint("t", "q", [red]),
                prompt_fingerprint("t", "q", [blue]),
                prompt_fingerprint("t", "q2", [red]),
                prompt_fingerprint("u", "q", [red]),
            }
        )
        == 4
    )


def _hub_snapshot(hub: Path, repo: str, revision: str, weights: bytes) -> None:
    """One revision of ``repo`` in the Hugging Face cache layout (blobs, snapshots/<revision>, refs/main)."""
    import hashlib

    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / revision).mkdir(parents=True)
    for name, data in (("config.json", b'{"a": 1}'), ("model.safetensors", weights)):
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (folder / "snapshots" / revision / name).symlink_to(Path("../../blobs") / blob.name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)


def test_a_hub_id_is_fingerprinted_by_the_revision_and_weights_it_loads(tmp_path, monkeypatch):
    """New weights behind the same hub name (a new revision in the cache) give a new fingerprint."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(tmp_path / "memo"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    _hub_snapshot(hub, "org/tiny", "a" * 40, b"weights v1")
    first = model_identity("org/tiny")
    assert first["revision"] == "a" * 40 and first["name"] == "org/tiny"
    _hub_snapshot(hub, "org/tiny", "b" * 40, b"weights v2")
    second = model_identity("org/tiny")
    assert second["revision"] == "b" * 40 and second["fingerprint"] != first["fingerprint"]
    with pytest.raises(MedbridgeError, match="org/absent: neither a checkpoint folder nor a model"):
        model_identity("org/absent")


# ---------------------------------------------------------------------------- engine (tiny model)
def _cpu_engine(model_dir):
    from medbridge.harness_ext.backend.transformers_engine import TransformersEngine

    # float32 so that one-row and K-row forwards agree to the last bit with transformers' generate.
    return TransformersEngine(
        str(model_dir),
        device="cpu",
        dtype="float32",
        attn_implementation="sdpa",
        min_pixels=3136,
        max_pixels=50176,
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return _cpu_engine(tiny_model_dir)


def _image(seed: int, size: int = 56) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


def _prompt(engine, seed: int = 0):
    return engine.render(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": _image(seed)},
                    {"type": "text", "text": "Question: which class? Options: A. x B. y"},
                ],
            }
        ]
    )


@pytest.mark.slow
def test_one_prefill_draws_what_generate_draws_from_k_prefills(engine):
    """Same seed, same settings: our sampler (1 prefill + expanded KV cache) returns exactly the
    K sequences of transformers' generate(num_return_sequences=K), which prefills K times.
    Token counts come from instrumenting the model's forward, not from either implementation."""
    import torch
    from medbridge.harness_ext.backend.engines import Job
    from medbridge.harness_ext.backend.instrument import count_forward_tokens

    prompt, k = _prompt(engine), 6
    inputs = engine.encode([prompt])
    length = inputs["input_ids"].shape[1]
    settings = normalize_gen_kwargs({"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.9})
    cls = type(engine.model)
    with count_forward_tokens(cls) as ours:
        samples = engine.generate([Job(prompt, k, settings, seed=11)])[0]
    torch.manual_seed(11)
    with count_forward_tokens(cls) as theirs:
        out = engine.model.generate(
            **inputs,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            top_k=None,
            num_return_sequences=k,
            max_new_tokens=8,
            eos_token_id=engine.eos_ids,
            pad_token_id=engine.pad_id,
        )
    reference = [
        engine.tokenizer.decode([t for t in row[length:].tolist() if t not in engine.eos_ids], skip_special_tokens=True)
        for row in out
    ]
    assert [s.text for s in samples] == reference
    assert len(set(reference)) == k  # distinct under sampling
    assert (ours.prefill_calls, ours.prefill_tokens) == (1, length)
    assert (theirs.prefill_calls, theirs.prefill_tokens) == (1, k * length)
    assert all(rows == k and seq == 1 for rows, seq, cached in ours.calls if cached)


@pytest.mark.slow
def test_greedy_samples_are_identical_and_equal_generate(engine):
    from medbridge.harness_ext.backend.engines import Job

    prompt = _prompt(engine, seed=3)
    inputs = engine.encode([prompt])
    samples = engine.generate([Job(prompt, 4, normalize_gen_kwargs({"max_new_tokens": 8, "temperature": 0}), seed=0)])[
        0
    ]
    # The checkpoint's generation_config carries Qwen's repetition_penalty 1.05 and top_k 1: generate()
    # agrees with us when handed a config built from scratch by the one definition of decoding.
    decoding = normalize_gen_kwargs({"max_new_tokens": 8, "temperature": 0}).decoding()
    config = generation_config_from_scratch(decoding, {"eos_token_id": engine.eos_ids, "pad_token_id": engine.pad_id})
    saved, engine.model.generation_config = engine.model.generation_config, config
    try:
        out = engine.model.generate(**inputs, generation_config=config)
    finally:
        engine.model.generation_config = saved
    length = inputs["input_ids"].shape[1]
    assert [s.text for s in samples] == [engine.tokenizer.decode(out[0, length:], skip_special_tokens=True)] * 4
    # top_k=1 sampling can only pick the argmax: the sampler's filters reach greedy.
    top1 = engine.generate(
        [Job(prompt, 3, normalize_gen_kwargs({"max_new_tokens": 8, "temperature": 1.3, "top_k": 1}), seed=5)]
    )[0]
    assert [s.text for s in top1] == [samples[0].text] * 3


@pytest.mark.slow
def test_seed_makes_sampling_reproducible(engine):
    from medbridge.harness_ext.backend.engines import Job

    prompt = _prompt(engine, seed=4)
    settings = normalize_gen_kwargs({"max_new_tokens": 6, "temperature": 1.0})
    first = [s.text for s in engine.generate([Job(prompt, 4, settings, seed=1)])[0]]
    assert [s.text for s in engine.generate([Job(prompt, 4, settings, seed=1)])[0]] == first
    assert [s.text for s in engine.generate([Job(prompt, 4, settings, seed=2)])[0]] != first


@pytest.fixture(scope="module")
def answering_engine(tiny_answering_model_dir):
    """The engine on the tiny model fine-tuned to answer <answer>X</answer>, X read from the image (conftest):
    its greedy answers differ between items, so the equality tests below compare answers, not constants."""
    return _cpu_engine(tiny_answering_model_dir)


def _answering_prompts(engine, n: int, *, same_text: bool = False):
    """BloodMNIST-style items laid out as the tasks lay them out, images of n classes from dark to bright
    (the answering model's letter follows brightness). ``same_text``: one prompt text for all (as the
    items of an ordinal set share theirs) and 224 px images; else rotated, shortened option lists and
    56-112 px images, so a batch needs padding."""
    from medbridge.harness_ext.prompts import format_mcq_prompt, lettered
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.data import question_text
    from medbridge.tasks.medmnist.fixtures import class_image

    spec, rng, prompts = get_set("blood"), np.random.default_rng(0), []
    for i in range(n):
        side = 224 if same_text else 56 + 28 * (i % 3)
        image = Image.fromarray(class_image(spec, (i * 7) // max(n - 1, 1), rng)).resize((side, side))
        options = list(spec.classes) if same_text else (list(spec.classes[i:]) + list(spec.classes[:i]))[: 8 - i % 3]
        content = [{"type": "image", "image": image},
                   {"type": "text", "text": format_mcq_prompt(question_text(spec), lettered(options))}]
        prompts.append(engine.render([{"role": "user", "content": content}]))
    return prompts


@pytest.mark.slow
def test_greedy_and_k_samples_share_one_prefill_and_equal_separate_runs(answering_engine):
    """Each item's greedy request and its K sampled requests: one prefill, and exactly the outputs of
    a separate greedy run and a separate sampled run. Two items prefilled together, with one prompt text
    and different images: their greedy answers differ, so a greedy twin decoded from another item's
    prefill (or two items merged into one prefill) cannot pass."""
    from medbridge.harness_ext.backend.engines import Job
    from medbridge.harness_ext.backend.instrument import count_forward_tokens

    engine = answering_engine
    jobs = []
    for i, prompt in enumerate(_answering_prompts(engine, 2, same_text=True)):
        jobs.append(Job(prompt, 1, normalize_gen_kwargs({"max_new_tokens": 6, "temperature": 0}), seed=0))
        jobs.append(
            Job(prompt, 16, normalize_gen_kwargs({"max_new_tokens": 10, "temperature": 0.7, "top_p": 0.9}), seed=3 + i)
        )
    separate = [[s.text for s in engine.generate([job])[0]] for job in jobs]
    engine.batch_size = 2
    try:
        with count_forward_tokens(type(engine.model)) as log:
            shared = [[s.text for s in x] for x in engine.generate(jobs)]
    finally:
        engine.batch_size = 1
    assert shared == separate
    greedy = [separate[0][0], separate[2][0]]
    assert greedy[0] != greedy[1] and all(g.startswith("<answer>") for g in greedy), greedy
    assert all(len(set(separate[k])) > 1 and set(separate[k]) != {greedy[k // 2]} for k in (1, 3))
    assert log.prefill_calls == 1 and log.calls[0][0] == 2  # two prompt rows prefilled for 2 x 17 rows of output
    assert all(rows == 34 for rows, _, cached in log.calls if cached)


@pytest.mark.slow
def test_items_batched_with_padding_give_the_outputs_of_batch_one(answering_engine):
    from medbridge.harness_ext.backend.engines import Job
    from medbridge.harness_ext.backend.instrument import count_forward_tokens

    engine = answering_engine
    prompts = _answering_prompts(engine, 5)
    jobs = []
    for i, prompt in enumerate(prompts):
        jobs.append(
            Job(
                prompt,
                4,
                normalize_gen_kwargs({"max_new_tokens": 5 + i, "temperature": 0.7, "top_p": 0.9}),
                seed=40 + i,
            )
        )
        jobs.append(Job(prompt, 1, normalize_gen_kwargs({"max_new_tokens": 7, "temperature": 0}), seed=0))
    assert len({int(engine.encode([p])["input_ids"].shape[1]) for p in prompts}) > 1  # padding is exercised
    single = [[s.text for s in engine.generate([job])[0]] for job in jobs]
    # The items' greedy answers differ (the answering model reads the image): a batch that hands one
    # item's answer to another cannot pass.
    assert len({single[2 * i + 1][0] for i in range(len(prompts))}) >= 3, single
    engine.batch_size = 8
    try:
        with count_forward_tokens(type(engine.model)) as log:
            batched = [[s.text for s in x] for x in engine.generate(jobs)]
    finally:
        engine.batch_size = 1
    assert batched == single
    assert log.prefill_calls == 1 and log.calls[0][0] == len(prompts)


@pytest.mark.slow
def test_checkpoint_sampling_defaults_never_reach_decoding(backend):
    """The tiny model carries Qwen2.5-VL's generation_config (top_k 1, top_p 0.001, temperature 0.1,
    repetition_penalty 1.05): the task's settings alone decide, so Pass@K samples differ, and the
    run records the effective settings per task."""
    config = backend.engine.model.generation_config
    assert (config.top_k, config.repetition_penalty) == (1, 1.05)
    reqs = [_instance(i, SAMPLED) for i in range(3)] + [_instance(0, GREEDY, task="g", repeats=1)]
    backend.task_dict["g"] = backend.task_dict["t"]
    out = [r.text for r in backend.generate_until(_cloned(reqs))]
    distinct = [len(set(out[i * 16 : (i + 1) * 16])) for i in range(3)]
    assert sum(distinct) / 3 > 1, distinct
    recorded = effective_for("t")
    assert recorded is not None
    assert (recorded["temperature"], recorded["top_p"], recorded["top_k"], recorded["repetition_penalty"]) == (
        0.7,
        0.9,
        0,
        1.0,
    )
    assert effective_for("g")["do_sample"] is False


def test_rank_padding_copies_do_not_grow_an_items_group():
    """lmms-eval evens out ranks with new Instances copying a request: they are their own group, so
    the original item keeps its K samples (and its seed)."""
    original = _instance(0, SAMPLED, repeats=4)
    copy = _instance(0, SAMPLED, repeats=4)
    groups = group_requests(_cloned([original, copy]))
    assert [g.n_samples for g in groups] == [4, 4]


# ---------------------------------------------------------------------------- the lmms-eval model, in-process
@pytest.fixture
def backend(tiny_model_dir, tmp_path):
    from medbridge.harness_ext.backend.model import MedbridgeVLM

    lm = MedbridgeVLM(
        pretrained=str(tiny_model_dir),
        device="cpu",
        dtype="float32",
        attn_implementation="sdpa",
        min_pixels=3136,
        max_pixels=50176,
        seed=5,
        cache_dir=str(tmp_path / "cache"),
    )
    docs = [{"image": _image(i), "prompt": f"Question {i}: which class? Options: A. x B. y"} for i in range(3)]
    lm.task_dict = {"t": {"test": docs}}
    return lm


@pytest.mark.slow
def test_backend_answers_each_item_from_one_prefill_and_then_from_the_cache(backend, tiny_model_dir):
    from medbridge.harness_ext.backend.instrument import count_forward_tokens
    from medbridge.harness_ext.backend.model import MedbridgeVLM

    reqs = [
        _instance(0, SAMPLED),
        _instance(1, SAMPLED),
        _instance(2, GREEDY, repeats=1),
        _instance(0, GREEDY, repeats=3),
    ]
    cloned = _cloned(reqs)
    with count_forward_tokens(type(backend.engine.model)) as log:
        out = [r.text for r in backend.generate_until(cloned)]
    assert len(out) == len(cloned) == 16 + 16 + 1 + 3
    assert len(set(out[:16])) > 1 and len(set(out[16:32])) > 1 and out[:16] != out[16:32]
    assert len(set(out[33:36])) == 1  # greedy clones
    # Doc 0's greedy request and its 16 samples share one prefill: 3 prefills for 4 groups.
    assert log.prefill_calls == 3 and log.prefill_tokens == sum(backend.engine.stats.prompt_lengths)
    assert backend.engine.stats.prefill_prompts == 3 and backend.engine.stats.jobs == 4
    assert backend.cache.writes == 16 + 16 + 1 + 1

    # A second backend on the same cache (a resumed run) generates nothing and returns the same answers.
    again = MedbridgeVLM(
        pretrained=str(tiny_model_dir),
        device="cpu",
        dtype="float32",
        attn_implementation="sdpa",
        min_pixels=3136,
        max_pixels=50176,
        seed=5,
        cache_dir=str(backend.cache.path.parent),
    )
    again.task_dict = backend.task_dict
    with count_forward_tokens(type(again.engine.model)) as log2:
        assert [r.text for r in again.generate_until(cloned)] == out
    assert log2.prefill_calls == 0 and again.items_from_cache == 4 and again.cache.hits == 34

    # Another seed is another set of samples (greedy ones are shared: they do not depend on the seed).
    other = MedbridgeVLM(
        pretrained=str(tiny_model_dir),
        device="cpu",
        dtype="float32",
        attn_implementation="sdpa",
        min_pixels=3136,
        max_pixels=50176,
        seed=6,
        cache_dir=str(backend.cache.path.parent),
    )
    other.task_dict = backend.task_dict
    res = [r.text for r in other.generate_until(cloned)]
    assert res[:32] != out[:32] and res[32:] == out[32:] and other.items_generated == 2


@pytest.mark.slow  # imports lmms-eval and torch
def test_backend_rejects_unknown_model_args(tmp_path):
    from medbridge.harness_ext.backend.model import MedbridgeVLM

    # Refused before any model is loaded (the folder holds none).
    with pytest.raises(ValueError, match="temperatur"):
        MedbridgeVLM(pretrained=str(tmp_path), temperatur=0.7)
    with pytest.raises(ValueError, match="'transformers', 'vllm' or 'openai', got 'tgi'"):
        MedbridgeVLM(pretrained=str(tmp_path), engine="tgi")


def test_manifest_names_the_chat_class():
    from lmms_eval.models.registry_v2 import ModelRegistryV2
    from medbridge.harness_ext.backend import MODEL_ID, manifests

    registry = ModelRegistryV2()
    for m in manifests():
        registry.register_manifest(m)
    cls = registry.get_model_class(MODEL_ID)
    assert cls.__name__ == "MedbridgeVLM" and cls.is_simple is False
    assert cls.__module__ == "medbridge.harness_ext.backend.model"


@pytest.mark.slow
def test_each_request_gets_its_own_generation_settings(backend):
    short = _instance(1, {**SAMPLED, "max_new_tokens": 2}, repeats=4)
    long = _instance(1, {**SAMPLED, "max_new_tokens": 9}, repeats=4)
    out = backend.generate_until(_cloned([short, long]))
    assert all(r.token_counts.output_tokens <= 2 for r in out[:4])
    assert max(r.token_counts.output_tokens for r in out[4:]) > 2
    assert backend.engine.stats.jobs == 2


def test_the_model_fingerprint_reaches_the_records_and_the_leaderboard_pin(tmp_path, monkeypatch):
    """Two checkpoints under one name with different weights: different records, different provenance."""
    from medbridge.harness_ext import scoring
    from medbridge.harness_ext.backend.identity import clear_model, record_model
    from medbridge.leaderboard.pins import task_provenance

    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(tmp_path / "memo"))
    doc = {"item_id": "bloodmnist/test/1", "dataset": "blood", "answer_letter": "B", "task": "medmnist_mcq_blood",
           "options": '{"A": "basophil", "B": "eosinophil"}'}
    provenance = []
    for weights in (b"v1", b"v2"):
        ckpt = tmp_path / weights.decode()
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(weights)
        record_model(model_identity(ckpt))
        record = scoring.process_greedy(doc, ["<answer>B</answer>"])["acc1"]
        assert record["model"]["fingerprint"] == model_fingerprint(ckpt) and "files" not in record["model"]
        provenance.append(task_provenance({}, "medmnist_mcq_blood", [record])["model"])
    assert provenance[0] != provenance[1]
    clear_model()
    assert "model" not in scoring.process_greedy(doc, ["<answer>B</answer>"])["acc1"]
    assert "model" not in task_provenance({}, "medmnist_mcq_blood", [])
