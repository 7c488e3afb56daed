"""A small MedVLThinker-Eval look-alike for tests and the offline demo, built by our own code.

``build_medvqa_fixture`` writes ``data/test-00000-of-00001.parquet`` in the hub schema: ``images``
is a list of image structs {bytes, path} (written through a ``datasets`` List(Image) feature, as
``push_to_hub`` stores it), ``options`` a JSON string letter -> text, and ``answer_label``,
``answer``, ``dataset_name``, ``dataset_index`` (numbered over the whole set), ``reasoning``,
``hash``, ``misc`` as in MedVLThinker's builder. ``datasets.load_dataset(folder, split="test")``
reads it exactly as it reads the hub id. Every benchmark of the catalog gets the same item shapes in
turn (``SHAPES``: yes/no as two options, four options, five options over two images, ten options
A-J), so a new catalog entry needs nothing here. Pixels depend on the correct answer (hue by letter,
stripes by benchmark), so the images are not random noise. ``bad`` adds broken rows for error tests.
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from medbridge.tasks.medvqa.catalog import SETS, MedVQASet, get_set

BAD_KINDS = ("undecodable_image", "missing_image", "malformed_options", "answer_not_in_options", "no_options")
IMAGE_SIZE = 64

# Item shapes every benchmark cycles through, whatever the catalog holds (item i has SHAPES[i % 4]):
# (number of options, number of images). Yes/no as two options (PathVQA, SLAKE, VQA-RAD), four (PMC-VQA),
# five options over two images (MMMU, MedXpertQA) and ten options A-J, the most a loader must carry.
SHAPES = ((2, 1), (4, 1), (5, 2), (10, 1))
_OPTION_TEXTS = (
    "Pneumothorax", "Pleural effusion", "Atelectasis", "Pneumonia", "Pulmonary edema", "Lung abscess",
    "Bronchiectasis", "Emphysema", "Pulmonary embolism", "Lung cancer",
)
_YES_NO = ("Yes", "No")


def answer_image(letter: str, benchmark: str, variant: int = 0) -> bytes:
    """A PNG whose hue encodes the answer letter and whose stripes encode the benchmark."""
    from PIL import Image

    k = string.ascii_uppercase.index(letter)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    freq = 1 + [s.name for s in SETS].index(benchmark)
    grey = 120 + 60 * np.sin(2 * np.pi * freq * (xx + 0.3 * yy + 0.1 * variant))
    hue = np.array([1.0 + 0.5 * np.cos(k), 1.0 + 0.5 * np.sin(k), 1.0 - 0.05 * k])
    rgb = np.clip(grey[..., None] * hue, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _item(spec: MedVQASet, i: int, rng: np.random.Generator) -> dict[str, Any]:
    """The i-th good item of one benchmark: the same shapes for every benchmark (nothing hand-written
    per benchmark), numbered and titled by the catalog entry."""
    n_options, n_images = SHAPES[i % len(SHAPES)]
    texts = list(_YES_NO if n_options == 2 else _OPTION_TEXTS[:n_options])
    question = f"{spec.title} fixture item {i}: which option does the image show?"
    rng.shuffle(texts)
    options = dict(zip(string.ascii_uppercase, texts))
    label = list(options)[int(rng.integers(len(options)))]
    images = [{"bytes": answer_image(label, spec.name, v), "path": f"{spec.name}_{i}_{v}.png"} for v in range(n_images)]
    misc = {"fixture": True, "n_options": len(options)}
    return {
        "images": images,
        "question": question,
        "options": json.dumps(options),
        "answer_label": label,
        "answer": options[label],
        "misc": json.dumps(misc),
    }


def _bad_item(spec: MedVQASet, kind: str) -> dict[str, Any]:
    options = {"A": "Yes", "B": "No"}
    row = {
        "images": [{"bytes": answer_image("A", spec.name), "path": "bad.png"}],
        "question": f"Broken row ({kind})?",
        "options": json.dumps(options),
        "answer_label": "A",
        "answer": "Yes",
        "misc": json.dumps({"bad": kind}),
    }
    if kind == "undecodable_image":
        row["images"] = [{"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": "broken.png"}]
    elif kind == "missing_image":
        row["images"] = []
    elif kind == "malformed_options":
        row["options"] = '{"A": "Yes", "B": "No"'
    elif kind == "answer_not_in_options":
        row["answer_label"] = "C"
    elif kind == "no_options":
        row["options"] = "{}"
    else:
        raise ValueError(f"unknown bad-row kind {kind!r}; known: {BAD_KINDS}")
    return row


def build_medvqa_fixture(
    out_dir: str | Path,
    per_benchmark: int | Mapping[str, int] = 4,
    *,
    bad: Sequence[tuple[str, str]] = (),
    seed: int = 0,
) -> Path:
    """Write the fixture folder and return it (pass it as MEDBRIDGE_MEDVQA_SOURCE).

    ``per_benchmark``: good items per benchmark (an int, or short name -> count; missing names get 0).
    ``bad``: (benchmark short name, kind) pairs, each appended as one broken row of that benchmark.
    """
    import datasets

    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    for spec in SETS:
        n = per_benchmark if isinstance(per_benchmark, int) else per_benchmark.get(spec.name, 0)
        rng = np.random.default_rng([seed, SETS.index(spec)])
        new = [_item(spec, i, rng) for i in range(n)]
        new += [_bad_item(spec, kind) for b, kind in bad if get_set(b) is spec]
        for row in new:
            row.update(dataset_name=spec.dataset_name, reasoning=None, hash=None)
        rows += new
    for index, row in enumerate(rows):
        row["dataset_index"] = index
    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "question": datasets.Value("string"),
            "options": datasets.Value("string"),
            "answer_label": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "dataset_name": datasets.Value("string"),
            "dataset_index": datasets.Value("int64"),
            "reasoning": datasets.Value("string"),
            "hash": datasets.Value("string"),
            "misc": datasets.Value("string"),
        }
    )
    path = out / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m medbridge.tasks.medvqa.fixtures OUT_DIR [--per-benchmark N]"""
    import argparse

    parser = argparse.ArgumentParser(description="Write a MedVLThinker-Eval look-alike (hub schema) for offline runs.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-benchmark", type=int, default=4)
    args = parser.parse_args(argv)
    out = build_medvqa_fixture(args.out_dir, args.per_benchmark)
    print(f"wrote {out}; run with MEDBRIDGE_MEDVQA_SOURCE={out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
