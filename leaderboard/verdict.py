"""`medbridge recipe`: the verdict of the paper's boundary-aware decision rule, per task.

Support is Pass@16 (does a correct answer appear anywhere in 16 samples?); default behaviour is
greedy Acc@1. With a reliability threshold tau:

* Pass@16 < tau: support is weak. RL can only sharpen what the model already reaches, so first
  bridge with SFT on task- or modality-proximal data to raise Pass@K.
* Pass@16 >= tau: support is there. Sharpen with RL (GRPO) to turn it into Acc@1, and watch
  Pass@K during training: a falling Pass@16 means the distribution is collapsing.

A sampled task whose samples collapsed to one response per item gets no verdict: its Pass@16 is
its Acc@1 and says nothing about support. The numbers come straight from a results folder
(``summarize``) or from the leaderboard store. Recipe files are looked up under the folder the
training package exports (``medbridge.training.RECIPES_DIR``; its __init__ loads neither TRL nor torch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbridge.harness_ext import metric_registry as registry
from medbridge.harness_ext.report import summarize_run
from medbridge.harness_ext.runs import load_run, written_at
from medbridge.leaderboard.store import default_store_path, fetch_rows, open_store
from medbridge.leaderboard.view import View, entry_of
from medbridge.tasks.families import entry_of as catalog_entry_of
from medbridge.tasks.families import passk_twin
from medbridge.training import RECIPES_DIR  # training/recipes/ (the package's __init__ imports nothing heavy)

PASS_KS = registry.PASS_KS
PASSK_NAMES = {registry.pass_at(k).name: k for k in PASS_KS}  # pass_at_01 -> 1, ...
ACC1, GAP = registry.acc1().name, registry.GAP.name

BRIDGE = "bridge with SFT on task-/modality-proximal data"
SHARPEN = "sharpen with RL; watch Pass@K for collapse"


@dataclass
class Verdict:
    task: str
    dataset: str
    acc1: float | None
    pass16: float | None
    gap: float | None
    passk: dict[int, float]
    n: int | None
    verdict: str
    reason: str
    recipes: list[str]


COLLAPSED = "no verdict: sampling collapsed"


def decide(
    pass16: float | None, acc1: float | None, tau: float, collapsed: bool | None = False, why: str = ""
) -> tuple[str, str]:
    """The verdict and its reason. ``collapsed``/``why``: what the records say about the sampler
    (``metrics.check_sampler``): a sampler that does not sample gives no evidence of support, while a
    confident model sampled correctly keeps its verdict."""
    if collapsed:
        return COLLAPSED, (
            f"the sampler did not sample ({why or 'its samples do not vary'}), so Pass@16 equals Acc@1 and shows "
            "no support; fix the sampled task's decoding (an inherited top_k=1 or tiny top_p does this) and re-run"
        )
    if pass16 is None or (isinstance(pass16, float) and math.isnan(pass16)):
        return "no verdict: no Pass@16 (run the task's _passk twin with 16 samples)", "support unknown"
    if pass16 < tau:
        return BRIDGE, f"support Pass@16 = {pass16:.3f} < tau = {tau:g}"
    extra = f"; Acc@1 = {acc1:.3f}, so RL has a gap of {pass16 - acc1:+.3f} to close" if acc1 is not None else ""
    return SHARPEN, f"support Pass@16 = {pass16:.3f} >= tau = {tau:g}{extra}"


def dataset_keys(task: str, dataset: str | None) -> tuple[set[str], set[str]]:
    """(words a recipe's text must contain, tokens its file name may contain) for a task:
    the task name and MedMNIST flag anywhere in the text; the short name only in the file name,
    where it cannot be part of an unrelated word (``path`` in ``model_name_or_path``)."""
    text_keys, name_keys = {task.lower()}, set()
    entry = catalog_entry_of(task)  # the catalog entry of any medbridge task (tasks/families.py)
    short = entry.name if entry is not None else (dataset or "")
    if short:
        name_keys.add(short.lower())
    if getattr(entry, "flag", None):  # a MedMNIST dataset: its flag names it in recipe texts
        text_keys.add(entry.flag)
    return text_keys, name_keys


def matching_recipes(task: str, dataset: str | None, recipes_dir: Path | None = None) -> list[str]:
    """Recipe files under training/recipes/ that name the task's dataset."""
    recipes_dir = recipes_dir or RECIPES_DIR
    if not recipes_dir.is_dir():
        return []
    text_keys, name_keys = dataset_keys(task, dataset)
    found = []
    for path in sorted(recipes_dir.glob("*.y*ml")):
        if path.name.startswith("tiny_"):
            continue  # CPU recipes for the demo and tests, not advice for a real model
        try:
            text = path.read_text(errors="replace").lower()
        except OSError:
            continue
        tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
        if any(re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])", text) for k in text_keys) or tokens & name_keys:
            found.append(f"training/recipes/{path.name}" if recipes_dir == RECIPES_DIR else str(path))
    return found


def rank_recipes(paths: Sequence[str], verdict: str) -> list[str]:
    """Recipes that do what the verdict says first: SFT ones to bridge, RL-only ones to sharpen."""

    def is_sft(p: str) -> bool:
        return "sft" in re.split(r"[^a-z0-9]+", Path(p).stem.lower())

    if verdict == BRIDGE:
        return sorted(paths, key=lambda p: (not is_sft(p), p))
    if verdict == SHARPEN:
        return sorted(paths, key=lambda p: (is_sft(p), p))
    return list(paths)


def _rows_from_summary(
    summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    out = []
    for task, row in summary["datasets"].items():
        recs = records.get(task) or records.get(passk_twin(task)) or []
        out.append(
            {
                "task": task,
                "dataset": recs[0].get("dataset") if recs else None,
                "acc1": row.get(ACC1),
                "gap": row.get(GAP),
                "passk": {k: row[name] for name, k in PASSK_NAMES.items() if row.get(name) is not None},
                "n": row.get("n_items"),
                "collapsed": row.get("collapsed"),
                "why": row.get("sampler") or "",
            }
        )
    return out


def rows_for_run(path: str | Path, *, latest: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """The rows of the run at ``path``, read as ``medbridge report`` reads it: a folder holding several runs
    is refused unless ``latest``, and the source names the results file read and when it was written."""
    run = load_run(path, latest=latest)
    if not run.records:
        raise ValueError(f"{run.results_path}: no medbridge per-item records (was --log_samples set?)")
    # The report's own summary: failed requests or judge verdicts refuse the run, as they do there.
    summary = summarize_run(run, iters=200)
    return f"{run.results_path} (written {written_at(run.results_path)})", _rows_from_summary(summary, run.records)


def rows_for_model(store: str | Path, name: str) -> tuple[str, list[dict[str, Any]]]:
    """The latest evaluation of a model (by name, run name, checkpoint or label) in the store."""
    with open_store(store) as conn:
        view = View(fetch_rows(conn, "kind = 'eval'"))
    entry = view.find(name, last=True)
    per_task: dict[str, dict[str, Any]] = {}
    for r in view.rows:
        if entry_of(r) != entry or r["dataset"] is None:
            continue
        row = per_task.setdefault(
            r["task"],
            {
                "task": r["task"],
                "dataset": r["dataset"],
                "acc1": None,
                "gap": None,
                "passk": {},
                "n": None,
                "collapsed": None,
            },
        )
        if r["metric"] == ACC1:
            row["acc1"], row["n"] = r["value"], r["n"]
        elif r["metric"] == GAP:
            row["gap"] = r["value"]
        elif r["metric"] == "collapsed":
            row["collapsed"] = bool(r["value"])
        elif r["metric"] in PASSK_NAMES:
            row["passk"][PASSK_NAMES[r["metric"]]] = r["value"]
    return f"{entry.label} (store {store})", [per_task[t] for t in sorted(per_task)]


def recipe(
    target: str,
    *,
    tau: float = 0.5,
    store: str | Path | None = None,
    recipes_dir: Path | None = None,
    latest: bool = False,
) -> tuple[str, list[Verdict]]:
    """Verdicts for a run (a results file, or a folder: ``latest`` as in ``rows_for_run``) or a model in the store."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau is a Pass@16 threshold in [0, 1], got {tau}")
    if Path(target).exists():
        source, rows = rows_for_run(target, latest=latest)
    else:
        source, rows = rows_for_model(store or default_store_path(), target)
    verdicts = []
    for r in rows:
        p16 = r["passk"].get(registry.N_SAMPLES)
        verdict, reason = decide(p16, r["acc1"], tau, r.get("collapsed"), r.get("why", ""))
        found = rank_recipes(matching_recipes(r["task"], r["dataset"], recipes_dir), verdict)
        verdicts.append(
            Verdict(
                r["task"],
                r["dataset"] or "",
                r["acc1"],
                p16,
                r["gap"],
                dict(sorted(r["passk"].items())),
                r["n"],
                verdict,
                reason,
                found,
            )
        )
    return source, verdicts


def format_verdicts(source: str, verdicts: Sequence[Verdict], tau: float) -> str:
    def f(x: float | None) -> str:
        return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"

    lines = [f"medbridge recipe for {source}  (tau = {tau:g} on support Pass@16)", ""]
    head = (
        f"{'task':28} {'n':>4} {'Acc@1':>6} "
        + " ".join(f"{'P@' + str(k):>6}" for k in PASS_KS)
        + f" {'gap':>6}  verdict"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for v in verdicts:
        passk = " ".join(f"{f(v.passk.get(k)):>6}" for k in PASS_KS)
        gap = "  -  " if v.gap is None else f"{100 * v.gap:+5.1f}"
        lines.append(f"{v.task:28} {v.n if v.n is not None else '-':>4} {f(v.acc1):>6} {passk} {gap:>6}  {v.verdict}")
        fits = v.recipes[0] if v.recipes else "none yet"
        also = f" (also: {', '.join(v.recipes[1:])})" if len(v.recipes) > 1 else ""
        lines.append(f"{'':28}   because {v.reason}; recipe: {fits}{also}")
    lines += [
        "",
        "Values in %. Rule (MedBridgeRL): support below tau -> bridge with SFT on task- or modality-proximal data;",
        "support at or above tau -> sharpen with RL (GRPO) and track Pass@K so support does not collapse.",
    ]
    return "\n".join(lines)
