"""Make the tiny random Qwen2.5-VL answer each item differently: ``<answer>X</answer>``, X read from the image.

The random tiny model answers the same run of newlines for every prompt, so a test comparing two ways of
producing its greedy answers (shared prefill vs. separate runs, batch 8 vs. batch 1, vLLM vs.
transformers, two processes vs. one) compares constants and cannot fail. ``fine_tune`` turns it into a
model whose answer letter follows the image's brightness, in seconds on one core:

1. **Constructed image path.** At random initialisation attention is nearly uniform, so a 4-token image is
   2 % of what the answer position sees, and the vision tower's LayerNorms keep little of a picture's
   brightness: a brief fine-tune rarely learns to read the image (tried: 1 in 3 settings did). So the
   path is built: the vision tower carries a constant offset (brightness survives its LayerNorms as a
   direction), every image token carries a marker direction ``u`` (the merger's output bias), and head 0
   of the first layer, at the ``<answer`` token, looks at the image: its query reads that token, its key
   reads ``u`` in the slowest rotary pairs (their rotation over a few thousand positions is below a
   milliradian, so the score ignores distance). Its slice of ``o_proj`` is a least-squares read-out
   writing the image's brightness along one residual direction.
2. **Brief fine-tune** of the layers after that path (the path itself frozen) on items drawn like the
   kit's fixtures (tasks/*/fixtures.py's image generators, harness_ext/prompts.py's prompt layout): the
   answer format, and a letter drawn from a bell around ``brightness x 5`` (over the item's own letters).
   The bell's width keeps the neighbouring letters likely, so samples at temperature 0.7 differ from each
   other and from the greedy answer.

``lm_head`` is untied from the input embeddings (as in Qwen2.5-VL-7B; the 3B ties them) so the input
embedding of ``<answer`` stays what head 0's query reads. Everything is seeded and runs on one thread:
a build is deterministic for a given torch version.
"""

from __future__ import annotations

import io
import math
import random
import string
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Recorded in the checkpoint's marker; bump it when a change here changes the weights.
FINE_TUNE_VERSION = "1"

ANSWER_TEMPLATE = "<answer>{letter}</answer>"
END_OF_TURN = "<|im_end|>"
MAX_LETTERS = 16  # A..P, the letters the tiny tokenizer has an ">X" token for

# The answer letter: a bell of this width (in letters) around brightness x BRIGHTNESS_LETTERS, where
# brightness is the greyscale mean rescaled from [BRIGHTNESS_RANGE] to [0, 1] (the fixtures' range).
BRIGHTNESS_LETTERS = 5
BRIGHTNESS_RANGE = (0.15, 0.85)
LETTER_SPREAD = 0.8

# The constructed image path (see the module docstring).
VISION_OFFSET_NORM = 6.0  # about the norm of a uniform patch's embedding: brightness stays a direction
IMAGE_MARK_NORM = 4.0  # image tokens leave the merger with norms ~0.1-1: u dominates their direction
IMAGE_KEY_SCALE = 1.0
ANSWER_QUERY_SCALE = 0.2  # score ~8 for image keys at <answer: ~99 % of head 0 on the image; ~5 % elsewhere
BRIGHTNESS_RESIDUAL_STD = 0.5  # the brightness direction's spread in the residual, over images

# Question wordings and option texts for the VQA-style items (the kit's VQA fixture asks questions of
# these kinds; its images come from the fixture's own generator).
_VQA_QUESTIONS = (
    "What imaging modality is shown?",
    "Which structure is marked by the arrow?",
    "What is the most likely diagnosis?",
    "Which organ is abnormal?",
    "Is there evidence of an abnormality in this image?",
    "Given the two views, what is the most likely diagnosis?",
)
_VQA_OPTION_WORDS = (
    "CT", "MRI", "Ultrasound", "X-ray", "Aorta", "Pulmonary trunk", "Left atrium", "Esophagus", "Trachea",
    "Sarcoidosis", "Tuberculosis", "Lymphoma", "Histoplasmosis", "Silicosis", "Liver", "Lung", "Heart",
    "Pneumothorax", "Pleural effusion", "Atelectasis", "Pneumonia", "Pulmonary edema", "Lung abscess",
    "Bronchiectasis", "Emphysema", "Pulmonary embolism", "Lung cancer", "Yes", "No",
)  # fmt: skip
_VQA_MAX_OPTIONS = 10


@dataclass(frozen=True)
class FineTuneSettings:
    steps: int = 80
    batch_size: int = 8
    learning_rate: float = 1e-2
    warmup_steps: int = 10
    # MedMNIST-style images are drawn at 224 px (as the fixtures) and shrunk to one of these sides: small
    # ones keep a step cheap, 224 keeps the 64-token geometry of real runs in the mix.
    image_sides: tuple[int, ...] = field(default=(56, 112, 224))
    medmnist_fraction: float = 0.6
    readout_images: int = 64  # images for the least-squares brightness read-out
    seed: int = 0


# --------------------------------------------------------------------------------------
# Training items
# --------------------------------------------------------------------------------------


def brightness(image) -> float:
    """The greyscale mean of ``image`` in [0, 1]."""
    import numpy as np

    return float(np.asarray(image.convert("L"), dtype=np.float64).mean()) / 255.0


def letter_weights(image, n_options: int) -> list[float]:
    """The answer distribution taught for an image: a bell over the item's letters around its brightness."""
    low, high = BRIGHTNESS_RANGE
    level = min(max((brightness(image) - low) / (high - low), 0.0), 1.0)
    centre = level * BRIGHTNESS_LETTERS - 0.5
    weights = [math.exp(-((j - centre) ** 2) / (2 * LETTER_SPREAD**2)) for j in range(n_options)]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True)
class Example:
    image: Any  # PIL.Image
    prompt: str
    n_options: int

    @property
    def weights(self) -> list[float]:
        return letter_weights(self.image, self.n_options)

    @property
    def target(self) -> str:
        """The answer as written (its letter token is scored against ``weights``; the tokens around the
        letter are the same for every letter)."""
        weights = self.weights
        return ANSWER_TEMPLATE.format(letter=string.ascii_uppercase[weights.index(max(weights))])


def _medmnist_example(rng: random.Random, np_rng, sides: tuple[int, ...]) -> Example:
    from PIL import Image

    from medbridge.harness_ext.prompts import format_mcq_prompt, lettered
    from medbridge.tasks.medmnist.catalog import SETS
    from medbridge.tasks.medmnist.data import question_text
    from medbridge.tasks.medmnist.fixtures import class_image

    spec = rng.choice(SETS)
    image = Image.fromarray(class_image(spec, rng.randrange(spec.n_classes), np_rng)).convert("RGB")
    side = rng.choice(sides)
    if side != image.width:
        image = image.resize((side, side), Image.BILINEAR)
    options = list(spec.classes)
    if spec.rule != "ordinal":
        rng.shuffle(options)
    return Example(image, format_mcq_prompt(question_text(spec), lettered(options)), spec.n_classes)


def _vqa_example(rng: random.Random) -> Example:
    from PIL import Image

    from medbridge.harness_ext.prompts import format_mcq_prompt, lettered
    from medbridge.tasks.medvqa.catalog import SETS
    from medbridge.tasks.medvqa.fixtures import answer_image

    n_options = rng.randint(2, _VQA_MAX_OPTIONS)
    letter = string.ascii_uppercase[rng.randrange(n_options)]
    benchmark = rng.choice(SETS).name
    image = Image.open(io.BytesIO(answer_image(letter, benchmark, rng.randrange(3)))).convert("RGB")
    question = f"{rng.choice(_VQA_QUESTIONS)} (case {rng.randrange(50)})"
    options = lettered(rng.sample(_VQA_OPTION_WORDS, n_options))
    return Example(image, format_mcq_prompt(question, options), n_options)


def training_examples(n: int, settings: FineTuneSettings) -> list[Example]:
    """``n`` examples, the same ones for the same settings."""
    import numpy as np

    rng = random.Random(f"tiny-finetune:{settings.seed}")
    np_rng = np.random.default_rng([settings.seed, 20])
    return [
        _medmnist_example(rng, np_rng, settings.image_sides)
        if rng.random() < settings.medmnist_fraction
        else _vqa_example(rng)
        for _ in range(n)
    ]


def answer_token_ids(tokenizer) -> tuple[int, list[int]]:
    """The ``<answer`` token and the token carrying each letter A..P after it (the tiny BPE merges ">A")."""
    opener = None
    letters = []
    for letter in string.ascii_uppercase[:MAX_LETTERS]:
        ids = tokenizer(ANSWER_TEMPLATE.format(letter=letter)).input_ids
        pieces = [tokenizer.decode([i]) for i in ids]
        if len(ids) != 5 or pieces[0] != "<answer" or pieces[1] != f">{letter}":
            raise RuntimeError(f"the tiny tokenizer splits {ANSWER_TEMPLATE.format(letter=letter)!r} as {pieces}")
        opener = ids[0]
        letters.append(ids[1])
    return opener, letters


def _batch(processor, examples: list[Example]):
    """Right-padded chat inputs, the answer tokens' labels (-100 elsewhere) and each row's letter position."""
    import torch

    texts, n_target = [], []
    for ex in examples:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex.prompt}]}]
        rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        texts.append(rendered + ex.target + END_OF_TURN)
        n_target.append(len(processor.tokenizer(ex.target + END_OF_TURN).input_ids))
    enc = processor(
        text=texts, images=[ex.image for ex in examples], return_tensors="pt", padding=True, padding_side="right"
    )
    labels = torch.full_like(enc["input_ids"], -100)
    letter_at = []
    for row, n in enumerate(n_target):
        end = int(enc["attention_mask"][row].sum())
        labels[row, end - n : end] = enc["input_ids"][row, end - n : end]
        letter_at.append(end - n + 1)  # after "<answer"
    return enc, labels, letter_at


def _loss(model, processor, examples: list[Example], letter_ids: list[int]):
    """Cross-entropy on the answer's tokens; the letter's term is taken against the item's bell."""
    import torch

    enc, labels, letter_at = _batch(processor, examples)
    logits = model(**enc).logits
    rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)  # logits[:, c] predict labels[:, c + 1]
    log_probs = torch.log_softmax(logits[rows, cols].float(), dim=-1)
    is_letter = torch.tensor([int(c) + 1 == letter_at[int(r)] for r, c in zip(rows, cols)])
    format_terms = -log_probs[~is_letter].gather(1, labels[rows, cols + 1][~is_letter, None]).squeeze(1)
    letter_terms = [
        -(torch.tensor(examples[int(r)].weights) * lp[letter_ids[: examples[int(r)].n_options]]).sum()
        for r, lp in zip(rows[is_letter], log_probs[is_letter])
    ]
    return torch.cat([format_terms, torch.stack(letter_terms)]).mean()


# --------------------------------------------------------------------------------------
# The constructed image path
# --------------------------------------------------------------------------------------


def _untie_lm_head(model) -> None:
    import torch

    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    model.config.text_config.tie_word_embeddings = False


def _look_at_image_before_letter(model, opener_id: int, seed: int) -> None:
    """Head 0 of layer 0: from the ``<answer`` token, attend to the image tokens (module docstring, 1)."""
    import torch

    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    half = head_dim // 2
    # rotate_half pairs dim i with i + half; the last pairs turn slowest (inv_freq = theta^(-2i/head_dim)).
    slow = [half - 2, half - 1, head_dim - 2, head_dim - 1]
    generator = torch.Generator().manual_seed(seed + 1)
    mark = torch.randn(text.hidden_size, generator=generator)
    offset = torch.randn(model.config.vision_config.hidden_size, generator=generator)
    language = model.model.language_model
    attn = language.layers[0].self_attn
    with torch.no_grad():
        model.model.visual.blocks[0].mlp.down_proj.bias += VISION_OFFSET_NORM * offset / offset.norm()
        model.model.visual.merger.mlp[-1].bias += IMAGE_MARK_NORM * mark / mark.norm()
        opener = language.embed_tokens.weight[opener_id]
        opener = opener / opener.pow(2).mean().sqrt() * language.layers[0].input_layernorm.weight
        for d in slow:  # rows 0..head_dim-1 of q_proj are head 0; k_proj has one head, shared
            attn.k_proj.weight[d] = IMAGE_KEY_SCALE * mark / mark.norm()
            attn.k_proj.bias[d] = 0.0
            attn.q_proj.weight[d] = ANSWER_QUERY_SCALE * opener / opener.norm()
            attn.q_proj.bias[d] = 0.0


def _write_brightness_into_residual(model, processor, settings: FineTuneSettings) -> None:
    """Head 0's slice of o_proj := a least-squares read-out of brightness, along a fixed unit direction."""
    import torch

    examples = training_examples(settings.readout_images, FineTuneSettings(seed=settings.seed + 1000))
    attn = model.model.language_model.layers[0].self_attn
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    captured = {}
    hook = attn.o_proj.register_forward_hook(lambda module, args, out: captured.__setitem__("x", args[0]))
    features, levels = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(examples), settings.batch_size):
                chunk = examples[start : start + settings.batch_size]
                enc, _, letter_at = _batch(processor, chunk)
                model(**enc)
                for row, pos in enumerate(letter_at):
                    features.append(captured["x"][row, pos - 1, :head_dim])
                    levels.append(brightness(chunk[row].image))
    finally:
        hook.remove()
    x = torch.stack(features).double()
    y = torch.tensor(levels, dtype=torch.float64)
    # o_proj has no bias, so the read-out must be blind to the features' mean (mostly the image mark):
    # fitted orthogonally to it, its output has mean zero over images.
    mean = x.mean(0)
    unit = mean / mean.norm()
    project = torch.eye(head_dim, dtype=torch.float64) - torch.outer(unit, unit)
    centred = (x - mean) @ project
    readout = project @ torch.linalg.lstsq(centred, (y - y.mean())[:, None]).solution[:, 0]
    spread = float((centred @ readout).std())
    generator = torch.Generator().manual_seed(settings.seed + 2)
    direction = torch.randn(attn.o_proj.weight.shape[0], generator=generator, dtype=torch.float64)
    direction /= direction.norm()
    with torch.no_grad():
        block = (BRIGHTNESS_RESIDUAL_STD / spread) * torch.outer(direction, readout)
        attn.o_proj.weight[:, :head_dim] = block.to(attn.o_proj.weight.dtype)


def _image_path_parameters(model) -> list:
    """What the construction set: the vision tower, the input embeddings (head 0's query reads one) and the
    first layer's input norm and attention projections. The fine-tune leaves them as built."""
    language = model.model.language_model
    attn = language.layers[0].self_attn
    modules = [model.model.visual, language.embed_tokens, language.layers[0].input_layernorm]
    modules += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
    return [p for module in modules for p in module.parameters()]


# --------------------------------------------------------------------------------------
# The fine-tune
# --------------------------------------------------------------------------------------


def fine_tune(model, processor, settings: FineTuneSettings | None = None) -> dict[str, Any]:
    """Build the image path and train the rest, in place (float32, one thread, seeded); return a record."""
    import torch

    settings = settings or FineTuneSettings()
    opener_id, letter_ids = answer_token_ids(processor.tokenizer)
    examples = training_examples(settings.steps * settings.batch_size, settings)
    threads = torch.get_num_threads()
    started = time.monotonic()
    losses: list[float] = []
    # One thread: a reduction split over another number of threads sums in another order.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            model.eval()
            _untie_lm_head(model)
            _look_at_image_before_letter(model, opener_id, settings.seed)
            _write_brightness_into_residual(model, processor, settings)
            frozen = {id(p) for p in _image_path_parameters(model)}
            trained = [p for p in model.parameters() if id(p) not in frozen]
            for p in model.parameters():
                p.requires_grad_(id(p) not in frozen)
            optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=0.0)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: min(1.0, (step + 1) / settings.warmup_steps) * max(0.05, 1 - step / settings.steps),
            )
            model.train()
            for step in range(settings.steps):
                chunk = examples[step * settings.batch_size : (step + 1) * settings.batch_size]
                loss = _loss(model, processor, chunk, letter_ids)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            model.eval()
            for p in model.parameters():
                p.requires_grad_(True)
    finally:
        torch.set_num_threads(threads)
    settings_record = asdict(settings)
    settings_record["image_sides"] = list(settings.image_sides)
    return {
        "version": FINE_TUNE_VERSION,
        "settings": settings_record,
        "first_loss": round(losses[0], 4),
        "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "seconds": round(time.monotonic() - started, 1),
    }
