"""Small MedMNIST-format files for tests and the offline demo, built by our own code.

Each file has the real keys, dtypes and shapes of ``{flag}_224.npz`` (grey N x 224 x 224 or
RGB N x 224 x 224 x 3 uint8 images; N x 1 int labels, N x 14 for ChestMNIST) with a few images
per class. Pixels depend on the class (brightness, stripe frequency and, for RGB, tint), so a
linear probe can separate the classes while the images stay noisy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from medbridge.tasks.medmnist.catalog import SETS, MedMNISTSet
from medbridge.tasks.medmnist.data import SIZE, npz_path

SPLITS = ("train", "val", "test")


def class_image(spec: MedMNISTSet, cls: int, rng: np.random.Generator) -> np.ndarray:
    k = spec.n_classes
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    level = 50 + 150 * cls / max(k - 1, 1)
    stripes = 30 * np.sin(2 * np.pi * (cls + 1) * (xx + 0.5 * yy))
    grey = level + stripes + rng.normal(0, 12, size=(SIZE, SIZE))
    if not spec.rgb:
        return np.clip(grey, 0, 255).astype(np.uint8)
    tint = np.array([1.0 + 0.3 * np.cos(cls), 1.0, 1.0 + 0.3 * np.sin(cls)])
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


def _labels_for(spec: MedMNISTSet, classes: list[int], rng: np.random.Generator) -> np.ndarray:
    if spec.rule != "multilabel_exactly_one":
        return np.array(classes, dtype=np.int64).reshape(-1, 1)
    onehot = np.zeros((len(classes), spec.n_classes), dtype=np.int64)
    onehot[np.arange(len(classes)), classes] = 1
    return onehot


def build_medmnist_fixture(spec: MedMNISTSet, root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Write ``{flag}_224.npz`` under root with ``per_class[split]`` images of every class.

    ChestMNIST also gets two images with no finding and two with two findings per split, which the
    single-answer rule must leave out."""
    rng = np.random.default_rng([seed, len(spec.flag), spec.n_classes, ord(spec.flag[0])])
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        classes = [c for c in range(spec.n_classes) for _ in range(per_class[split])]
        rng.shuffle(classes)
        images = [class_image(spec, c, rng) for c in classes]
        labels = _labels_for(spec, classes, rng)
        if spec.rule == "multilabel_exactly_one":
            extra = np.zeros((4, spec.n_classes), dtype=np.int64)
            extra[2, [0, 3]] = 1
            extra[3, [1, 2]] = 1
            images += [class_image(spec, 0, rng) for _ in range(4)]
            labels = np.concatenate([labels, extra])
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = labels
    root.mkdir(parents=True, exist_ok=True)
    path = npz_path(spec.flag, root)
    np.savez_compressed(path, **arrays)
    return path


def build_all(
    root: str | Path, test_per_class: int = 2, train_per_class: int = 4, val_per_class: int = 2, seed: int = 0
) -> list[Path]:
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    return [build_medmnist_fixture(spec, Path(root), counts, seed) for spec in SETS]
