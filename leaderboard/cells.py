"""The leaderboard's table model: cells, tables, pinned columns, and the notes that explain them.

A number only ever sits in a column with numbers that share its pins (item subset, prompt, judge,
generation settings, provenance); otherwise the column is split and marked [A], [B], ... with a
note naming what differs (``PinLegend``). A column whose decoding differs from the paper's is marked
``†`` with a note saying how (``DecodingMarks``), even when it holds a single run. Text that reaches
the page never carries a machine's absolute path (``no_paths``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext import decoding_report
from medbridge.harness_ext import metric_registry as registry
from medbridge.leaderboard.pins import lmms_eval_zone
from medbridge.leaderboard.store import PIN_FIELDS
from medbridge.leaderboard.view import Entry, View, pin_of

DASH = "–"
DIFFERS = "†"  # marks a column (or row) whose decoding differs from the paper's


# ------------------------------------------------------------------ text on the page


_ABS_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^/\s,;:'\"\]\[)(<>]+/)+([^/\s,;:'\"\]\[)(<>]+)")


def no_paths(text: str) -> str:
    """``text`` with every absolute path shortened to its last component (``/home/u/runs/x.json`` ->
    ``x.json``): the page is published, the machine's folders are not."""
    return _ABS_PATH.sub(lambda m: m.group(1), text)


def short_path(path: str | None, parts: int = 2) -> str:
    """The last ``parts`` components of a path (a checkpoint, a results file): enough to recognise it."""
    if not path:
        return ""
    return "/".join(Path(path).parts[-parts:])


def slug(text: str) -> str:
    """A file- and id-safe form of a name (a table's id, a figure's file name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"


def utc_text(stamp: str | None) -> str:
    """A stored run date as ``2026-01-01 04:00 UTC``. Dates stored with an offset are converted;
    dates without one (stores ingested before dates were stored in UTC) are lmms-eval's local time
    in its default zone (Asia/Singapore)."""
    if not stamp:
        return DASH
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return no_paths(stamp)
    if when.tzinfo is None:
        when = when.replace(tzinfo=lmms_eval_zone())
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------ cells and tables


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
    where = short_path(e.checkpoint)
    partial = view.partial.get(e)
    if partial:
        why = f"partial run: {no_paths(partial)} left out"
        return Cell(f"{e.label} (partial)", e.label, f"{where}; {why}" if where else why)
    return Cell(e.label, e.label, where)


# ------------------------------------------------------------------ columns and their pins


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
        """One sentence: what the letters mean and, per letter, only what differs between settings."""
        if not self.letters:
            return []
        flat = {
            pin: {k: v for name, value in zip(PIN_FIELDS, pin) for k, v in _flatten(name, value).items()}
            for pin in self.letters
        }
        keys = sorted({k for f in flat.values() for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
        per_letter = "; ".join(
            f"[{letter}] " + ", ".join(f"{k}={_short(flat[pin].get(k))}" for k in differing)
            for pin, letter in self.letters.items()
        )
        return [f"[A], [B], ...: the same column measured under different settings, never merged. {per_letter}."]


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
    s = no_paths("null" if v is None else str(v))
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


# ------------------------------------------------------------------ decoding against the paper's


def _json(text: Any) -> Any:
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return None
    return text


def pin_decodings(pin: tuple) -> list[dict[str, Any]]:
    """The decoding(s) a pinned number was made with, normalised (``decoding_report.normalized``):
    what the backend recorded (provenance) when it recorded something, else what the task asked for
    (its generation_kwargs, --gen_kwargs included)."""
    fields = dict(zip(PIN_FIELDS, pin))
    recorded = (_json(fields.get("provenance")) or {}).get("decoding")
    found = [recorded] if isinstance(recorded, Mapping) else [r for r in recorded or () if isinstance(r, Mapping)]
    if not found:
        asked = _json(fields.get("gen_settings"))
        for settings in asked if isinstance(asked, list) else [asked]:
            if isinstance(settings, Mapping) and isinstance(settings.get("generation_kwargs"), Mapping):
                found.append(settings["generation_kwargs"])
    return [decoding_report.normalized(d) for d in found]


def row_differences(row: Mapping[str, Any] | None, metric: str) -> list[str]:
    """How the decoding behind one stored number differs from the paper's (empty when it matches)."""
    if row is None:
        return []
    sampled = registry.get(metric).task_kind == "sampled"
    found = {d for s in pin_decodings(pin_of(row)) for d in decoding_report.paper_differences(s, sampled=sampled)}
    return sorted(found)


def column_differences(view: View, col: Column) -> list[str]:
    """How the decoding behind a column differs from the paper's. A gap column spans a greedy and a
    sampled task, so it is checked through the Acc@1 and Pass@16 numbers of the runs it shows."""
    if col.pin is None or col.metric not in registry.METRICS and col.metric != registry.GAP.name:
        return []
    if col.metric != registry.GAP.name:
        rows = [r for e in view.entries if (r := view.get(e, col.task, col.metric, col.pin))]
        return row_differences(rows[0], col.metric) if rows else []
    found: set[str] = set()
    for e in view.entries:
        if view.get(e, col.task, col.metric, col.pin) is None:
            continue
        for term in registry.GAP_TERMS:
            found.update(row_differences(view.get(e, col.task, term), term))
    return sorted(found)


class DecodingMarks:
    """Marks the columns of one table whose decoding differs from the paper's and says how."""

    PAPER = "the paper's (Acc@1 greedy; Pass@K at temperature 0.7, top_p 0.9, top_k off)"

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def mark(self, view: View, cols: Sequence[Column]) -> list[Column]:
        """``cols`` with ``†`` added to the header of every column whose decoding differs."""
        out = []
        for c in cols:
            diffs = column_differences(view, c)
            if diffs:
                self.found[c.header] = diffs
                c = Column(c.task, c.metric, f"{c.header} {DIFFERS}", c.pin, c.group)
            out.append(c)
        return out

    def notes(self) -> list[str]:
        if not self.found:
            return []
        what = "; ".join(f"{header}: {', '.join(diffs)}" for header, diffs in self.found.items())
        return [f"{DIFFERS} Decoding differs from {self.PAPER}: {what}."]
