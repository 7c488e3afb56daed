"""The tiny model's tokenizer: a small byte-level BPE trained on a synthetic clinical MCQ corpus, with
Qwen2.5-VL's special tokens in their real order and its ChatML chat template, so prompts tokenize and
render the way they do for the real checkpoints (medbridge/tiny_model.py builds the model around it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def build_tokenizer(work_dir: Path):
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
    finalize_tokenizer_config(work_dir, backend)

    tokenizer = AutoTokenizer.from_pretrained(work_dir)
    _check_tokenizer(tokenizer, backend)
    return tokenizer, backend


def finalize_tokenizer_config(work_dir: Path, backend) -> None:
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
