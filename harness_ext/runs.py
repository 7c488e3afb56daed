"""Reading an lmms-eval run back: which results file, its sample logs, per-item records, consistency.

lmms-eval writes a run's results and sample logs from rank 0 only, into
``<output_path>/<model>/<date>_results.json`` beside ``<date>_samples_<task>.jsonl``; a folder that
several runs wrote into holds several such pairs. ``find_results`` says which one it reads, and
refuses to guess among several unless told to take the newest (``latest=True``).

Checks a report or ingest runs before it trusts a run: ``check_records`` (n, c and outcomes agree),
``check_sample_counts`` (every item of a task has the task's K samples) and ``missing_tasks`` (a task
lmms-eval loaded or grouped but wrote no results or no sample log for: it crashed or was cut short).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext import limited_io, metrics
from medbridge.harness_ext import metric_registry as registry
from medbridge.harness_ext.errors import MedbridgeError

RESULTS_SUFFIX = "_results.json"


@dataclass
class Run:
    results_path: Path
    results: dict[str, Any]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> records
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> raw sample lines


def written_at(path: Path) -> str:
    """When a file was last written, in UTC with the zone (lmms-eval's own stamps carry none)."""
    stamp = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def results_files(folder: Path) -> dict[Path, int]:
    """Each lmms-eval results file under ``folder`` with its modification time (ns); empty without the folder."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob(f"*{RESULTS_SUFFIX}")} if folder.is_dir() else {}


def results_written_since(folder: Path, before: Mapping[Path, int]) -> Path:
    """The one results file lmms-eval wrote under ``folder`` since ``before`` (``results_files`` then): this
    run's own file, named, so an earlier run left in the same output folder is never read in its place."""
    written = sorted(p for p, mtime in results_files(folder).items() if before.get(p) != mtime)
    if len(written) != 1:
        found = "; ".join(map(str, written)) if written else "none"
        raise MedbridgeError(
            f"lmms-eval should have written one *{RESULTS_SUFFIX} under {folder} for this run, found {found}"
        )
    return written[0]


def find_all_results(path: str | Path) -> list[Path]:
    """Every lmms-eval ``*_results.json`` under a folder tree, oldest first (a file is itself)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MedbridgeError(
            f"{path}: no such file or folder (give an lmms-eval --output_path folder or a *_results.json file)"
        )
    found = sorted(path.rglob(f"*{RESULTS_SUFFIX}"), key=lambda p: (p.stat().st_mtime, str(p)))
    if not found:
        raise MedbridgeError(
            f"no lmms-eval *_results.json under {path} (did the run finish? lmms-eval writes it at the end)"
        )
    return found


def find_results(path: str | Path, *, latest: bool = True) -> Path:
    """The results JSON itself, or the one ``*_results.json`` under a folder.

    A folder holding several runs is refused (naming them, newest last) unless ``latest``: then the
    newest is read. A run that crashed writes no results file, so "the newest" may be an older run:
    callers that read a folder should say which file they read (``written_at``)."""
    found = find_all_results(path)
    if len(found) > 1 and not latest:
        shown = found[-5:]
        listing = "; ".join(f"{p} (written {written_at(p)})" for p in shown)
        more = f" and {len(found) - len(shown)} older" if len(found) > len(shown) else ""
        raise MedbridgeError(
            f"{path} holds {len(found)} lmms-eval runs: {listing}{more}. Name the one to read (its "
            "*_results.json file), or pass --latest to read the newest (a run that crashed writes no results "
            "file, so the newest may be an older run)."
        )
    return found[-1]


def _samples_files(results_path: Path) -> dict[str, Path]:
    stamp = results_path.name[: -len(RESULTS_SUFFIX)]
    files = {}
    for p in results_path.parent.glob(f"{stamp}_samples_*.jsonl"):
        files[p.name[len(f"{stamp}_samples_") : -len(".jsonl")]] = p
    return files


def record_of(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """Our per-item record in a logged sample (process_results stores it under every metric name)."""
    for key in registry.METRICS:
        rec = sample.get(key)
        if isinstance(rec, Mapping) and "outcomes" in rec:
            return dict(rec)
    return None


def _read_samples(sample_path: Path) -> list[dict[str, Any]]:
    lines = []
    with limited_io.open_regular(sample_path, what="sample log") as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                raise MedbridgeError(f"{sample_path}:{lineno}: not valid JSON ({type(err).__name__}: {err})") from None
            if not isinstance(sample, dict):
                raise MedbridgeError(
                    f"{sample_path}:{lineno}: a logged sample must be a JSON object, got {type(sample).__name__}"
                )
            lines.append(sample)
    return lines


def load_run(path: str | Path, *, latest: bool = True) -> Run:
    """The run a results file (or the one in a folder, see ``find_results``) and its sample logs hold."""
    results_path = find_results(path, latest=latest)
    text = limited_io.read_text(results_path, what="lmms-eval results file")
    try:
        results = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise MedbridgeError(
            f"{results_path}: not valid JSON ({type(err).__name__}: {err}); the run may have been cut short, re-run it"
        ) from None
    if not isinstance(results, dict):
        raise MedbridgeError(
            f"{results_path}: not an lmms-eval results file (top level is {type(results).__name__}, not an object)"
        )
    run = Run(results_path, results)
    for task, sample_path in _samples_files(results_path).items():
        run.samples[task] = _read_samples(sample_path)
        recs = [r for r in map(record_of, run.samples[task]) if r is not None]
        if recs:
            run.records[task] = recs
    return run


def responses_of(sample: Mapping[str, Any]) -> list[str | None]:
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
    from medbridge.harness_ext.scoring import score_doc

    rescored = {}
    for task, lines in run.samples.items():
        recs = []
        for line in lines:
            old = record_of(line)
            if old is None or not old.get("options"):
                break  # not a medbridge multiple-choice task
            doc = {"item_id": old["item_id"], "dataset": old["dataset"], "options": old["options"],
                   "answer_letter": old["answer"]}
            responses = responses_of(line)
            rec = score_doc(doc, responses)
            for key in ("decoding", "model", "subset", "source", "n_skipped_in_source", "data_sha256"):
                if key in old:
                    rec[key] = old[key]  # what the run recorded about itself stays with the item
            if len(responses) > 1:
                rec["distinct"] = metrics.count_distinct(responses)
            recs.append(rec)
        else:
            if recs:
                rescored[task] = recs
    return rescored


# ------------------------------------------------------------------ is the run whole?


def missing_tasks(run: Run) -> dict[str, str]:
    """task -> why it is incomplete: loaded or grouped by lmms-eval but without results, or with results
    but without the sample log our records live in (while other tasks of the run have theirs)."""
    res = run.results
    reported = set(res.get("results") or {})
    groups = res.get("group_subtasks") or {}
    expected = set(res.get("configs") or {})
    for members in groups.values() if isinstance(groups, Mapping) else ():
        expected |= {m for m in members or () if isinstance(m, str) and m not in groups}
    missing = {t: "lmms-eval wrote no results for it (the task failed or the run was cut short)"
               for t in sorted(expected - reported)}
    if run.records:  # a run logged with --log_samples: every medbridge task it scored must have its records
        from medbridge.tasks.families import family_of

        for task in sorted(reported - set(groups) - set(run.records)):
            if family_of(task) is not None:
                missing.setdefault(task, "its sample log holds no medbridge records")
    return missing


def check_complete(run: Run, *, allow_partial: bool = False) -> dict[str, str]:
    """Refuse a run with missing tasks (see ``missing_tasks``) unless ``allow_partial``; returns them."""
    missing = missing_tasks(run)
    if missing and not allow_partial:
        listing = "; ".join(f"{t}: {why}" for t, why in missing.items())
        raise MedbridgeError(
            f"{run.results_path}: {len(missing)} task(s) of the run have no numbers ({listing}). Read lmms-eval's "
            "log for the error, fix it and re-run those tasks, or pass --allow-partial to report the tasks "
            "that finished (the run is then marked partial)."
        )
    return missing


def _bad_record(rec: Any) -> str | None:
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
            why = _bad_record(rec)
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
