"""Build a tiny, random-weight Qwen2.5-VL checkpoint laid out like a real Hub checkpoint.

The checkpoint is meant for offline tests and demos: it loads through
``AutoProcessor`` / ``Qwen2_5_VLForConditionalGeneration.from_pretrained``, through
lmms-eval's ``qwen2_5_vl`` backend, through TRL, and (with head_dim 32) through a
vLLM CPU server.  Its outputs are noise; only the plumbing is real.

What gets written into ``out_dir``:

* ``config.json`` / ``generation_config.json`` / ``model.safetensors`` (float32),
* a byte-level BPE tokenizer trained here on a generated corpus
  (``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``),
* the image/video processor configs and ``chat_template.jinja``, plus ``preprocessor_config.json`` in
  the flat form real Qwen2.5-VL checkpoints ship (``min_pixels`` / ``max_pixels``, patch and merge
  sizes), which older loaders and vLLM read,
* ``medbridge_tiny_model.json``, a marker with the builder version and seed; it is
  written last, so its presence means the build finished.

Configs follow the real checkpoints (Qwen/Qwen2.5-VL-7B-Instruct) except where CPU speed needs
otherwise: ``generation_config.json`` holds the real sampling defaults (do_sample, temperature 0.1,
top_p 0.001, top_k 1, repetition_penalty 1.05), so tests see what a real checkpoint would impose on a
backend that does not set every decoding field; the pixel limits are the real ``min_pixels`` (3136) but
a ``max_pixels`` of 224x224 = 50176 instead of the real 12845056, so a MedMNIST image is 64 image tokens
and anything larger is shrunk (a real checkpoint would keep up to 3584x3584).

Heavy libraries (torch, transformers, tokenizers) are imported lazily so that importing
this module (e.g. from the CLI) stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError

# 2: generation_config carries the Qwen2.5-VL sampling defaults; 3: preprocessor_config.json as real checkpoints
TINY_MODEL_VERSION = "3"
MARKER_FILENAME = "medbridge_tiny_model.json"


class OutputFolderError(MedbridgeError, FileExistsError):
    """``out_dir`` is a file, or a folder with other content we must not replace."""

# Special tokens in the same order (and so the same relative ids) as the real Qwen2.5-VL
# tokenizer, placed right after the trained BPE vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

# Target size of the trained BPE vocabulary (byte alphabet included, specials excluded).
BPE_VOCAB_SIZE = 1400
# The model's embedding table is padded up to a multiple of this (as Qwen does).
VOCAB_MULTIPLE = 64

# Image geometry: 14px patches, 2x2 merge -> one LLM token per 28x28 pixels.
# A 224x224 image -> 16x16 = 256 patches -> 64 image tokens.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56  # 3136, as the real checkpoints
MAX_PIXELS = 224 * 224  # 50176 (real: 12845056): anything bigger is shrunk, keeping CPU runs fast

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim = 32 (vLLM's smallest supported head size)
    "num_key_value_heads": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "use_cache": True,
    # mrope splits head_dim/2 = 16 rotary frequencies over (temporal, height, width).
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
}

VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "hidden_act": "silu",
    "in_channels": 3,
    "out_hidden_size": 64,  # must equal the text hidden size
    "patch_size": PATCH_SIZE,
    "spatial_merge_size": MERGE_SIZE,
    "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
    "initializer_range": 0.02,
}

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen-style ChatML template.  ``content`` may be a string or a list of typed parts;
# image parts become <|vision_start|><|image_pad|><|vision_end|> (the processor then
# expands the single pad token to one token per merged patch).
_CHAT_TEMPLATE_SOURCE = """
{%- for message in messages -%}
    {%- if loop.first and message['role'] != 'system' -%}
        {{- '<|im_start|>system\\n__SYSTEM__<|im_end|>\\n' -}}
    {%- endif -%}
    {{- '<|im_start|>' + message['role'] + '\\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- elif message['content'] is not none -%}
        {%- for part in message['content'] -%}
            {%- if part is string -%}
                {{- part -}}
            {%- elif part['type'] in ('image', 'image_url') or 'image' in part or 'image_url' in part -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif part['type'] == 'video' or 'video' in part -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in part -%}
                {{- part['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""
CHAT_TEMPLATE = _CHAT_TEMPLATE_SOURCE.replace("__SYSTEM__", DEFAULT_SYSTEM_PROMPT).strip()

# Files that must exist for a build to count as complete (besides the marker).
REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


_CLINICAL_WORDS = _words(
    """
abdomen abdominal abnormal abscess acute adenocarcinoma adenoma adipose adrenal airway
anemia aneurysm angiography anterior aorta aortic appendicitis artery arthritis asthma
atelectasis atrial atrophy axial background basophil benign biopsy bladder blood bone
brain breast bronchial bronchitis calcification carcinoma cardiac cardiomegaly cartilage
cell cells cerebral chest chronic cirrhosis clinical colon colorectal consolidation
coronal coronary cortex cough cyst cystic debris dermatofibroma dermoscopy diabetes
diagnosis diagnostic disease distal drusen edema effusion embolism emphysema endoscopy
eosinophil epithelium erythroblast esophagus examination femur fever fibrosis finding
findings fluid fracture fundus gallbladder gastric glaucoma gland granulocyte heart
hemorrhage hepatic hernia histology histopathology hyperplasia hypertension imaging
immature infarction infection infiltrate inflammation injury intestine keratosis kidney
lesion lesions leukemia liver lobe lung lymph lymphocyte lymphoma malignant mammogram
mass melanoma membrane metastasis monocyte mucosa muscle myocardial necrosis neoplasm
nerve neutrophil nevus nodule normal opacity organ ovary pancreas pathology patient
pelvis pericardial platelet pleural pneumonia pneumothorax polyp posterior prostate
pulmonary radiograph radiology renal respiratory retina retinal retinopathy rib sagittal
scan sclerosis severity skin spine spleen stenosis stomach stroma stroke symptom
symptoms syndrome thorax thyroid tissue tomography trachea tuberculosis tumor ultrasound
upper urinary uterus vascular vein ventricle vertebra x-ray CT MRI PET ECG
"""
)

_GENERAL_WORDS = _words(
    """
a about after all also an and answer any are as at based be because before best both but
by can case choose choice class could describe does each either following for from given
has have how if image in is it its likely look may more most no not of on one only option
or other patient picture please present question reason select shown shows single slide
so step than that the their then there these this those to type under using view visible
was what when where which while who why will with without would yes you your correct
incorrect first second third final letter explain think carefully category label
"""
)

_MCQ_WORDS = ["Question", "Options", "Answer", "Choices", "Reasoning", "Final", "Image", "Label"]
_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
_LETTERS = [chr(ord("A") + i) for i in range(16)]  # A..P


def _sentence(rng: random.Random, n_min: int = 6, n_max: int = 14) -> str:
    pool = _CLINICAL_WORDS + _GENERAL_WORDS
    words = [rng.choice(pool) for _ in range(rng.randint(n_min, n_max))]
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice([".", "?", "!", ",", ";", ":"])


def build_corpus(n_docs: int = 1500) -> list[str]:
    """Return a deterministic synthetic corpus (independent of the weight seed)."""
    rng = random.Random(20240611)
    docs: list[str] = []
    # Every word on its own, capitalised and not, with and without a leading space.
    for word in _CLINICAL_WORDS + _GENERAL_WORDS + _MCQ_WORDS + _TAGS + _LETTERS:
        docs.append(f"{word} {word.capitalize()} {word.lower()}")
    for _ in range(n_docs):
        n_opts = rng.randint(2, 16)
        options = rng.sample(_CLINICAL_WORDS, n_opts)
        letter = rng.choice(_LETTERS[:n_opts])
        lines = [f"Question: {_sentence(rng)}", "Options:"]
        lines += [f"{_LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
        lines.append("Answer with the option's letter from the given choices directly.")
        doc = "\n".join(lines)
        style = rng.randrange(3)
        if style == 0:
            doc += f"\nAnswer: {letter}"
        elif style == 1:
            doc += f"\n<think>{_sentence(rng)} {_sentence(rng)}</think>\n<answer>{letter}</answer>"
        else:
            doc += (
                f"\n<think>\n{_sentence(rng)}\n</think>\n<answer>{letter}. {options[_LETTERS.index(letter)]}</answer>"
            )
        # Numbers, ages, measurements and punctuation.
        doc += (
            f"\nA {rng.randint(1, 99)}-year-old patient, {rng.randint(0, 999)} mm "
            f"({rng.random():.3f}), score {rng.randint(0, 100)}% [{rng.choice(_LETTERS)}] "
            f"{{'label': {rng.randint(0, 15)}}} \"{rng.choice(_CLINICAL_WORDS)}\" / - + = * # @ & ~"
        )
        docs.append(doc)
    return docs


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def _train_backend_tokenizer():
    """Train a byte-level BPE ``tokenizers.Tokenizer`` with Qwen2's pre-tokenization."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    # Use the exact split regex that transformers' Qwen2Tokenizer rebuilds its pipeline with,
    # so tokenizer.json and the reloaded Qwen2Tokenizer tokenize identically.
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    # Specials go after the BPE vocabulary, in Qwen's order.  The think/answer tags are
    # deliberately *not* added: they must survive decode(skip_special_tokens=True).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _build_tokenizer(work_dir: Path):
    """Train the tokenizer, save it as a Qwen2Tokenizer checkpoint and reload it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    backend = _train_backend_tokenizer()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
        add_prefix_space=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(work_dir)
    # Also ship vocab.json + merges.txt, like real Qwen checkpoints (for slow-tokenizer users).
    backend.model.save(str(work_dir))
    _finalize_tokenizer_config(work_dir, backend)

    tokenizer = AutoTokenizer.from_pretrained(work_dir)
    _check_tokenizer(tokenizer, backend)
    return tokenizer, backend


def _finalize_tokenizer_config(work_dir: Path, backend) -> None:
    """Make tokenizer_config.json look like a real Qwen2.5-VL one.

    transformers saves the wrapper's generic class name plus a few load-time keys; we
    name ``Qwen2Tokenizer`` (what AutoTokenizer maps ``qwen2_5_vl`` to), list the extra
    special tokens and add ``added_tokens_decoder`` for loaders that still read it.
    """
    cfg_path = work_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for key in ("backend", "is_local", "local_files_only", "_commit_hash"):
        cfg.pop(key, None)
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["eos_token"] = EOS_TOKEN
    cfg["pad_token"] = PAD_TOKEN
    cfg["extra_special_tokens"] = [t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, EOS_TOKEN)]
    cfg["added_tokens_decoder"] = {
        str(backend.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_tokenizer(tokenizer, backend) -> None:
    probe = ("<|im_start|>user\n<think>x</think><answer>B</answer>"
             "<|vision_start|><|image_pad|><|vision_end|>Question: A or B?<|im_end|>")
    if tokenizer(probe).input_ids != backend.encode(probe).ids:
        raise RuntimeError("reloaded tokenizer does not match the trained tokenizer.json")
    for token in SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != backend.token_to_id(token):
            raise RuntimeError(f"special token {token} has a different id after reloading")
    if tokenizer.eos_token != EOS_TOKEN or tokenizer.pad_token != PAD_TOKEN:
        raise RuntimeError("reloaded tokenizer has the wrong eos/pad tokens")


# --------------------------------------------------------------------------------------
# Model / processor
# --------------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _make_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TEXT_CONFIG)
    text.update(
        vocab_size=_round_up(len(tokenizer), VOCAB_MULTIPLE),
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=True,
        rope_parameters=dict(TEXT_CONFIG["rope_parameters"]),
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.dtype = "float32"
    return config


def _make_generation_config(tokenizer):
    from transformers import GenerationConfig

    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    # The sampling defaults every Qwen2.5-VL checkpoint ships in generation_config.json: a backend that
    # leaves any of them in place (top_k 1 above all) turns Pass@K into K copies of one answer.
    return GenerationConfig(
        bos_token_id=pad,
        eos_token_id=[eos, pad],
        pad_token_id=pad,
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    )


def _make_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor

    geometry = {
        "patch_size": PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    }
    image_processor = Qwen2VLImageProcessor(**geometry)
    try:
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(**geometry)
    except ImportError:  # pragma: no cover - video processors need torchvision
        video_processor = None
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _make_model(config, seed: int):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    # Seed a forked RNG so building does not disturb the caller's torch random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.eval()
    return model


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete_checkpoint(path: str | Path, seed: int | None = None) -> bool:
    """True if ``path`` holds a finished build of this builder version (and ``seed``)."""
    path = Path(path)
    marker = _read_marker(path)
    if not isinstance(marker, dict) or marker.get("builder_version") != TINY_MODEL_VERSION:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    if not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    return (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file()


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny random-weight Qwen2.5-VL checkpoint into ``out_dir`` and return it.

    Idempotent: if ``out_dir`` already holds a complete build with the same builder version
    and seed, nothing is rebuilt (unless ``overwrite``).  Builds are deterministic per seed.
    The build happens in a temporary sibling directory that is renamed into place, so an
    interrupted build never leaves a half-written checkpoint behind.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if not overwrite and is_complete_checkpoint(out_dir, seed):
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputFolderError(f"{out_dir} exists and is not a directory; pass a folder path")
        if any(out_dir.iterdir()) and not (out_dir / MARKER_FILENAME).exists():
            # Never delete a directory we did not create, unless asked to and it is at
            # least a model checkpoint (guards against e.g. ``--out . --overwrite``).
            if not overwrite:
                raise OutputFolderError(
                    f"{out_dir} is not empty and was not built by medbridge; pass overwrite to replace it"
                )
            if not (out_dir / "config.json").exists():
                raise OutputFolderError(
                    f"{out_dir} is a non-empty directory that is not a model checkpoint; refusing to replace it"
                )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _build_into(work, seed)
        if out_dir.exists():
            if not overwrite and is_complete_checkpoint(out_dir, seed):
                # Another process finished the same build first; keep theirs.
                shutil.rmtree(work, ignore_errors=True)
                return out_dir
            shutil.rmtree(out_dir)
        try:
            os.replace(work, out_dir)
        except OSError:
            if is_complete_checkpoint(out_dir, seed):
                shutil.rmtree(work, ignore_errors=True)
                return out_dir
            raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _build_into(work: Path, seed: int) -> None:
    tokenizer, backend = _build_tokenizer(work)
    processor = _make_processor(tokenizer)
    config = _make_config(tokenizer)
    model = _make_model(config, seed)
    model.generation_config = _make_generation_config(tokenizer)
    _save_quietly(model, work)
    # Saving the processor re-saves the tokenizer (and drops our tokenizer_config edits).
    processor.save_pretrained(work)
    _finalize_tokenizer_config(work, backend)
    _add_legacy_config_keys(work / "config.json")
    _write_flat_preprocessor_config(work)
    marker = {
        "builder": "medbridge.tiny_model.build_tiny_qwen2_5_vl",
        "builder_version": TINY_MODEL_VERSION,
        "seed": seed,
        "architecture": "Qwen2_5_VLForConditionalGeneration",
        "vocab_size": config.text_config.vocab_size,
        "tokenizer_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    (work / MARKER_FILENAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # mkdtemp makes a 0700 directory; give the checkpoint ordinary permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)
    for child in work.iterdir():
        os.chmod(child, 0o666 & ~umask)


def _save_quietly(model, path: Path) -> None:
    """save_pretrained without transformers' one-shard progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _add_legacy_config_keys(config_path: Path) -> None:
    """Duplicate a few settings under their pre-v5 names for older loaders (e.g. vLLM).

    transformers 5 writes ``rope_parameters`` / ``dtype``; older Qwen2.5-VL loaders look
    for ``rope_scaling`` (with ``mrope_section``), ``rope_theta`` and ``torch_dtype``.
    transformers 5 reads these aliases back to the same values.
    """
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    text = cfg["text_config"]
    rope = text.get("rope_parameters") or {}
    text.setdefault("rope_theta", rope.get("rope_theta", 1000000.0))
    # Same content as rope_parameters, so transformers 5 reads back an identical config.
    text.setdefault("rope_scaling", dict(rope))
    cfg.setdefault("torch_dtype", cfg.get("dtype", "float32"))
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_flat_preprocessor_config(work: Path) -> None:
    """``preprocessor_config.json`` as the real checkpoints ship it (flat, with min/max_pixels).

    transformers 5 saves the image processor inside ``processor_config.json``; vLLM, older
    transformers and lmms-eval's ``min_pixels``/``max_pixels`` overrides read this file. Both files
    state the same limits (``size`` is transformers 5's name for them)."""
    nested = json.loads((work / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
    flat = {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "image_mean": nested["image_mean"],
        "image_std": nested["image_std"],
        "image_processor_type": nested["image_processor_type"],
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (work / "preprocessor_config.json").write_text(json.dumps(flat, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medbridge build-tiny-model",
        description="Build a tiny random-weight Qwen2.5-VL checkpoint for offline tests and demos.",
    )
    parser.add_argument("--out", required=True, help="output directory for the checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a matching checkpoint exists")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        path = build_tiny_qwen2_5_vl(args.out, seed=args.seed, overwrite=args.overwrite)
    except OutputFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
