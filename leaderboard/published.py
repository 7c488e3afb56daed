"""Published rows under a leaderboard table: the values as the paper printed them (two decimals),
a "Δ ... − published" row for each run of the same model, and the notes a reader needs to weigh
them (the paper's stated setting, values no full test split can give, a printed average that is not
the mean of its row, how many items a published value can rest on)."""

from __future__ import annotations

from collections.abc import Sequence

from medbridge.harness_ext import metric_registry as registry
from medbridge.leaderboard.cells import DASH, Cell, Column, Table, pct
from medbridge.leaderboard.reference import (
    ReferenceRow,
    average_mismatches,
    implied_item_counts,
    unreachable_values,
)
from medbridge.leaderboard.view import PROBE_METRIC, Entry, View
from medbridge.tasks.families import entry_of

# Metrics a published value stands beside: accuracy-like numbers of one greedy pass.
PUBLISHED_METRICS = (registry.acc1().name, PROBE_METRIC)


def printed(value: float) -> str:
    """A published percentage as the paper prints it: two decimals (54.99 stays 54.99)."""
    return f"{value:.2f}"


def same_model(ref: ReferenceRow, e: Entry) -> bool:
    names = {e.model.lower(), e.model.rsplit("/", 1)[-1].lower()}
    return bool(ref.model_names & names)


def add_reference_rows(
    view: View,
    refs: Sequence[ReferenceRow],
    table: str,
    cols: Sequence[Column],
    t: Table,
    *,
    with_mean: bool = False,
    value_metric: str | None = None,
    setting_in_caption: bool = False,
) -> None:
    """Published rows (and a delta row for every run of the same model) under a table, and the
    notes that go with them. ``value_metric``: the stored metric a published value is compared with
    (default: Acc@1 or the probe accuracy); ``setting_in_caption``: the table's caption already
    states the published rows' setting, so the notes do not repeat it."""
    mine = [r for r in refs if r.table == table]
    wanted = (value_metric,) if value_metric else PUBLISHED_METRICS
    for ref in mine:
        cells = [Cell(f"Published: {ref.label}", f"~{ref.label}", f"{ref.source}; {ref.setting}")]
        vals = [ref.values.get(c.task) if c.metric in wanted else None for c in cols]
        cells += [Cell(DASH) if v is None else Cell(printed(v), v / 100, f"as printed; {ref.source}") for v in vals]
        if with_mean:
            cells.append(_average_cell(ref, vals))
        t.add(cells, "reference")
        for e in view.entries:
            if same_model(ref, e):
                _add_delta_row(view, e, ref, cols, vals, t, with_mean)
    if mine:
        t.notes += published_notes(mine, with_setting=not setting_in_caption)


def _average_cell(ref: ReferenceRow, vals: Sequence[float | None]) -> Cell:
    stated = ref.extra.get("average")
    if stated is not None:
        return Cell(printed(stated), stated / 100, "as printed")
    have = [v for v in vals if v is not None]
    if not have or len(have) != len(vals):
        return Cell(DASH)
    mean = sum(have) / len(have)
    return Cell(printed(mean), mean / 100, "mean of the published values (the paper prints none)")


def _add_delta_row(
    view: View,
    e: Entry,
    ref: ReferenceRow,
    cols: Sequence[Column],
    vals: Sequence[float | None],
    t: Table,
    with_mean: bool,
) -> None:
    deltas = []
    for c, v in zip(cols, vals):
        row = view.get(e, c.task, c.metric, c.pin) if c.pin is not None else None
        if v is None or row is None or row.get("value") is None:
            deltas.append(Cell(DASH))
        else:
            d = float(row["value"]) - v / 100
            deltas.append(Cell(pct(d, True), d, f"{e.label} minus the published value, in points"))
    if any(d.text != DASH for d in deltas):
        label = Cell(f"Δ {e.label} − published", f"~{ref.label}~")
        t.add([label] + deltas + ([Cell("")] if with_mean else []), "delta")


def published_notes(rows: Sequence[ReferenceRow], *, with_setting: bool = True) -> list[str]:
    """What a reader needs under a table's published rows, one sentence each."""
    setting = f" Setting: {rows[0].setting}." if with_setting and rows[0].setting else ""
    notes = [f"Published rows (italic): {rows[0].source}, values as printed.{setting}"]
    odd = [x for ref in rows for x in unreachable_values(ref)]
    if odd:
        n_values = sum(len(ref.values) for ref in rows)
        notes.append(
            f"{len(odd)} of these {n_values} published values cannot be a share of the full official test split "
            f"(e.g. {odd[0]}); the paper scored balanced subsets it does not list, so a Δ row compares different "
            "items."
        )
    for label, stated, mean in average_mismatches(rows):
        notes.append(
            f"The paper prints Avg {printed(stated)} for {label}; the mean of its printed values is {printed(mean)} "
            "(shown as printed)."
        )
    counts = implied_item_counts(rows)
    if counts:
        notes.append(_item_count_caveat(counts))
    return notes


def _title(task: str) -> str:
    entry = entry_of(task)
    return getattr(entry, "title", None) or getattr(entry, "name", None) or task


def _item_count_caveat(counts: dict[str, int]) -> str:
    """Each column's published values are multiples of 1/n: at most n items, one run; say what that
    means for the interval around a published value."""
    by_n: dict[int, list[str]] = {}
    for task, n in counts.items():
        by_n.setdefault(n, []).append(_title(task))
    common = max(by_n, key=lambda n: len(by_n[n]))
    others = "; ".join(f"{', '.join(titles)}: 1/{n}" for n, titles in sorted(by_n.items()) if n != common)
    half = {n: 196 * (0.25 / n) ** 0.5 for n in by_n}  # 95% half-width at 50% accuracy, in points
    widths = ", ".join(f"±{half[n]:.1f} over {n}" for n in sorted(by_n, reverse=True))
    return (
        f"Every published value here is a multiple of 1/{common}"
        + (f" ({others})" if others else "")
        + f": each benchmark was scored on about {common} items in one run, so a 95% interval is about "
        f"±{round(half[common])} points ({widths} items at 50% accuracy); differences of a few points between "
        "rows are within that."
    )
