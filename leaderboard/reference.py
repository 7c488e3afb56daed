"""Published numbers shown beside ours as reference rows: the MedBridgeRL paper's Tables 1-3, and
other groups' tables measured under a protocol we reproduce (MedVLThinker's).

``reference/medbridgerl_2026.json`` is the one copy in the package of the project's checked
transcription of the paper's tables (identical to ../shared/paper/medbridgerl_tables.json; a test
keeps them equal). ``reference/medvlthinker_2025.json`` is MedVLThinker's published table: it names
the leaderboard table it feeds (a task family's ``leaderboard_table`` in tasks/families.py), the
protocol its numbers were measured under, and per row the model ids a run of the same model carries.
Values are in %, as printed, keyed here by our task names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
REFERENCE_FILE = REFERENCE_DIR / "medbridgerl_2026.json"
# Tables measured under another group's protocol, each fed by the task family that reproduces it.
PROTOCOL_FILES = (REFERENCE_DIR / "medvlthinker_2025.json",)

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
    aliases: tuple[str, ...] = ()  # model ids a run of this model carries (Hugging Face ids)

    @property
    def model_names(self) -> set[str]:
        """Lower-case names a run of the same model may carry (label without its parenthesis,
        the paper's short alias inside it, e.g. MBase, and the row's model ids with and without
        their organisation)."""
        head, _, tail = self.label.partition(" (")
        names = {head.strip().lower()}
        if tail:
            names.add(tail.rstrip(")").strip().lower())
        for alias in self.aliases:
            names |= {alias.lower(), alias.rsplit("/", 1)[-1].lower()}
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


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable reference file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _values(printed: Any, task_of: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(task -> value, {"average": value}) of one printed row; every value a percentage."""
    values, extra = {}, {}
    for k, v in printed.items():
        x = float(v)
        if not math.isfinite(x) or not 0 <= x <= 100:
            raise ValueError(f"{k} = {v} is not a percentage")
        if k == "average":
            extra[k] = x
        else:
            values[task_of(k)] = x
    return values, extra


def load_references(path: Path | None = None, protocol_paths: Sequence[Path] | None = None) -> list[ReferenceRow]:
    """Reference rows of the paper's Tables 1-3 and of the protocol tables; a malformed file raises
    ValueError naming the file and entry."""
    path = Path(path or REFERENCE_FILE)
    data = _read(path)
    rows: list[ReferenceRow] = []
    for number, (table, key) in enumerate(TABLE_KEYS.items(), start=1):
        spec = data.get(key)
        if not isinstance(spec, dict) or not isinstance(spec.get("rows"), dict):
            raise ValueError(f"{path}: {key}.rows is missing or not an object")
        for label, printed in spec["rows"].items():
            try:
                values, extra = _values(printed, lambda k, table=table: _task(table, k))
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: {key}.rows[{label!r}] is malformed ({err})") from None
            source = f"MedBridgeRL paper, Table {number}"
            rows.append(ReferenceRow(table, str(label), source, values, str(spec.get("setting") or ""), extra))
    for protocol_path in PROTOCOL_FILES if protocol_paths is None else protocol_paths:
        rows += load_protocol_table(Path(protocol_path))
    return rows


def load_protocol_table(path: Path) -> list[ReferenceRow]:
    """Rows of a table published under another group's protocol: ``table`` names the leaderboard
    table (the task family whose runs reproduce the protocol feeds it), ``rows`` map a label to its
    ``aliases`` (model ids) and ``values`` keyed by the family's catalog names."""
    from medbridge.tasks.families import FAMILIES

    data = _read(path)
    family = next((f for f in FAMILIES if f.leaderboard_table == data.get("table")), None)
    if family is None or not isinstance(data.get("rows"), dict):
        raise ValueError(f"{path}: 'table' must name a task family's leaderboard table and 'rows' must be an object")

    def task_of(key: str) -> str:
        task = family.task(key)
        if family.entry(task) is None:
            raise KeyError(f"{key!r} is no benchmark of {family.name}")
        return task

    rows = []
    for label, spec in data["rows"].items():
        try:
            values, extra = _values(spec["values"], task_of)
            aliases = tuple(str(a) for a in spec.get("aliases") or ())
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: rows[{label!r}] is malformed ({err})") from None
        source = str(data.get("source") or path.name)
        rows.append(
            ReferenceRow(
                family.leaderboard_table, str(label), source, values, str(data.get("setting") or ""), extra, aliases
            )
        )
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
            out.append(f"{spec.name} {value:.2f}% of {n} test images")
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
