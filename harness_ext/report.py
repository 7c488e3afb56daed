"""Summarise an lmms-eval run per dataset, per modality and overall with bootstrap CIs: ``medbridge report``.

Acc@1 comes from the greedy task, Pass@K from its sampled twin (``<task>_passk``); the support
gap Pass@16 - Acc@1 is bootstrapped over the items the two share (a paired bootstrap). Every score
is a ``metric_registry`` metric; reading the run back (which file, its records, their consistency)
is ``runs``'s job.

Nothing is scored that the model did not answer: an item with a failed request or a failed judge
verdict (``metrics.EXCLUDED_OUTCOMES``) is left out and counted, and a run with any, or with tasks
that have no numbers (``runs.missing_tasks``), is refused unless ``allow_partial`` (then marked
partial). Ingest uses the same check through ``summarize``: ``summary["partial"]`` says what a
partial run left out (None for a whole run).

Each dataset row also says which decoding produced it (``decoding_report``) and what the records say
about the sampler (``metrics.check_sampler``, pooled over the sampled tasks that share one decoding:
a confident model keeps its numbers, a sampler that ignores the temperature is flagged COLLAPSED).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from medbridge.harness_ext import decoding_report, limited_io, metrics, statistics
from medbridge.harness_ext import metric_registry as registry
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.runs import (  # noqa: F401  (the run-reading API callers import from here)
    Run,
    check_complete,
    check_records,
    check_sample_counts,
    find_all_results,
    find_results,
    load_run,
    missing_tasks,
    record_of,
    rescore_run,
    responses_of,
    written_at,
)
from medbridge.tasks.families import (
    SAMPLED_SUFFIX,  # noqa: F401  (callers import it from here)
    greedy_twin,
    is_sampled,
    passk_twin,
    report_groups,
)

REQUEST_FAILED = metrics.REQUEST_FAILED  # the backend got no answer: not the model's fault, never scored
JUDGE_FAILED = metrics.JUDGE_FAILED  # the judge gave no verdict: not the model's fault, never scored
_EXCLUDED_TEXT = {REQUEST_FAILED: "failed requests", JUDGE_FAILED: "failed judge verdicts"}


def _by_dataset(records: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """dataset -> {"greedy": records, "sampled": records} from task names ``<base>[_passk]``."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, recs in records.items():
        out.setdefault(greedy_twin(task), {})["sampled" if is_sampled(task) else "greedy"] = recs
    return out


# ------------------------------------------------------------------ items left out


def excluded_by_task(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, int]]:
    """task -> {excluded outcome: items left out for it} (tasks with none omitted); see metrics.excluded_items."""
    out = {}
    for task, recs in sorted(records.items()):
        counts = {outcome: len(ids) for outcome, ids in metrics.excluded_items(recs).items()}
        if counts:
            out[task] = counts
    return out


def describe_excluded(excluded: Mapping[str, Mapping[str, int] | int]) -> str:
    """``"3 item(s) with failed requests (medmnist_mcq_breast_passk: 3) and 1 item(s) with failed judge
    verdicts (medmnist_mcq_oct: 1)"``. A plain count per task is read as failed requests."""
    by_outcome: dict[str, dict[str, int]] = {}
    for task, counts in excluded.items():
        for outcome, n in ({REQUEST_FAILED: counts} if isinstance(counts, int) else counts).items():
            by_outcome.setdefault(outcome, {})[task] = n
    return " and ".join(
        f"{sum(tasks.values())} item(s) with {_EXCLUDED_TEXT.get(outcome, outcome)} "
        f"({', '.join(f'{t}: {n}' for t, n in tasks.items())})"
        for outcome, tasks in sorted(by_outcome.items(), key=lambda kv: metrics.EXCLUDED_OUTCOMES.index(kv[0]))
    )


def describe_failures(failed: Mapping[str, Mapping[str, int] | int]) -> str:
    """What a partial run left out (kept for ingest: the same text as describe_excluded)."""
    return describe_excluded(failed)


def check_excluded(
    records: Mapping[str, list[dict[str, Any]]], *, allow_partial: bool = False, source: str = "this run"
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, int]]]:
    """Records without the items a failed request or a failed judge verdict left unanswered, and how many
    were left out per task and outcome. Neither says anything about the model, so those items are never
    scored; without ``allow_partial`` a run that has any is refused, naming tasks and counts."""
    excluded = excluded_by_task(records)
    if excluded and not allow_partial:
        causes = {o for counts in excluded.values() for o in counts}
        fix = " and ".join(
            f"the {'backend' if o == REQUEST_FAILED else 'judge'} answers" for o in metrics.EXCLUDED_OUTCOMES
            if o in causes
        )
        raise MedbridgeError(
            f"{source}: {describe_excluded(excluded)}: nothing answered them, so the run's numbers would not be the "
            f"model's. Re-run those tasks once {fix} (cached answers and verdicts are kept), or pass "
            "--allow-partial to score only the items that were answered (the run is then marked partial)."
        )
    kept = {task: metrics.scorable(recs) for task, recs in records.items()}
    return {task: recs for task, recs in kept.items() if recs}, excluded


# ------------------------------------------------------------------ the sampler


def sampler_checks(
    sampled: Mapping[str, Sequence[Mapping[str, Any]]], used: Mapping[str, Mapping[str, Any]]
) -> dict[str, metrics.SamplerCheck]:
    """task -> what the records say about its sampler. Sampled tasks that ran under the same decoding
    (``used``: decoding_report.task_decoding per task) share one sampler, so their items are pooled:
    a confident model's few differing items anywhere prove that the sampler samples."""
    pools: dict[str, list[str]] = {}
    for task in sampled:
        pools.setdefault(json.dumps(used.get(task), sort_keys=True, default=str), []).append(task)
    checks = {}
    for tasks in pools.values():
        why = decoding_report.degenerate(used.get(tasks[0]) or {})
        pooled = [r for t in tasks for r in sampled[t]]
        check = metrics.check_sampler(pooled)
        if why and not check.collapsed:
            check = metrics.SamplerCheck(True, f"the task's settings say {why}: it cannot sample", check.items,
                                         check.varying, check.distinct)
        for task in tasks:
            own = metrics.check_sampler(sampled[task])  # this task's own counts, the pool's verdict
            checks[task] = metrics.SamplerCheck(check.collapsed, check.reason, own.items, own.varying, own.distinct)
    return checks


# ------------------------------------------------------------------ summaries


def summarize(
    records: Mapping[str, list[dict[str, Any]]],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    iters: int = 2000,
    seed: int = 0,
    allow_partial: bool = False,
    source: str = "this run",
    asked: Mapping[str, Mapping[str, Any]] | None = None,
    missing: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per-dataset metrics with 95% bootstrap CIs, and group means (mean of datasets) with CIs
    from resampling items within every dataset. ``groups`` maps a group name to task bases;
    ``asked`` maps a task to the generation_kwargs it ran with (shown when the backend recorded none);
    ``missing`` names tasks without numbers (runs.check_complete), recorded as partial.

    Raises MedbridgeError for items left out by a failed request or judge verdict (unless
    ``allow_partial``) and for items with fewer samples than their task's K."""
    if iters < 1:
        raise MedbridgeError(f"--bootstrap must be at least 1 resample, got {iters}")
    check_records(records, source)
    used = {task: decoding_report.task_decoding(recs, (asked or {}).get(task)) for task, recs in records.items()}
    records, excluded = check_excluded(records, allow_partial=allow_partial, source=source)
    samplers = sampler_checks({t: r for t, r in records.items() if is_sampled(t)}, used)
    per_ds: dict[str, dict[str, Any]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for base, kinds in sorted(_by_dataset(records).items()):
        rng = statistics.rng_for(base, seed)  # this dataset's CIs do not depend on the other tasks
        row: dict[str, Any] = {}
        dr: dict[str, np.ndarray] = {}
        greedy, sampled = kinds.get("greedy", []), kinds.get("sampled", [])
        k = check_sample_counts(passk_twin(base), sampled) if sampled else 0
        if greedy:
            check_sample_counts(base, greedy)
        per_item: dict[str, dict[str, float]] = {}
        for metric in registry.scores():
            recs = greedy if metric.reported_by("greedy") else sampled
            if not recs or (metric.reported_by("sampled") and metric.k > k):
                continue
            per_item[metric.name] = metric.item_values(recs)
            row[metric.name], dr[metric.name] = statistics.mean_and_draws(list(per_item[metric.name].values()),
                                                                           rng, iters)
        plus, minus = registry.GAP_TERMS
        if plus in per_item and minus in per_item:
            # Paired: the gap of each resampled item set, over items both tasks scored.
            common = sorted(per_item[plus].keys() & per_item[minus].keys())
            if common:
                row[registry.GAP.name], dr[registry.GAP.name] = statistics.mean_and_draws(
                    [per_item[plus][i] - per_item[minus][i] for i in common], rng, iters)
        row["n_items"] = max(len(greedy), len(sampled))
        row["unparsed"] = metrics.outcome_rate(greedy + sampled, "unparsed") if greedy or sampled else math.nan
        for outcome in metrics.EXCLUDED_OUTCOMES:
            row[outcome] = sum(excluded.get(t, {}).get(outcome, 0) for t in (base, passk_twin(base)))
        row["decoding"], row["decoding_vs_paper"] = {}, {}
        for kind, task in (("greedy", base), ("sampled", passk_twin(base))):
            if task in used and kinds.get(kind):
                row["decoding"][kind] = used[task]
                row["decoding_vs_paper"][kind] = decoding_report.paper_differences(
                    used[task]["settings"], sampled=kind == "sampled")
        if sampled:
            check = samplers[passk_twin(base)]
            row["distinct"] = None if math.isnan(check.distinct) else check.distinct
            row["collapsed"], row["sampler"] = check.collapsed, check.reason
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
        for name in [m.name for m in registry.scores()] + [registry.GAP.name]:
            if not all(name in per_ds[m] for m in present):
                continue
            grow[name], grow[f"{name}_ci"] = statistics.mean_over_datasets(
                [per_ds[m][name] for m in present], [draws[m][name] for m in present]
            )
        group_rows[gname] = grow
    request_failed = {t: c[REQUEST_FAILED] for t, c in excluded.items() if REQUEST_FAILED in c}
    judge_failed = {t: c[JUDGE_FAILED] for t, c in excluded.items() if JUDGE_FAILED in c}
    notes = ([describe_excluded(excluded)] if excluded else []) + (
        [f"{len(missing)} task(s) without numbers ({', '.join(missing)})"] if missing else [])
    return {
        "datasets": per_ds,
        "groups": group_rows,
        "excluded": excluded,
        "request_failed": request_failed,
        "judge_failed": judge_failed,
        "missing_tasks": dict(missing or {}),
        "partial": "; ".join(notes) or None,
    }


def group_label(name: str, row: Mapping[str, Any]) -> str:
    """The group's name, or ``name (partial: n of m)`` when some of its datasets did not run."""
    if row.get("partial"):
        return f"{name} (partial: {row.get('n_datasets')} of {row.get('n_members')})"
    return name


def _decoding_lines(summary: Mapping[str, Any]) -> list[str]:
    """Which decoding produced the numbers (tasks sharing one listed together) and any difference from the paper's."""
    shared: dict[tuple[str, str], list[str]] = {}
    differs = []
    for base, row in summary["datasets"].items():
        for kind, used in (row.get("decoding") or {}).items():
            task = passk_twin(base) if kind == "sampled" else base
            text = f"{decoding_report.describe(used.get('settings'))} ({decoding_report.SOURCE_TEXT[used['source']]}"
            text += f"; {used['variants']} different settings among its items)" if used.get("variants") else ")"
            shared.setdefault((kind, text), []).append(task)
            if (row.get("decoding_vs_paper") or {}).get(kind):
                differs.append(f"{task}: {'; '.join(row['decoding_vs_paper'][kind])}")
    if not shared:
        return []
    per_kind = {kind: sum(len(t) for (k, _), t in shared.items() if k == kind) for kind in ("greedy", "sampled")}
    lines = ["Decoding (the paper: Acc@1 greedy; Pass@K at T 0.7, top_p 0.9, top_k off, repetition_penalty 1.0):"]
    for (kind, text), tasks in shared.items():
        who = f"all {len(tasks)} {kind} tasks" if 1 < len(tasks) == per_kind[kind] else ", ".join(tasks)
        lines.append(f"  {who}: {text}")
    if differs:
        lines.append("NOT THE PAPER'S DECODING (these numbers are not comparable with its tables): "
                     + " | ".join(differs))
    return lines


def format_table(summary: Mapping[str, Any], *, ks: Iterable[int] = registry.PASS_KS) -> str:
    """A fixed-width table: one row per dataset, then one per group; decoding and flags below it."""
    shown = [registry.acc1()] + [registry.pass_at(k) for k in ks] + [registry.GAP]
    cols, heads = [m.name for m in shown], [m.label.capitalize() if m is registry.GAP else m.label for m in shown]
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
    lines += _decoding_lines(summary)
    checks: dict[tuple[bool, str], list[str]] = {}  # tasks that share a sampler share its check
    for name, row in summary["datasets"].items():
        if row.get("collapsed") is not None:
            checks.setdefault((row["collapsed"], row["sampler"]), []).append(name)
    for (collapsed, why), names in checks.items():
        if not collapsed:
            lines.append(f"Sampler check ({', '.join(names)}): {why}.")
        else:
            lines.append(
                f"COLLAPSED sampling in {', '.join(names)}: {why}. Pass@K there is Acc@1 in disguise and shows no "
                "support; no verdict is drawn from it (check the sampled task's decoding: an inherited top_k=1 or a "
                "tiny top_p does this)."
            )
    if summary.get("excluded"):
        lines.append(f"PARTIAL RUN: {describe_excluded(summary['excluded'])} were left out of every number above.")
    if summary.get("missing_tasks"):
        listing = "; ".join(f"{t}: {why}" for t, why in summary["missing_tasks"].items())
        lines.append(f"PARTIAL RUN: no numbers for {listing}.")
    return "\n".join(lines)


def groups_for(records: Mapping[str, Any]) -> dict[str, list[str]]:
    """The families' report groups (tasks/families.py) that have at least one of their tasks in this run."""
    bases = {greedy_twin(t) for t in records}
    return {g: m for g, m in report_groups().items() if bases & set(m)}


def summarize_run(run: Run, records: Mapping[str, list[dict[str, Any]]] | None = None, *, iters: int = 2000,
                  allow_partial: bool = False) -> dict[str, Any]:
    """``summarize`` for a whole run: its tasks checked for completeness and its asked decoding passed along."""
    missing = check_complete(run, allow_partial=allow_partial)
    records = run.records if records is None else records
    if not records:
        raise MedbridgeError(
            f"{run.results_path}: no medbridge sample records found (run lmms-eval with --log_samples)"
        )
    return summarize(records, groups=groups_for(records), iters=iters, allow_partial=allow_partial,
                     source=str(run.results_path), asked=decoding_report.asked_decodings(run.results), missing=missing)


def report_command(
    run_path: str | Path,
    *,
    rescore: bool = False,
    json_out: str | Path | None = None,
    iters: int = 2000,
    allow_partial: bool = False,
    latest: bool = False,
) -> int:
    """``medbridge report`` / ``medbridge rescore``: name the run read, print the table and write the summary
    JSON (re-scored records too). A folder with several runs is refused unless ``latest``. User errors raise
    MedbridgeError."""
    run = load_run(run_path, latest=latest)
    print(f"run: {run.results_path} (written {written_at(run.results_path)})")
    rescored = rescore_run(run) if rescore else None
    summary = summarize_run(run, rescored, iters=iters, allow_partial=allow_partial)
    summary = {"run": str(run.results_path), "written": written_at(run.results_path), **summary}
    print(format_table(summary))
    from medbridge.tasks.medvqa.medvlthinker import protocol_report  # tasks of MedVLThinker's protocol, if any

    protocol, text = protocol_report(rescored or run.records, run.samples)
    if protocol:
        summary["medvlthinker"] = protocol
        print(text)
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
            for task, recs in (rescored or {}).items():
                for rec in recs:
                    fh.write(json.dumps({"task": task, **rec}) + "\n")
        print(f"re-scored records: {samples_out}")
    print(f"summary: {out}")
    return 0


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    # Atomic, and a folder, device (/dev/full) or FIFO given as --json is a user error naming it.
    return limited_io.write_text(path, json.dumps(summary, indent=2, default=float), what="summary JSON")
