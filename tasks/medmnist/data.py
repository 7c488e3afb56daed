"""MedMNIST-v2 files -> multiple-choice items.

Reads the real ``{flag}_224.npz`` files through the ``medmnist`` package's own classes and root
layout, checks them, picks a class-balanced, seeded subset of the official split and turns each
image into a question with one option per class. Evaluation (the lmms-eval tasks) and training
(the GRPO data builder) both build their items here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.prompts import PROMPT_VERSION, format_mcq_prompt, lettered
from medbridge.harness_ext.subsets import seed_from_env, size_from_env
from medbridge.tasks.content_hash import data_cache_dir, file_sha256
from medbridge.tasks.families import MEDMNIST
from medbridge.tasks.medmnist.catalog import MedMNISTSet, get_set

log = logging.getLogger(__name__)

SIZE = 224
ROOT_ENV = "MEDBRIDGE_MEDMNIST_ROOT"
PER_CLASS_ENV = "MEDBRIDGE_MEDMNIST_PER_CLASS"  # an integer, or "all" for the full split
SEED_ENV = "MEDBRIDGE_MEDMNIST_SEED"
DOWNLOAD_ENV = "MEDBRIDGE_MEDMNIST_DOWNLOAD"  # "1": let medmnist download (with its MD5 check)


class MedMNISTFileError(MedbridgeError, RuntimeError):
    """A MedMNIST file is missing, unreadable, or not in the official layout."""


def default_root() -> Path:
    """$MEDBRIDGE_MEDMNIST_ROOT, else its default in the settings table (medmnist's own root, ~/.medmnist)."""
    return settings.get_path(ROOT_ENV)


def npz_path(flag: str, root: Path) -> Path:
    return Path(root) / f"{flag}_{SIZE}.npz"


def fetch_command(flag: str, root: Path) -> str:
    return f"medbridge data medmnist --flags {flag} --root {root}"


def _expected_layout(spec: MedMNISTSet, split: str) -> str:
    img = f"N x {SIZE} x {SIZE} x 3" if spec.rgb else f"N x {SIZE} x {SIZE}"
    n_labels = spec.n_classes if spec.rule == "multilabel_exactly_one" else 1
    return f"keys '{split}_images' (uint8, {img}) and '{split}_labels' (int, N x {n_labels})"


def load_split(
    name_or_flag: str, split: str = "test", root: str | Path | None = None, download: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one official split; the images are a read-only memory map.

    The ``{split}_images`` member of the npz is decompressed once into a cache next to it (see
    ``split_images``), so a run touches only the images it uses. A missing file is downloaded through
    medmnist's own dataset class when ``download`` (or $MEDBRIDGE_MEDMNIST_DOWNLOAD) is on.
    Raises MedMNISTFileError naming the file, the expected layout and the command that fetches it.
    """
    spec = get_set(name_or_flag)
    root = Path(root) if root is not None else default_root()
    if download is None:
        download = settings.get_flag(DOWNLOAD_ENV)
    path = npz_path(spec.flag, root)
    hint = f"expected {path} with {_expected_layout(spec, split)}; fetch it with: {fetch_command(spec.flag, root)}"
    if not path.is_file():
        if not download:
            raise MedMNISTFileError(f"MedMNIST file not found: {hint}")
        _download(spec, root, split, hint)
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = npz[f"{split}_labels"]
    except Exception as err:  # zip, key, decompression and format errors of a bad file
        raise _damaged(path, f"{split}_labels.npy", err, hint) from err
    images = split_images(path, split, hint)
    _check_arrays(spec, split, images, labels, hint)
    return images, labels


def _download(spec: MedMNISTSet, root: Path, split: str, hint: str) -> None:
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, medmnist.INFO[spec.flag]["python_class"])
    try:  # medmnist downloads with its MD5 check (and loads the split once)
        cls(split=split, size=SIZE, root=str(root), download=True)
    except Exception as err:
        raise MedMNISTFileError(f"cannot download MedMNIST file ({type(err).__name__}: {err}): {hint}") from err


# ---------------------------------------------------------------------------------------------
# Lazily read images: a once-decompressed, memory-mapped copy of each split's image array, named by
# the npz's content hash, next to the npz or (read-only data folder) under $MEDBRIDGE_DATA_CACHE

CACHE_SUFFIX = ".npy"


class _CacheWriteError(Exception):
    """Writing a cache copy failed (a read-only folder, a full disk, EROFS, ...): try the next folder."""


def cache_name(npz: Path, split: str, digest: str) -> str:
    """The cache file of ``{split}_images`` of the npz whose bytes hash to ``digest``."""
    return f"{npz.name.removesuffix('.npz')}.{split}_images.{digest[:32]}{CACHE_SUFFIX}"


def cache_dirs(npz: Path) -> list[Path]:
    """Where a split's cache may live, in order: next to the npz, then the data cache folder."""
    return [npz.parent, data_cache_dir() / "medmnist"]


def _damaged(npz: Path, member: str, err: BaseException, hint: str) -> MedMNISTFileError:
    return MedMNISTFileError(
        f"MedMNIST file {npz}: its member '{member}' cannot be read ({type(err).__name__}: {err}); the file is "
        f"damaged or not the official one. Fetch it again; {hint}"
    )


def _copy_member(npz: Path, member: str, dest: Path, hint: str) -> None:
    """Stream one member of the npz (a member of an npz is a complete .npy file) into ``dest``, never
    holding the array in memory. Anything that goes wrong reading the npz is a MedMNISTFileError naming
    the file and the member; anything that goes wrong writing ``dest`` is a _CacheWriteError."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        try:
            out = open(tmp, "wb")
        except OSError as err:
            raise _CacheWriteError(err) from err
        with out:
            try:
                archive = zipfile.ZipFile(npz)
                src = archive.open(member)
            except Exception as err:  # not a zip, no such member, an unsupported compression, ...
                raise _damaged(npz, member, err, hint) from err
            with archive, src:
                while True:
                    try:
                        chunk = src.read(1 << 22)
                    except Exception as err:  # zlib.error (flipped bits), bad CRC, truncation, I/O
                        raise _damaged(npz, member, err, hint) from err
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise _CacheWriteError(err) from err
        try:
            os.replace(tmp, dest)
        except OSError as err:
            raise _CacheWriteError(err) from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


class _BadCache(Exception):
    """A cache file that is not the complete plain array its header promises."""


def _open_cache(path: Path) -> np.ndarray | None:
    """The cache as a read-only memory map; None when absent; _BadCache when its header is not a
    plain array's or its size is not what the header promises (truncated, foreign, garbage)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return None
    try:
        with fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(fh)
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
        if dtype.hasobject or size != offset + int(np.prod(shape)) * dtype.itemsize:
            raise _BadCache(f"{path}: {size} bytes, not the {dtype} array of shape {shape} its header promises")
        if int(np.prod(shape)) == 0:  # a zero-size array cannot be memory-mapped
            return np.load(path, allow_pickle=False)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:  # broken magic or header, unreadable
        raise _BadCache(f"{path}: {type(err).__name__}: {err}") from err


def _remove_stale(folder: Path, npz: Path, split: str, keep: str) -> None:
    """Best effort: this split's caches of other versions of the npz (and of the old size/mtime scheme)."""
    stem = npz.name.removesuffix(".npz")
    for old in [*folder.glob(f"{stem}.{split}_images.*{CACHE_SUFFIX}"), folder / f"{stem}.{split}_images.stamp.json"]:
        if old.name != keep:
            try:
                old.unlink(missing_ok=True)
            except OSError:
                pass


def _read_in_memory(npz: Path, split: str, hint: str) -> np.ndarray:
    member = f"{split}_images.npy"
    try:
        with np.load(npz, allow_pickle=False) as arrays:
            return arrays[f"{split}_images"]
    except Exception as err:
        raise _damaged(npz, member, err, hint) from err


def npz_sha256(npz: Path, hint: str = "") -> str:
    """The npz's content hash (hashed once per version of the file, see tasks/content_hash.py)."""
    try:
        return file_sha256(npz)
    except OSError as err:
        raise MedMNISTFileError(f"cannot read MedMNIST file {npz} ({type(err).__name__}: {err}): {hint}") from err


def split_images(npz: Path, split: str, hint: str = "") -> np.ndarray:
    """The split's image array as a read-only memory map of its cache, built when missing.

    The cache is named by the npz's sha256, so a replaced npz (whatever its size and mtime) never
    serves the old images. It is written next to the npz, else under $MEDBRIDGE_DATA_CACHE/medmnist;
    where neither can be written (any OSError: read-only file system, permissions, full disk), the
    array is read into memory instead, with a warning."""
    member = f"{split}_images.npy"
    name = cache_name(npz, split, npz_sha256(npz, hint))
    for folder in cache_dirs(npz):
        try:
            found = _open_cache(folder / name)
        except _BadCache as err:
            log.warning("rebuilding a damaged image cache (%s)", err)
            continue
        if found is not None:
            return found
    failures = []
    for folder in cache_dirs(npz):
        try:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise _CacheWriteError(err) from err
            _copy_member(npz, member, folder / name, hint)
        except _CacheWriteError as err:
            failures.append(f"{folder}: {err}")
            continue
        if folder == npz.parent:
            _remove_stale(folder, npz, split, keep=name)
        try:
            built = _open_cache(folder / name)
        except _BadCache as err:  # freshly copied, so the member itself is not a plain array
            raise MedMNISTFileError(f"'{split}_images' of MedMNIST file is not a plain array ({err}): {hint}") from err
        assert built is not None
        return built
    log.warning("cannot write an image cache for %s (%s); reading %s into memory", npz, "; ".join(failures), member)
    return _read_in_memory(npz, split, hint)


@functools.lru_cache(maxsize=16)
def _open_split(npz: str, split: str) -> np.ndarray:
    return split_images(Path(npz), split)


def doc_image(doc: Mapping[str, Any]):
    """The PIL image of one item, decoded from its split's memory-mapped cache when asked for."""
    return to_pil(_open_split(doc["source_file"], doc["split"])[int(doc["index"])])


def _check_arrays(spec: MedMNISTSet, split: str, images: np.ndarray, labels: np.ndarray, hint: str) -> None:
    want_img = (SIZE, SIZE, 3) if spec.rgb else (SIZE, SIZE)
    n_labels = spec.n_classes if spec.rule == "multilabel_exactly_one" else 1
    images, labels = np.asarray(images), np.asarray(labels)
    problems = []
    if images.ndim != len(want_img) + 1:
        # A 0-d or flat array has no images to index (and no shape[0] to compare).
        problems.append(
            f"'{split}_images' is a {images.ndim}-d array {images.shape}, not N x {' x '.join(map(str, want_img))}"
        )
    elif images.dtype != np.uint8 or tuple(images.shape[1:]) != want_img:
        problems.append(f"'{split}_images' is {images.dtype} {images.shape}")
    elif images.shape[0] == 0:
        problems.append(f"'{split}_images' is empty (0 images): the split has nothing to evaluate")
    if labels.ndim != 2 or labels.shape[1] != n_labels or (images.ndim >= 1 and labels.shape[0] != images.shape[0]):
        problems.append(f"'{split}_labels' has shape {labels.shape}")
    elif not np.issubdtype(labels.dtype, np.integer):
        problems.append(f"'{split}_labels' is {labels.dtype}, not integer")
    elif spec.rule == "multilabel_exactly_one" and labels.size and (labels.min() < 0 or labels.max() > 1):
        # Multi-hot findings: anything but 0/1 is a shifted or overflowed label, not a finding.
        bad = sorted({int(v) for v in np.unique(labels) if v not in (0, 1)})[:5]
        problems.append(f"'{split}_labels' must be 0/1 per finding, found {bad}")
    elif spec.rule != "multilabel_exactly_one" and labels.size and (labels.min() < 0 or labels.max() >= spec.n_classes):
        problems.append(f"'{split}_labels' holds classes outside 0..{spec.n_classes - 1}")
    if problems:
        raise MedMNISTFileError(f"MedMNIST file has the wrong layout ({'; '.join(problems)}): {hint}")


def single_labels(spec: MedMNISTSet, labels: np.ndarray) -> np.ndarray:
    """One class per image, or -1 where the dataset's single-answer rule excludes the image.

    ChestMNIST is multi-label: only images with exactly one positive finding get a single answer
    (no finding or several findings have no single correct option). RetinaMNIST is ordinal: its
    grade is the answer. Every other set is multi-class or binary already.
    """
    if spec.rule == "multilabel_exactly_one":
        positives = labels.sum(axis=1)
        return np.where(positives == 1, labels.argmax(axis=1), -1)
    return labels[:, 0].astype(np.int64)


def resolve_per_class(per_class: int | str | None) -> int | None:
    """None means the full split; otherwise a positive number of items per class."""
    return size_from_env(
        per_class, env=PER_CLASS_ENV, what="items per class", full_word="all"
    )


def resolve_seed(seed: int | None) -> int:
    return seed_from_env(seed, env=SEED_ENV)


def balanced_indices(spec: MedMNISTSet, labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices into the split: up to ``per_class`` eligible images of every class (all when None),
    drawn without replacement from a generator seeded by (seed, dataset), returned sorted."""
    y = single_labels(spec, labels)
    if per_class is None:
        return np.flatnonzero(y >= 0)
    rng = np.random.default_rng([seed, zlib.crc32(spec.flag.encode())])
    picked = []
    for cls in range(spec.n_classes):
        pool = np.flatnonzero(y == cls)
        take = min(per_class, pool.size)
        picked.append(rng.choice(pool, size=take, replace=False) if take else pool[:0])
    return np.sort(np.concatenate(picked))


def option_order(spec: MedMNISTSet, index: int, seed: int) -> list[int]:
    """Class indices in display order for one item: shuffled from (seed, dataset, item) so no letter
    is always right; ordinal grades keep their natural order (A = grade 0) so the scale reads as one."""
    order = list(range(spec.n_classes))
    if spec.rule != "ordinal":
        random.Random(f"{seed}:{spec.flag}:{index}").shuffle(order)
    return order


def question_text(spec: MedMNISTSet) -> str:
    if spec.rule == "multilabel_exactly_one":
        return f"This is a {spec.image_kind}. Which single finding does it show?"
    if spec.rule == "ordinal":
        return f"This is a {spec.image_kind}. What is the diabetic retinopathy grade?"
    return f"This is a {spec.image_kind}. Which of the following does it show?"


@dataclass(frozen=True)
class SubsetInfo:
    per_class: int | None
    seed: int

    @property
    def tag(self) -> str:
        return f"{'full' if self.per_class is None else f'balanced{self.per_class}'}-seed{self.seed}"


def build_items(
    name_or_flag: str,
    split: str = "test",
    *,
    root: str | Path | None = None,
    per_class: int | str | None = None,
    seed: int | None = None,
    with_images: bool = True,
) -> list[dict[str, Any]]:
    """The multiple-choice items of one dataset split, in index order.

    Each item records where it came from (flag, split, index), the class, the shuffled option
    order and the prompt, so a sample log can be traced back to the file.
    """
    spec = get_set(name_or_flag)
    images, labels = load_split(spec.flag, split, root)
    source = npz_path(spec.flag, root if root is not None else default_root())
    digest = npz_sha256(source)  # remembered by load_split's cache lookup: no second pass over the file
    info = SubsetInfo(resolve_per_class(per_class), resolve_seed(seed))
    y = single_labels(spec, labels)
    question = question_text(spec)
    chosen = balanced_indices(spec, labels, info.per_class, info.seed)
    if chosen.size == 0:
        raise MedMNISTFileError(
            f"no {split} image of {source} has a "
            f"single answer ({spec.rule} rule): the task would be empty. Check the file's '{split}_labels'."
        )
    items = []
    for idx in chosen:
        idx = int(idx)
        order = option_order(spec, idx, info.seed)
        options = lettered([spec.classes[c] for c in order])
        answer = list(options)[order.index(int(y[idx]))]
        item = {
            "item_id": f"{spec.flag}/{split}/{idx}",
            "task": MEDMNIST.task(spec),  # the greedy task's name: scoring finds the recorded decoding by it
            "dataset": spec.name,
            "flag": spec.flag,
            "modality": spec.modality,
            "split": split,
            "index": idx,
            "label": int(y[idx]),
            "question": question,
            "options": json.dumps(options),
            "option_order": order,
            "answer_letter": answer,
            "prompt": format_mcq_prompt(question, options),
            "prompt_version": PROMPT_VERSION,
            "subset": info.tag,
            "source_file": str(source),
            "data_sha256": {source.name: digest},  # provenance: the bytes the item was read from (file -> sha256)
        }
        if with_images:
            item["image"] = to_pil(images[idx])
        items.append(item)
    return items


def to_pil(array: np.ndarray):
    from PIL import Image

    # 2-D uint8 arrays become "L" images, H x W x 3 ones "RGB".
    return Image.fromarray(np.ascontiguousarray(array))
