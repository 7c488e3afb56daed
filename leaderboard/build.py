"""`medbridge leaderboard build`: the paper's tables and figures regenerated from the store.

Writes ``leaderboard.md``, a static ``index.html`` (sortable columns, a few lines of inline JS, no
server, no CDN) and matplotlib PNGs into one folder:

* Table 1: linear-probe accuracy of the frozen vision tower per MedMNIST dataset;
* Table 2: Acc@1 per MedMNIST dataset grouped by modality, with the support gap (Pass@16 - Acc@1)
  next to it;
* Table 3: the six medical VQA benchmarks (``medvqa_*``) and their average;
* Pass@K curves per modality (``passk_<modality>.png``, K on a log2 axis) and their numbers;
* checkpoints of each training run over steps (``steps_<run>.png``) with a paired test of each
  checkpoint against the one before it on the same items (McNemar exact + paired bootstrap);
* the RQ3 transfer table: in-domain / within-modality / cross-modality deltas of Acc@1 and
  Pass@16 between a base model and an RL-trained one;
* the paper's published numbers as labelled reference rows (``leaderboard/reference/*.json``).

A number is only ever put in a column with numbers that share its pins (item subset, prompt
version, judge, generation settings); otherwise the column is split and marked [A], [B], ...
"""

from __future__ import annotations

import html
import json
import math
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext.metrics import PASS_KS
from medbridge.harness_ext.report import SAMPLED_SUFFIX
from medbridge.leaderboard import stats
from medbridge.leaderboard.reference import ReferenceRow, load_references
from medbridge.leaderboard.store import PIN_FIELDS, default_store_path, fetch_items, fetch_rows, open_store
from medbridge.tasks.medmnist.catalog import MODALITIES, SETS, get_set

VQA_TASKS = ("medvqa_pmc", "medvqa_mmmu", "medvqa_medxpertqa", "medvqa_pathvqa", "medvqa_slake", "medvqa_vqarad")
VQA_NAMES = {"medvqa_pmc": "PMC-VQA", "medvqa_mmmu": "MMMU-Med", "medvqa_medxpertqa": "MedXpertQA-MM", "medvqa_pathvqa": "PathVQA", "medvqa_slake": "SLAKE", "medvqa_vqarad": "VQA-RAD"}
PASSK_METRICS = tuple(f"pass_at_{k:02d}" for k in PASS_KS)


def mcq_task(name: str) -> str:
    return f"medmnist_mcq_{name}"


def probe_task(name: str) -> str:
    return f"medmnist_probe_{name}"


def group_label(modality: str) -> str:
    return f"medmnist {modality}"


# ------------------------------------------------------------------ what is in the store


@dataclass(frozen=True, order=True)
class Entry:
    """One row of a leaderboard table: a model (at a checkpoint of a training run)."""

    model: str
    run: str = ""
    step: int = -1
    checkpoint: str = ""

    @property
    def label(self) -> str:
        text = self.model
        if self.run and self.run != self.model:
            text += f" ({self.run})"
        if self.step >= 0:
            text += f" @ step {self.step}"
        return text


def entry_of(row: Mapping[str, Any]) -> Entry:
    return Entry(row["model"], row["run"] or "", -1 if row["step"] is None else int(row["step"]), row["checkpoint"] or "")


def pin_of(row: Mapping[str, Any]) -> tuple:
    return tuple(row.get(f) for f in PIN_FIELDS)


class View:
    """The store's rows, indexed by (entry, task, metric, pins); the latest ingest wins."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows
        self.cells: dict[tuple, dict[str, Any]] = {}
        self.pins: dict[tuple[str, str], list[tuple]] = defaultdict(list)  # (task, metric) -> pins in order
        self.entries: list[Entry] = []
        seen = set()
        for r in rows:  # ordered by ingested_at
            e, p = entry_of(r), pin_of(r)
            self.cells[(e, r["task"], r["metric"], p)] = r
            if p not in self.pins[(r["task"], r["metric"])]:
                self.pins[(r["task"], r["metric"])].append(p)
            if e not in seen:
                seen.add(e)
                self.entries.append(e)
        self.entries.sort()

    def get(self, e: Entry, task: str, metric: str, pin: tuple | None = None) -> dict[str, Any] | None:
        if pin is not None:
            return self.cells.get((e, task, metric, pin))
        found = [self.cells[(e, task, metric, p)] for p in self.pins.get((task, metric), []) if (e, task, metric, p) in self.cells]
        return found[-1] if found else None

    def has(self, task: str, metric: str) -> bool:
        return bool(self.pins.get((task, metric)))

    def latest_run_id(self, e: Entry, kind: str = "eval") -> str | None:
        ids = [r["run_id"] for r in self.rows if entry_of(r) == e and r["kind"] == kind]
        return ids[-1] if ids else None


# ------------------------------------------------------------------ tables


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
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def value_cell(row: Mapping[str, Any] | None, signed: bool = False) -> Cell:
    if row is None or row.get("value") is None:
        return Cell("–")
    title = ""
    if row.get("ci_low") is not None:
        title = f"95% CI [{pct(row['ci_low'], signed)}, {pct(row['ci_high'], signed)}], n={row.get('n')}"
    return Cell(pct(row["value"], signed), float(row["value"]), title)


def label_cell(e: Entry) -> Cell:
    return Cell(e.label, e.label, e.checkpoint)


@dataclass
class Column:
    task: str
    metric: str
    header: str
    pin: tuple | None
    group: str = ""


class PinLegend:
    """Letters for the distinct comparability settings of one table's split columns."""

    def __init__(self) -> None:
        self.letters: dict[tuple, str] = {}

    def letter(self, pin: tuple) -> str:
        if pin not in self.letters:
            self.letters[pin] = chr(ord("A") + len(self.letters))
        return self.letters[pin]

    def notes(self) -> list[str]:
        """One line per setting naming only what differs between the settings."""
        if not self.letters:
            return []
        flat = {pin: {k: v for name, value in zip(PIN_FIELDS, pin) for k, v in _flatten(name, value).items()} for pin in self.letters}
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


def make_columns(view: View, specs: Iterable[tuple[str, str, str, str]], legend: PinLegend, keep_missing: bool = False) -> list[Column]:
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


def _group_bands(cols: Sequence[Column], lead: int = 1) -> list[tuple[str, int]]:
    bands: list[tuple[str, int]] = [("", lead)]
    for c in cols:
        if bands and bands[-1][0] == c.group and len(bands) > 1:
            bands[-1] = (c.group, bands[-1][1] + 1)
        else:
            bands.append((c.group, 1))
    return bands


def _entries_with(view: View, cols: Sequence[Column]) -> list[Entry]:
    return [e for e in view.entries if any(c.pin is not None and view.get(e, c.task, c.metric, c.pin) for c in cols)]


def _reference_rows(refs: Sequence[ReferenceRow], table: str, cols: Sequence[Column], t: Table, extra: Mapping[str, float] | None = None) -> None:
    for ref in refs:
        if ref.table != table:
            continue
        cells = [Cell(f"Reference (paper): {ref.label}", f"~{ref.label}", ref.source)]
        for c in cols:
            v = ref.values.get(c.task) if c.metric in ("acc1", "probe_acc") else None
            cells.append(Cell("–") if v is None else Cell(f"{v:.1f}", v / 100, f"published value; {ref.source}"))
        t.add(cells, "reference")


def table1(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    specs = [(probe_task(s.name), "probe_acc", s.name, s.modality) for m in MODALITIES for s in SETS if s.modality == m]
    cols = make_columns(view, specs, legend)
    t = Table("table1", "Table 1: linear probe of the frozen vision tower (test accuracy, %)",
              "Mean-pooled vision-tower features, standardised, logistic regression with C chosen on the validation split (medbridge probe).",
              ["Model"] + [c.header for c in cols] + ["Mean"], groups=_group_bands(cols) + [("", 1)], empty="no probe results yet (run: medbridge probe --model DIR --datasets ...)")
    for e in _entries_with(view, cols):
        vals = [view.get(e, c.task, c.metric, c.pin) for c in cols]
        got = [v["value"] for v in vals if v and v["value"] is not None]
        mean = sum(got) / len(got) if got and len(got) == len(cols) else None
        t.add([label_cell(e)] + [value_cell(v) for v in vals] + [Cell(pct(mean), mean, "mean over the datasets shown")])
    _reference_rows(refs, "table1", cols, t)
    t.notes = legend.notes()
    return t


def table2(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    specs = []
    for m in MODALITIES:
        for s in SETS:
            if s.modality == m:
                specs += [(mcq_task(s.name), "acc1", f"{s.name} Acc@1", m), (mcq_task(s.name), "gap", f"{s.name} gap", m)]
        specs += [(group_label(m), "acc1", f"{m} mean Acc@1", "means"), (group_label(m), "gap", f"{m} mean gap", "means")]
    specs += [(group_label("overall"), "acc1", "overall Acc@1", "means"), (group_label("overall"), "gap", "overall gap", "means")]
    cols = make_columns(view, specs, legend)
    t = Table("table2", "Table 2: Acc@1 per MedMNIST dataset, grouped by modality, with the support gap",
              "Acc@1 = greedy accuracy; gap = Pass@16 - Acc@1 over the same items (paired). Values in %; hover for 95% bootstrap CIs.",
              ["Model"] + [c.header for c in cols], groups=_group_bands(cols), empty="no MedMNIST results yet (run lmms-eval --tasks medmnist_mcq ... --log_samples, then medbridge leaderboard ingest)")
    for e in _entries_with(view, cols):
        t.add([label_cell(e)] + [value_cell(view.get(e, c.task, c.metric, c.pin), signed=c.metric == "gap") for c in cols])
    _reference_rows(refs, "table2", cols, t)
    t.notes = legend.notes()
    return t


def table3(view: View, refs: Sequence[ReferenceRow]) -> Table:
    legend = PinLegend()
    cols = make_columns(view, [(task, "acc1", VQA_NAMES[task], "") for task in VQA_TASKS], legend, keep_missing=bool(refs))
    t = Table("table3", "Table 3: six medical VQA benchmarks (Acc@1, %) and their average",
              "Average = mean of the six benchmarks; shown only when a model has all six in one setting.",
              ["Model"] + [c.header for c in cols] + ["Avg"], empty="no medvqa_* results yet")
    single = all(len(view.pins.get((task, "acc1"), [])) <= 1 for task in VQA_TASKS)
    for e in _entries_with(view, cols):
        vals = [view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None for c in cols]
        got = [v["value"] for v in vals if v and v["value"] is not None]
        avg = sum(got) / len(got) if single and len(got) == len(VQA_TASKS) else None
        t.add([label_cell(e)] + [value_cell(v) for v in vals] + [Cell(pct(avg), avg)])
    for ref in refs:
        if ref.table != "table3":
            continue
        vals = [ref.values.get(c.task) for c in cols]
        have = [v for v in vals if v is not None]
        avg = sum(have) / len(have) if len(have) == len(VQA_TASKS) else None
        cells = [Cell(f"Reference (paper): {ref.label}", f"~{ref.label}", ref.source)]
        cells += [Cell("–") if v is None else Cell(f"{v:.1f}", v / 100, f"published value; {ref.source}") for v in vals]
        cells.append(Cell("–" if avg is None else f"{avg:.1f}", None if avg is None else avg / 100, "mean of the published values"))
        t.add(cells, "reference")
    t.notes = legend.notes()
    return t


def passk_table(view: View) -> Table:
    heads = ["Acc@1"] + [f"Pass@{k}" for k in PASS_KS] + ["gap"]
    t = Table("passk", "Pass@K by modality (means of datasets, %)", "Unbiased Pass@K from 16 samples per item (temperature 0.7, top-p 0.9 unless the pins say otherwise).",
              ["Model", "Modality"] + heads, empty="no sampled (_passk) results yet")
    for e in view.entries:
        for m in MODALITIES + ("overall",):
            task = group_label(m)
            if not view.has(task, "pass_at_16"):
                continue
            rows = [view.get(e, task, "acc1")] + [view.get(e, task, name) for name in PASSK_METRICS] + [view.get(e, task, "gap")]
            if all(r is None for r in rows):
                continue
            t.add([label_cell(e), Cell(m, m)] + [value_cell(r, signed=i == len(rows) - 1) for i, r in enumerate(rows)])
    return t


# ------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def passk_figures(view: View, out: Path) -> list[tuple[str, Path]]:
    plt = _plt()
    made = []
    for m in MODALITIES:
        task = group_label(m)
        lines = []
        for e in view.entries:
            for pin in view.pins.get((task, "pass_at_16"), []):
                rows = [view.get(e, task, name, pin) for name in PASSK_METRICS]
                if any(r is None or r["value"] is None for r in rows):
                    continue
                suffix = "" if len(view.pins[(task, "pass_at_16")]) == 1 else f" [setting {view.pins[(task, 'pass_at_16')].index(pin) + 1}]"
                lines.append((e.label + suffix, rows, view.get(e, task, "acc1")))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
        for label, rows, acc in lines:
            ys = [100 * r["value"] for r in rows]
            lo = [100 * (r["ci_low"] if r["ci_low"] is not None else r["value"]) for r in rows]
            hi = [100 * (r["ci_high"] if r["ci_high"] is not None else r["value"]) for r in rows]
            (line,) = ax.plot(PASS_KS, ys, marker="o", label=label)
            ax.fill_between(PASS_KS, lo, hi, alpha=0.15, color=line.get_color())
            if acc is not None and acc["value"] is not None:
                ax.plot([1], [100 * acc["value"]], marker="s", markerfacecolor="none", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xticks(PASS_KS, [str(k) for k in PASS_KS])
        ax.set_ylim(0, 100)
        ax.set_xlabel("K (samples)")
        ax.set_ylabel("Pass@K (%)")
        ax.set_title(f"MedMNIST {m}: Pass@K (square: greedy Acc@1)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / f"passk_{m}.png"
        fig.savefig(path)
        plt.close(fig)
        made.append((m, path))
    return made


# ------------------------------------------------------------------ checkpoints over steps


def _greedy_items(items: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict:
    return {k: v for k, v in items.items() if not k[0].endswith(SAMPLED_SUFFIX)}


def _sampled_items(items: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict:
    return {k: v for k, v in items.items() if k[0].endswith(SAMPLED_SUFFIX) and v["n"] >= 16}


def checkpoint_section(view: View, conn: sqlite3.Connection, out: Path) -> tuple[list[Table], list[tuple[str, Path]]]:
    by_run: dict[str, list[Entry]] = defaultdict(list)
    for e in view.entries:
        if e.step >= 0 and view.latest_run_id(e):
            by_run[e.run or e.model].append(e)
    tables, figs = [], []
    for run_name, entries in sorted(by_run.items()):
        entries.sort(key=lambda e: e.step)
        items = {e: fetch_items(conn, view.latest_run_id(e)) for e in entries}
        greedy = {e: _greedy_items(items[e]) for e in entries}
        sampled = {e: _sampled_items(items[e]) for e in entries}
        shared_g = set.intersection(*(set(g) for g in greedy.values())) if entries else set()
        shared_s = set.intersection(*(set(s) for s in sampled.values())) if entries else set()
        t = Table(f"steps_{_slug(run_name)}", f"Training run {run_name}: checkpoints over steps",
                  f"Acc@1 and Pass@16 pooled over the {len(shared_g)} greedy / {len(shared_s)} sampled items every checkpoint was scored on. "
                  "Each checkpoint is compared with the one before on their common items: McNemar's exact test on greedy outcomes, and a paired bootstrap 95% CI of the Acc@1 change.",
                  ["Step", "Checkpoint", "Acc@1", "Pass@16", "ΔAcc@1 vs prev", "95% CI", "right only now / only before", "McNemar p", "Same settings as prev"])
        xs, acc, p16 = [], [], []
        prev = None
        for e in entries:
            g = {k: greedy[e][k] for k in shared_g}
            s = {k: sampled[e][k] for k in shared_s}
            a = sum(stats.item_acc1(v) for v in g.values()) / len(g) if g else None
            p = sum(stats.item_pass16(v) for v in s.values()) / len(s) if s else None
            xs.append(e.step)
            acc.append(a)
            p16.append(p)
            cells = [Cell(str(e.step), e.step), Cell(Path(e.checkpoint).name or e.model, e.checkpoint, e.checkpoint), Cell(pct(a), a), Cell(pct(p), p)]
            if prev is None:
                cells += [Cell("–"), Cell("–"), Cell("–"), Cell("–"), Cell("–")]
            else:
                res = stats.paired(greedy[prev], greedy[e])
                same = _same_settings(view, prev, e)
                if res is None:
                    cells += [Cell("no common items"), Cell("–"), Cell("–"), Cell("–"), Cell("yes" if same else "NO", str(same))]
                else:
                    cells += [Cell(pct(res.delta, True), res.delta, f"n={res.n}"), Cell(f"[{pct(res.ci_low, True)}, {pct(res.ci_high, True)}]"),
                              Cell(f"{res.b_only} / {res.a_only}"), Cell(f"{res.p_value:.3g}", res.p_value), Cell("yes" if same else "NO (pins differ)", str(same))]
            t.add(cells)
            prev = e
        tables.append(t)
        if any(v is not None for v in acc):
            plt = _plt()
            fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
            ax.plot(xs, [None if v is None else 100 * v for v in acc], marker="o", label="Acc@1 (greedy)")
            if any(v is not None for v in p16):
                ax.plot(xs, [None if v is None else 100 * v for v in p16], marker="^", label="Pass@16")
            ax.set_xlabel("training step")
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
            ax.set_title(f"{run_name}: checkpoints over steps", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"steps_{_slug(run_name)}.png"
            fig.savefig(path)
            plt.close(fig)
            figs.append((run_name, path))
    return tables, figs


def _same_settings(view: View, a: Entry, b: Entry) -> bool:
    """True when the two entries' MedMNIST Acc@1 rows share their generation settings and prompt."""
    def pins(e: Entry) -> set:
        return {(r["task"], r["prompt_version"], r["gen_settings"], r["judge_model"]) for r in view.rows if entry_of(r) == e and r["metric"] == "acc1" and r["dataset"]}

    pa, pb = pins(a), pins(b)
    common = {x[0] for x in pa} & {x[0] for x in pb}
    return {x for x in pa if x[0] in common} == {x for x in pb if x[0] in common}


# ------------------------------------------------------------------ RQ3 transfer


@dataclass(frozen=True)
class TransferPair:
    base: Entry
    rl: Entry
    trained_on: str  # catalog name of the training dataset


def _normalise_dataset(name: str) -> str:
    name = name.strip()
    for prefix in ("medmnist_mcq_", "medmnist_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return get_set(name).name


def find_entry(view: View, name: str, *, last: bool) -> Entry:
    """An entry by its label, or by model/run name (the last or first step of it)."""
    hits = [e for e in view.entries if name in (e.label, e.model, e.run, e.checkpoint)]
    if not hits:
        raise KeyError(f"no model or run named {name!r} in the store; known: {', '.join(sorted({e.label for e in view.entries}))}")
    hits.sort(key=lambda e: e.step)
    return hits[-1] if last else hits[0]


def auto_pairs(view: View) -> list[TransferPair]:
    """For every training run with a trained_on dataset: its first checkpoint (step 0 = the base
    model) against its last one."""
    pairs = []
    trained: dict[str, tuple[str, str | None]] = {}
    for r in view.rows:
        if r["trained_on"] and r["step"] is not None:
            trained[r["run"] or r["model"]] = (r["trained_on"], r.get("base_model"))
    for run_name, (ds, base_model) in sorted(trained.items()):
        steps = sorted((e for e in view.entries if (e.run or e.model) == run_name and e.step >= 0), key=lambda e: e.step)
        if not steps:
            continue
        base = steps[0] if steps[0].step == 0 and len(steps) >= 2 else None
        if base is None and base_model:
            # The training marker names the starting model; find its own evaluation.
            names = {base_model, Path(base_model).name}
            found = [e for e in view.entries if e.step < 0 and ({e.model, e.checkpoint, Path(e.checkpoint).name} & names)]
            base = found[-1] if found else None
        if base is None:
            continue
        try:
            pairs.append(TransferPair(base, steps[-1], _normalise_dataset(ds)))
        except KeyError:
            continue
    return pairs


def transfer_table(view: View, conn: sqlite3.Connection, pair: TransferPair) -> Table:
    home = get_set(pair.trained_on)
    t = Table(f"transfer_{_slug(pair.rl.label)}", f"RQ3 transfer: {pair.rl.label} vs {pair.base.label} (trained on {home.name}, {home.modality})",
              "Δ = RL-trained minus base, in points, on the items both were scored on (paired bootstrap 95% CI). In-domain: the training dataset; "
              "within-modality: other datasets of its modality; cross-modality: the rest. Category rows are means of the dataset deltas.",
              ["Dataset", "Category", "Base Acc@1", "RL Acc@1", "ΔAcc@1", "ΔAcc@1 95% CI", "Base Pass@16", "RL Pass@16", "ΔPass@16", "ΔPass@16 95% CI", "Same settings"])
    items_b = fetch_items(conn, view.latest_run_id(pair.base) or "")
    items_r = fetch_items(conn, view.latest_run_id(pair.rl) or "")
    by_cat: dict[str, list[tuple[float | None, float | None]]] = defaultdict(list)
    same = _same_settings(view, pair.base, pair.rl)
    for s in SETS:
        cat = "in-domain" if s.name == home.name else ("within-modality" if s.modality == home.modality else "cross-modality")
        g_task, s_task = mcq_task(s.name), mcq_task(s.name) + SAMPLED_SUFFIX
        ga = {k: v for k, v in items_b.items() if k[0] == g_task}
        gb = {k: v for k, v in items_r.items() if k[0] == g_task}
        sa = {k: v for k, v in items_b.items() if k[0] == s_task and v["n"] >= 16}
        sb = {k: v for k, v in items_r.items() if k[0] == s_task and v["n"] >= 16}
        acc = stats.paired(ga, gb) if ga and gb else None
        p16 = stats.paired(sa, sb, stats.item_pass16, mcnemar=False) if sa and sb else None
        if acc is None and p16 is None:
            continue
        by_cat[cat].append((acc.delta if acc else None, p16.delta if p16 else None))

        def four(r):
            if r is None:
                return [Cell("–"), Cell("–"), Cell("–"), Cell("–")]
            return [Cell(pct(r.a), r.a), Cell(pct(r.b), r.b), Cell(pct(r.delta, True), r.delta, f"n={r.n}"), Cell(f"[{pct(r.ci_low, True)}, {pct(r.ci_high, True)}]")]

        t.add([Cell(s.name, s.name), Cell(cat, cat)] + four(acc) + four(p16) + [Cell("yes" if same else "NO (pins differ)")])
    for cat in ("in-domain", "within-modality", "cross-modality"):
        vals = by_cat.get(cat)
        if not vals:
            continue
        da = [a for a, _ in vals if a is not None]
        dp = [p for _, p in vals if p is not None]
        ma = sum(da) / len(da) if da else None
        mp = sum(dp) / len(dp) if dp else None
        t.add([Cell(f"{cat} mean ({len(vals)} datasets)", f"~{cat}"), Cell(cat, cat), Cell(""), Cell(""), Cell(pct(ma, True), ma), Cell(""), Cell(""), Cell(""), Cell(pct(mp, True), mp), Cell(""), Cell("")], "summary")
    return t


def runs_table(conn: sqlite3.Connection) -> Table:
    t = Table("runs", "Ingested runs", "Every run in the store (append-only).", ["Model", "Run", "Step", "Kind", "Trained on", "Date", "Source"])
    for r in conn.execute("SELECT * FROM runs ORDER BY ingested_at, run_id"):
        step = r["step"]
        t.add([Cell(r["model"], r["model"]), Cell(r["run"] or "–", r["run"] or ""), Cell("–" if step is None else str(step), step), Cell(r["kind"], r["kind"]),
               Cell(r["trained_on"] or "–", r["trained_on"] or ""), Cell(r["date"] or "–", r["date"] or ""), Cell(Path(r["source"]).name, r["source"], r["source"])])
    return t


# ------------------------------------------------------------------ rendering

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1600px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccd;padding-bottom:4px}
.caption{color:#555;font-size:.9em;max-width:1100px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.82em;margin:8px 0}
th,td{border:1px solid #d5d8e0;padding:3px 6px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
th{background:#eef1f7;cursor:pointer;user-select:none}
th.band{background:#dfe5f2;cursor:default;text-align:center}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
tr.reference td{font-style:italic;background:#fff8e6}
tr.summary td{font-weight:600;background:#f4f6fa}
.notes{font-size:.8em;color:#444}
.figs img{max-width:560px;margin:6px 12px 6px 0;border:1px solid #dde}
.empty{color:#888;font-style:italic}
"""

# Sort a table by a header click; numbers sort numerically from data-v, blanks go last.
# ?sort=<table id>:<column index>[:desc] pre-sorts a table on load (for links).
JS = """
function mbSort(table, col, dir){
  const body = table.tBodies[0]; if(!body) return;
  const rows = Array.from(body.rows);
  const key = r => { const c = r.cells[col]; if(!c) return null; const v = c.dataset.v;
    if(v === undefined || v === '') return null; const f = parseFloat(v); return isNaN(f) ? v.toLowerCase() : f; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if(x === null && y === null) return 0; if(x === null) return 1; if(y === null) return -1;
    const r = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return dir === 'desc' ? -r : r; });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll('thead tr:last-child th').forEach((th, i) => { if(i === col) th.dataset.dir = dir; else delete th.dataset.dir; });
}
document.querySelectorAll('table.sortable').forEach(table => {
  table.querySelectorAll('thead tr:last-child th').forEach((th, i) => th.addEventListener('click', () =>
    mbSort(table, i, th.dataset.dir === 'asc' ? 'desc' : 'asc')));
});
const mbParam = new URLSearchParams(location.search).get('sort');
if(mbParam){ const [id, col, dir] = mbParam.split(':'); const t = document.getElementById(id);
  if(t) mbSort(t, parseInt(col, 10), dir === 'desc' ? 'desc' : 'asc'); }
window.addEventListener('load', () => {
  document.querySelectorAll('img').forEach(img => { img.dataset.loaded = (img.complete && img.naturalWidth > 0) ? 'yes' : 'no'; });
  document.body.dataset.ready = 'yes';
});
"""


def table_html(t: Table) -> str:
    e = html.escape
    parts = [f'<h2 id="h-{e(t.id)}">{e(t.title)}</h2>', f'<p class="caption">{e(t.caption)}</p>']
    if not t.rows:
        parts.append(f'<p class="empty" data-table="{e(t.id)}">{e(t.empty)}</p>')
        return "\n".join(parts)
    head = []
    if t.groups and any(label for label, _ in t.groups):
        head.append("<tr>" + "".join(f'<th class="band" colspan="{span}">{e(label)}</th>' for label, span in t.groups) + "</tr>")
    head.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
    body = []
    for cells, cls in zip(t.rows, t.row_classes):
        tds = []
        for c in cells:
            attrs = ""
            if c.sort is not None and not (isinstance(c.sort, float) and math.isnan(c.sort)):
                attrs += f' data-v="{e(str(c.sort))}"'
            if c.title:
                attrs += f' title="{e(c.title)}"'
            tds.append(f"<td{attrs}>{e(c.text)}</td>")
        body.append(f'<tr class="{e(cls)}">' + "".join(tds) + "</tr>" if cls else "<tr>" + "".join(tds) + "</tr>")
    parts.append(f'<div class="scroll"><table class="sortable" id="{e(t.id)}"><thead>{"".join(head)}</thead><tbody>{"".join(body)}</tbody></table></div>')
    if t.notes:
        parts.append('<div class="notes">' + "<br>".join(e(n) for n in t.notes) + "</div>")
    return "\n".join(parts)


def table_md(t: Table) -> str:
    out = [f"## {t.title}", "", t.caption, ""]
    if not t.rows:
        return "\n".join(out + [f"_{t.empty}_", ""])

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    out.append("| " + " | ".join(esc(c) for c in t.columns) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(t.columns) - 1)) + "|")
    for cells, cls in zip(t.rows, t.row_classes):
        texts = [esc(c.text) for c in cells]
        if cls == "reference":
            texts[0] = f"*{texts[0]}*"
        out.append("| " + " | ".join(texts) + " |")
    out += [""] + [f"- {n}" if i else n for i, n in enumerate(t.notes)] + [""]
    return "\n".join(out)


def figures_html(figs: Sequence[tuple[str, Path]], title: str, empty: str, fig_id: str) -> str:
    e = html.escape
    if not figs:
        return f'<h2 id="h-{fig_id}">{e(title)}</h2><p class="empty">{e(empty)}</p>'
    imgs = "".join(f'<img src="{e(p.name)}" alt="{e(title)}: {e(name)}" data-figure="{e(fig_id)}">' for name, p in figs)
    return f'<h2 id="h-{fig_id}">{e(title)}</h2><div class="figs">{imgs}</div>'


def figures_md(figs: Sequence[tuple[str, Path]], title: str, empty: str) -> str:
    if not figs:
        return f"## {title}\n\n_{empty}_\n"
    return f"## {title}\n\n" + "\n".join(f"![{name}]({p.name})" for name, p in figs) + "\n"


# ------------------------------------------------------------------ entry point


def build_leaderboard(store: str | Path | None, out_dir: str | Path, *, transfer: Sequence[tuple[str, str, str]] | None = None, references: Sequence[ReferenceRow] | None = None) -> Path:
    """Write leaderboard.md, index.html and the PNGs into out_dir; returns the index.html path.

    ``transfer``: (base model, RL model, training dataset) triples for the RQ3 table; by default
    every training run whose runs carry ``trained_on`` is paired step 0 vs its last step.
    """
    store = Path(store) if store else default_store_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("passk_*.png")) + list(out.glob("steps_*.png")):
        old.unlink()  # figures of a previous build that may no longer apply
    refs = list(references) if references is not None else load_references()
    with open_store(store, create=False) as conn:
        view = View(fetch_rows(conn))
        t1, t2, t3, tk = table1(view, refs), table2(view, refs), table3(view, refs), passk_table(view)
        pk_figs = passk_figures(view, out)
        step_tables, step_figs = checkpoint_section(view, conn, out)
        if transfer:
            pairs = [TransferPair(find_entry(view, b, last=False), find_entry(view, r, last=True), _normalise_dataset(d)) for b, r, d in transfer]
        else:
            pairs = auto_pairs(view)
        transfers = [transfer_table(view, conn, p) for p in pairs]
        runs = runs_table(conn)
    n_ref = sum(1 for r in refs)
    ref_note = (f"{n_ref} published reference row(s) from leaderboard/reference/ are shown in italics." if n_ref else
                "No published reference rows: none could be checked against the paper's tables yet (see leaderboard/reference/medbridgerl_2026.json).")
    e = html.escape
    sections = [table_html(t1), table_html(t2), figures_html(pk_figs, "Pass@K curves per modality", "no sampled (_passk) results yet", "passk-figures"), table_html(tk), table_html(t3)]
    sections.append(figures_html(step_figs, "Checkpoints over training steps", "no training-run checkpoints (runs with a step) in the store yet", "step-figures"))
    sections += [table_html(t) for t in step_tables]
    if transfers:
        sections += [table_html(t) for t in transfers]
    else:
        sections.append('<h2 id="h-transfer">RQ3 transfer (in-domain / within-modality / cross-modality)</h2><p class="empty">no base / RL-trained pair: ingest checkpoints with --trained-on DATASET (step 0 = base), or build with --base MODEL --rl MODEL --trained-on DATASET</p>')
    sections.append(table_html(runs))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medbridge leaderboard</title>
<style>{CSS}</style></head>
<body>
<h1>medbridge leaderboard</h1>
<p class="caption">Built from {e(str(store))}. Values in %; hover a cell for its 95% bootstrap CI and n. Click a column header to sort. {e(ref_note)}</p>
{chr(10).join(sections)}
<script>{JS}</script>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    md = [f"# medbridge leaderboard\n\nBuilt from `{store}`. Values in %; 95% bootstrap CIs are in the HTML tooltips. {ref_note}\n",
          table_md(t1), table_md(t2), figures_md(pk_figs, "Pass@K curves per modality", "no sampled (_passk) results yet"), table_md(tk), table_md(t3),
          figures_md(step_figs, "Checkpoints over training steps", "no training-run checkpoints in the store yet")]
    md += [table_md(t) for t in step_tables]
    md += [table_md(t) for t in transfers] or ["## RQ3 transfer\n\n_no base / RL-trained pair in the store yet_\n"]
    md.append(table_md(runs))
    (out / "leaderboard.md").write_text("\n".join(md), encoding="utf-8")
    return index
