"""The paper's published numbers (MedBridgeRL, Tables 1-3), shown beside ours as reference rows.

``reference/medbridgerl_2026.json`` is the one copy in the package of the project's checked
transcription of the paper's tables (identical to ../shared/paper/medbridgerl_tables.json; a test
keeps them equal). Values are in %, keyed here by our task names; each table carries the settings
the paper states, so a reader sees what a published number was measured under.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REFERENCE_FILE = Path(__file__).resolve().parent / "reference" / "medbridgerl_2026.json"

# table id -> (key in the file, task name of a dataset / benchmark key)
TABLE_KEYS = {"table1": "table1_linear_probe_accuracy", "table2": "table2_acc1_greedy", "table3": "table3_medical_vqa"}


@dataclass(frozen=True)
class ReferenceRow:
    table: str  # table1 | table2 | table3
    label: str  # as printed in the paper
    source: str
    values: dict[str, float]  # task -> value in % (as printed in the paper)
    setting: str = ""  # the paper's stated setting of the table
    extra: dict[str, float] = field(default_factory=dict)  # other printed columns (Table 3's average)

    @property
    def model_names(self) -> set[str]:
        """Lower-case names a run of the same model may carry (label without its parenthesis,
        and the paper's short alias inside it, e.g. MBase)."""
        head, _, tail = self.label.partition(" (")
        names = {head.strip().lower()}
        if tail:
            names.add(tail.rstrip(")").strip().lower())
        return names


def _task(table: str, key: str) -> str:
    if table == "table1":
        from medbridge.leaderboard.view import probe_task

        return probe_task(key)
    from medbridge.tasks.families import MEDMNIST, MEDVQA
    from medbridge.tasks.medvqa.catalog import get_set

    if table == "table2":
        return MEDMNIST.task(key)
    return MEDVQA.task(get_set(key))


def load_references(path: Path | None = None) -> list[ReferenceRow]:
    """Reference rows of Tables 1-3; a malformed file raises ValueError naming the file and entry."""
    path = Path(path or REFERENCE_FILE)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable reference file ({err})") from None
    source = f"MedBridgeRL paper ({data.get('source', path.name)})"
    rows: list[ReferenceRow] = []
    for table, key in TABLE_KEYS.items():
        spec = data.get(key)
        if not isinstance(spec, dict) or not isinstance(spec.get("rows"), dict):
            raise ValueError(f"{path}: {key}.rows is missing or not an object")
        for label, printed in spec["rows"].items():
            try:
                values, extra = {}, {}
                for k, v in printed.items():
                    x = float(v)
                    if not math.isfinite(x) or not 0 <= x <= 100:
                        raise ValueError(f"{k} = {v} is not a percentage")
                    if k == "average":
                        extra[k] = x
                    else:
                        values[_task(table, k)] = x
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: {key}.rows[{label!r}] is malformed ({err})") from None
            rows.append(ReferenceRow(table, str(label), source, values, str(spec.get("setting") or ""), extra))
    return rows


def published_settings(path: Path | None = None) -> dict[str, Any]:
    """The settings the paper states in its text (Pass@K sampling, judge, model aliases)."""
    data = json.loads(Path(path or REFERENCE_FILE).read_text())
    return data.get("settings_stated_in_text") or {}


def unreachable_values(row: ReferenceRow) -> list[str]:
    """Table 2 values that no count of correct answers over the whole official test split can
    give (to the two printed decimals): they come from a subset whose items the paper does not
    list, so no run of ours is over the same items."""
    from medbridge.tasks.families import MEDMNIST

    if row.table != MEDMNIST.leaderboard_table:
        return []
    import medmnist

    out = []
    for task, value in row.values.items():
        spec = MEDMNIST.entry(task)
        n = int(medmnist.INFO[spec.flag]["n_samples"]["test"])
        k = round(value / 100 * n)
        if abs(100 * k / n - value) >= 0.005:
            out.append(f"{spec.name} {value:.2f}% (test split: {n} images)")
    return out


def average_mismatches(rows: list[ReferenceRow] | tuple[ReferenceRow, ...]) -> list[tuple[str, float, float]]:
    """(label, printed average, mean of the printed values) for each row whose printed average is not
    the mean of its values to the printed precision (Table 3 "Ours": printed 64.91, mean 64.82)."""
    out = []
    for ref in rows:
        stated = ref.extra.get("average")
        if stated is None or not ref.values:
            continue
        mean = sum(ref.values.values()) / len(ref.values)
        if abs(mean - stated) > 0.005 + 1e-9:  # more than the rounding of a two-decimal print
            out.append((ref.label, stated, mean))
    return out


def _fits(value: float, n: int) -> bool:
    """True when ``value`` (a percentage printed with two decimals) is k/n for a whole k."""
    return abs(100 * round(value / 100 * n) / n - value) <= 0.005 + 1e-9


def implied_item_counts(rows: list[ReferenceRow] | tuple[ReferenceRow, ...], max_n: int = 1000) -> dict[str, int]:
    """task -> the smallest item count n such that every published value of that column is k/n.
    Empty unless every column has one up to ``max_n``: then the values rest on so few items that
    their sampling error matters (Table 3: 200 items per benchmark, MMMU 170)."""
    columns: dict[str, list[float]] = {}
    for ref in rows:
        for task, value in ref.values.items():
            columns.setdefault(task, []).append(value)
    out = {}
    for task, values in columns.items():
        n = next((n for n in range(1, max_n + 1) if all(_fits(v, n) for v in values)), None)
        if n is None or len(values) < 3:  # too few values to say anything
            return {}
        out[task] = n
    return out
