"""Write lmms-eval-shaped output folders (results JSON + sample logs) from per-item records, so
report, ingest and leaderboard tests run in milliseconds without the lmms-eval CLI.

The layout and keys are the ones lmms-eval 0.7.3 writes (checked against a real run of the oracle
model): ``<out>/<model>/<stamp>_results.json`` beside ``<stamp>_samples_<task>.jsonl``, one JSON
line per document with our record under each metric name.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medbridge.harness_ext.metrics import make_record
from medbridge.harness_ext.prompts import INSTRUCTION

GREEDY_KWARGS = {"do_sample": False, "temperature": 0.0, "max_new_tokens": 1024, "until": []}
SAMPLED_KWARGS = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 1024, "until": []}


def records(
    dataset: str, n_items: int, *, p: float, k: int = 1, seed: int = 0, letters: str = "AB", distinct: int | None = None
) -> list[dict[str, Any]]:
    """``n_items`` records of one dataset, each sample correct with probability ``p``."""
    rng = random.Random(f"{dataset}:{seed}:{k}")
    out = []
    for i in range(n_items):
        answer = letters[i % len(letters)]
        choices = [answer if rng.random() < p else next(x for x in letters if x != answer) for _ in range(k)]
        rec = make_record(f"{dataset}/test/{i}", dataset, answer, choices, options={x: f"option {x}" for x in letters})
        if distinct is not None:
            rec["distinct"] = distinct
        out.append(rec)
    return out


def write_run(
    out: str | Path,
    tasks: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    model: str = "synthetic",
    model_args: str = "p=0.5",
    stamp: str = "20260101_000000",
    configs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one run; ``tasks`` maps a task name (``medmnist_mcq_<name>[_passk]``) to its records.
    Returns the results JSON path."""
    folder = Path(out) / model.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    results, task_configs = {}, {}
    for task, recs in tasks.items():
        sampled = task.endswith("_passk")
        key = "pass_at_16" if sampled else "acc1"
        results[task] = {"alias": task, f"{key},none": 0.0}
        task_configs[task] = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": f"sets/{task}.jsonl"}},
            "generation_kwargs": dict(SAMPLED_KWARGS if sampled else GREEDY_KWARGS),
            "repeats": 16 if sampled else 1,
        }
        with (folder / f"{stamp}_samples_{task}.jsonl").open("w") as fh:
            for i, rec in enumerate(recs):
                fh.write(
                    json.dumps(
                        {
                            "doc_id": i,
                            "target": rec.get("answer") if isinstance(rec, Mapping) else None,
                            key: rec,
                            "input": f"Question about item {i}\n{INSTRUCTION}",
                        }
                    )
                    + "\n"
                )
    task_configs.update(configs or {})
    data = {
        "results": results,
        "configs": task_configs,
        "config": {"model": model, "model_args": model_args, "gen_kwargs": ""},
        "date": stamp,
        "model_name": model,
    }
    data.update(extra or {})
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps(data))
    return path


def medmnist_run(
    out: str | Path,
    names: Sequence[str] = ("breast", "organa"),
    *,
    n_items: int = 12,
    p: float = 0.5,
    seed: int = 0,
    sampled: bool = True,
    **kwargs: Any,
) -> Path:
    """A greedy (+ 16-sample) run over some MedMNIST datasets."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        tasks[f"medmnist_mcq_{name}"] = records(name, n_items, p=p, seed=seed)
        if sampled:
            tasks[f"medmnist_mcq_{name}_passk"] = records(name, n_items, p=p, k=16, seed=seed + 1)
    return write_run(out, tasks, **kwargs)
