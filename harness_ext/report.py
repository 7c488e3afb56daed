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
from medbridge.harness_ext import metrics, statistics
from medbridge.harness_ext.errors import MedbridgeError
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


def find_all_results(path: str | Path) -> list[Path]:
    """Every lmms-eval ``*_results.json`` under a folder tree, oldest first (a file is itself).

    lmms-eval writes a run's results and sample logs from rank 0 only, into
    ``<output_path>/<model>/<date>_results.json`` beside ``<date>_samples_<task>.jsonl``; a
    multi-process or multi-node sweep into one output folder therefore leaves one such pair per
    run somewhere in the tree."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MedbridgeError(
            f"{path}: no such file or folder (give an lmms-eval --output_path folder or a *_results.json file)"
        )
    found = sorted(path.rglob("*_results.json"), key=lambda p: (p.stat().st_mtime, str(p)))
    if not found:
        raise MedbridgeError(
            f"no lmms-eval *_results.json under {path} (did the run finish? lmms-eval writes it at the end)"
        )
    return found


def find_results(path: str | Path) -> Path:
    """The results JSON itself, or the newest ``*_results.json`` under a folder."""
    return find_all_results(path)[-1]


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise MedbridgeError(
            f"{results_path}: not valid JSON ({type(err).__name__}: {err}); the run may have been cut short, re-run it"
        ) from None
    except OSError as err:
        raise MedbridgeError(f"{results_path}: cannot be read ({err})") from None
    if not isinstance(results, dict):
        raise MedbridgeError(
            f"{results_path}: not an lmms-eval results file (top level is {type(results).__name__}, not an object)"
        )
    run = Run(results_path, results)
    for task, sample_path in _samples_files(results_path).items():
        lines = []
        with sample_path.open(encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as err:
                    raise MedbridgeError(
                        f"{sample_path}:{lineno}: not valid JSON ({type(err).__name__}: {err})"
                    ) from None
                if not isinstance(sample, dict):
                    raise MedbridgeError(
                        f"{sample_path}:{lineno}: a logged sample must be a JSON object, got {type(sample).__name__}"
                    )
                lines.append(sample)
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
            doc = {
                "item_id": old["item_id"],
                "dataset": old["dataset"],
                "options": old["options"],
                "answer_letter": old["answer"],
            }
            recs.append(score_doc(doc, responses_of(line)))
        else:
            if recs:
                rescored[task] = recs
    return rescored


# ------------------------------------------------------------------ summaries

REQUEST_FAILED = metrics.REQUEST_FAILED  # the backend got no answer: not the model's fault, never scored


def _by_dataset(records: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """dataset -> {"greedy": records, "sampled": records} from task names ``<base>[_passk]``."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, recs in records.items():
        kind = "sampled" if task.endswith(SAMPLED_SUFFIX) else "greedy"
        base = task[: -len(SAMPLED_SUFFIX)] if kind == "sampled" else task
        out.setdefault(base, {})[kind] = recs
    return out


def failed_requests(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """task -> number of items with at least one ``request_failed`` sample (tasks with none left out)."""
    counts = {task: sum(map(metrics.has_request_failure, recs)) for task, recs in records.items()}
    return {task: n for task, n in sorted(counts.items()) if n}


def describe_failures(failed: Mapping[str, int]) -> str:
    return f"{sum(failed.values())} item(s) with failed requests ({', '.join(f'{t}: {n}' for t, n in failed.items())})"


def check_requests(
    records: Mapping[str, list[dict[str, Any]]], *, allow_partial: bool = False, source: str = "this run"
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Records without the items whose requests failed, and how many were dropped per task.

    A failed request (dead server, wrong model name) says nothing about the model, so those items
    are never scored; without ``allow_partial`` a run that has any is refused."""
    failed = failed_requests(records)
    if failed and not allow_partial:
        raise MedbridgeError(
            f"{source}: {describe_failures(failed)}: the backend got no answer for them, so the run's numbers "
            "would not be the model's. Re-run those tasks once the server answers (cached answers are kept), "
            "or pass --allow-partial to score only the items that were answered "
            "(the count is shown beside the numbers)."
        )
    kept = {task: metrics.scorable(recs) for task, recs in records.items()}
    return {task: recs for task, recs in kept.items() if recs}, failed


def _bad_record(task: str, index: int, rec: Any) -> str | None:
    """Why a logged record cannot be scored, or None when it is consistent."""
    if not isinstance(rec, Mapping):
        return f"record is a {type(rec).__name__}, not an object"
    item = rec.get("item_id")
    if not isinstance(item, (str, int)) or isinstance(item, bool) or str(item) == "":
        return f"item_id {item!r} is not a non-empty string"
    outcomes = rec.get("outcomes")
    if not isinstance(outcomes, list) or not all(isinstance(o, str) for o in outcomes):
        return f"item {item}: outcomes must be a list of strings"
    known = set(metrics.OUTCOMES)
    unknown = sorted(set(outcomes) - known)
    if unknown:
        return f"item {item}: unknown outcome(s) {unknown} (known: {', '.join(sorted(known))})"
    n, c = rec.get("n"), rec.get("c")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n, c)):
        return f"item {item}: n and c must be integers, got n={n!r}, c={c!r}"
    if n != len(outcomes):
        return f"item {item}: n={n} but {len(outcomes)} outcomes are logged"
    if c != outcomes.count("correct"):
        return f"item {item}: c={c} but {outcomes.count('correct')} of its outcomes are correct"
    choices = rec.get("choices")
    if choices is not None and (not isinstance(choices, list) or len(choices) != n):
        return f"item {item}: choices must be a list with one entry per sample (n={n})"
    distinct = rec.get("distinct")
    if distinct is not None:
        if (
            not isinstance(distinct, (int, float))
            or isinstance(distinct, bool)
            or not math.isfinite(distinct)
            or not 0 <= distinct <= max(n, 1)
        ):
            return f"item {item}: distinct={distinct!r} is not a count between 0 and n={n}"
    return None


def check_records(records: Mapping[str, Sequence[Any]], source: str = "this run") -> None:
    """Refuse records whose n, c and outcomes disagree or whose numbers are out of range, naming
    the task and item (a record with c = n = 16 and sixteen wrong outcomes must not score 1.0)."""
    for task, recs in records.items():
        for index, rec in enumerate(recs):
            why = _bad_record(task, index, rec)
            if why:
                raise MedbridgeError(
                    f"{source}: task {task}, record {index + 1}: {why}; the sample log is inconsistent, re-run the task"
                )


def check_sample_counts(task: str, recs: Sequence[Mapping[str, Any]]) -> int:
    """The task's K (most samples any item has); an item with fewer is refused, never dropped."""
    k = max((int(r["n"]) for r in recs), default=0)
    for r in recs:
        if int(r["n"]) < max(k, 1):
            raise MedbridgeError(
                f"task {task}, item {r.get('item_id')}: {r['n']} sample(s) where the task's other items have {k}; "
                "Pass@K over a different number of samples per item is not one metric. Re-run the task "
                "(or remove the incomplete sample log) so every item has all its samples."
            )
    return k


def sampling_diversity(recs: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean number of distinct responses per item of a sampled task; None when unrecorded."""
    value = metrics.sampling_diversity(recs)
    return None if math.isnan(value) else value


def is_collapsed(recs: Sequence[Mapping[str, Any]]) -> bool | None:
    """True when a sampled task's samples are (nearly) all one response per item (Pass@K then
    equals Acc@1 and says nothing about support); None when the records do not say."""
    if sampling_diversity(recs) is None:
        return None
    return metrics.is_collapsed(recs)


def _item_values(recs: Sequence[Mapping[str, Any]], name: str) -> dict[str, float]:
    from medbridge.harness_ext import metric_registry

    return metric_registry.get(name).item_values(recs)


def _needed(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return 1 if name == "acc1" else int(m.group(1))


def summarize(
    records: Mapping[str, list[dict[str, Any]]],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    iters: int = 2000,
    seed: int = 0,
    allow_partial: bool = False,
    source: str = "this run",
) -> dict[str, Any]:
    """Per-dataset metrics with 95% bootstrap CIs, and group means (mean of datasets) with CIs
    from resampling items within every dataset. ``groups`` maps a group name to task bases.

    Raises MedbridgeError for failed requests (unless ``allow_partial``) and for items with fewer
    samples than their task's K."""
    if iters < 1:
        raise MedbridgeError(f"--bootstrap must be at least 1 resample, got {iters}")
    check_records(records, source)
    records, failed = check_requests(records, allow_partial=allow_partial, source=source)
    per_ds: dict[str, dict[str, Any]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for base, kinds in sorted(_by_dataset(records).items()):
        rng = statistics.rng_for(base, seed)  # this dataset's CIs do not depend on the other tasks
        row: dict[str, Any] = {}
        dr: dict[str, np.ndarray] = {}
        greedy, sampled = kinds.get("greedy", []), kinds.get("sampled", [])
        k = check_sample_counts(base + SAMPLED_SUFFIX, sampled) if sampled else 0
        if greedy:
            check_sample_counts(base, greedy)
        per_item: dict[str, dict[str, float]] = {}
        for name, recs in [("acc1", greedy)] + [(n, sampled) for n in PASSK_NAMES + ("maj_at_16", "all_at_16")]:
            if not recs or (name != "acc1" and _needed(name) > k):
                continue
            vals = _item_values(recs, name)
            per_item[name] = vals
            row[name], dr[name] = statistics.mean_and_draws(list(vals.values()), rng, iters)
        if "acc1" in per_item and "pass_at_16" in per_item:
            # Paired: the gap of each resampled item set, over items both tasks scored.
            acc, p16 = per_item["acc1"], per_item["pass_at_16"]
            common = sorted(acc.keys() & p16.keys())
            if common:
                row["gap"], dr["gap"] = statistics.mean_and_draws([p16[i] - acc[i] for i in common], rng, iters)
        row["n_items"] = max(len(greedy), len(sampled))
        row["unparsed"] = metrics.outcome_rate(greedy + sampled, "unparsed") if greedy or sampled else math.nan
        row["request_failed"] = failed.get(base, 0) + failed.get(base + SAMPLED_SUFFIX, 0)
        if sampled:
            row["distinct"] = sampling_diversity(sampled)
            row["collapsed"] = is_collapsed(sampled)
        if any("sources" in r for r in greedy + sampled):
            from medbridge.judges import judge_stats

            # Who settled each answer (rules / judge), what stayed open, rule-vs-judge agreement.
            row["judge"] = {
                kind: judge_stats(recs) for kind, recs in (("greedy", greedy), ("sampled", sampled)) if recs
            }
        for name, d in dr.items():
            row[f"{name}_ci"] = statistics.interval(d)
        per_ds[base], draws[base] = row, dr
    group_rows: dict[str, dict[str, Any]] = {}
    for gname, members in (groups or {}).items():
        present = [m for m in members if m in per_ds]
        if not present:
            continue
        # A mean over some of a group's datasets is not the group's number: say so.
        grow: dict[str, Any] = {
            "n_datasets": len(present),
            "n_members": len(members),
            "partial": len(present) < len(members),
        }
        for name in ("acc1",) + PASSK_NAMES + ("maj_at_16", "all_at_16", "gap"):
            if not all(name in per_ds[m] for m in present):
                continue
            grow[name], grow[f"{name}_ci"] = statistics.mean_over_datasets(
                [per_ds[m][name] for m in present], [draws[m][name] for m in present]
            )
        group_rows[gname] = grow
    return {"datasets": per_ds, "groups": group_rows, "request_failed": failed}


def group_label(name: str, row: Mapping[str, Any]) -> str:
    """The group's name, or ``name (partial: n of m)`` when some of its datasets did not run."""
    if row.get("partial"):
        return f"{name} (partial: {row.get('n_datasets')} of {row.get('n_members')})"
    return name


def format_table(summary: Mapping[str, Any], *, ks: Iterable[int] = metrics.PASS_KS) -> str:
    """A fixed-width table: one row per dataset, then one per group; flags below it."""
    cols = ["acc1"] + [f"pass_at_{k:02d}" for k in ks] + ["gap"]
    heads = ["Acc@1"] + [f"Pass@{k}" for k in ks] + ["Gap"]
    labels = {name: group_label(name, row) for name, row in summary["groups"].items()}
    width = max([len(n) for n in summary["datasets"]] + [len(n) for n in labels.values()] + [8])
    width = min(width, 40)

    def fmt(row: Mapping[str, Any], col: str) -> str:
        if col not in row:
            return "-".center(17)
        lo, hi = row.get(f"{col}_ci", (math.nan, math.nan))
        return f"{100 * row[col]:5.1f} [{100 * lo:4.1f},{100 * hi:5.1f}]"

    def distinct(row: Mapping[str, Any]) -> str:
        d = row.get("distinct")
        flag = " COLLAPSED" if row.get("collapsed") else ""
        return ("    -" if d is None else f"{d:5.2f}") + flag

    lines = [" ".join([f"{'':{width}}"] + [h.center(17) for h in heads] + ["    n", "unparsed", "distinct"])]
    for name, row in summary["datasets"].items():
        lines.append(
            " ".join(
                [f"{name:{width}}"]
                + [fmt(row, c) for c in cols]
                + [f"{row.get('n_items', 0):5d}", f"{100 * row.get('unparsed', math.nan):7.1f}%", distinct(row)]
            )
        )
    if summary["groups"]:
        lines.append("-" * len(lines[0]))
    for name, row in summary["groups"].items():
        lines.append(
            " ".join([f"{labels[name]:{width}}"] + [fmt(row, c) for c in cols] + [f"{row.get('n_datasets', 0):4d}d"])
        )
    lines.append(
        "Values in %, [95% bootstrap CI]; Gap = Pass@16 - Acc@1 (paired over items); groups are means of datasets;"
        " distinct = distinct responses per item among its samples."
    )
    collapsed = [name for name, row in summary["datasets"].items() if row.get("collapsed")]
    if collapsed:
        lines.append(
            f"COLLAPSED sampling in {', '.join(collapsed)}: every item's samples are one response, so Pass@K there "
            "equals Acc@1 and shows no support; no verdict is drawn from it (check the sampled task's decoding: "
            "an inherited top_k=1 or a tiny top_p does this)."
        )
    if summary.get("request_failed"):
        lines.append(
            f"PARTIAL RUN: {describe_failures(summary['request_failed'])} were left out of every number above."
        )
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


def report_command(
    run_path: str | Path,
    *,
    rescore: bool = False,
    json_out: str | Path | None = None,
    iters: int = 2000,
    allow_partial: bool = False,
) -> int:
    """``medbridge report`` / ``medbridge rescore``: print the table and write the summary JSON
    (re-scored records too). User errors raise MedbridgeError."""
    run = load_run(run_path)
    records = rescore_run(run) if rescore else run.records
    if not records:
        raise MedbridgeError(
            f"{run.results_path}: no medbridge sample records found (run lmms-eval with --log_samples)"
        )
    summary = summarize(
        records, groups=groups_for(records), iters=iters, allow_partial=allow_partial, source=str(run.results_path)
    )
    print(format_table(summary))
    suffix = "_medbridge_rescored.json" if rescore else "_medbridge_summary.json"
    out = (
        Path(json_out)
        if json_out
        else run.results_path.with_name(run.results_path.name.replace("_results.json", suffix))
    )
    write_summary(summary, out)
    if rescore:
        samples_out = out.with_suffix(".records.jsonl")
        with samples_out.open("w") as fh:
            for task, recs in records.items():
                for rec in recs:
                    fh.write(json.dumps({"task": task, **rec}) + "\n")
        print(f"re-scored records: {samples_out}")
    print(f"summary: {out}")
    return 0


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, default=float))
    return path
