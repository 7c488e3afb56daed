"""MedVLThinker-Eval rows -> checked multiple-choice items of one benchmark.

The source is loaded with ``datasets.load_dataset(source, split=...)`` whether ``source`` is the
hub id (default ``UCSC-VLAA/MedVLThinker-Eval``) or a local folder laid out like that repository
(``data/test-*.parquet`` in the hub schema), so tests on local fixtures exercise the code path a
real run uses. Rows are filtered by ``dataset_name``, a deterministic subset is drawn, and every
chosen row is checked (options JSON, answer label, images decodable) before it becomes an item.
Evaluation (the lmms-eval tasks) and training data builders share ``build_items``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import string
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.prompts import PROMPT_VERSION, format_mcq_prompt
from medbridge.harness_ext.subsets import seed_from_env, size_from_env
from medbridge.tasks.content_hash import file_sha256
from medbridge.tasks.families import MEDVQA
from medbridge.tasks.medvqa.catalog import HUB_ID, HUB_SPLIT, MedVQASet, get_set

SOURCE_ENV = "MEDBRIDGE_MEDVQA_SOURCE"  # hub id or local folder; MEDBRIDGE_MEDVQA_SOURCE_<NAME> per benchmark
SPLIT_ENV = "MEDBRIDGE_MEDVQA_SPLIT"
REVISION_ENV = "MEDBRIDGE_MEDVQA_REVISION"  # pin a hub commit for reproducible runs
SUBSET_ENV = "MEDBRIDGE_MEDVQA_SUBSET"  # an integer N (seeded N-item subset) or "full"
SEED_ENV = "MEDBRIDGE_MEDVQA_SEED"
SKIP_BAD_ENV = "MEDBRIDGE_MEDVQA_SKIP_BAD"  # "1": skip bad rows (counted and logged) instead of failing
# The paper's setting (the settings table's default): 200 items per benchmark (MMMU has 170, so all of them).
DEFAULT_SUBSET = int(settings.default(SUBSET_ENV))
REQUIRED_COLUMNS = ("images", "question", "options", "answer_label", "dataset_name", "dataset_index")
LETTERS = frozenset(string.ascii_uppercase)


class MedVQADataError(MedbridgeError, ValueError):
    """The source is unreadable, lacks columns or a benchmark, or holds bad rows."""


# ---------------------------------------------------------------------------------------------
# Settings (arguments win over environment variables, which win over defaults)


def resolve_source(spec: MedVQASet, source: str | os.PathLike | None = None) -> str:
    if source is not None:
        return str(source)
    return settings.get_str(f"{SOURCE_ENV}_{spec.name.upper()}") or settings.get_str(SOURCE_ENV)


def resolve_subset(subset: int | str | None) -> int | None:
    """None means the full benchmark; otherwise the number of items to draw."""
    return size_from_env(subset, env=SUBSET_ENV, what="subset size", full_word="full")


def resolve_seed(seed: int | None) -> int:
    return seed_from_env(seed, env=SEED_ENV)


def resolve_skip_bad(skip_bad: bool | None) -> bool:
    if skip_bad is not None:
        return bool(skip_bad)
    return settings.get_flag(SKIP_BAD_ENV)


def subset_tag(subset: int | None, seed: int) -> str:
    return "full" if subset is None else f"seeded{subset}-seed{seed}"


# ---------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=4)
def load_source(source: str, split: str = HUB_SPLIT, revision: str | None = None):
    """The whole evaluation set in Arrow format (rows are checked one by one later).

    Cached per process: all tasks of the group read the same source.
    """
    import datasets

    local = Path(source).expanduser()
    path = str(local) if local.is_dir() else source
    try:
        ds = datasets.load_dataset(path, split=split, revision=revision)
    except Exception as err:
        where = f"local folder {local}" if local.is_dir() else f"hub dataset {source!r}"
        raise MedVQADataError(
            f"cannot load the medical VQA source ({where}, split {split!r}): {type(err).__name__}: {err}. "
            f"Set {SOURCE_ENV} to the hub id {HUB_ID!r} (needs network or the HF cache) or to a folder laid "
            f"out like it (data/{split}-*.parquet with columns {', '.join(REQUIRED_COLUMNS)})."
        ) from err
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise MedVQADataError(
            f"medical VQA source {source!r} (split {split!r}) lacks column(s) {missing}; it has {ds.column_names}"
        )
    # Rows are read as raw Arrow values (images stay stored bytes; the row check decodes them),
    # which needs no cast pass over a multi-GB image table.
    return ds.with_format("arrow")


def source_sha256(source: str, split: str = HUB_SPLIT, revision: str | None = None) -> dict[str, str]:
    """Provenance: the sha256 of every Arrow file the source's split is read from (file name -> hex).

    ``datasets`` reads a hub or local source through Arrow files it writes once from the source's
    files; those are the bytes every item comes from. Each is hashed once per version of the file
    (tasks/content_hash.py), so a repeated run does not re-read gigabytes."""
    ds = load_source(source, split, revision)
    files = [Path(f["filename"]) for f in ds.cache_files]
    if not files:
        raise MedVQADataError(f"medical VQA source {source!r} (split {split!r}) is held in memory only: "
                              "there is no file to hash for the records' provenance")
    try:
        return {f.name: file_sha256(f) for f in files}
    except OSError as err:
        raise MedVQADataError(f"cannot hash the Arrow files of {source!r} ({type(err).__name__}: {err})") from err


def benchmark_rows(ds, spec: MedVQASet, source: str) -> list[int]:
    """Row positions of one benchmark, in dataset_index order."""
    names = ds["dataset_name"].to_pylist()
    rows = [i for i, n in enumerate(names) if n in spec.source_names]
    if not rows:
        found = sorted({str(n) for n in names})
        raise MedVQADataError(
            f"no rows of {spec.title} (dataset_name in {list(spec.source_names)}) in {source!r}; "
            f"dataset_name values there: {found}"
        )
    index = ds["dataset_index"].to_pylist()
    seen: dict[Any, int] = {}
    dupes = sorted({str(index[i]) for i in rows if seen.setdefault(index[i], i) != i})
    if dupes:
        # Item ids are <dataset_name>/<dataset_index>; they must name one row each.
        raise MedVQADataError(
            f"{spec.title} rows in {source!r} repeat dataset_index {dupes[:10]}: item ids would be ambiguous"
        )
    return sorted(rows, key=lambda i: (index[i] if isinstance(index[i], int) else -1, i))


def draw_order(rows: list[int], spec: MedVQASet, subset: int | None, seed: int) -> list[int]:
    """The order in which rows are taken: a permutation seeded by (seed, benchmark) for a subset,
    source order for the full set. A subset is the first ``subset`` good rows of this order, so it
    is the same on every run and only moves past a row when that row is bad and skipped."""
    if subset is None:
        return list(rows)
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    return [rows[i] for i in rng.permutation(len(rows))]


# ---------------------------------------------------------------------------------------------
# Row checks


class BadRow(Exception):
    """One row that cannot become an item (the message says why)."""


def parse_options(raw: Any) -> dict[str, str]:
    if not isinstance(raw, str):
        raise BadRow(f"options is {type(raw).__name__}, not a JSON string")
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BadRow(f"options is not valid JSON ({err.msg} at char {err.pos}): {raw[:80]!r}") from None
    except RecursionError:  # thousands of nested brackets: hostile or broken, never an option list
        raise BadRow(f"options JSON is nested too deeply to be an object letter -> text: {raw[:40]!r}...") from None
    if not isinstance(options, dict):
        raise BadRow(f"options JSON is a {type(options).__name__}, not an object letter -> text")
    if not options:
        raise BadRow("options is empty")
    bad_keys = [k for k in options if k not in LETTERS]
    if bad_keys:
        raise BadRow(f"option keys must be single letters A-Z, got {bad_keys}")
    bad_values = [k for k, v in options.items() if not isinstance(v, str)]
    if bad_values:
        raise BadRow(f"option text of {bad_values} is not a string (nested JSON is not an option)")
    empty = [k for k, v in options.items() if not v.strip()]
    if empty:
        raise BadRow(f"option text of {empty} is empty")
    seen: dict[str, str] = {}
    for key, text in options.items():
        norm = " ".join(text.split()).casefold()
        if norm in seen:
            # Two letters with one text: a right answer could not be told from a wrong one.
            raise BadRow(f"options {seen[norm]} and {key} have the same text {text.strip()!r}")
        seen[norm] = key
    return options


def _image_file(path: str, base: Path | None, k: int) -> Path | None:
    """The file an image's ``path`` names, only inside the dataset's own folder ``base``."""
    if base is None:
        return None  # a hub source stores bytes; a bare path there names nothing we may read
    root = base.resolve()
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root):
        raise BadRow(
            f"image {k} path {path!r} points outside the dataset folder {root}; image paths must be relative to it"
        )
    return candidate if candidate.is_file() else None


def checked_image(image: Any, k: int, base: Path | None = None) -> dict[str, Any]:
    """The image's bytes after a full decode (a truncated file fails here, not mid-run).

    Without stored bytes, ``path`` is read relative to the local source folder ``base`` and only
    inside it (an absolute path or ``..`` that leaves it is a bad row)."""
    from PIL import Image

    if not isinstance(image, dict):
        raise BadRow(f"image {k} is missing")
    data, path = image.get("bytes"), image.get("path")
    if data is None and path:
        found = _image_file(str(path), base, k)
        if found is not None:
            data = found.read_bytes()
    if data is None:
        raise BadRow(f"image {k} is missing (no bytes, path {path!r} not found in the dataset folder)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadRow(f"image {k} cannot be decoded ({type(err).__name__}: {err})") from None
    return {"bytes": data, "path": path or f"image_{k}"}


def row_to_item(row: dict[str, Any], spec: MedVQASet, base: Path | None = None) -> dict[str, Any]:
    """One checked item (images as stored bytes), or BadRow. ``base``: the local source folder."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadRow("question is empty")
    options = parse_options(row.get("options"))
    label = row.get("answer_label")
    label = label.strip() if isinstance(label, str) else label
    if label not in options:
        raise BadRow(f"answer_label {label!r} is not among the options {sorted(options)}")
    images = row.get("images") or []
    if not images:
        raise BadRow("the row has no image")
    # Decoded once here so a broken image is a bad row, not a mid-run crash; the item keeps no pixels
    # (doc_images reads them from the Arrow source per doc).
    n_images = len([checked_image(im, k, base) for k, im in enumerate(images)])
    if not isinstance(row.get("dataset_index"), int):
        raise BadRow(f"dataset_index is {row.get('dataset_index')!r}, not an integer")
    return {
        "item_id": item_id_of(row, spec),
        "task": MEDVQA.task(spec),  # the greedy task's name: scoring finds the recorded decoding by it
        "dataset": spec.name,
        "benchmark": spec.title,
        "source_dataset_name": str(row["dataset_name"]),
        "dataset_index": int(row["dataset_index"]),
        "question": question,
        "options": json.dumps(options, ensure_ascii=False),
        "answer_letter": label,
        "answer_text": options[label],
        # The source's own answer column, as MedVLThinker's grader reads it (None when absent or not text).
        "source_answer": row["answer"] if isinstance(row.get("answer"), str) else None,
        "prompt": format_mcq_prompt(question, options),
        "prompt_version": PROMPT_VERSION,
        "n_images": n_images,
    }


def item_id_of(row: dict[str, Any], spec: MedVQASet) -> str:
    return f"{row.get('dataset_name') or spec.dataset_name}/{row.get('dataset_index')}"


# ---------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class BuildInfo:
    benchmark: str
    source: str
    split: str
    subset: int | None
    seed: int
    n_source_rows: int  # rows of this benchmark in the source
    n_items: int
    skipped: tuple[tuple[str, str], ...]  # (item_id, reason) of every bad row passed over

    @property
    def tag(self) -> str:
        return subset_tag(self.subset, self.seed)


def build_items(
    name: str,
    *,
    source: str | os.PathLike | None = None,
    split: str | None = None,
    subset: int | str | None = None,
    seed: int | None = None,
    skip_bad: bool | None = None,
) -> tuple[list[dict[str, Any]], BuildInfo]:
    """The checked items of one benchmark, sorted by dataset_index, and how they were chosen.

    Bad rows raise MedVQADataError naming the benchmark and every bad item id met while filling
    the subset; with ``skip_bad`` (or MEDBRIDGE_MEDVQA_SKIP_BAD=1) they are passed over, logged as a
    warning, and their count is stored in every item as ``n_skipped_in_source``.
    """
    spec = get_set(name)
    src = resolve_source(spec, source)
    split = split or settings.get_str(SPLIT_ENV)
    n_wanted = resolve_subset(subset)
    seed = resolve_seed(seed)
    skip = resolve_skip_bad(skip_bad)
    revision = settings.get_str(REVISION_ENV)
    ds = load_source(src, split, revision)
    rows = benchmark_rows(ds, spec, src)
    local = Path(src).expanduser()
    base = local if local.is_dir() else None

    items: list[dict[str, Any]] = []
    bad: list[tuple[str, str]] = []
    for pos in draw_order(rows, spec, n_wanted, seed):
        if n_wanted is not None and len(items) == n_wanted:
            break
        row = ds[pos].to_pylist()[0]
        try:
            items.append({**row_to_item(row, spec, base), "source_row": pos})
        except BadRow as err:
            bad.append((item_id_of(row, spec), str(err)))
        except Exception as err:  # a malformed value we did not foresee: still name the item
            raise MedVQADataError(
                f"{spec.title} item {item_id_of(row, spec)} from {src!r}: {type(err).__name__}: {err}"
            ) from err

    info = BuildInfo(spec.name, src, split, n_wanted, seed, len(rows), len(items), tuple(bad))
    if bad and not skip:
        listed = "; ".join(f"{i}: {why}" for i, why in bad[:20]) + (
            f"; ... ({len(bad) - 20} more)" if len(bad) > 20 else ""
        )
        raise MedVQADataError(
            f"{len(bad)} bad row(s) in {spec.title} (task {MEDVQA.task(spec)}) from {src!r}: {listed}. "
            f"Fix the source, or set {SKIP_BAD_ENV}=1 to skip them (the count is logged and recorded in every item)."
        )
    if bad:
        from loguru import logger

        logger.warning(
            f"MEDVQA: SKIPPED {len(bad)} bad row(s) of {spec.title} (task {MEDVQA.task(spec)}) from {src!r} "
            f"because skipping bad rows is on ({SKIP_BAD_ENV}); kept {len(items)} items. Skipped: "
            + "; ".join(f"{i}: {why}" for i, why in bad)
        )
    if not items:
        raise MedVQADataError(f"no usable items of {spec.title} in {src!r} ({len(bad)} bad row(s) skipped)")

    items.sort(key=lambda it: (it["dataset_index"], it["item_id"]))
    digests = source_sha256(src, split, revision)
    for it in items:
        it.update(
            data_sha256=digests,
            subset=info.tag,
            source=src,
            split=split,
            revision=revision,
            n_source_rows=len(rows),
            n_skipped_in_source=len(bad),
        )
    return items, info


def to_dataset(items: list[dict[str, Any]]):
    """A ``datasets.Dataset`` of the items (metadata only; ``doc_images`` reads the pixels per doc)."""
    import datasets

    return datasets.Dataset.from_list(items)


def doc_images(doc: Mapping[str, Any]) -> list:
    """The PIL images of one item, read from its row of the (cached) Arrow source when asked for."""
    from PIL import Image

    source = str(doc["source"])
    ds = load_source(source, doc["split"], doc.get("revision"))
    row = ds[int(doc["source_row"])].to_pylist()[0]
    local = Path(source).expanduser()
    base = local if local.is_dir() else None
    images = []
    for k, image in enumerate(row.get("images") or []):
        data = image.get("bytes")
        if data is None:
            found = _image_file(str(image.get("path")), base, k)
            if found is None:
                raise MedVQADataError(
                    f"item {doc['item_id']}: image {k} disappeared from {source!r} since the run started"
                )
            data = found.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            images.append(im.copy())
    return images
