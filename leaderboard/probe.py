"""`medbridge probe`: a linear probe of a VLM's frozen vision tower on MedMNIST (Table 1).

For each dataset the train / val / test images (read by ``tasks.medmnist.data.load_split``) go
through the vision encoder in batches; the per-image token features are mean-pooled and cached to
disk (one ``.npz`` per model, feature layer, dataset file and split). A logistic regression on
standardised features is fit on train with its inverse regularisation C chosen on val, and its
test accuracy goes into the leaderboard store as a Table 1 row.

Qwen2.5-VL (and other Hugging Face VLMs with ``get_image_features``) are supported: ``merger``
pools the vision tower's output after its patch merger (what the language model receives),
``tower`` the last vision block before the merger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from medbridge.leaderboard.store import (
    ResultRow,
    RunBundle,
    RunRow,
    canonical_json,
    default_store_path,
    open_store,
    subset_hash,
    write_bundle,
)
from medbridge.leaderboard.view import PROBE_METRIC, probe_task
from medbridge.tasks.medmnist.catalog import get_set
from medbridge.tasks.medmnist.data import default_root, load_split, npz_path, single_labels

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
LAYERS = ("merger", "tower")
SPLITS = ("train", "val", "test")
FEATURE_VERSION = "1"  # bump when the feature extraction changes, so old caches are not reused


# ------------------------------------------------------------------ identities for the cache


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_hash(model_dir: str | Path) -> str:
    """Identifies the weights: config.json plus every weight file's name, size and its first and
    last MiB (hashing many GB of weights in full would take minutes)."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: no config.json (need a local Hugging Face model folder)")
    h = hashlib.sha256((d / "config.json").read_bytes())
    weights = sorted(list(d.glob("*.safetensors")) + list(d.glob("*.bin")))
    if not weights:
        raise FileNotFoundError(f"{d}: no *.safetensors / *.bin weight files")
    for w in weights:
        size = w.stat().st_size
        h.update(f"{w.name}:{size}".encode())
        with w.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


# ------------------------------------------------------------------ features


class VisionTower:
    """The frozen image encoder of a Hugging Face VLM, loaded once."""

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", layer: str = "merger"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        self.torch = torch
        self.layer = layer
        self.device = device
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        model = AutoModelForImageTextToText.from_pretrained(
            str(model_dir), dtype=torch.float32 if device == "cpu" else torch.bfloat16
        )
        if not hasattr(model, "get_image_features"):
            raise TypeError(
                f"{model_dir}: {type(model).__name__} has no get_image_features; its vision tower is not reachable"
            )
        self.model = model.to(device).eval()

    def features(self, images: Sequence[Any]) -> np.ndarray:
        """Mean-pooled features, one row per image (PIL images or uint8 arrays)."""
        from PIL import Image

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.ascontiguousarray(im)) for im in images]
        pil = [im.convert("RGB") for im in pil]
        inputs = self.processor.image_processor(images=pil, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        grid = inputs.get("image_grid_thw")
        with self.torch.no_grad():
            if grid is not None:
                grid = grid.to(self.device)
                out = self.model.get_image_features(pixel_values, image_grid_thw=grid)
                if self.layer == "merger":
                    per_image = out.pooler_output if not isinstance(out, (tuple, list)) else out
                else:
                    sizes = grid.prod(-1).tolist()
                    per_image = self.torch.split(out.last_hidden_state, sizes)
                pooled = [t.float().mean(dim=0) for t in per_image]
            else:  # fixed-size encoders (LLaVA-style): (batch, tokens, dim)
                out = self.model.get_image_features(pixel_values=pixel_values)
                feats = out.pooler_output if hasattr(out, "pooler_output") and out.pooler_output is not None else out
                feats = feats if isinstance(feats, self.torch.Tensor) else self.torch.stack(list(feats))
                pooled = list(feats.float().mean(dim=-2)) if feats.dim() == 3 else list(feats.float())
        return self.torch.stack(pooled).cpu().numpy()


@dataclass
class SplitFeatures:
    x: np.ndarray
    y: np.ndarray
    ids: list[str]


def cache_path(mhash: str, name: str, split: str, root: Path, cache: Path, layer: str) -> Path:
    """One file per (model weights, feature layer, data file content, split)."""
    spec = get_set(name)
    data_file = npz_path(spec.flag, root)
    if not data_file.is_file():
        load_split(spec.flag, split, root)  # raises MedMNISTFileError naming the file and the fetch command
    key = hashlib.sha256(f"{FEATURE_VERSION}:{mhash}:{layer}:{_file_digest(data_file)}".encode()).hexdigest()[:16]
    return cache / f"{spec.flag}_{split}_{layer}_{key}.npz"


def split_features(
    tower: VisionTower,
    mhash: str,
    name: str,
    split: str,
    *,
    root: Path,
    cache: Path,
    layer: str,
    batch_size: int = 32,
    progress: bool = True,
) -> SplitFeatures:
    """Features of one split (computed and cached)."""
    spec = get_set(name)
    path = cache_path(mhash, name, split, root, cache, layer)
    images, labels = load_split(spec.flag, split, root)
    y = single_labels(spec, labels)
    keep = np.flatnonzero(y >= 0)  # ChestMNIST: images with exactly one finding
    chunks = []
    from tqdm.auto import tqdm

    for start in tqdm(range(0, keep.size, batch_size), desc=f"{spec.flag} {split}", unit="batch", disable=not progress):
        idx = keep[start : start + batch_size]
        chunks.append(tower.features([images[i] for i in idx]))
    x = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    ids = [f"{spec.flag}/{split}/{int(i)}" for i in keep]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, x=x.astype(np.float32), y=y[keep], ids=np.array(ids))
    tmp.replace(path)
    return SplitFeatures(x, y[keep], ids)


# ------------------------------------------------------------------ the probe


@dataclass
class ProbeResult:
    dataset: str
    accuracy: float
    ci: tuple[float, float]
    n_test: int
    n_train: int
    best_c: float
    val_accuracy: float
    chance: float
    test_ids: list[str]


def fit_probe(
    train: SplitFeatures, val: SplitFeatures, test: SplitFeatures, *, c_grid: Sequence[float] = C_GRID, seed: int = 0
) -> tuple[float, float, float, np.ndarray]:
    """Standardise on train, pick C on val (ties -> stronger regularisation), test accuracy.
    Returns (test accuracy, chosen C, val accuracy, per-item test correctness)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train.y)) < 2:
        raise ValueError("the train split has fewer than two classes; a probe needs at least two")
    scaler = StandardScaler().fit(train.x)
    xtr, xva, xte = (scaler.transform(s.x) for s in (train, val, test))
    best = (-1.0, c_grid[0], None)
    for c in sorted(c_grid):
        clf = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(xtr, train.y)
        acc = float((clf.predict(xva) == val.y).mean()) if len(val.y) else 0.0
        if acc > best[0]:
            best = (acc, c, clf)
    val_acc, c, clf = best
    correct = (clf.predict(xte) == test.y).astype(float)
    return float(correct.mean()), float(c), val_acc, correct


def run_probe(
    model_dir: str | Path,
    datasets: Sequence[str],
    *,
    root: str | Path | None = None,
    cache: str | Path | None = None,
    layer: str = "merger",
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
) -> list[ProbeResult]:
    from medbridge.harness_ext.statistics import bootstrap_ci

    root = Path(root) if root else default_root()
    model_dir = Path(model_dir)
    cache = Path(cache) if cache else default_store_path().parent / "probe_cache"
    mhash = model_hash(model_dir)
    tower: VisionTower | None = None
    results = []
    for name in datasets:
        spec = get_set(name)
        feats = {}
        for split in SPLITS:
            try:
                feats[split] = _cached_only(mhash, spec.name, split, root, cache, layer)
            except LookupError:
                # Load the model only when some split is not cached yet.
                tower = tower or VisionTower(model_dir, device=device, layer=layer)
                feats[split] = split_features(
                    tower,
                    mhash,
                    spec.name,
                    split,
                    root=root,
                    cache=cache,
                    layer=layer,
                    batch_size=batch_size,
                    progress=progress,
                )
        acc, c, val_acc, correct = fit_probe(feats["train"], feats["val"], feats["test"])
        lo, hi = bootstrap_ci(correct)
        results.append(
            ProbeResult(
                spec.name,
                acc,
                (lo, hi),
                len(correct),
                len(feats["train"].y),
                c,
                val_acc,
                1.0 / spec.n_classes,
                feats["test"].ids,
            )
        )
    return results


def _cached_only(mhash: str, name: str, split: str, root: Path, cache: Path, layer: str) -> SplitFeatures:
    path = cache_path(mhash, name, split, root, cache, layer)
    if not path.is_file():
        raise LookupError(path)
    with np.load(path, allow_pickle=False) as z:
        return SplitFeatures(z["x"], z["y"], [str(i) for i in z["ids"]])


def probe_bundle(
    model_dir: str | Path, results: Sequence[ProbeResult], *, model: str | None = None, layer: str = "merger"
) -> RunBundle:
    """Table 1 rows of one probe run; the run id hashes the model, layer and test sets, so the
    same probe ingested twice adds nothing."""
    mhash = model_hash(model_dir)
    rows = []
    for r in results:
        rows.append(
            ResultRow(
                task=probe_task(r.dataset),
                dataset=r.dataset,
                metric=PROBE_METRIC,
                value=r.accuracy,
                ci_low=r.ci[0],
                ci_high=r.ci[1],
                n=r.n_test,
                config_hash=hashlib.sha256(
                    canonical_json({"layer": layer, "C_grid": C_GRID, "version": FEATURE_VERSION}).encode()
                ).hexdigest()[:16],
                subset_hash=subset_hash(r.test_ids),
                prompt_version=None,
                gen_settings=canonical_json(
                    {"features": f"{layer} mean-pooled", "classifier": "logreg", "C_grid": list(C_GRID)}
                ),
            )
        )
    ident = canonical_json(
        {
            "model": mhash,
            "layer": layer,
            "version": FEATURE_VERSION,
            "sets": sorted((r.dataset, subset_hash(r.test_ids), round(r.accuracy, 6)) for r in results),
        }
    )
    run = RunRow(
        run_id="probe-" + hashlib.sha256(ident.encode()).hexdigest()[:24],
        kind="probe",
        model=model or Path(model_dir).resolve().name,
        checkpoint=str(Path(model_dir).resolve()),
        source=str(Path(model_dir).resolve()),
    )
    return RunBundle(run, rows, [])


def ingest_probe(
    store: str | Path | None,
    model_dir: str | Path,
    results: Sequence[ProbeResult],
    *,
    model: str | None = None,
    layer: str = "merger",
) -> int:
    from medbridge.leaderboard.ingest import now_iso

    bundle = probe_bundle(model_dir, results, model=model, layer=layer)
    with open_store(store or default_store_path(), write=True) as conn:
        added = write_bundle(conn, bundle, now_iso())
    return 0 if added is None else added  # None: the same probe run was already in the store


def format_results(results: Sequence[ProbeResult]) -> str:
    lines = [
        f"{'dataset':10} {'test acc':>8} {'95% CI':>15} {'chance':>7} {'n test':>7} {'n train':>8} "
        f"{'C':>7} {'val acc':>8}"
    ]
    for r in results:
        lines.append(
            f"{r.dataset:10} {100 * r.accuracy:8.1f} [{100 * r.ci[0]:5.1f},{100 * r.ci[1]:6.1f}] "
            f"{100 * r.chance:7.1f} {r.n_test:7d} {r.n_train:8d} {r.best_c:7g} {100 * r.val_accuracy:8.1f}"
        )
    return "\n".join(lines)
