"""Tables that compare two evaluations item by item: a training run's checkpoints over steps, and
the RQ3 transfer table (base vs RL-trained: in-domain / within-modality / cross-modality).

Checkpoints and base/RL pairs are scored on the same items, so every difference is a paired one
(``harness_ext.statistics.paired_difference``: paired bootstrap CI, McNemar's exact test on the
greedy outcomes) over the items both were scored on.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbridge.harness_ext import metric_registry as registry
from medbridge.harness_ext import metrics
from medbridge.harness_ext.statistics import PairedResult, paired_difference
from medbridge.leaderboard.cells import DASH, Cell, Table, pct, short_path, slug
from medbridge.leaderboard.figures import StepCurve
from medbridge.leaderboard.store import fetch_items
from medbridge.leaderboard.view import Entry, View, entry_of
from medbridge.tasks.families import MEDMNIST, is_sampled, passk_twin
from medbridge.tasks.medmnist.catalog import SETS, get_set

K = registry.N_SAMPLES  # Pass@16: the support an item's 16 samples show

ItemKey = tuple[str, str]  # (task, item_id)


def item_acc1(row: Mapping[str, Any]) -> float:
    return float(row["first_correct"])


def item_pass16(row: Mapping[str, Any]) -> float:
    return metrics.pass_at_k(int(row["n"]), int(row["c"]), K)


def paired(
    items_a: Mapping[ItemKey, Mapping[str, Any]], items_b: Mapping[ItemKey, Mapping[str, Any]], pass16: bool = False
) -> PairedResult | None:
    """B against A on their common items: Acc@1 with McNemar's test, or Pass@16."""
    fn = item_pass16 if pass16 else item_acc1
    return paired_difference(
        {k: fn(v) for k, v in items_a.items()}, {k: fn(v) for k, v in items_b.items()}, mcnemar=not pass16
    )


def greedy_items(items: Mapping[ItemKey, Mapping[str, Any]]) -> dict:
    return {k: v for k, v in items.items() if not is_sampled(k[0])}


def sampled_items(items: Mapping[ItemKey, Mapping[str, Any]]) -> dict:
    return {k: v for k, v in items.items() if is_sampled(k[0]) and v["n"] >= K}


def same_settings(view: View, a: Entry, b: Entry) -> bool:
    """True when the two entries' MedMNIST Acc@1 rows share their generation settings, prompt,
    judge and provenance."""

    def pins(e: Entry) -> set:
        return {
            (r["task"], r["prompt_version"], r["gen_settings"], r["judge_model"], r.get("provenance"))
            for r in view.rows
            if entry_of(r) == e and r["metric"] == registry.acc1().name and r["dataset"]
        }

    pa, pb = pins(a), pins(b)
    common = {x[0] for x in pa} & {x[0] for x in pb}
    return {x for x in pa if x[0] in common} == {x for x in pb if x[0] in common}


# ------------------------------------------------------------------ checkpoints over steps


def training_runs(view: View) -> dict[str, list[Entry]]:
    by_run: dict[str, list[Entry]] = defaultdict(list)
    for e in view.entries:
        if e.step >= 0 and view.latest_run_id(e):
            by_run[e.run or e.model].append(e)
    return {name: sorted(entries, key=lambda e: e.step) for name, entries in sorted(by_run.items())}


def checkpoint_table(
    view: View, conn: sqlite3.Connection, run_name: str, entries: list[Entry]
) -> tuple[Table, StepCurve]:
    items = {e: fetch_items(conn, view.latest_run_id(e)) for e in entries}
    greedy = {e: greedy_items(items[e]) for e in entries}
    sampled = {e: sampled_items(items[e]) for e in entries}
    shared_g = set.intersection(*(set(g) for g in greedy.values())) if entries else set()
    shared_s = set.intersection(*(set(s) for s in sampled.values())) if entries else set()
    t = Table(
        f"steps_{slug(run_name)}",
        f"Training run {run_name}: checkpoints over steps",
        f"Acc@1 and Pass@16 pooled over the {len(shared_g)} greedy / {len(shared_s)} sampled items "
        "every checkpoint was scored on. Each checkpoint is compared with the one before on their common items: "
        "McNemar's exact test on greedy outcomes, and a paired bootstrap 95% CI of the Acc@1 change.",
        [
            "Step",
            "Checkpoint",
            "Acc@1",
            "Pass@16",
            "ΔAcc@1 vs prev",
            "95% CI",
            "right only now / only before",
            "McNemar p",
            "Same settings as prev",
        ],
    )
    curve = StepCurve(run_name, [], [], [])
    prev = None
    for e in entries:
        g = [greedy[e][k] for k in shared_g]
        s = [sampled[e][k] for k in shared_s]
        a = sum(map(item_acc1, g)) / len(g) if g else None
        p = sum(map(item_pass16, s)) / len(s) if s else None
        curve.steps.append(e.step)
        curve.acc1.append(a)
        curve.pass16.append(p)
        cells = [
            Cell(str(e.step), e.step),
            Cell(Path(e.checkpoint).name or e.model, Path(e.checkpoint).name or e.model, short_path(e.checkpoint)),
            Cell(pct(a), a),
            Cell(pct(p), p),
        ]
        if prev is None:
            cells += [Cell(DASH)] * 5
        else:
            res = paired(greedy[prev], greedy[e])
            same = same_settings(view, prev, e)
            if res is None:
                cells += [
                    Cell("no common items"),
                    Cell(DASH),
                    Cell(DASH),
                    Cell(DASH),
                    Cell("yes" if same else "NO", str(same)),
                ]
            else:
                cells += [
                    Cell(pct(res.delta, True), res.delta, f"n={res.n}"),
                    Cell(f"[{pct(res.ci_low, True)}, {pct(res.ci_high, True)}]"),
                    Cell(f"{res.b_only} / {res.a_only}"),
                    Cell(f"{res.p_value:.3g}", res.p_value),
                    Cell("yes" if same else "NO (pins differ)", str(same)),
                ]
        t.add(cells)
        prev = e
    return t, curve


# ------------------------------------------------------------------ RQ3 transfer


@dataclass(frozen=True)
class TransferPair:
    base: Entry
    rl: Entry
    trained_on: str  # catalog name of the training dataset


def normalise_dataset(name: str) -> str:
    """The catalog name of a MedMNIST dataset given as a task name, a medmnist flag or its short name."""
    name = name.strip()
    entry = MEDMNIST.entry(name)
    return entry.name if entry is not None else get_set(name).name


def auto_pairs(view: View) -> list[TransferPair]:
    """For every training run with a trained_on dataset: its first checkpoint (step 0 = the base
    model, else the base model's own evaluation) against its last one."""
    pairs = []
    trained: dict[str, tuple[str, str | None]] = {}
    for r in view.rows:
        if r["trained_on"] and r["step"] is not None:
            trained[r["run"] or r["model"]] = (r["trained_on"], r.get("base_model"))
    for run_name, (ds, base_model) in sorted(trained.items()):
        steps = sorted(
            (e for e in view.entries if (e.run or e.model) == run_name and e.step >= 0), key=lambda e: e.step
        )
        if not steps:
            continue
        base = steps[0] if steps[0].step == 0 and len(steps) >= 2 else None
        if base is None and base_model:
            base = view.base_of(base_model)
        if base is None:
            continue
        try:
            pairs.append(TransferPair(base, steps[-1], normalise_dataset(ds)))
        except KeyError:
            continue
    return pairs


def _four(r: PairedResult | None) -> list[Cell]:
    if r is None:
        return [Cell(DASH)] * 4
    return [
        Cell(pct(r.a), r.a),
        Cell(pct(r.b), r.b),
        Cell(pct(r.delta, True), r.delta, f"n={r.n}"),
        Cell(f"[{pct(r.ci_low, True)}, {pct(r.ci_high, True)}]"),
    ]


def transfer_table(view: View, conn: sqlite3.Connection, pair: TransferPair) -> Table:
    home = get_set(pair.trained_on)
    t = Table(
        f"transfer_{slug(pair.rl.label)}",
        f"RQ3 transfer: {pair.rl.label} vs {pair.base.label} (trained on {home.name}, {home.modality})",
        "Δ = RL-trained minus base, in points, on the items both were scored on (paired bootstrap 95% CI). "
        "In-domain: the training dataset; within-modality: other datasets of its modality; "
        "cross-modality: the rest. Category rows are means of the dataset deltas.",
        [
            "Dataset",
            "Category",
            "Base Acc@1",
            "RL Acc@1",
            "ΔAcc@1",
            "ΔAcc@1 95% CI",
            "Base Pass@16",
            "RL Pass@16",
            "ΔPass@16",
            "ΔPass@16 95% CI",
            "Same settings",
        ],
    )
    items_b = fetch_items(conn, view.latest_run_id(pair.base) or "")
    items_r = fetch_items(conn, view.latest_run_id(pair.rl) or "")
    by_cat: dict[str, list[tuple[float | None, float | None]]] = defaultdict(list)
    same = same_settings(view, pair.base, pair.rl)
    for s in SETS:
        cat = (
            "in-domain"
            if s.name == home.name
            else ("within-modality" if s.modality == home.modality else "cross-modality")
        )
        g_task, s_task = MEDMNIST.task(s), passk_twin(MEDMNIST.task(s))
        ga = {k: v for k, v in items_b.items() if k[0] == g_task}
        gb = {k: v for k, v in items_r.items() if k[0] == g_task}
        sa = {k: v for k, v in items_b.items() if k[0] == s_task and v["n"] >= K}
        sb = {k: v for k, v in items_r.items() if k[0] == s_task and v["n"] >= K}
        acc = paired(ga, gb) if ga and gb else None
        p16 = paired(sa, sb, pass16=True) if sa and sb else None
        if acc is None and p16 is None:
            continue
        by_cat[cat].append((acc.delta if acc else None, p16.delta if p16 else None))
        t.add(
            [Cell(s.name, s.name), Cell(cat, cat)]
            + _four(acc)
            + _four(p16)
            + [Cell("yes" if same else "NO (pins differ)")]
        )
    for cat in ("in-domain", "within-modality", "cross-modality"):
        vals = by_cat.get(cat)
        if not vals:
            continue
        da = [a for a, _ in vals if a is not None]
        dp = [p for _, p in vals if p is not None]
        ma = sum(da) / len(da) if da else None
        mp = sum(dp) / len(dp) if dp else None
        t.add(
            [
                Cell(f"{cat} mean ({len(vals)} datasets)", f"~{cat}"),
                Cell(cat, cat),
                Cell(""),
                Cell(""),
                Cell(pct(ma, True), ma),
                Cell(""),
                Cell(""),
                Cell(""),
                Cell(pct(mp, True), mp),
                Cell(""),
                Cell(""),
            ],
            "summary",
        )
    return t
