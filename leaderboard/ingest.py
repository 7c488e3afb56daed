"""Ingest lmms-eval runs into the leaderboard store.

A run is read back with ``harness_ext.report.load_run`` and summarised with ``summarize_run`` (the
same numbers, bootstrap CIs and partial-run checks as ``medbridge report``: items with a failed
request or a failed judge verdict refuse the run unless ``allow_partial``); every per-dataset and per-group metric
becomes one row pinned to what makes it comparable, and every item's outcome is kept for paired
tests between checkpoints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medbridge.harness_ext import limited_io, metrics, statistics
from medbridge.harness_ext import metric_registry as registry
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.report import (
    Run,
    find_all_results,
    find_results,
    groups_for,
    load_run,
    summarize_run,
)
from medbridge.leaderboard.pins import (
    base_model_of,
    describe_model,
    judge_of,
    merge_provenance,
    prompt_version_of,
    run_date,
    task_config_hash,
    task_gen_settings,
    task_provenance,
    trained_on_of,
    training_marker,
)
from medbridge.leaderboard.store import (
    CorruptStoreError,
    ItemRow,
    ResultRow,
    RunBundle,
    RunRow,
    StoreError,
    canonical_json,
    default_store_path,
    display_path,
    open_store,
    recovery_advice,
    sha256_text,
    storable_text,
    subset_hash,
    write_bundle,
)
from medbridge.leaderboard.view import PROTOCOL_METRIC
from medbridge.tasks.families import MEDVLTHINKER, passk_twin

# Scores (the metric registry's): taken from the greedy task or from its sampled twin.
GREEDY_ROW_METRICS = tuple(m.name for m in registry.scores("greedy"))
SAMPLED_ROW_METRICS = tuple(m.name for m in registry.scores("sampled"))
# Per-dataset report rows that span both tasks: the paired gap and the unparsed rate.
BOTH_ROW_METRICS = (registry.GAP.name, "unparsed")
# What the report says about a sampled task's sampler: mean distinct responses per item, and 1.0
# when the sampler collapsed (then Pass@K is Acc@1 and draws no verdict).
DIVERSITY_METRICS = ("distinct", "collapsed")
# A training step is stored in an SQLite INTEGER (signed 64 bits).
MAX_STEP = 2**63 - 1

log = logging.getLogger(__name__)


class IngestError(MedbridgeError, ValueError):
    """A results folder that cannot be ingested; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class Ingested:
    """What ingesting one run did: added (``rows`` result rows, possibly 0), already stored, or skipped."""

    path: str
    rows: int | None = None  # result rows the newly added run wrote; None when nothing was written
    partial: str | None = None  # the added run's partial note (items left out, tasks missing)
    skipped: str | None = None  # why the run was not ingested

    @property
    def added(self) -> bool:
        return self.rows is not None

    def message(self) -> str:
        if self.skipped is not None:
            return f"skipped {self.path}: {self.skipped}"
        if self.rows is None:
            return f"{self.path}: already in the store, nothing added"
        text = f"{self.path}: run added, {self.rows} rows added"
        if self.rows == 0:
            text += " (no item was answered, so it has no numbers)"
        return text + (f"; marked partial: {self.partial}" if self.partial else "")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------ building the rows


def _tasks_of(base: str, run: Run) -> dict[str, str]:
    out = {}
    if base in run.records:
        out["greedy"] = base
    if passk_twin(base) in run.records:
        out["sampled"] = passk_twin(base)
    return out


def _pins(run: Run, tasks: Sequence[str]) -> dict[str, Any]:
    """Pins of a number computed over the items of ``tasks`` (one task, or a group's members)."""
    ids = [f"{t}:{r['item_id']}" if len(tasks) > 1 else r["item_id"] for t in tasks for r in run.records.get(t, [])]
    samples = [s for t in tasks for s in run.samples.get(t, [])]
    settings = sorted({canonical_json(task_gen_settings(run.results, t)) for t in tasks})
    judges = {judge_of(run.results, t, run.records.get(t, [])) for t in tasks}
    judge_model, judge_prompt = judges.pop() if len(judges) == 1 else ("mixed", "mixed")
    configs = sorted(filter(None, (task_config_hash(run.results, t) for t in tasks)))
    return {
        "provenance": canonical_json(
            merge_provenance([task_provenance(run.results, t, run.records.get(t, [])) for t in tasks])
        ),
        "subset_hash": subset_hash(ids),
        "prompt_version": prompt_version_of(samples),
        "judge_model": judge_model,
        "judge_prompt_version": judge_prompt,
        "gen_settings": settings[0] if len(settings) == 1 else canonical_json([json.loads(s) for s in settings]),
        "config_hash": configs[0] if len(configs) == 1 else (sha256_text("".join(configs))[:16] if configs else None),
    }


def _metric_tasks(metric: str, kinds: Mapping[str, str]) -> list[str]:
    if metric in GREEDY_ROW_METRICS:
        return [kinds["greedy"]] if "greedy" in kinds else []
    if metric in SAMPLED_ROW_METRICS:
        return [kinds["sampled"]] if "sampled" in kinds else []
    if metric in DIVERSITY_METRICS:
        return [kinds["sampled"]] if "sampled" in kinds else []
    return list(kinds.values())  # gap, unparsed: both


def result_rows(run: Run, summary: Mapping[str, Any], groups: Mapping[str, Sequence[str]]) -> list[ResultRow]:
    rows: list[ResultRow] = []

    def add(
        task: str, dataset: str | None, metric: str, row: Mapping[str, Any], pins: Mapping[str, Any], n: int | None
    ) -> None:
        lo, hi = row.get(f"{metric}_ci", (None, None))
        value = row.get(metric)
        value = float(value) if isinstance(value, bool) else value
        rows.append(
            ResultRow(
                task=task,
                dataset=dataset,
                metric=metric,
                value=_finite(value),
                ci_low=_finite(lo),
                ci_high=_finite(hi),
                n=n,
                **pins,
            )
        )

    for base, row in summary["datasets"].items():
        kinds = _tasks_of(base, run)
        recs = [r for t in kinds.values() for r in run.records[t]]
        dataset = recs[0].get("dataset") if recs else None
        for metric in GREEDY_ROW_METRICS + SAMPLED_ROW_METRICS + BOTH_ROW_METRICS + DIVERSITY_METRICS:
            if row.get(metric) is None:
                continue
            tasks = _metric_tasks(metric, kinds)
            if not tasks:
                continue
            if metric == registry.GAP.name:
                common = {r["item_id"] for r in run.records[kinds["greedy"]]} & {
                    r["item_id"] for r in run.records[kinds["sampled"]]
                }
                pins = _pins(run, tasks)
                pins["subset_hash"] = subset_hash(common)
                n = len(common)
            else:
                pins = _pins(run, tasks)
                n = sum(len(run.records[t]) for t in tasks) if metric == "unparsed" else len(run.records[tasks[0]])
            add(base, dataset, metric, row, pins, n)
    for label, grow in summary["groups"].items():
        if grow.get("partial"):
            continue  # a mean over part of a group is not the group's number; its datasets have rows
        members = [m for m in groups.get(label, []) if m in summary["datasets"]]
        for metric in GREEDY_ROW_METRICS + SAMPLED_ROW_METRICS + (registry.GAP.name,):
            if metric not in grow:
                continue
            tasks = [t for m in members for t in _metric_tasks(metric, _tasks_of(m, run))]
            add(label, None, metric, grow, _pins(run, tasks), grow.get("n_datasets"))
    return rows


def protocol_rows(run: Run, *, iters: int = 2000) -> list[ResultRow]:
    """Rows of the tasks run under MedVLThinker's protocol (the ``medvqa_medvlthinker`` family): both
    graders' accuracies (each the mean of the greedy runs), the runs' spread and the graders'
    agreement, as ``medbridge report`` computes them (``protocol_summary``). Their grader's accuracy
    also gets a bootstrap CI over items (an item's value: the share of its runs their grader accepts)."""
    from medbridge.tasks.medvqa import medvlthinker as protocol

    summary = protocol.protocol_summary(run.records, run.samples)
    rows = []
    for task, row in (summary.get("tasks") or {}).items():
        pins = _pins(run, [task])
        records = run.records[task]
        entry = MEDVLTHINKER.entry(task)
        per_item = [sum(v) / len(v) for r in records if "medvlthinker" in r and (v := protocol.theirs(r))]
        ci: tuple[float | None, float | None] = (None, None)
        if len(per_item) == row["n_items"]:
            _, draws = statistics.mean_and_draws(per_item, statistics.rng_for(task), iters)
            ci = statistics.interval(draws)
        for metric in protocol.METRICS:
            lo, hi = ci if metric.name == PROTOCOL_METRIC else (None, None)
            rows.append(
                ResultRow(
                    task=task,
                    dataset=entry.name if entry else None,
                    metric=metric.name,
                    value=_finite(row.get(metric.name)),
                    ci_low=_finite(lo),
                    ci_high=_finite(hi),
                    n=row["n_items"],
                    **pins,
                )
            )
    return rows


def item_rows(run: Run) -> list[ItemRow]:
    rows, seen = [], set()
    for task, recs in run.records.items():
        for r in recs:
            key = (task, str(r["item_id"]))
            if key in seen:  # an item logged twice counts once (its first record)
                continue
            seen.add(key)
            rows.append(
                ItemRow(
                    task=task,
                    item_id=key[1],
                    first_correct=int(bool(r["outcomes"]) and r["outcomes"][0] == "correct"),
                    n=int(r["n"]),
                    c=int(r["c"]),
                )
            )
    return rows


def run_identity(run: Run) -> str:
    """A content hash of the results file and every sample log it names: two runs whose results
    files happen to match (a 16-item and a 20,012-item run) are still two runs."""
    h = hashlib.sha256()
    stamp = run.results_path.name[: -len("_results.json")]
    for i, path in enumerate([run.results_path, *sorted(run.results_path.parent.glob(f"{stamp}_samples_*.jsonl"))]):
        if i:
            h.update(b"\0" + os.fsencode(path.name) + b"\0")
        with limited_io.open_regular(path, what="run file") as fh:  # never a FIFO or a device
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _check_shape(results_path: Path, res: Any) -> None:
    if not isinstance(res, dict) or not isinstance(res.get("results"), dict):
        raise IngestError(f"{results_path}: not an lmms-eval results file (no 'results' mapping)")
    for key in ("config", "configs"):
        if key in res and res[key] is not None and not isinstance(res[key], dict):
            raise IngestError(
                f"{results_path}: '{key}' is a {type(res[key]).__name__}, not an object; "
                "the file is not one lmms-eval wrote"
            )


def bundle_from_run(
    run_path: str | Path,
    *,
    model: str | None = None,
    run: str | None = None,
    step: int | None = None,
    trained_on: str | None = None,
    base_model: str | None = None,
    iters: int = 2000,
    allow_partial: bool = False,
) -> RunBundle:
    """Read one lmms-eval run (its results JSON, or a folder holding exactly one run) into what the store keeps.

    Every problem (unreadable files, inconsistent records, failed requests without
    ``allow_partial``, values out of range, a folder holding several runs) raises IngestError naming the file."""
    try:
        results_path = find_results(run_path, latest=False)  # never "the newest" of several: name the run
        loaded = load_run(results_path)
    except MedbridgeError as err:
        raise IngestError(str(err)) from None
    except (OSError, RecursionError, OverflowError) as err:
        raise IngestError(f"{run_path}: cannot be read ({type(err).__name__}: {err})") from None
    res = loaded.results
    _check_shape(results_path, res)
    if not loaded.records:
        raise IngestError(f"{results_path}: no medbridge per-item records in the sample logs (was --log_samples set?)")
    try:
        who = describe_model(res, model=model, run=run, step=step)
        marker = training_marker(who["checkpoint"])
        if who["run"] is None and marker.get("run"):
            who["run"] = str(marker["run"])
        if who["step"] is None and marker.get("step") is not None:
            who["step"] = int(marker["step"])
        groups = groups_for(loaded.records)
        summary = summarize_run(loaded, iters=iters, allow_partial=allow_partial)
        # What was scored: items left out for a failed request or judge verdict have no number, no
        # pins and no per-item outcome (a paired test must not count them as wrong answers).
        scored = dataclasses.replace(
            loaded, records={t: kept for t, recs in loaded.records.items() if (kept := metrics.scorable(recs))}
        )
        rows = result_rows(scored, summary, groups) + protocol_rows(scored, iters=iters)
        items = item_rows(scored)
        check_values(results_path, rows)
        digest = run_identity(loaded)
    except IngestError:
        raise
    except MedbridgeError as err:
        raise IngestError(str(err)) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, OverflowError, OSError) as err:
        raise IngestError(
            f"{results_path}: malformed results or sample records ({type(err).__name__}: {err})"
        ) from None
    if who["step"] is not None and not 0 <= who["step"] <= MAX_STEP:
        raise IngestError(
            f"{display_path(results_path)}: training step {who['step']} is out of range "
            f"(0 to {MAX_STEP}); give the checkpoint's real step with --step"
        )
    run_row = RunRow(
        run_id=f"eval-{digest[:24]}",
        kind="eval",
        model=str(who["model"]),
        checkpoint=who["checkpoint"],
        run=who["run"],
        step=who["step"],
        trained_on=trained_on or trained_on_of(res, marker),
        base_model=base_model or base_model_of(marker),
        date=run_date(res),
        source=display_path(results_path),
        partial=summary.get("partial") or None,
    )
    return RunBundle(run_row, rows, items)


def check_values(results_path: Path, rows: Sequence[ResultRow]) -> None:
    """Every stored rate lies in [0, 1] (gaps in [-1, 1]) and every CI holds its value."""
    for r in rows:
        if r.metric == "distinct":
            if r.value is not None and r.value < 0:
                raise IngestError(f"{results_path}: {r.task} distinct = {r.value} is negative")
            continue
        low = -1.0 if r.metric == "gap" else 0.0
        for name in ("value", "ci_low", "ci_high"):
            x = getattr(r, name)
            if x is not None and not low - 1e-9 <= x <= 1.0 + 1e-9:
                raise IngestError(
                    f"{results_path}: {r.task} {r.metric} {name} = {x} is outside [{low:g}, 1]; "
                    "the sample records are not ones medbridge wrote"
                )
        if r.n is not None and r.n < 0:
            raise IngestError(f"{results_path}: {r.task} {r.metric} has n = {r.n}")


def ingest_run(
    store_path: str | Path | None,
    run_path: str | Path,
    *,
    model: str | None = None,
    run: str | None = None,
    step: int | None = None,
    trained_on: str | None = None,
    base_model: str | None = None,
    allow_partial: bool = False,
) -> int:
    """Ingest one lmms-eval run (its results JSON, or a folder holding only that run); returns the number
    of result rows added (0 when the run is already in the store, or when a partial run had no item
    answered). Raises IngestError naming the file when it cannot be read or a folder holds several runs
    (nothing of a failed run is written) and StoreError when the store is damaged or not a store."""
    bundle = bundle_from_run(
        run_path,
        model=model,
        run=run,
        step=step,
        trained_on=trained_on,
        base_model=base_model,
        allow_partial=allow_partial,
    )
    with open_store(store_path or default_store_path(), write=True) as conn:
        return _write(conn, bundle, Path(store_path or default_store_path())) or 0


def _write(conn: sqlite3.Connection, bundle: RunBundle, store: Path) -> int | None:
    """Rows added by the new run, or None when it was already in the store (nothing written)."""
    try:
        return write_bundle(conn, bundle, now_iso())
    except sqlite3.DatabaseError as err:
        if not isinstance(err, sqlite3.OperationalError) and "malformed" in str(err).lower():
            raise CorruptStoreError(
                f"leaderboard store {store} turned out damaged while {bundle.run.source} was written ({err}); "
                "that run was rolled back. To recover, " + recovery_advice(store)
            ) from None
        raise IngestError(f"{bundle.run.source}: could not be stored ({err})") from None


def expand_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Each results file under each given folder tree (a multi-process or multi-node sweep writes
    one per run, from rank 0); a path with none is kept as is, so that ingesting it reports why."""
    out: list[Path] = []
    for path in paths:
        try:
            out += find_all_results(path)
        except MedbridgeError:
            out.append(Path(path))
    return out


def ingest_many(
    store_path: str | Path | None,
    run_paths: Iterable[str | Path],
    *,
    on_run: Callable[[Ingested], None] | None = None,
    **labels: Any,
) -> tuple[int, list[tuple[str, str]]]:
    """Ingest several runs through one write connection; a run that fails, whatever the reason
    (unreadable files, a non-UTF-8 folder name, a step no integer column holds, a bug of ours), is
    named and skipped and the others go on. Only a damaged or foreign store stops the sweep
    (StoreError), before anything is written to it.

    ``on_run(Ingested)`` is called after each run (the CLI prints its message).
    Returns (rows added, [(path, why)])."""
    store = Path(store_path or default_store_path())
    added, skipped = 0, []
    with open_store(store, write=True) as conn:
        for path in run_paths:
            name = display_path(path)
            try:
                bundle = bundle_from_run(path, **labels)
                n = _write(conn, bundle, store)
            except StoreError:
                raise
            except IngestError as err:
                why = str(err)
            except Exception as err:  # noqa: BLE001 - one odd run must not abort a sweep; it is named
                log.debug("ingest of %s failed", name, exc_info=True)
                why = f"{name}: could not be ingested ({type(err).__name__}: {err})"
            else:
                added += n or 0
                if on_run is not None:
                    on_run(Ingested(name, n, bundle.run.partial if n is not None else None))
                continue
            why = storable_text(why)
            skipped.append((name, why))
            if on_run is not None:
                on_run(Ingested(name, skipped=why))
    return added, skipped
