"""The leaderboard's tables, one function each, built from a ``View``.

Benchmark names, titles and modalities come from the task catalogs (tasks/medmnist/catalog.py,
tasks/medvqa/catalog.py). A number only ever sits in a column with numbers that share its pins
(item subset, prompt, judge, generation settings, provenance); otherwise the column is split and
marked [A], [B], ... with a note naming what differs. The paper's published numbers are
reference rows marked "Published", with a delta row for a run of the same model.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext.metrics import PASS_KS
from medbridge.leaderboard.reference import ReferenceRow, unreachable_values
from medbridge.leaderboard.store import PIN_FIELDS
from medbridge.leaderboard.view import Entry, View, entry_of
from medbridge.tasks.families import MEDMNIST, MEDVQA
from medbridge.tasks.medmnist.catalog import MODALITIES, SETS
from medbridge.tasks.medvqa import catalog as vqa_catalog

PASSK_METRICS = tuple(f"pass_at_{k:02d}" for k in PASS_KS)
DASH = "–"


def mcq_task(name: str) -> str:
    return MEDMNIST.task(name)


def probe_task(name: str) -> str:
    return f"medmnist_probe_{name}"


def group_label(modality: str) -> str:
    return MEDMNIST.group_label(modality)


# ------------------------------------------------------------------ the table model


@dataclass
class Cell:
    text: str
    sort: float | str | None = None
    title: str = ""


@dataclass
class Table:
    id: str
    title: str
    caption: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None  # header band: (label, column span)
    notes: list[str] = field(default_factory=list)
    empty: str = "no results in the store yet"

    def add(self, cells: list[Cell], cls: str = "") -> None:
        self.rows.append(cells)
        self.row_classes.append(cls)


def pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def value_cell(row: Mapping[str, Any] | None, signed: bool = False) -> Cell:
    if row is None or row.get("value") is None:
        return Cell(DASH)
    title = ""
    if row.get("ci_low") is not None:
        title = f"95% CI [{pct(row['ci_low'], signed)}, {pct(row['ci_high'], signed)}], n={row.get('n')}"
    return Cell(pct(row["value"], signed), float(row["value"]), title)


def label_cell(view: View, e: Entry) -> Cell:
    partial = view.partial.get(e)
    if partial:
        return Cell(f"{e.label} (partial)", e.label, f"{e.checkpoint}; partial run: {partial} left out".lstrip("; "))
    return Cell(e.label, e.label, e.checkpoint)


@dataclass
class Column:
    task: str
    metric: str
    header: str
    pin: tuple | None
    group: str = ""


def column_letter(index: int) -> str:
    """A, B, ..., Z, AA, AB, ... (spreadsheet style), so any number of settings stays readable."""
    text = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        text = chr(ord("A") + rem) + text
    return text


class PinLegend:
    """Letters for the distinct comparability settings of one table's split columns."""

    def __init__(self) -> None:
        self.letters: dict[tuple, str] = {}

    def letter(self, pin: tuple) -> str:
        if pin not in self.letters:
            self.letters[pin] = column_letter(len(self.letters))
        return self.letters[pin]

    def notes(self) -> list[str]:
        """One line per setting naming only what differs between the settings."""
        if not self.letters:
            return []
        flat = {
            pin: {k: v for name, value in zip(PIN_FIELDS, pin) for k, v in _flatten(name, value).items()}
            for pin in self.letters
        }
        keys = sorted({k for f in flat.values() for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
        out = ["Columns marked [A], [B], ... hold numbers whose comparability pins differ, so they are never merged:"]
        for pin, letter in self.letters.items():
            out.append(f"[{letter}] " + ", ".join(f"{k}={_short(flat[pin].get(k))}" for k in differing))
        return out


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """gen_settings JSON -> {"gen_settings.generation_kwargs.temperature": 0.7, ...}."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}", v))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(f"{prefix}[{i}]", v))
        return out
    return {prefix: value}


def _short(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def make_columns(
    view: View, specs: Iterable[tuple[str, str, str, str]], legend: PinLegend, keep_missing: bool = False
) -> list[Column]:
    cols = []
    for task, metric, header, group in specs:
        pins = view.pins.get((task, metric), [])
        if not pins:
            if keep_missing:
                cols.append(Column(task, metric, header, None, group))
            continue
        if len(pins) == 1:
            cols.append(Column(task, metric, header, pins[0], group))
        else:
            cols += [Column(task, metric, f"{header} [{legend.letter(p)}]", p, group) for p in pins]
    return cols


def group_bands(cols: Sequence[Column], lead: int = 1) -> list[tuple[str, int]]:
    bands: list[tuple[str, int]] = [("", lead)]
    for c in cols:
        if bands and bands[-1][0] == c.group and len(bands) > 1:
            bands[-1] = (c.group, bands[-1][1] + 1)
        else:
            bands.append((c.group, 1))
    return bands


def entries_with(view: View, cols: Sequence[Column]) -> list[Entry]:
    return [e for e in view.entries if any(c.pin is not None and view.get(e, c.task, c.metric, c.pin) for c in cols)]


# ------------------------------------------------------------------ the paper's rows


def _same_model(ref: ReferenceRow, e: Entry) -> bool:
    names = {e.model.lower(), e.model.rsplit("/", 1)[-1].lower()}
    return bool(ref.model_names & names)


def add_reference_rows(
    view: View, refs: Sequence[ReferenceRow], table: str, cols: Sequence[Column], t: Table, *, with_mean: bool = False
) -> None:
    """Published rows (and a delta row for every run of the same model) under a table; the
    paper's stated setting and any value no run of ours can reproduce go into its notes."""
    mine = [r for r in refs if r.table == table]
    for ref in mine:
        cells = [Cell(f"Published: {ref.label}", f"~{ref.label}", f"{ref.source}; {ref.setting}")]
        vals = [ref.values.get(c.task) if c.metric in ("acc1", "probe_acc") else None for c in cols]
        cells += [
            Cell(DASH) if v is None else Cell(f"{v:.1f}", v / 100, f"published value; {ref.source}") for v in vals
        ]
        if with_mean:
            printed = ref.extra.get("average")
            have = [v for v in vals if v is not None]
            mean = (
                printed if printed is not None else (sum(have) / len(have) if have and len(have) == len(vals) else None)
            )
            cells.append(
                Cell(DASH)
                if mean is None
                else Cell(
                    f"{mean:.1f}",
                    mean / 100,
                    "as printed in the paper" if printed is not None else "mean of the published values",
                )
            )
        t.add(cells, "reference")
        for e in view.entries:
            if not _same_model(ref, e):
                continue
            deltas = []
            for c, v in zip(cols, vals):
                row = view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None
                if v is None or row is None or row.get("value") is None:
                    deltas.append(Cell(DASH))
                else:
                    d = float(row["value"]) - v / 100
                    deltas.append(Cell(pct(d, True), d, f"{e.label} minus the published value, in points"))
            if any(d.text != DASH for d in deltas):
                t.add(
                    [Cell(f"Δ {e.label} − published", f"~{ref.label}~")] + deltas + ([Cell("")] if with_mean else []),
                    "delta",
                )
    if mine:
        t.notes.append(f"Published rows: {mine[0].setting}.")
        odd = [x for ref in mine for x in unreachable_values(ref)]
        if odd:
            n_values = sum(len(ref.values) for ref in mine)
            t.notes.append(
                f"Item sets cannot match: {len(odd)} of the {n_values} published values are no count of correct "
                f"answers over the full official test split (e.g. {'; '.join(odd[:3])}); "
                "the paper scored balanced subsets it does not list, so a delta compares different items."
            )


# ------------------------------------------------------------------ Tables 1-3 and Pass@K


def table1(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    specs = [(probe_task(s.name), "probe_acc", s.name, s.modality) for m in MODALITIES for s in SETS if s.modality == m]
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
        t.add(
            [label_cell(view, e)]
            + [value_cell(v) for v in vals]
            + [Cell(pct(mean), mean, "mean over the datasets shown")]
        )
    t.notes = legend.notes()
    add_reference_rows(view, refs, "table1", cols, t, with_mean=True)
    return t


def _sampled_cell(view: View, e: Entry, c: Column) -> Cell:
    """A gap / Pass@K cell; a collapsed sampled task is flagged, its number kept for the record."""
    cell = value_cell(view.get(e, c.task, c.metric, c.pin), signed=c.metric == "gap")
    if cell.text != DASH and view.collapsed(e, c.task):
        cell = Cell(
            f"{cell.text} (collapsed)",
            cell.sort,
            "sampling collapsed: every item's samples are one response, so this shows no support",
        )
    return cell


def table2(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    specs = []
    for m in MODALITIES:
        for s in SETS:
            if s.modality == m:
                specs += [
                    (mcq_task(s.name), "acc1", f"{s.name} Acc@1", m),
                    (mcq_task(s.name), "gap", f"{s.name} gap", m),
                ]
        specs += [
            (group_label(m), "acc1", f"{m} mean Acc@1", "means"),
            (group_label(m), "gap", f"{m} mean gap", "means"),
        ]
    specs += [
        (group_label("overall"), "acc1", "overall Acc@1", "means"),
        (group_label("overall"), "gap", "overall gap", "means"),
    ]
    has_refs = any(r.table == "table2" for r in refs)
    # The published rows keep every dataset's Acc@1 column, even one no run of ours has.
    cols = [
        c
        for c in make_columns(view, specs, legend, keep_missing=has_refs)
        if c.pin is not None or (c.metric == "acc1" and c.group != "means")
    ]
    t = Table(
        "table2",
        "Table 2: Acc@1 per MedMNIST dataset, grouped by modality, with the support gap",
        "Acc@1 = greedy accuracy; gap = Pass@16 - Acc@1 over the same items (paired). "
        "Values in %; hover for 95% bootstrap CIs.",
        ["Model"] + [c.header for c in cols],
        groups=group_bands(cols),
        empty="no MedMNIST results yet "
        "(run lmms-eval --tasks medmnist_mcq ... --log_samples, then medbridge leaderboard ingest)",
    )
    for e in entries_with(view, cols):
        t.add([label_cell(view, e)] + [_sampled_cell(view, e, c) if c.pin is not None else Cell(DASH) for c in cols])
    t.notes = legend.notes()
    add_reference_rows(view, refs, "table2", cols, t)
    return t


def table3(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    tasks = [s.task for s in vqa_catalog.SETS]
    cols = make_columns(
        view, [(s.task, "acc1", s.title, "") for s in vqa_catalog.SETS], legend, keep_missing=bool(refs)
    )
    t = Table(
        "table3",
        f"Table 3: {MEDVQA.count_word} medical VQA benchmarks (Acc@1, %) and their average",
        f"Average = mean of the {MEDVQA.count_word} benchmarks; shown only when a model has all "
        f"{MEDVQA.count_word} in one setting.",
        ["Model"] + [c.header for c in cols] + ["Avg"],
        empty="no medvqa_* results yet",
    )
    single = all(len(view.pins.get((task, "acc1"), [])) <= 1 for task in tasks)
    for e in entries_with(view, cols):
        vals = [view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None for c in cols]
        got = [v["value"] for v in vals if v and v["value"] is not None]
        avg = sum(got) / len(got) if single and len(got) == len(tasks) else None
        t.add([label_cell(view, e)] + [value_cell(v) for v in vals] + [Cell(pct(avg), avg)])
    t.notes = legend.notes()
    add_reference_rows(view, refs, "table3", cols, t, with_mean=True)
    return t


def passk_table(view: View) -> Table:
    heads = ["Acc@1"] + [f"Pass@{k}" for k in PASS_KS] + ["gap"]
    t = Table(
        "passk",
        "Pass@K by modality (means of datasets, %)",
        "Unbiased Pass@K from 16 samples per item (temperature 0.7, top-p 0.9 unless the pins say otherwise).",
        ["Model", "Modality"] + heads,
        empty="no sampled (_passk) results yet",
    )
    for e in view.entries:
        for m in MODALITIES + ("overall",):
            task = group_label(m)
            if not view.has(task, "pass_at_16"):
                continue
            rows = (
                [view.get(e, task, "acc1")]
                + [view.get(e, task, name) for name in PASSK_METRICS]
                + [view.get(e, task, "gap")]
            )
            if all(r is None for r in rows):
                continue
            t.add(
                [label_cell(view, e), Cell(m, m)]
                + [value_cell(r, signed=i == len(rows) - 1) for i, r in enumerate(rows)]
            )
    collapsed = sorted(
        {
            f"{entry_of(r).label}: {r['task']}"
            for r in view.rows
            if r["metric"] == "collapsed" and view.collapsed(entry_of(r), r["task"])
        }
    )
    if collapsed:
        t.notes.append(
            "Collapsed sampling (one response per item; Pass@K there equals Acc@1 and shows no support): "
            + "; ".join(collapsed)
            + "."
        )
    return t


def runs_table(conn: sqlite3.Connection) -> Table:
    t = Table(
        "runs",
        "Ingested runs",
        "Every run in the store (append-only).",
        ["Model", "Run", "Step", "Kind", "Trained on", "Date", "Source"],
    )
    for r in conn.execute("SELECT * FROM runs ORDER BY ingested_at, rowid"):
        step = r["step"]
        model = r["model"] + (" (partial)" if r["partial"] else "")
        t.add(
            [
                Cell(model, r["model"], r["partial"] or ""),
                Cell(r["run"] or DASH, r["run"] or ""),
                Cell(DASH if step is None else str(step), step),
                Cell(r["kind"], r["kind"]),
                Cell(r["trained_on"] or DASH, r["trained_on"] or ""),
                Cell(r["date"] or DASH, r["date"] or ""),
                Cell(Path(r["source"]).name, r["source"], r["source"]),
            ]
        )
    return t
