"""Training data builders: the evaluation's own items, in the shapes TRL's trainers read.

* MedMNIST: ``medbridge.tasks.medmnist.data.build_items(name, "train", ...)`` builds the items, so a
  training prompt is byte-for-byte the evaluation prompt (same question, option order rule, layout).
* PMC-VQA: the train CSV (Figure_path, Question, Answer, Choice A..D, Answer_label) becomes MCQ items
  with the shared prompt layout; each question gets an imaging-modality label from a classifier (the
  LLM judge's modality prompt, as in the paper; the keyword FALLBACK below only when asked for), labels
  are validated against the project's one vocabulary (``judges.prompts.MODALITIES``: the
  paper's categories plus "none"), cached in a JSONL file so an interrupted run resumes, and a
  modality-balanced subset is saved with ``save_to_disk`` next to a ``manifest.json`` (source, seed,
  label counts, what validation changed). A failed or unparsable classification is never a label: it is
  asked again, then left out and counted, and too many of them refuse the build.

GRPO rows: ``prompt`` (one user turn; TRL inserts the image), ``image``, ``answer_letter``, ``options``
(JSON), ``item_id``, ``dataset``. SFT rows add ``completion`` (one assistant turn in <think>/<answer> form).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medbridge.harness_ext import limited_io
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.prompts import PROMPT_VERSION, format_mcq_prompt

__all__ = [
    "balanced_subset",
    "bridge_answer",
    "build_pmc_vqa_subset",
    "grpo_row",
    "judge_modalities",
    "keyword_modalities",
    "keyword_modality",
    "label_modalities",
    "modality_vocabulary",
    "validate_label",
    "load_training_dataset",
    "medmnist_dataset",
    "medmnist_items",
    "read_pmc_vqa_csv",
    "sft_row",
]


class TrainingDataError(MedbridgeError, ValueError):
    """Training data that cannot be built as asked: names the file, row or setting at fault."""


# ---------------------------------------------------------------------------------------------
# Row shapes
# ---------------------------------------------------------------------------------------------


def grpo_row(item: dict[str, Any]) -> dict[str, Any]:
    """An evaluation item -> a GRPO row (conversational prompt; the image stays a separate column)."""
    return {
        "prompt": [{"role": "user", "content": item["prompt"]}],
        "image": item["image"],
        "answer_letter": item["answer_letter"],
        "options": item["options"] if isinstance(item["options"], str) else json.dumps(item["options"]),
        "question": item.get("question", ""),
        "item_id": item["item_id"],
        "dataset": item["dataset"],
    }


def bridge_answer(item: dict[str, Any]) -> str:
    """The SFT bridge target: a short templated rationale and the letter, in the evaluated format.

    Templated (no model-written reasoning is available for MedMNIST/PMC-VQA); its job is to teach the
    output format and the label vocabulary before GRPO sharpens the policy.
    """
    options = json.loads(item["options"]) if isinstance(item["options"], str) else dict(item["options"])
    letter = item["answer_letter"]
    return (
        f"<think>The question asks: {item.get('question', '').strip() or 'which option fits the image'} "
        f'Looking at the image, the finding that fits best is "{options[letter]}", which is option {letter}.</think>'
        f"<answer>{letter}</answer>"
    )


def sft_row(item: dict[str, Any]) -> dict[str, Any]:
    row = grpo_row(item)
    row["completion"] = [{"role": "assistant", "content": bridge_answer(item)}]
    return row


# ---------------------------------------------------------------------------------------------
# MedMNIST
# ---------------------------------------------------------------------------------------------


def medmnist_items(
    names: Sequence[str],
    *,
    split: str = "train",
    root: str | Path | None = None,
    per_class: int | str | None = None,
    seed: int = 1234,
) -> list[dict[str, Any]]:
    """Class-balanced, seeded items of each named set (the evaluation's builder), concatenated."""
    from medbridge.tasks.medmnist.data import build_items

    if not names:
        raise TrainingDataError("name at least one MedMNIST set")
    items: list[dict[str, Any]] = []
    for name in names:
        # per_class=None would mean the evaluation default; "all" is the whole split.
        items += build_items(name, split, root=root, per_class="all" if per_class is None else per_class, seed=seed)
    return items


def medmnist_dataset(
    names: Sequence[str],
    *,
    split: str = "train",
    root: str | Path | None = None,
    per_class: int | str | None = None,
    seed: int = 1234,
    max_samples: int | None = None,
    sft: bool = False,
):
    """A shuffled ``datasets.Dataset`` of GRPO (or SFT) rows from MedMNIST train items."""
    items = medmnist_items(names, split=split, root=root, per_class=per_class, seed=seed)
    random.Random(seed).shuffle(items)
    if max_samples is not None:
        items = items[:max_samples]
    return _to_dataset([sft_row(i) if sft else grpo_row(i) for i in items])


def _to_dataset(rows: list[dict[str, Any]]):
    import datasets

    if not rows:
        raise TrainingDataError("no training rows were built")
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())


# ---------------------------------------------------------------------------------------------
# PMC-VQA
# ---------------------------------------------------------------------------------------------

PMC_VQA_COLUMNS = ("Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label")
_CHOICE_PREFIX_RE = re.compile(r"^\s*[A-Da-d]\s*[:.)]\s*")

# The share of questions whose classification may fail (after retries) before a build is refused.
DEFAULT_MAX_FAILED_SHARE = 0.01

# A modality classifier labels a batch of questions (and, when asked, their image files) at once: one
# answer per question: a label, a word outside the vocabulary (counted, mapped to "none", never cached),
# or None where it could not label one (a failed request or an unparsable reply: retried, then left out).
ModalityClassifier = Callable[[Sequence[str], Sequence[str] | None], Sequence[str | None]]

# KEYWORD FALLBACK, used only when asked for (`--classifier keyword`): coarse rules on the question text
# standing in for the judge's modality prompt. First matching rule wins; labels are the paper's (MODALITIES).
_KEYWORD_RULES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (label, re.compile(pattern, re.IGNORECASE))
    for label, pattern in (
        ("oct", r"\boct\b|optical coherence"),
        ("ct", r"\bct\b|computed tomograph|\bcta\b|\bhrct\b"),
        ("mri", r"\bmri?\b|magnetic resonance|\bt1\b|\bt2\b|\bflair\b|diffusion[- ]weighted"),
        ("ultrasound", r"ultrasound|ultrasonograph|sonograph|\bdoppler\b|echocardiogra"),
        ("x-ray", r"x-?ray|radiograph|\bcxr\b|mammogra|fluoroscop"),
        ("microscopy", r"histolog|histopatholog|microscop|\bstain|h&e|immunohisto|cytolog|biopsy|magnification"),
        ("dermatology", r"dermoscop|dermatolog|skin lesion|\brash\b|\bmelanoma\b"),
    )
)


def modality_vocabulary() -> tuple[str, ...]:
    """The project's one modality vocabulary (the paper's categories plus "none"), kept by the judge."""
    from medbridge.judges.prompts import MODALITIES

    return tuple(MODALITIES)


def keyword_modality(question: str) -> str:
    """KEYWORD FALLBACK for one question: the first matching rule's label, "none" when no rule matches."""
    for label, pattern in _KEYWORD_RULES:
        if pattern.search(question or ""):
            return label
    return "none"


def keyword_modalities(questions: Sequence[str], images: Sequence[str] | None = None) -> list[str]:
    """KEYWORD FALLBACK classifier (batch form of :func:`keyword_modality`; images are not looked at)."""
    return [keyword_modality(q) for q in questions]


def judge_modalities(questions: Sequence[str], images: Sequence[str] | None = None) -> list[str | None]:
    """The paper's classifier: the LLM judge's modality prompt (MEDBRIDGE_JUDGE_* settings), cached and
    asked concurrently by the judge client. Per question: the label; the judge's own word when it named a
    modality outside the vocabulary (such as "pet"); None when it gave no usable answer (the request
    failed, or the reply was not the one line asked for)."""
    from medbridge.judges import modality_verdicts

    # reask: the builder asks only what is not labeled yet, so a question asked twice is a retry.
    verdicts = modality_verdicts(list(questions), images=list(images) if images is not None else None, reask=True)
    return [v.value if v.status in ("label", "unknown") else None for v in verdicts]


def _strip_choice(text: str) -> str:
    return _CHOICE_PREFIX_RE.sub("", text or "", count=1).strip()


def read_pmc_vqa_csv(csv_path: str | Path, image_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """PMC-VQA rows -> MCQ items (no images loaded). Errors name the file, row and field."""
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent / "images"
    items = []
    # A regular file only (a FIFO or /dev/zero would block or read without end).
    with limited_io.open_regular(csv_path, what="PMC-VQA CSV") as raw, \
            io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in PMC_VQA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TrainingDataError(f"{csv_path}: missing column(s) {missing}; expected {list(PMC_VQA_COLUMNS)}")
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            where = f"{csv_path}:{row_no}"
            options = {}
            for letter in "ABCD":
                text = _strip_choice(row[f"Choice {letter}"])
                if text:
                    options[letter] = text
            answer = (row["Answer_label"] or "").strip().upper()
            if answer not in options:
                raise TrainingDataError(
                    f"{where}: Answer_label {row['Answer_label']!r} is not one of the non-empty choices "
                    f"{sorted(options)}"
                )
            question = (row["Question"] or "").strip()
            if not question:
                raise TrainingDataError(f"{where}: empty Question")
            figure = (row["Figure_path"] or "").strip()
            if not figure:
                raise TrainingDataError(f"{where}: empty Figure_path")
            items.append(
                {
                    "item_id": f"pmc_vqa/train/{row_no - 2}",
                    "dataset": "pmc_vqa",
                    "row": row_no,
                    "figure_path": str(image_dir / figure),
                    "question": question,
                    "options": json.dumps(options),
                    "answer_letter": answer,
                    "prompt": format_mcq_prompt(question, options),
                    "prompt_version": PROMPT_VERSION,
                }
            )
    if not items:
        raise TrainingDataError(f"{csv_path}: no rows")
    return items


def _cache_key(item: dict[str, Any]) -> str:
    return hashlib.sha1(f"{Path(item['figure_path']).name}\n{item['question']}".encode()).hexdigest()


def validate_label(label: Any, vocabulary: Sequence[str]) -> tuple[str | None, str]:
    """(label, what happened): ("<label>", "ok") for a label in the vocabulary, ("none", "unknown") for a word
    outside it, (None, "failed") when the classifier gave no answer: a failure is never a label."""
    if label is None:
        return None, "failed"
    text = str(label).strip().lower()
    return (text, "ok") if text in vocabulary else ("none", "unknown")


def label_modalities(
    items: list[dict[str, Any]],
    classify: ModalityClassifier,
    cache_path: str | Path,
    *,
    labeler: str,
    with_images: bool = False,
    batch_size: int = 256,
    retries: int = 2,
) -> tuple[dict[str, str], dict[str, Any]]:
    """item_id -> validated modality label for every question that got an answer, and what happened.

    Questions not yet in the cache are classified in batches; a question the classifier could not label
    (None: a failed request or an unparsable reply) is asked again, up to ``retries`` more rounds, and
    then left out: it gets no label and is counted, never "none". A word outside the vocabulary becomes
    "none" and is counted by word. Only labels in the vocabulary are appended (and flushed) to the JSONL
    cache, so a killed run resumes where it stopped and a rerun asks again exactly the failed and
    out-of-vocabulary questions. Entries made by another labeler, or holding a word outside the
    vocabulary (older builds), are ignored, never mixed in.
    """
    if retries < 0:
        raise TrainingDataError(f"classification retries must be >= 0, got {retries}")
    vocabulary = modality_vocabulary()
    cache_path = Path(cache_path)
    known: dict[str, str] = {}
    if cache_path.exists():
        for line in cache_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # blank, or a line cut short by a crash: that question is asked again
            if isinstance(entry, dict) and entry.get("labeler") == labeler and entry.get("modality") in vocabulary:
                known[entry["key"]] = entry["modality"]
    from_cache = sum(_cache_key(item) in known for item in items)
    pending = {}  # key -> one item with that key (identical figure + question share a label)
    for item in items:
        if _cache_key(item) not in known:
            pending.setdefault(_cache_key(item), item)
    unknown: dict[str, str] = {}
    asked = retried = 0
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with cache_path.open("a", encoding="utf-8") as fh:
        for round_ in range(retries + 1):
            todo = list(pending.values())
            if not todo:
                break
            asked += len(todo)
            retried += len(todo) if round_ else 0
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                images = [item["figure_path"] for item in batch] if with_images else None
                answers = list(classify([item["question"] for item in batch], images))
                if len(answers) != len(batch):
                    raise TrainingDataError(
                        f"modality classifier {labeler!r} returned {len(answers)} labels for {len(batch)} questions"
                    )
                for item, raw in zip(batch, answers):
                    key = _cache_key(item)
                    label, outcome = validate_label(raw, vocabulary)
                    if outcome == "failed":
                        continue  # still pending: asked again next round
                    del pending[key]
                    if outcome == "unknown":
                        unknown[key] = str(raw).strip().lower()
                        continue  # counted and mapped to none, never cached as an answer
                    fh.write(json.dumps({"key": key, "modality": label, "labeler": labeler}) + "\n")
                    known[key] = label
                fh.flush()
    labels: dict[str, str] = {}
    unknown_counts: Counter = Counter()
    failed_rows: list[int] = []
    for item in items:
        key = _cache_key(item)
        if key in known:
            labels[item["item_id"]] = known[key]
        elif key in unknown:
            labels[item["item_id"]] = "none"
            unknown_counts[unknown[key]] += 1
        else:
            failed_rows.append(item["row"])
    return labels, {
        "labeled": len(labels),
        "from_cache": from_cache,
        "asked": asked,
        "retried": retried,
        "retries": retries,
        "unknown_to_none": dict(sorted(unknown_counts.items())),
        "failed": len(failed_rows),
        "failed_rows": failed_rows[:100],  # CSV rows (the first 100) left out of the build
    }


def balanced_subset(labels: dict[str, str], size: int, seed: int) -> list[str]:
    """``size`` ids spread as evenly as possible over the labels (seeded), sorted by label order.

    Every label gets an equal share; labels with fewer items give all they have and the spare places go
    round-robin to the labels that still have items.
    """
    if size < 1:
        raise TrainingDataError(f"subset size must be >= 1, got {size}")
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for item_id, label in sorted(labels.items()):
        pools.setdefault(label, []).append(item_id)
    for label in sorted(pools):
        rng.shuffle(pools[label])
    picked: list[str] = []
    cursor = dict.fromkeys(pools, 0)
    while len(picked) < size:
        progressed = False
        for label in sorted(pools):
            if len(picked) >= size:
                break
            if cursor[label] < len(pools[label]):
                picked.append(pools[label][cursor[label]])
                cursor[label] += 1
                progressed = True
        if not progressed:
            break  # every pool is empty: the subset is the whole set
    return picked


def build_pmc_vqa_subset(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    classify: ModalityClassifier,
    labeler: str,
    size: int = 8000,
    seed: int = 1234,
    image_dir: str | Path | None = None,
    cache_path: str | Path | None = None,
    with_images: bool = False,
    sft: bool = False,
    retries: int = 2,
    max_failed_share: float | None = None,
) -> dict[str, Any]:
    """PMC-VQA train CSV -> modality-balanced subset saved with ``save_to_disk`` + manifest.json.

    The paper's build: ``classify`` (the judge, :func:`judge_modalities`) labels every question with one of
    the project's modality categories or "none", and ``size`` rows are drawn evenly over the labels.
    :func:`keyword_modalities` is the fallback a user must ask for. Questions whose classification failed
    (after ``retries`` more rounds) are left out and counted; when they are more than ``max_failed_share``
    of the CSV (None: ``DEFAULT_MAX_FAILED_SHARE``) the build is refused (``TrainingDataError``, exit 2)
    before anything is written, the labels already obtained staying cached for the rerun. Returns the
    manifest (label counts of the subset and of the whole CSV, failures, out-of-vocabulary words, retries,
    the share allowed).
    """
    max_failed_share = DEFAULT_MAX_FAILED_SHARE if max_failed_share is None else max_failed_share
    if not 0.0 <= max_failed_share <= 1.0:
        raise TrainingDataError(f"max_failed_share must be between 0 and 1, got {max_failed_share}")
    out_dir = Path(out_dir)
    items = read_pmc_vqa_csv(csv_path, image_dir)
    cache_path = (
        Path(cache_path) if cache_path is not None else out_dir.with_name(out_dir.name + ".modality_cache.jsonl")
    )
    labels, validation = label_modalities(
        items, classify, cache_path, labeler=labeler, with_images=with_images, retries=retries
    )
    failed_share = validation["failed"] / len(items)
    validation.update(failed_share=round(failed_share, 6), max_failed_share=max_failed_share)
    if failed_share > max_failed_share:
        kept = validation["labeled"] - sum(validation["unknown_to_none"].values())  # words outside: never cached
        raise TrainingDataError(
            f"{csv_path}: the modality classifier ({labeler}) gave no usable label for {validation['failed']} of "
            f"{len(items)} questions ({failed_share:.1%}) after {retries} retries, more than the "
            f"{max_failed_share:.1%} allowed (--max-failed-share); nothing was built. First rows left out: "
            f"{validation['failed_rows'][:10]}. The {kept} labels obtained are kept in {cache_path}, so the same "
            "command asks only for the rest; check the judge with `medbridge judge check --probe`."
        )
    chosen = balanced_subset(labels, size, seed)
    by_id = {i["item_id"]: i for i in items}
    rows = []
    for item_id in chosen:
        item = dict(by_id[item_id])
        path = Path(item["figure_path"])
        if not path.is_file():
            raise FileNotFoundError(f"{csv_path}:{item['row']}: image {path} (Figure_path) not found")
        # Embed the bytes so the saved dataset does not depend on the image folder staying put.
        item["image"] = {"bytes": path.read_bytes(), "path": path.name}
        row = sft_row(item) if sft else grpo_row(item)
        row["modality"] = labels[item_id]
        rows.append(row)
    dataset = _to_dataset(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(out_dir))
    manifest = {
        "source": str(Path(csv_path).resolve()),
        "source_sha256": hashlib.sha256(Path(csv_path).read_bytes()).hexdigest(),
        "seed": seed,
        "size_requested": size,
        "size": len(rows),
        "labeler": labeler,
        "labeled_with_images": with_images,
        "modality_labels": list(modality_vocabulary()),
        "counts_per_modality": dict(sorted(Counter(labels[i] for i in chosen).items())),
        "available_per_modality": dict(sorted(Counter(labels.values()).items())),
        "label_validation": validation,
        "rows_read": len(items),
        "rows_labeled": len(labels),
        "format": "sft" if sft else "grpo",
        "prompt_version": PROMPT_VERSION,
        "modality_cache": str(cache_path),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------
# Entry used by the trainers
# ---------------------------------------------------------------------------------------------


def load_training_dataset(script_args: Any, *, sft: bool = False):
    """The training dataset a recipe names (see MedScriptArguments.data_source)."""
    if script_args.data_source == "medmnist":
        return medmnist_dataset(
            script_args.medmnist_datasets,
            split=script_args.medmnist_split,
            root=script_args.medmnist_root,
            per_class=script_args.per_class,
            seed=script_args.sampling_seed,
            max_samples=script_args.max_train_samples,
            sft=sft,
        )
    if script_args.data_source == "disk":
        import datasets

        if not script_args.dataset_name:
            raise TrainingDataError("data_source 'disk' needs dataset_name: the folder written by save_to_disk")
        dataset = datasets.load_from_disk(script_args.dataset_name)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[script_args.dataset_train_split]
        if sft and "completion" not in dataset.column_names:
            dataset = dataset.map(lambda r: {"completion": [{"role": "assistant", "content": bridge_answer(r)}]})
        dataset = dataset.shuffle(seed=script_args.sampling_seed)
        if script_args.max_train_samples is not None:
            dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
        return dataset
    raise TrainingDataError(f"unknown data_source {script_args.data_source!r}; expected 'medmnist' or 'disk'")
