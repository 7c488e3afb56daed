"""The paper's published numbers, shown as clearly labelled reference rows.

Reference files are JSON under ``leaderboard/reference/``: ``tables.<table>.rows`` holds rows
checked against the paper (label, source, values in % keyed by task name). Candidates that could
not be checked are kept apart under ``unverified_candidates`` and are never rendered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass(frozen=True)
class ReferenceRow:
    table: str
    label: str
    source: str
    values: dict[str, float]  # task -> value in % (as printed in the paper)


def load_references(paths: list[Path] | None = None) -> list[ReferenceRow]:
    paths = paths if paths is not None else sorted(REFERENCE_DIR.glob("*.json"))
    rows: list[ReferenceRow] = []
    for path in paths:
        try:
            data: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable reference file ({err})") from None
        paper = data.get("paper", Path(path).stem)
        for table, spec in (data.get("tables") or {}).items():
            for i, row in enumerate(spec.get("rows") or []):
                try:
                    values = {str(k): float(v) for k, v in row["values"].items()}
                    rows.append(ReferenceRow(table, str(row["label"]), str(row.get("source") or paper), values))
                except (KeyError, TypeError, ValueError, AttributeError) as err:
                    raise ValueError(f"{path}: tables.{table}.rows[{i}] is malformed ({err!r}); need label and values") from None
    return rows
