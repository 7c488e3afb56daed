"""Read an lmms-eval run (results JSON + logged samples) back into per-item records, summarise
them per dataset, per modality and overall with bootstrap CIs, and re-score old generations.

Acc@1 comes from the greedy task, Pass@K from its sampled twin (``<task>_passk``); the support
gap Pass@16 - Acc@1 is bootstrapped over the items the two share (a paired bootstrap).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbridge.harness_ext import metrics
from medbridge.harness_ext.scoring import score_doc

SAMPLED_SUFFIX = "_passk"
RECORD_KEYS = ("acc1", "pass_at_16", "pass_at_01")  # any one of them holds the item's record
PASSK_NAMES = tuple(f"pass_at_{k:02d}" for k in metrics.PASS_KS)


@dataclass
class Run:
    results_path: Path
    results: dict[str, Any]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> records
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> raw sample lines


def find_results(path: str | Path) -> Path:
    """The results JSON itself, or the newest ``*_results.json`` under a folder."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no lmms-eval *_results.json under {path}")
    return found[-1]


def _samples_files(results_path: Path) -> dict[str, Path]:
    stamp = results_path.name[: -len("_results.json")]
    files = {}
    for p in results_path.parent.glob(f"{stamp}_samples_*.jsonl"):
        files[p.name[len(f"{stamp}_samples_") : -len(".jsonl")]] = p
    return files


def record_of(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    for key in RECORD_KEYS:
        rec = sample.get(key)
        if isinstance(rec, Mapping) and "outcomes" in rec:
            return dict(rec)
    return None


def load_run(path: str | Path) -> Run:
    results_path = find_results(path)
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{results_path}: not valid JSON ({err})") from None
    run = Run(results_path, results)
    for task, sample_path in _samples_files(results_path).items():
        lines = []
        with sample_path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{sample_path}:{lineno}: not valid JSON ({err})") from None
        run.samples[task] = lines
        recs = [r for r in map(record_of, lines) if r is not None]
        if recs:
            run.records[task] = recs
    return run


def responses_of(sample: Mapping[str, Any]) -> list[str]:
    """The raw generations of one logged sample, in order (lmms-eval nests them per request)."""
    out: list[str | None] = []

    def walk(x: Any) -> None:
        if isinstance(x, list):
            for y in x:
                walk(y)
        else:
            out.append(x if isinstance(x, str) else None)

    # lmms-eval drops "resps" from the log when it equals "filtered_resps".
    walk(sample["resps"] if "resps" in sample else sample.get("filtered_resps", []))
    return out


def rescore_run(run: Run) -> dict[str, list[dict[str, Any]]]:
    """Recompute every task's records from the logged generations with the current extractor."""
    rescored = {}
    for task, lines in run.samples.items():
        recs = []
        for line in lines:
            old = record_of(line)
            if old is None or not old.get("options"):
                break  # not a medbridge multiple-choice task
            doc = {"item_id": old["item_id"], "dataset": old["dataset"], "options": old["options"], "answer_letter": old["answer"]}
            recs.append(score_doc(doc, responses_of(line)))
        else:
            if recs:
                rescored[task] = recs
    return rescored


# ------------------------------------------------------------------ summaries


def _by_dataset(records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """dataset -> {"greedy": records, "sampled": records} from task names ``<base>[_passk]``."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, recs in records.items():
        kind = "sampled" if task.endswith(SAMPLED_SUFFIX) else "greedy"
        base = task[: -len(SAMPLED_SUFFIX)] if kind == "sampled" else task
        out.setdefault(base, {})[kind] = recs
    return out


def _point_and_draws(values_by_item: dict[str, float], rng: np.random.Generator, iters: int) -> tuple[float, np.ndarray]:
    vals = np.array(list(values_by_item.values()), dtype=float)
    if vals.size == 0:
        return math.nan, np.full(iters, math.nan)
    idx = rng.integers(0, vals.size, size=(iters, vals.size))
    return float(vals.mean()), vals[idx].mean(axis=1)


def _item_values(recs: Sequence[Mapping[str, Any]], name: str) -> dict[str, float]:
    fn = metrics.ITEM_METRICS[name]
    return {r["item_id"]: fn(r) for r in recs if r["n"] >= _needed(name)}


def _needed(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return 1 if name == "acc1" else int(m.group(1))


def summarize(records: dict[str, list[dict[str, Any]]], *, groups: Mapping[str, Sequence[str]] | None = None, iters: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-dataset metrics with 95% bootstrap CIs, and group means (mean of datasets) with CIs
    from resampling items within every dataset. ``groups`` maps a group name to task bases."""
    rng = np.random.default_rng(seed)
    per_ds: dict[str, dict[str, Any]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for base, kinds in sorted(_by_dataset(records).items()):
        row: dict[str, Any] = {}
        dr: dict[str, np.ndarray] = {}
        greedy, sampled = kinds.get("greedy", []), kinds.get("sampled", [])
        per_item: dict[str, dict[str, float]] = {}
        for name, recs in [("acc1", greedy)] + [(n, sampled) for n in PASSK_NAMES + ("maj_at_16", "all_at_16")]:
            vals = _item_values(recs, name)
            if not vals:
                continue
            per_item[name] = vals
            row[name], dr[name] = _point_and_draws(vals, rng, iters)
        if "acc1" in per_item and "pass_at_16" in per_item:
            # Paired: the gap of each resampled item set, over items both tasks scored.
            acc, p16 = per_item["acc1"], per_item["pass_at_16"]
            common = sorted(acc.keys() & p16.keys())
            if common:
                gaps = {i: p16[i] - acc[i] for i in common}
                row["gap"], dr["gap"] = _point_and_draws(gaps, rng, iters)
        row["n_items"] = max(len(greedy), len(sampled))
        row["unparsed"] = metrics.outcome_rate(greedy + sampled, "unparsed") if greedy or sampled else math.nan
        if any("sources" in r for r in greedy + sampled):
            from medbridge.harness_ext.judge import judge_stats

            # Who settled each answer (rules / judge), what stayed open, rule-vs-judge agreement.
            row["judge"] = {kind: judge_stats(recs) for kind, recs in (("greedy", greedy), ("sampled", sampled)) if recs}
        for name, d in dr.items():
            lo, hi = np.nanquantile(d, [0.025, 0.975])
            row[f"{name}_ci"] = (float(lo), float(hi))
        per_ds[base], draws[base] = row, dr
    group_rows: dict[str, dict[str, Any]] = {}
    for gname, members in (groups or {}).items():
        present = [m for m in members if m in per_ds]
        if not present:
            continue
        grow: dict[str, Any] = {"n_datasets": len(present)}
        for name in ("acc1",) + PASSK_NAMES + ("maj_at_16", "all_at_16", "gap"):
            have = [m for m in present if name in per_ds[m]]
            if len(have) != len(present):
                continue
            grow[name] = float(np.mean([per_ds[m][name] for m in have]))
            d = np.mean([draws[m][name] for m in have], axis=0)
            lo, hi = np.nanquantile(d, [0.025, 0.975])
            grow[f"{name}_ci"] = (float(lo), float(hi))
        group_rows[gname] = grow
    return {"datasets": per_ds, "groups": group_rows}


def format_table(summary: Mapping[str, Any], *, ks: Iterable[int] = metrics.PASS_KS) -> str:
    """A fixed-width table: one row per dataset, then one per group."""
    cols = ["acc1"] + [f"pass_at_{k:02d}" for k in ks] + ["gap"]
    heads = ["Acc@1"] + [f"Pass@{k}" for k in ks] + ["Gap"]
    width = max([len(n) for n in summary["datasets"]] + [len(n) for n in summary["groups"]] + [8])
    width = min(width, 34)

    def fmt(row: Mapping[str, Any], col: str) -> str:
        if col not in row:
            return "-".center(17)
        lo, hi = row.get(f"{col}_ci", (math.nan, math.nan))
        return f"{100 * row[col]:5.1f} [{100 * lo:4.1f},{100 * hi:5.1f}]"

    lines = [" ".join([f"{'':{width}}"] + [h.center(17) for h in heads] + ["    n", "unparsed"])]
    for name, row in summary["datasets"].items():
        lines.append(" ".join([f"{name:{width}}"] + [fmt(row, c) for c in cols] + [f"{row.get('n_items', 0):5d}", f"{100 * row.get('unparsed', math.nan):7.1f}%"]))
    if summary["groups"]:
        lines.append("-" * len(lines[0]))
    for name, row in summary["groups"].items():
        lines.append(" ".join([f"{name:{width}}"] + [fmt(row, c) for c in cols] + [f"{row.get('n_datasets', 0):4d}d"]))
    lines.append("Values in %, [95% bootstrap CI]; Gap = Pass@16 - Acc@1 (paired over items); groups are means of datasets.")
    return "\n".join(lines)


# Task families register the groups their summary rows show ("module:function" -> {label: task bases}).
GROUP_PROVIDERS = ["medbridge.tasks.medmnist.catalog:report_groups", "medbridge.tasks.medvqa.catalog:report_groups"]


def known_groups() -> dict[str, list[str]]:
    import importlib

    groups: dict[str, list[str]] = {}
    for ref in GROUP_PROVIDERS:
        module, func = ref.split(":")
        groups.update(getattr(importlib.import_module(module), func)())
    return groups


def groups_for(records: Mapping[str, Any]) -> dict[str, list[str]]:
    """The known groups that have at least one of their tasks in this run."""
    bases = {t[: -len(SAMPLED_SUFFIX)] if t.endswith(SAMPLED_SUFFIX) else t for t in records}
    return {g: m for g, m in known_groups().items() if bases & set(m)}


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, default=float))
    return path
