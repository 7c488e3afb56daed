"""The query model of the leaderboard: what the store holds, as entries and pinned cells.

An ``Entry`` is one row of a table (a model, at a checkpoint of a training run); a ``View`` indexes
the store's result rows by (entry, task, metric, pins), so a table asks for one number in one
comparability setting and never mixes settings in a column.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbridge.leaderboard.store import PIN_FIELDS

# Table 1's rows: ``medbridge probe`` stores one per MedMNIST dataset under this task name and metric
# (the probe is no lmms-eval task, so it has no name in tasks/families.py).
PROBE_METRIC = "probe_acc"


def probe_task(dataset: str) -> str:
    return f"medmnist_probe_{dataset}"


# The rows of tasks run under MedVLThinker's protocol (metrics of tasks/medvqa/medvlthinker.py; a test
# checks the names exist there): their grader's accuracy, the mean of the greedy runs (what their
# table publishes), and the spread of the runs.
PROTOCOL_METRIC = "medvlthinker_acc"
PROTOCOL_SPREAD = "medvlthinker_spread"


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
    return Entry(
        row["model"], row["run"] or "", -1 if row["step"] is None else int(row["step"]), row["checkpoint"] or ""
    )


def pin_of(row: Mapping[str, Any]) -> tuple:
    """Everything that must match for two numbers to share a column."""
    return tuple(row.get(f) for f in PIN_FIELDS)


class View:
    """The store's rows, indexed by (entry, task, metric, pins); the latest ingest wins."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows
        self.cells: dict[tuple, dict[str, Any]] = {}
        self.pins: dict[tuple[str, str], list[tuple]] = defaultdict(list)  # (task, metric) -> pins in order
        self.entries: list[Entry] = []
        self.partial: dict[Entry, str] = {}  # entries whose latest run left failed requests out
        seen = set()
        for r in rows:  # ordered by ingested_at
            e, p = entry_of(r), pin_of(r)
            self.cells[(e, r["task"], r["metric"], p)] = r
            if p not in self.pins[(r["task"], r["metric"])]:
                self.pins[(r["task"], r["metric"])].append(p)
            if r.get("partial"):
                self.partial[e] = r["partial"]
            if e not in seen:
                seen.add(e)
                self.entries.append(e)
        self.entries.sort()

    def get(self, e: Entry, task: str, metric: str, pin: tuple | None = None) -> dict[str, Any] | None:
        if pin is not None:
            return self.cells.get((e, task, metric, pin))
        found = [
            self.cells[(e, task, metric, p)]
            for p in self.pins.get((task, metric), [])
            if (e, task, metric, p) in self.cells
        ]
        return found[-1] if found else None

    def has(self, task: str, metric: str) -> bool:
        return bool(self.pins.get((task, metric)))

    def latest_run_id(self, e: Entry, kind: str = "eval") -> str | None:
        ids = [r["run_id"] for r in self.rows if entry_of(r) == e and r["kind"] == kind]
        return ids[-1] if ids else None

    def collapsed(self, e: Entry, task: str) -> bool:
        """True when the entry's sampled twin of ``task`` collapsed to one response per item."""
        row = self.get(e, task, "collapsed")
        return bool(row and row.get("value"))

    def find(self, name: str, *, last: bool) -> Entry:
        """An entry by its label, or by model / run / checkpoint name (the last or first step of it)."""
        hits = [e for e in self.entries if name in (e.label, e.model, e.run, e.checkpoint)]
        if not hits:
            known = ", ".join(sorted({e.label for e in self.entries}))
            raise KeyError(f"no model or run named {name!r} in the store; known: {known}")
        hits.sort(key=lambda e: e.step)
        return hits[-1] if last else hits[0]

    def base_of(self, base_model: str) -> Entry | None:
        """The latest evaluation (not a training step) of the model a training run started from."""
        names = {base_model, Path(base_model).name}
        found = [e for e in self.entries if e.step < 0 and ({e.model, e.checkpoint, Path(e.checkpoint).name} & names)]
        return found[-1] if found else None
