"""Tests for medbridge.tiny_model: the tiny random-weight Qwen2.5-VL checkpoint builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from medbridge.tiny_finetune import FINE_TUNE_VERSION, FineTuneSettings
from medbridge.tiny_model import (
    MARKER_FILENAME,
    SPECIAL_TOKENS,
    TINY_MODEL_VERSION,
    OutputFolderError,
    build_tiny_qwen2_5_vl,
    builder_key,
    cached_tiny_qwen2_5_vl,
    is_complete_checkpoint,
    main,
)


def load_file(path: str) -> dict:
    from safetensors.torch import load_file as load

    return load(path)


MCQ_TEXT = "Question: Which finding is shown?\nOptions:\nA. pneumonia\nB. normal\nAnswer with the option's letter."


@pytest.fixture(scope="module")
def ckpt(request, tmp_path_factory) -> Path:
    """The seed-0 checkpoint: conftest's session-wide build when there is one, else our own."""
    try:
        shared = Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None and is_complete_checkpoint(shared, seed=0):
        return shared
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", seed=0)


@pytest.fixture(scope="module")
def processor(ckpt):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def model(ckpt):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, attn_implementation="sdpa").eval()


def _image(color=(120, 40, 60)) -> Image.Image:
    return Image.new("RGB", (224, 224), color)


def _mcq_inputs(processor, n_images: int = 1):
    images = [_image((40 * i, 90, 200 - 40 * i)) for i in range(n_images)]
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": MCQ_TEXT}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return text, processor(text=[text], images=images, return_tensors="pt")


# ---------------------------------------------------------------- layout & config


@pytest.mark.slow
def test_checkpoint_layout_and_marker(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    for required in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "preprocessor_config.json",
        MARKER_FILENAME,
    ):
        assert required in names
    assert not any(n.endswith(".bin") for n in names)  # safetensors only
    marker = json.loads((ckpt / MARKER_FILENAME).read_text())
    assert marker["builder_version"] == TINY_MODEL_VERSION == "3"
    assert marker["seed"] == 0
    total = sum(p.stat().st_size for p in ckpt.iterdir())
    assert total < 20 * 1024 * 1024
    assert is_complete_checkpoint(ckpt, seed=0)
    assert not is_complete_checkpoint(ckpt, seed=1)
    # No half-built temp directories left next to the checkpoint.
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]


@pytest.mark.slow
def test_config_is_tiny_and_consistent_with_tokenizer(ckpt):
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    cfg = AutoConfig.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    text, vision = cfg.text_config, cfg.vision_config
    assert cfg.model_type == "qwen2_5_vl"
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 2)
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim >= 32
    assert text.num_attention_heads % text.num_key_value_heads == 0
    assert text.intermediate_size == 128
    assert text.max_position_embeddings == 4096
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert cfg.tie_word_embeddings
    assert text.vocab_size % 64 == 0 and text.vocab_size >= len(tok)
    assert (vision.depth, vision.num_heads, vision.intermediate_size) == (2, 2, 128)
    assert vision.out_hidden_size == text.hidden_size
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert vision.window_size == 112 and list(vision.fullatt_block_indexes) == [1]
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert cfg.image_token_id == ids["<|image_pad|>"]
    assert cfg.video_token_id == ids["<|video_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    gen = GenerationConfig.from_pretrained(ckpt)
    assert gen.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert gen.pad_token_id == ids["<|endoftext|>"]
    raw = json.loads((ckpt / "config.json").read_text())
    assert raw["dtype"] == "float32"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert "lm_head.weight" not in weights  # tied to the embeddings


# ---------------------------------------------------------------- tokenizer & template


@pytest.mark.slow
def test_tokenizer_special_tokens_and_tag_roundtrip(processor):
    tok = processor.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert 1000 <= len(tok) <= 2100
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # Qwen order, contiguous
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag not in tok.all_special_tokens
    text = "<think>x</think><answer>B</answer>"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    chat = "<|im_start|>assistant\n<think>The lung is clear.</think>\n<answer>B</answer><|im_end|>"
    enc = tok.encode(chat)
    assert tok.convert_tokens_to_ids("<|im_start|>") == enc[0]
    assert tok.convert_tokens_to_ids("<|im_end|>") == enc[-1]
    assert (
        tok.decode(enc, skip_special_tokens=True) == "assistant\n<think>The lung is clear.</think>\n<answer>B</answer>"
    )
    for word in ("Question", "Options", "Answer", " pneumonia", " A", " P", "7"):
        assert tok.decode(tok.encode(word)) == word


@pytest.mark.slow
def test_chat_template_rendering(processor):
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    rendered = processor.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<answer>A</answer>"},
        ],
        tokenize=False,
        add_generation_prompt=False,
    )
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<answer>A</answer><|im_end|>\n"
    )
    # The tokenizer carries the same template (TRL and friends may use either).
    assert processor.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False).endswith(
        "<|im_start|>user\nHi<|im_end|>\n"
    )


# ---------------------------------------------------------------- model


@pytest.mark.slow
def test_generate_with_image_on_cpu(processor, model):
    import torch

    text, inputs = _mcq_inputs(processor)
    assert text.count("<|image_pad|>") == 1
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64
    assert tuple(inputs["image_grid_thw"][0].tolist()) == (1, 16, 16)
    assert inputs["pixel_values"].shape[0] == 256
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1 and prompt_len < out.shape[1] <= prompt_len + 8
    assert isinstance(processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)[0], str)


@pytest.mark.slow
def test_generation_config_carries_qwen2_5_vl_sampling_defaults(ckpt):
    """The real checkpoints' generation_config.json, field for field: what a backend inherits when it
    does not set every decoding field itself."""
    saved = json.loads((ckpt / "generation_config.json").read_text())
    assert {k: saved.get(k) for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")} == {
        "do_sample": True, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}


@pytest.mark.slow
def test_processor_has_real_checkpoint_pixel_limits_capped_at_224(ckpt, processor):
    flat = json.loads((ckpt / "preprocessor_config.json").read_text())
    # Real Qwen2.5-VL: min_pixels 3136, max_pixels 12845056; ours caps at 224x224 for CPU speed.
    assert (flat["min_pixels"], flat["max_pixels"]) == (3136, 224 * 224)
    assert (flat["patch_size"], flat["merge_size"], flat["temporal_patch_size"]) == (14, 2, 2)
    assert flat["image_processor_type"] == "Qwen2VLImageProcessor" and flat["processor_class"] == "Qwen2_5_VLProcessor"
    nested = json.loads((ckpt / "processor_config.json").read_text())["image_processor"]
    assert nested["size"] == flat["size"] == {"shortest_edge": 3136, "longest_edge": 224 * 224}
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (3136, 224 * 224)

    def grid(side: int, **limits) -> tuple[int, ...]:
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(ckpt, **limits) if limits else processor
        return tuple(proc.image_processor(images=[_image()] if side == 224 else [Image.new("RGB", (side, side))],
                                          return_tensors="pt")["image_grid_thw"][0].tolist())

    assert grid(224) == (1, 16, 16)  # MedMNIST's 224 px: 64 image tokens
    assert grid(448) == (1, 16, 16)  # larger images shrink to the cap
    assert grid(28) == (1, 4, 4)  # smaller ones grow to min_pixels (56x56)
    assert grid(448, min_pixels=3136, max_pixels=12845056) == (1, 32, 32)  # a caller's limits still win


@pytest.mark.slow
def test_inherited_top_k_collapses_sampling_unless_overridden(processor, model):
    """The trap the real defaults set: asking only for temperature/top_p keeps the checkpoint's top_k 1,
    so every sample is the greedy answer; overriding top_k and repetition_penalty brings diversity."""
    import torch

    _, inputs = _mcq_inputs(processor)

    def distinct(**decoding) -> int:
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, num_return_sequences=6, **decoding)
        return len({tuple(row) for row in out[:, inputs["input_ids"].shape[1]:].tolist()})

    assert distinct(do_sample=True, temperature=0.7, top_p=0.9) == 1
    assert distinct(do_sample=True, temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.0) > 1


@pytest.mark.slow
def test_sampling_and_multiple_return_sequences(processor, model):
    import torch

    _, inputs = _mcq_inputs(processor)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=6, do_sample=True, temperature=0.7, top_p=0.9, num_return_sequences=4
        )
    assert out.shape[0] == 4
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 6


@pytest.mark.slow
def test_two_images_and_text_only_batch(processor, model):
    import torch

    _, inputs = _mcq_inputs(processor, n_images=2)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 128
    texts = [
        processor.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("Hi", "A longer question about the chest radiograph?")
    ]
    batch = processor(text=texts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2


# ---------------------------------------------------------------- lmms-eval backend


@pytest.mark.slow
def test_lmms_eval_qwen2_5_vl_backend(ckpt):
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

    lm = Qwen2_5_VL(
        pretrained=str(ckpt),
        device="cpu",
        device_map="cpu",
        attn_implementation="sdpa",
        min_pixels=56 * 56,
        max_pixels=224 * 224,
    )
    assert lm.tokenizer.eos_token == "<|im_end|>"
    assert lm.processor.image_processor.size["longest_edge"] == 224 * 224

    # Drive its real generate_until path with a fake one-document task.
    docs = [{"image": _image(), "question": MCQ_TEXT}]
    lm.task_dict = {"tiny": {"test": docs}}

    def doc_to_messages(doc):
        return [
            {
                "role": "user",
                "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}],
            }
        ]

    request = Instance(
        request_type="generate_until",
        arguments=("", doc_to_messages, {"max_new_tokens": 4, "temperature": 0}, 0, "tiny", "test"),
        idx=0,
        metadata={"task": "tiny", "doc_id": 0, "repeats": 1},
    )
    results = lm.generate_until([request])
    assert len(results) == 1
    text = getattr(results[0], "text", results[0])
    assert isinstance(text, str)


# ---------------------------------------------------------------- builder behaviour


@pytest.mark.slow
def test_rebuild_is_skipped_when_complete(ckpt):
    before = {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()}
    assert build_tiny_qwen2_5_vl(ckpt, seed=0) == ckpt
    assert {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()} == before


@pytest.mark.slow
def test_determinism_and_seed_sensitivity(ckpt, tmp_path):
    import torch

    reference = load_file(str(ckpt / "model.safetensors"))
    other = tmp_path / "other"
    build_tiny_qwen2_5_vl(other, seed=1)
    seed1 = load_file(str(other / "model.safetensors"))
    assert reference.keys() == seed1.keys()
    assert not torch.equal(reference["model.embed_tokens.weight"], seed1["model.embed_tokens.weight"])
    assert json.loads((other / MARKER_FILENAME).read_text())["seed"] == 1
    # The tokenizer does not depend on the weight seed.
    assert (other / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()

    # Asking for seed 0 in the same directory rebuilds it; the result matches the first build.
    assert build_tiny_qwen2_5_vl(other, seed=0) == other.resolve()
    rebuilt = load_file(str(other / "model.safetensors"))
    assert rebuilt.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, rebuilt[name]), name
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    ):
        assert (other / name).read_bytes() == (ckpt / name).read_bytes(), name


@pytest.mark.slow
def test_overwrite_rebuilds_and_foreign_dirs_are_protected(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match="was not built by medbridge"):
        build_tiny_qwen2_5_vl(foreign)
    with pytest.raises(FileExistsError):  # not a checkpoint: never deleted, even with overwrite
        build_tiny_qwen2_5_vl(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["--out", str(foreign)]) == 2  # a user error (OutputFolderError), not a bug
    assert f"medbridge build-tiny-model: error: {foreign} is not empty" in capsys.readouterr().err

    out = tmp_path / "cli"
    assert main(["--out", str(out), "--seed", "0"]) == 0
    # The path is the last line: under capsys, a notice printed by a library imported during the build
    # (deepspeed's, when this test runs first) reaches the captured stdout; that stdout holds the path alone
    # in a real process is test_cli_conventions' test_build_tiny_model_stdout_is_the_path_alone.
    assert capsys.readouterr().out.splitlines()[-1] == str(out.resolve())
    first = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["--out", str(out)]) == 0  # already complete: no rebuild
    assert (out / "model.safetensors").stat().st_mtime_ns == first
    (out / "stray.txt").write_text("x")
    assert main(["--out", str(out), "--overwrite"]) == 0
    assert not (out / "stray.txt").exists()
    assert is_complete_checkpoint(out, seed=0)


def test_import_is_lightweight():
    code = "import sys, medbridge.tiny_model; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- the fine-tuned model (answers depend on the item)


@pytest.fixture(scope="module")
def tuned(tiny_answering_model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = Path(tiny_answering_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa").eval()
    return path, AutoProcessor.from_pretrained(path), model


@pytest.fixture(scope="module")
def kit_items(tmp_path_factory) -> list[dict]:
    """The kit's fixtures as the tasks load them: 4 items of each MedMNIST set, 2 of each VQA benchmark."""
    from medbridge.tasks.medmnist import data as medmnist_data
    from medbridge.tasks.medmnist.catalog import SETS
    from medbridge.tasks.medmnist.fixtures import build_all
    from medbridge.tasks.medvqa import data as medvqa_data
    from medbridge.tasks.medvqa.catalog import SETS as VQA_SETS
    from medbridge.tasks.medvqa.fixtures import build_medvqa_fixture

    root = tmp_path_factory.mktemp("kit")
    build_all(root / "medmnist", test_per_class=1, train_per_class=1, val_per_class=1)
    vqa = build_medvqa_fixture(root / "medvqa", 2)
    items = []
    for spec in SETS:
        for item in medmnist_data.build_items(spec.name, "test", root=root / "medmnist")[:4]:
            items.append({**item, "images": [item["image"].convert("RGB")]})
    for spec in VQA_SETS:
        for item in medvqa_data.build_items(spec.name, source=str(vqa))[0]:
            items.append({**item, "images": [im.convert("RGB") for im in medvqa_data.doc_images(item)]})
    return items


def _inputs(processor, images, prompt: str):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return processor(text=[text], images=images, return_tensors="pt")


def _generate(model, processor, inputs, n: int = 1, **decoding) -> list[str]:
    """Decode with a generation config built from nothing (the checkpoint's carries Qwen's top_k 1)."""
    import torch
    from transformers import GenerationConfig

    saved = model.generation_config
    config = GenerationConfig(max_new_tokens=8, num_return_sequences=n, eos_token_id=saved.eos_token_id,
                              pad_token_id=saved.pad_token_id, **decoding)
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _greedy(model, processor, inputs) -> str:
    return _generate(model, processor, inputs, do_sample=False)[0]


@pytest.mark.slow  # the first session builds the model (~12 s of CPU)
def test_fine_tuned_model_keeps_the_real_checkpoint_configs(tiny_answering_model_dir, ckpt):
    """Same generation_config (Qwen2.5-VL's sampling defaults), chat template, tokenizer and processor pixel
    limits as the random build; config.json differs only in an untied lm_head (as Qwen2.5-VL-7B)."""
    tuned_dir = Path(tiny_answering_model_dir)
    for name in ("generation_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "processor_config.json", "vocab.json", "merges.txt"):
        assert (tuned_dir / name).read_bytes() == (ckpt / name).read_bytes(), name
    tuned_config, random_config = (json.loads((d / "config.json").read_text()) for d in (tuned_dir, ckpt))
    assert tuned_config["tie_word_embeddings"] is False and tuned_config["text_config"]["tie_word_embeddings"] is False
    for config in (tuned_config, random_config):
        config.pop("tie_word_embeddings")
        config["text_config"].pop("tie_word_embeddings")
    assert tuned_config == random_config
    assert "lm_head.weight" in load_file(str(tuned_dir / "model.safetensors"))
    record = json.loads((tuned_dir / MARKER_FILENAME).read_text())["fine_tune"]
    assert record["version"] == FINE_TUNE_VERSION and record["settings"]["steps"] == FineTuneSettings().steps
    assert record["last_loss"] < record["first_loss"] / 10
    assert is_complete_checkpoint(tuned_dir, seed=0, fine_tune=True)
    assert not is_complete_checkpoint(tuned_dir, seed=0, fine_tune=False)
    assert not is_complete_checkpoint(ckpt, seed=0, fine_tune=True)


@pytest.mark.slow
def test_fine_tuned_greedy_answers_depend_on_the_item(tuned, kit_items):
    """Over the kit's fixtures: readable answers, most of them <answer>X</answer> with a letter of the item's
    options (the project's extractor reads it), several different ones, and different ones within a set."""
    from medbridge.harness_ext.answers import extract_choice

    _, processor, model = tuned
    answers = [_greedy(model, processor, _inputs(processor, item["images"], item["prompt"])) for item in kit_items]
    assert all(a.strip() for a in answers)
    letters = [extract_choice(a, json.loads(item["options"])) for a, item in zip(answers, kit_items)]
    assert sum(letter is not None for letter in letters) >= 0.8 * len(kit_items), list(zip(answers, letters))
    assert len(set(answers)) >= 4, answers
    per_set: dict[str, set[str]] = {}
    for item, answer in zip(kit_items, answers):
        per_set.setdefault(item["dataset"], set()).add(answer)
    assert sum(len(seen) > 1 for seen in per_set.values()) >= len(per_set) // 2, per_set


@pytest.mark.slow
def test_fine_tuned_answer_follows_the_images_brightness(tuned):
    """The construction's promise: the same prompt with a darker or brighter image gets an earlier or later
    letter (the letter is read from the image, not from the prompt)."""
    from medbridge.harness_ext.prompts import format_mcq_prompt, lettered

    _, processor, model = tuned
    prompt = format_mcq_prompt("Which class is shown?", lettered([f"class {i}" for i in range(8)]))
    letters = []
    for level in (40, 90, 140, 190, 240):
        answer = _greedy(model, processor, _inputs(processor, [Image.new("RGB", (224, 224), (level,) * 3)], prompt))
        assert answer.startswith("<answer>") and answer.endswith("</answer>"), answer
        letters.append(answer[len("<answer>")])
    assert letters == sorted(letters) and len(set(letters)) >= 3, letters


@pytest.mark.slow
def test_fine_tuned_samples_differ_from_greedy_and_between_samples(tuned, kit_items):
    import torch

    _, processor, model = tuned
    items = kit_items[::6]
    differ_from_greedy, distinct = 0, []
    torch.manual_seed(0)
    for item in items:
        inputs = _inputs(processor, item["images"], item["prompt"])
        greedy = _greedy(model, processor, inputs)
        samples = _generate(model, processor, inputs, n=8, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                            repetition_penalty=1.0)
        differ_from_greedy += sum(s != greedy for s in samples)
        distinct.append(len(set(samples)))
    assert sum(d > 1 for d in distinct) >= 0.8 * len(items), distinct
    assert differ_from_greedy >= len(items) * 8 // 4, differ_from_greedy


@pytest.mark.slow
def test_fine_tuned_build_is_deterministic_and_cached_by_content(tiny_answering_model_dir, tmp_path):
    """A fresh build in another folder is byte-identical to the session's cached one (whose folder name is
    the content key), and the cache hands the same folder back without building."""
    cached = Path(tiny_answering_model_dir)
    assert cached.name.endswith(builder_key(0, fine_tune=True))
    assert len({builder_key(0, True), builder_key(1, True), builder_key(0, False)}) == 3
    fresh = build_tiny_qwen2_5_vl(tmp_path / "fresh", seed=0, fine_tune=True)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (fresh / name).read_bytes() == (cached / name).read_bytes(), name
    before = (cached / "model.safetensors").stat().st_mtime_ns
    assert cached_tiny_qwen2_5_vl(cached.parent, seed=0, fine_tune=True) == cached
    assert (cached / "model.safetensors").stat().st_mtime_ns == before
    assert build_tiny_qwen2_5_vl(fresh, seed=0, fine_tune=False) == fresh.resolve()  # asks for the other variant
    assert is_complete_checkpoint(fresh, seed=0, fine_tune=False) and "lm_head.weight" not in load_file(
        str(fresh / "model.safetensors"))


@pytest.mark.slow
def test_fine_tuned_model_answers_through_lmms_eval_qwen2_5_vl(tiny_answering_model_dir, kit_items):
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

    lm = Qwen2_5_VL(pretrained=str(tiny_answering_model_dir), device="cpu", device_map="cpu",
                    attn_implementation="sdpa", min_pixels=56 * 56, max_pixels=224 * 224)
    docs = [item for item in kit_items if item["dataset"] == "blood"][:2]
    lm.task_dict = {"tiny": {"test": docs}}

    def doc_to_messages(doc):
        content = [{"type": "image", "url": im} for im in doc["images"]] + [{"type": "text", "text": doc["prompt"]}]
        return [{"role": "user", "content": content}]

    requests = [Instance(request_type="generate_until",
                         arguments=("", doc_to_messages, {"max_new_tokens": 8, "temperature": 0}, i, "tiny", "test"),
                         idx=0, metadata={"task": "tiny", "doc_id": i, "repeats": 1}) for i in range(len(docs))]
    texts = [getattr(r, "text", r) for r in lm.generate_until(requests)]
    assert all(t.startswith("<answer>") and t.endswith("</answer>") for t in texts), texts
