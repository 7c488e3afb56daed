"""The leaderboard page: its tables, one function each, and every section in page order.

Each ``@on_page`` function makes one part of the page (``leaderboard.md`` and ``index.html`` both),
in the order the functions are defined in this file: the paper's Table 1, Table 2, the support gap,
the Pass@K figures and their numbers, Table 3, MedVLThinker's protocol, the training runs'
checkpoints, the RQ3 transfer tables and the ingested runs. A new table is one decorated function
here; ``build.py`` only runs the list. A section function names what it reads as its parameters
(the fields of ``Page``: ``view``, ``refs``, ``conn``, ``out``, ``transfer``) and returns a
``Table`` or a list of ``Section`` objects (figures, several tables); called directly it is a plain
function.

Task names, titles, modalities and the table each family feeds come from ``tasks/families.py`` and
its catalogs; metric names and labels from ``harness_ext/metric_registry.py``. Numbers only share
a column when their pins match (``cells.PinLegend``); a column whose decoding differs from the
paper's is marked (``cells.DecodingMarks``); published rows and their notes are ``published.py``'s.
Table 2 is Acc@1 alone, as in the paper (one column per MedMNIST dataset and one per modality
mean); the support gap has a table of its own in the same layout.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medbridge.harness_ext import metric_registry as registry
from medbridge.leaderboard import comparisons, figures
from medbridge.leaderboard.cells import (
    DASH,
    DIFFERS,
    Cell,
    Column,
    DecodingMarks,
    PinLegend,
    Table,
    entries_with,
    group_bands,
    label_cell,
    make_columns,
    no_paths,
    pct,
    row_differences,
    short_path,
    utc_text,
    value_cell,
)
from medbridge.leaderboard.published import add_reference_rows
from medbridge.leaderboard.reference import ReferenceRow
from medbridge.leaderboard.render import Section
from medbridge.leaderboard.view import (
    PROBE_METRIC,
    PROTOCOL_METRIC,
    PROTOCOL_SPREAD,
    Entry,
    View,
    entry_of,
    probe_task,
)
from medbridge.tasks.families import MEDMNIST, MEDVLTHINKER, MEDVQA

ACC1 = registry.acc1().name
GAP = registry.GAP.name
PASS16 = registry.pass_at(registry.N_SAMPLES).name
PASSK_METRICS = tuple(registry.pass_at(k).name for k in registry.PASS_KS)
MEANS_BAND = "modality means"


# ------------------------------------------------------------------ the page, in order


@dataclass
class Page:
    """What the sections of one build read: a section function names the fields it needs."""

    view: View
    conn: sqlite3.Connection
    refs: Sequence[ReferenceRow]
    out: Path  # the folder being built: figures are drawn into it
    transfer: Sequence[comparisons.TransferPair]  # the base / RL pairs of the RQ3 tables


SECTIONS: list[Callable[[Page], list[Section]]] = []
"""The page: one maker per ``@on_page`` function, in the order they are defined below."""


def on_page(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Put ``fn`` on the page after the sections defined before it; returns ``fn`` unchanged.

    ``fn``'s parameters are ``Page`` fields by name; it returns a ``Table`` (one section) or a list of
    ``Section`` objects. A parameter that is no ``Page`` field is a TypeError when the module is imported."""
    names = list(inspect.signature(fn).parameters)
    known = [f.name for f in fields(Page)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TypeError(f"@on_page {fn.__name__}: parameter(s) {unknown} are not Page fields ({', '.join(known)})")

    def make(page: Page) -> list[Section]:
        made = fn(**{n: getattr(page, n) for n in names})
        return [Section(made.id, made.title, table=made)] if isinstance(made, Table) else list(made)

    make.__name__ = make.__qualname__ = fn.__name__
    SECTIONS.append(make)
    return fn


def _medmnist_specs(metric: str) -> list[tuple[str, str, str, str]]:
    """One column per MedMNIST dataset (banded by modality) and one per modality mean."""
    specs = [
        (MEDMNIST.task(s), metric, s.name, m) for m in MEDMNIST.modalities for s in MEDMNIST.entries if s.modality == m
    ]
    return specs + [(MEDMNIST.group_label(m), metric, m, MEANS_BAND) for m in MEDMNIST.modalities]


def _finish(t: Table, legend: PinLegend, marks: DecodingMarks) -> None:
    t.notes = legend.notes() + marks.notes() + t.notes


# ------------------------------------------------------------------ Table 1


@on_page
def table1(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    specs = [
        (probe_task(s.name), PROBE_METRIC, s.name, m)
        for m in MEDMNIST.modalities
        for s in MEDMNIST.entries
        if s.modality == m
    ]
    cols = make_columns(view, specs, legend, keep_missing=any(r.table == "table1" for r in refs))
    t = Table(
        "table1",
        "Table 1: linear probe of the frozen vision tower (test accuracy, %)",
        "Mean-pooled vision-tower features, standardised, logistic regression with C chosen on the validation split "
        "(medbridge probe).",
        ["Model"] + [c.header for c in cols] + ["Mean"],
        groups=group_bands(cols) + [("", 1)],
        empty="no probe results yet (run: medbridge probe --model DIR --datasets ...)",
    )
    for e in entries_with(view, cols):
        vals = [view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None for c in cols]
        got = [v["value"] for v in vals if v and v["value"] is not None]
        mean = sum(got) / len(got) if got and len(got) == len(cols) else None
        t.add([label_cell(view, e)] + [value_cell(v) for v in vals] + [Cell(pct(mean), mean, "mean of the row")])
    t.notes = legend.notes()
    add_reference_rows(view, refs, "table1", cols, t, with_mean=True)
    return t


# ------------------------------------------------------------------ Table 2 and the support gap


@on_page
def table2(view: View, refs: Sequence[ReferenceRow]) -> Table:
    """Acc@1 per MedMNIST dataset and modality mean, as the paper's Table 2 (no gap columns)."""
    legend, marks = PinLegend(), DecodingMarks()
    has_refs = any(r.table == MEDMNIST.leaderboard_table for r in refs)
    # The published rows keep every dataset's column, even one no run of ours has.
    cols = [
        c
        for c in make_columns(view, _medmnist_specs(ACC1), legend, keep_missing=has_refs)
        if c.pin is not None or c.group != MEANS_BAND
    ]
    cols = marks.mark(view, cols)
    t = Table(
        MEDMNIST.leaderboard_table,
        "Table 2: Acc@1 (greedy, %) per MedMNIST dataset and modality mean",
        "Greedy accuracy; a modality mean is the unweighted mean of its datasets, shown when all of them ran. "
        "Hover a value for its 95% bootstrap CI and n.",
        ["Model"] + [c.header for c in cols],
        groups=group_bands(cols),
        empty=f"no MedMNIST results yet (run lmms-eval --tasks {MEDMNIST.name} ... --log_samples, "
        "then medbridge leaderboard ingest)",
    )
    for e in entries_with(view, cols):
        t.add(
            [label_cell(view, e)]
            + [value_cell(view.get(e, c.task, c.metric, c.pin)) if c.pin is not None else Cell(DASH) for c in cols]
        )
    _finish(t, legend, marks)
    add_reference_rows(view, refs, MEDMNIST.leaderboard_table, cols, t)
    return t


def _gap_cell(view: View, e: Entry, c: Column) -> Cell:
    """A gap cell; a collapsed sampler is flagged, its number kept for the record."""
    cell = value_cell(view.get(e, c.task, c.metric, c.pin), signed=True)
    if cell.text != DASH and view.collapsed(e, c.task):
        cell = Cell(
            f"{cell.text} (collapsed)",
            cell.sort,
            "the sampler collapsed: its samples do not vary, so Pass@16 shows no support",
        )
    return cell


def sampled_coverage(view: View) -> dict[str, tuple[list[str], int]]:
    """modality -> (datasets with a sampled Pass@16 in the store, datasets in the modality)."""
    return {
        m: ([s.name for s in members if view.has(MEDMNIST.task(s), PASS16)], len(members))
        for m in MEDMNIST.modalities
        if (members := [s for s in MEDMNIST.entries if s.modality == m])
    }


def no_curves_message(view: View) -> str:
    """Why there are no Pass@K-by-modality numbers, true to what the store holds."""
    coverage = sampled_coverage(view)
    have = [name for names, _ in coverage.values() for name in names]
    if not have:
        return (
            f"no sampled (Pass@K) MedMNIST results in the store yet: run each dataset's _passk twin "
            f"(lmms-eval --tasks {MEDMNIST.name} runs both) and ingest it"
        )
    counts = ", ".join(f"{m} {len(names)} of {n}" for m, (names, n) in coverage.items())
    return (
        f"The store has sampled results for {len(have)} dataset(s) ({', '.join(have)}), but these curves use "
        f"modality means, which need every dataset of a modality ({counts}); the per-dataset support gap is in "
        "the table above."
    )


@on_page
def gap_table(view: View) -> Table:
    """The support gap Pass@16 − Acc@1 per MedMNIST dataset and modality mean (paired over items)."""
    legend, marks = PinLegend(), DecodingMarks()
    cols = marks.mark(view, make_columns(view, _medmnist_specs(GAP), legend))
    t = Table(
        "gap",
        "Support gap: Pass@16 − Acc@1 per MedMNIST dataset (points)",
        "Over the items both the greedy task and its 16-sample twin scored (a paired difference): how much a model "
        "reaches in 16 samples beyond its greedy answer. The paper publishes no gap values.",
        ["Model"] + [c.header for c in cols],
        groups=group_bands(cols),
        empty="no sampled (Pass@K) MedMNIST results in the store yet: the gap needs each dataset's _passk twin",
    )
    for e in entries_with(view, cols):
        t.add([label_cell(view, e)] + [_gap_cell(view, e, c) for c in cols])
    _finish(t, legend, marks)
    return t


@on_page
def passk_curves(view: View, out: Path) -> list[Section]:
    """Pass@K curves per modality (``passk_<modality>.png``), or why there are none."""
    drawn = figures.passk_figures(view, out)
    return [Section("passk-figures", "Pass@K curves per modality", figures=drawn, empty=no_curves_message(view))]


@on_page
def passk_table(view: View) -> Table:
    heads = [registry.acc1().label] + [registry.get(name).label for name in PASSK_METRICS] + [GAP]
    t = Table(
        "passk",
        "Pass@K by modality (means of datasets, %)",
        "Unbiased Pass@K from 16 samples per item; the paper samples at temperature 0.7, top_p 0.9 "
        f"(a row marked {DIFFERS} was not).",
        ["Model", "Modality"] + heads,
        empty=no_curves_message(view),
    )
    differing = []
    for e in view.entries:
        for m in MEDMNIST.modalities + (MEDMNIST.overall_label,):
            task = MEDMNIST.group_label(m)
            if not view.has(task, PASS16):
                continue
            rows = (
                [view.get(e, task, ACC1)]
                + [view.get(e, task, name) for name in PASSK_METRICS]
                + [view.get(e, task, GAP)]
            )
            if all(r is None for r in rows):
                continue
            diffs = sorted({d for r, name in zip(rows, (ACC1, *PASSK_METRICS)) for d in row_differences(r, name)})
            label = f"{m} {DIFFERS}" if diffs else m
            if diffs:
                differing.append(f"{e.label}, {m}: {', '.join(diffs)}")
            t.add(
                [label_cell(view, e), Cell(label, m)]
                + [value_cell(r, signed=i == len(rows) - 1) for i, r in enumerate(rows)]
            )
    if differing:
        t.notes.append(f"{DIFFERS} Decoding differs from {DecodingMarks.PAPER}: {'; '.join(differing)}.")
    collapsed = sorted(
        {
            f"{entry_of(r).label}: {r['task']}"
            for r in view.rows
            if r["metric"] == "collapsed" and view.collapsed(entry_of(r), r["task"])
        }
    )
    if collapsed:
        t.notes.append(
            "Collapsed sampler (its samples do not vary, so Pass@K equals Acc@1 and shows no support): "
            + "; ".join(collapsed)
            + "."
        )
    return t


# ------------------------------------------------------------------ Table 3


@on_page
def table3(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend, marks = PinLegend(), DecodingMarks()
    tasks = MEDVQA.greedy_tasks
    cols = make_columns(
        view, [(MEDVQA.task(s), ACC1, s.title, "") for s in MEDVQA.entries], legend, keep_missing=bool(refs)
    )
    cols = marks.mark(view, cols)
    t = Table(
        MEDVQA.leaderboard_table,
        f"Table 3: {MEDVQA.count_word} medical VQA benchmarks (Acc@1, %) and their average",
        f"Avg = mean of the {MEDVQA.count_word} benchmarks, shown when a model has all {MEDVQA.count_word} in one "
        "setting.",
        ["Model"] + [c.header for c in cols] + ["Avg"],
        empty=f"no {MEDVQA.name} results yet",
    )
    single = all(len(view.pins.get((task, ACC1), [])) <= 1 for task in tasks)
    for e in entries_with(view, cols):
        vals = [view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None for c in cols]
        got = [v["value"] for v in vals if v and v["value"] is not None]
        avg = sum(got) / len(got) if single and len(got) == len(tasks) else None
        t.add([label_cell(view, e)] + [value_cell(v) for v in vals] + [Cell(pct(avg), avg)])
    _finish(t, legend, marks)
    add_reference_rows(view, refs, MEDVQA.leaderboard_table, cols, t, with_mean=True)
    return t


# ------------------------------------------------------------------ MedVLThinker's protocol


@on_page
def medvlthinker_table(view: View, refs: Sequence[ReferenceRow]) -> Table:
    """Runs of the ``medvqa_medvlthinker`` tasks (MedVLThinker's protocol) beside MedVLThinker's
    published rows, with a Δ row for each run of a published model; the paper's Table 3 keeps its own."""
    family = MEDVLTHINKER
    legend, marks = PinLegend(), DecodingMarks()
    specs = [(family.task(s), PROTOCOL_METRIC, s.title, "") for s in family.entries]
    cols = marks.mark(view, make_columns(view, specs, legend, keep_missing=True))
    mine = [r for r in refs if r.table == family.leaderboard_table]
    t = Table(
        family.leaderboard_table,
        f"Published (MedVLThinker protocol): {family.count_word} medical VQA benchmarks (accuracy, %) and their "
        "average",
        f"{mine[0].setting}." if mine else "MedVLThinker's evaluation protocol.",
        ["Model"] + [c.header for c in cols] + ["Avg"],
        empty=f"no {family.name} results yet (lmms-eval --tasks {family.name} ...)",
    )
    single = all(len(view.pins.get((task, PROTOCOL_METRIC), [])) <= 1 for task in family.greedy_tasks)
    for e in entries_with(view, cols):
        vals = [view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None for c in cols]
        cells = []
        for c, v in zip(cols, vals):
            cell = value_cell(v)
            spread = view.get(e, c.task, PROTOCOL_SPREAD, c.pin) if c.pin is not None else None
            if spread is not None and spread.get("value") is not None and cell.text != DASH:
                cell.title = f"{cell.title}; runs spread {pct(spread['value'])} points".lstrip("; ")
            cells.append(cell)
        got = [v["value"] for v in vals if v and v["value"] is not None]
        avg = sum(got) / len(got) if single and len(got) == family.count else None
        t.add([label_cell(view, e)] + cells + [Cell(pct(avg), avg, "mean of the row")])
    _finish(t, legend, marks)
    t.notes.append(
        f"Ours: the {family.name} tasks run the protocol above ({family.count_word} tasks, every item, their prompt "
        "and grader); a value is their grader's accuracy, the mean of the greedy runs (hover: the runs' spread). "
        "The paper's Table 3 is not this protocol and keeps its own table."
    )
    add_reference_rows(
        view,
        refs,
        family.leaderboard_table,
        cols,
        t,
        with_mean=True,
        value_metric=PROTOCOL_METRIC,
        setting_in_caption=True,
    )
    return t


# ------------------------------------------------------------------ training runs: checkpoints and RQ3 transfer


@on_page
def step_sections(view: View, conn: sqlite3.Connection, out: Path) -> list[Section]:
    """The figure row of every training run's curve (``steps_<run>.png``), then one table per run."""
    made, drawn = [], []
    for run_name, entries in comparisons.training_runs(view).items():
        t, curve = comparisons.checkpoint_table(view, conn, run_name, entries)
        made.append(Section(t.id, t.title, table=t))
        path = figures.steps_figure(curve, out)
        if path is not None:
            drawn.append((run_name, path))
    head = Section(
        "step-figures",
        "Checkpoints over training steps",
        figures=drawn,
        empty="no training-run checkpoints (runs with a step) in the store yet",
    )
    return [head] + made


@on_page
def transfer_sections(
    view: View, conn: sqlite3.Connection, transfer: Sequence[comparisons.TransferPair]
) -> list[Section]:
    """One RQ3 table per base / RL pair, or a note on how to get one."""
    made = [comparisons.transfer_table(view, conn, p) for p in transfer]
    if made:
        return [Section(t.id, t.title, table=t) for t in made]
    return [
        Section(
            "transfer",
            "RQ3 transfer (in-domain / within-modality / cross-modality)",
            empty="no base / RL-trained pair: ingest checkpoints with --trained-on DATASET (step 0 = base), "
            "or build with --base MODEL --rl MODEL --trained-on DATASET",
        )
    ]


# ------------------------------------------------------------------ the runs


@on_page
def runs_table(conn: sqlite3.Connection) -> Table:
    t = Table(
        "runs",
        "Ingested runs",
        "Every run in the store (append-only). Run dates are in UTC: lmms-eval writes its local time without a "
        "zone (Asia/Singapore unless run with --timezone), converted here.",
        ["Model", "Run", "Step", "Kind", "Trained on", "Run date (UTC)", "Results file"],
    )
    for r in conn.execute("SELECT * FROM runs ORDER BY ingested_at, rowid"):
        step = r["step"]
        partial = r["partial"] if "partial" in r.keys() else None
        model = r["model"] + (" (partial)" if partial else "")
        source = short_path(r["source"], 3)
        t.add(
            [
                Cell(model, r["model"], no_paths(partial or "")),
                Cell(r["run"] or DASH, r["run"] or ""),
                Cell(DASH if step is None else str(step), step),
                Cell(r["kind"], r["kind"]),
                Cell(r["trained_on"] or DASH, r["trained_on"] or ""),
                Cell(utc_text(r["date"]), r["date"] or ""),
                Cell(source, source),
            ]
        )
    return t
