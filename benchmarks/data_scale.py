"""How the MedMNIST data path scales: time and peak memory to build a task's docs and decode every
image, on a synthetic file of TissueMNIST's real test shape (47,280 grey 224 x 224 images).

    python benchmarks/data_scale.py [--dir DIR] [--keep]

Writes ``DIR/tissuemnist_224.npz`` (low-entropy pixels, streamed into the zip so the writer never
holds the array) unless it exists, then measures, each in a fresh process, the default subset
(50 per class) with a cold cache, the default subset again and the full split, printing one line each:

    case=... items=... seconds=... peak_rss_gb=...

Targets: full split <= 120 s and <= 3 GB, default subset <= 1 GB. Never run in tests (~2.4 GB of disk
for the image cache next to the npz).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

N_TEST = 47_280  # TissueMNIST test split
N_CLASSES = 8
SIZE = 224


def write_synthetic_tissue(root: Path, n: int = N_TEST, seed: int = 0) -> Path:
    """A tissuemnist_224.npz with the real keys, dtypes and test shape (train/val are tiny)."""
    from medbridge.tasks.medmnist.data import npz_path

    path = npz_path("tissuemnist", root)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=(n, 1), dtype=np.int64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    patterns = [((40 + 25 * c + 20 * np.sin((c + 1) * xx / 17.0 + yy / 29.0)) % 256).astype(np.uint8)
                for c in range(N_CLASSES)]
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for split, count in (("train", 8), ("val", 8), ("test", n)):
            split_labels = labels[:count] if split == "test" else np.arange(count).reshape(-1, 1) % N_CLASSES
            with zf.open(f"{split}_images.npy", "w", force_zip64=True) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": (count, SIZE, SIZE)}
                np.lib.format.write_array_header_2_0(fh, header)
                for start in range(0, count, 1024):
                    block = np.stack([patterns[int(c)] for c in split_labels[start:start + 1024, 0]])
                    block[:, ::7, ::5] ^= np.uint8(start % 251)  # a little variation between images
                    fh.write(block.tobytes())
            with zf.open(f"{split}_labels.npy", "w") as fh:
                np.lib.format.write_array(fh, split_labels)
    tmp.replace(path)
    return path


def measure(root: Path, per_class: str) -> dict:
    """Build the task's docs as process_docs does and decode every image as doc_to_visual does."""
    from medbridge.tasks.medmnist.data import build_items, doc_image

    start = time.perf_counter()
    items = build_items("tissuemnist", "test", root=root, per_class=per_class, seed=1234, with_images=False)
    for item in items:
        doc_image(item).convert("RGB")
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
    return {"items": len(items), "seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder for the synthetic file (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic file and its cache")
    parser.add_argument("--measure", choices=("50", "all"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.dir, args.measure)))
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="medbridge_data_scale_"))
    try:
        from medbridge.tasks.medmnist.data import npz_path

        if not npz_path("tissuemnist", root).is_file():
            start = time.perf_counter()
            write_synthetic_tissue(root)
            print(f"wrote {npz_path('tissuemnist', root)} in {time.perf_counter() - start:.0f} s", flush=True)
        for case, per_class in (("default_subset_cold_cache", "50"), ("default_subset", "50"), ("full_split", "all")):
            if case.endswith("cold_cache"):
                for stale in root.glob("tissuemnist_224.test_images.*"):
                    stale.unlink()
            out = subprocess.run([sys.executable, __file__, "--dir", str(root), "--measure", per_class],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"case={case} items={result['items']} seconds={result['seconds']} "
                  f"peak_rss_gb={result['peak_rss_gb']}", flush=True)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
