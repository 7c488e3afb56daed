"""The leaderboard store: one SQLite file, append-only.

Three tables:

* ``runs``: one row per ingested run (an lmms-eval results file or one probe fit). ``run_id`` is
  a content hash of what was ingested, so ingesting the same run twice adds nothing.
* ``results``: one row per (run, task, metric) with the value, its 95% CI, n and the
  comparability pins (subset hash, prompt version, judge model + prompt version, generation
  settings, config hash). Rows whose pins differ are never shown in one column.
* ``items``: per-item outcomes (greedy correctness, and n/c of sampled tasks), kept so two
  checkpoints can be compared with a paired test on the same items.

Nothing is ever updated or deleted; each run goes in inside one transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.settings import get_path

STORE_ENV = "MEDBRIDGE_LEADERBOARD"
DEFAULT_STORE = Path("medbridge_leaderboard") / "leaderboard.sqlite"
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,          -- content hash of what was ingested
    kind        TEXT NOT NULL,             -- 'eval' | 'probe'
    model       TEXT NOT NULL,
    checkpoint  TEXT,
    run         TEXT,                      -- training run name
    step        INTEGER,                   -- training step of the checkpoint
    trained_on  TEXT,                      -- dataset the model was RL/SFT-trained on, if any
    base_model  TEXT,                      -- the model training started from, if known
    date        TEXT,                      -- when the run was made (from the results file)
    ingested_at TEXT NOT NULL,
    source      TEXT NOT NULL,             -- path it was ingested from
    partial     TEXT                       -- failed requests left out (ingested with --allow-partial), else NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id               TEXT NOT NULL REFERENCES runs(run_id),
    task                 TEXT NOT NULL,     -- greedy task name, group label or probe task
    dataset              TEXT,              -- catalog name (breast, organa, ...) or NULL for groups
    metric               TEXT NOT NULL,
    value                REAL,
    ci_low               REAL,
    ci_high              REAL,
    n                    INTEGER,
    config_hash          TEXT,
    subset_hash          TEXT,              -- hash of the sorted item ids the value is over
    prompt_version       TEXT,
    judge_model          TEXT,
    judge_prompt_version TEXT,
    gen_settings         TEXT,              -- canonical JSON
    provenance           TEXT,              -- canonical JSON: backend, model_args, decoding, extractor, data
    UNIQUE (run_id, task, metric)
);
CREATE TABLE IF NOT EXISTS items (
    run_id  TEXT NOT NULL REFERENCES runs(run_id),
    task    TEXT NOT NULL,                  -- the lmms-eval task (greedy or _passk)
    item_id TEXT NOT NULL,
    first_correct INTEGER NOT NULL,         -- outcome of the first (greedy) sample
    n       INTEGER NOT NULL,
    c       INTEGER NOT NULL,
    UNIQUE (run_id, task, item_id)
);
"""

# Recreated on every open (a view holds no data), so stores written before a column was added
# show it too.
ROWS_VIEW = """
DROP VIEW IF EXISTS rows;
CREATE VIEW rows AS
    SELECT r.*, u.rowid AS run_seq, u.kind, u.model, u.checkpoint, u.run, u.step, u.trained_on, u.base_model,
           u.date, u.ingested_at, u.source, u.partial
    FROM results r JOIN runs u USING (run_id);
"""

# Columns added after schema version 1: (table, column, type); added to older stores on open.
ADDED_COLUMNS = (("runs", "partial", "TEXT"), ("results", "provenance", "TEXT"))

PIN_FIELDS = ("subset_hash", "prompt_version", "judge_model", "judge_prompt_version", "gen_settings", "provenance")


class StoreError(MedbridgeError, ValueError):
    """A store that is missing or is not a medbridge leaderboard store; the message names the file."""


def default_store_path() -> Path:
    """$MEDBRIDGE_LEADERBOARD, else ./medbridge_leaderboard/leaderboard.sqlite."""
    return get_path(STORE_ENV) or DEFAULT_STORE


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def subset_hash(item_ids: Iterable[str]) -> str:
    """Identifies the exact item set a number is computed over (order-free)."""
    return sha256_text("\n".join(sorted(item_ids)))[:16]


@dataclass
class RunRow:
    run_id: str
    kind: str
    model: str
    source: str
    checkpoint: str | None = None
    run: str | None = None
    step: int | None = None
    trained_on: str | None = None
    base_model: str | None = None
    date: str | None = None
    partial: str | None = None  # what was left out of a partial run


@dataclass
class ResultRow:
    task: str
    metric: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    dataset: str | None = None
    config_hash: str | None = None
    subset_hash: str | None = None
    prompt_version: str | None = None
    judge_model: str | None = None
    judge_prompt_version: str | None = None
    gen_settings: str | None = None
    provenance: str | None = None


@dataclass
class ItemRow:
    task: str
    item_id: str
    first_correct: int
    n: int
    c: int


@dataclass
class RunBundle:
    """Everything one run adds to the store, written in one transaction."""

    run: RunRow
    results: list[ResultRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)


def connect(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    path = Path(path)
    if not path.exists():
        if not create:
            raise StoreError(f"no leaderboard store at {path} (ingest a run first: medbridge leaderboard ingest RUN)")
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    try:
        conn.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            if column not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        conn.executescript(ROWS_VIEW)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.commit()
    except sqlite3.DatabaseError as err:
        conn.close()
        raise StoreError(
            f"{path}: not a medbridge leaderboard store ({err}); give --store a .sqlite file the leaderboard wrote"
        ) from None
    return conn


@contextmanager
def open_store(path: str | Path, *, create: bool = True) -> Iterator[sqlite3.Connection]:
    conn = connect(path, create=create)
    try:
        yield conn
    finally:
        conn.close()


def has_run(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def write_bundle(conn: sqlite3.Connection, bundle: RunBundle, ingested_at: str) -> int:
    """Insert one run atomically; returns the number of result rows added (0 if already there)."""
    if has_run(conn, bundle.run.run_id):
        return 0
    r = bundle.run
    with conn:  # one transaction: all of the run or nothing
        conn.execute(
            "INSERT INTO runs (run_id, kind, model, checkpoint, run, step, trained_on, base_model, date, ingested_at,"
            " source, partial) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.run_id,
                r.kind,
                r.model,
                r.checkpoint,
                r.run,
                r.step,
                r.trained_on,
                r.base_model,
                r.date,
                ingested_at,
                r.source,
                r.partial,
            ),
        )
        cur = conn.executemany(
            "INSERT INTO results (run_id, task, dataset, metric, value, ci_low, ci_high, n, config_hash, subset_hash,"
            " prompt_version, judge_model, judge_prompt_version, gen_settings, provenance)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.run_id,
                    x.task,
                    x.dataset,
                    x.metric,
                    x.value,
                    x.ci_low,
                    x.ci_high,
                    x.n,
                    x.config_hash,
                    x.subset_hash,
                    x.prompt_version,
                    x.judge_model,
                    x.judge_prompt_version,
                    x.gen_settings,
                    x.provenance,
                )
                for x in bundle.results
            ],
        )
        added = cur.rowcount
        conn.executemany(
            "INSERT INTO items (run_id, task, item_id, first_correct, n, c) VALUES (?,?,?,?,?,?)",
            [(r.run_id, i.task, i.item_id, i.first_correct, i.n, i.c) for i in bundle.items],
        )
    return added


def fetch_rows(conn: sqlite3.Connection, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in conn.execute(f"SELECT * FROM rows WHERE {where} ORDER BY ingested_at, run_seq, task, metric", params)
    ]


def fetch_items(
    conn: sqlite3.Connection, run_id: str, tasks: Iterable[str] | None = None
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(task, item_id) -> item row of one run."""
    rows = conn.execute("SELECT * FROM items WHERE run_id = ?", (run_id,)).fetchall()
    wanted = set(tasks) if tasks is not None else None
    return {(r["task"], r["item_id"]): dict(r) for r in rows if wanted is None or r["task"] in wanted}


def count(conn: sqlite3.Connection, table: str) -> int:
    if table not in ("runs", "results", "items"):
        raise ValueError(table)
    return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
