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

Reading and writing are separate on purpose. ``open_store(path)`` opens the file read-only
(SQLite ``mode=ro``) and runs no DDL, so build, recipe and any number of concurrent readers never
write to the store (a store on read-only media can be built from). ``open_store(path, write=True)``
is for ingest and probe: it checks the file with ``PRAGMA quick_check`` before anything is written
(a damaged store is refused, naming the file, its last good copy ``<store>.last-good`` and how to
rebuild it), creates or migrates the schema inside SQLite's write lock, and saves the store it just
found intact as ``<store>.last-good``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError

STORE_ENV = "MEDBRIDGE_LEADERBOARD"
DEFAULT_STORE = Path(settings.default(STORE_ENV))  # ./medbridge_leaderboard/leaderboard.sqlite
SCHEMA_VERSION = 3  # 3: no "rows" view (readers run no DDL)

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
SCHEMA_STATEMENTS = [part.strip() for part in SCHEMA.split(";") if part.strip()]

# Columns added after schema version 1: (table, column, type); a writing command adds them to older
# stores (under the write lock); readers of an older store see them as NULL.
ADDED_COLUMNS = (("runs", "partial", "TEXT"), ("results", "provenance", "TEXT"))
RESULT_COLUMNS = (
    "run_id",
    "task",
    "dataset",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "config_hash",
    "subset_hash",
    "prompt_version",
    "judge_model",
    "judge_prompt_version",
    "gen_settings",
    "provenance",
)
RUN_COLUMNS = (
    "kind",
    "model",
    "checkpoint",
    "run",
    "step",
    "trained_on",
    "base_model",
    "date",
    "ingested_at",
    "source",
    "partial",
)

# Waits this long for another process's write to finish before giving up (SQLite's busy timeout).
BUSY_TIMEOUT_S = 120.0
BACKUP_SUFFIX = ".last-good"

PIN_FIELDS = ("subset_hash", "prompt_version", "judge_model", "judge_prompt_version", "gen_settings", "provenance")


log = logging.getLogger(__name__)


class StoreError(MedbridgeError, ValueError):
    """A store that is missing or is not a medbridge leaderboard store; the message names the file."""


class CorruptStoreError(StoreError):
    """A store SQLite reports damaged; the message names the file and how to recover it."""


def default_store_path() -> Path:
    """$MEDBRIDGE_LEADERBOARD, else its default in the settings table (./medbridge_leaderboard/leaderboard.sqlite)."""
    return settings.get_path(STORE_ENV)


def storable_text(text: str) -> str:
    """``text`` as valid UTF-8, so SQLite, the page and a terminal can hold it: a non-UTF-8 byte of a
    file name (Python's surrogate escape) becomes ``\\xff``, any other lone surrogate ``\\udc80``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as printable, storable text (see ``storable_text``)."""
    return storable_text(os.fspath(path))


def _storable(values: Iterable[Any]) -> tuple:
    return tuple(storable_text(v) if isinstance(v, str) else v for v in values)


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


def _is_corruption(err: BaseException) -> bool:
    return isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError)


def _check_file(path: Path) -> None:
    """A store is a regular file: a folder, FIFO or device is refused before SQLite opens it (a FIFO
    would block the open forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise StoreError(f"leaderboard store {path}: cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise StoreError(
            f"leaderboard store {path} is {kind}; give --store the .sqlite file itself "
            f"(e.g. {path / DEFAULT_STORE.name if stat.S_ISDIR(mode) else DEFAULT_STORE})"
        )


def backup_path(path: str | Path) -> Path:
    """Where the last copy of the store that passed its integrity check is kept."""
    path = Path(path)
    return path.with_name(path.name + BACKUP_SUFFIX)


def recovery_advice(path: Path) -> str:
    """How to get a usable store back: the last good backup, else a rebuild from the run folders."""
    backup = backup_path(path)
    rebuild = (
        f"or move it aside and rebuild from the runs (medbridge leaderboard ingest RUN_FOLDER ... --store {path}; "
        "the runs table of the backup lists each run's source folder)"
    )
    if backup.is_file():
        return f"restore the last good copy ({backup}: cp {backup} {path}), {rebuild}."
    return f"no backup copy exists ({backup}); move the damaged file aside and {rebuild.removeprefix('or ')}."


def _corrupt(path: Path, detail: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"leaderboard store {path} is damaged ({detail}); nothing was read from or written to it. To recover, "
        + recovery_advice(path)
    )


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """PRAGMA quick_check reads every page once: damage inside the file, not just a bad header."""
    try:
        result = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as err:
        if not _is_corruption(err):
            raise
        raise _corrupt(path, str(err)) from None
    if result != ["ok"]:
        raise _corrupt(path, "quick_check: " + "; ".join(result))


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _schema_version(conn: sqlite3.Connection) -> int | None:
    if "meta" not in _tables(conn):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else None
    except (TypeError, ValueError):
        return None


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the schema, inside one IMMEDIATE transaction: SQLite's write lock makes
    concurrent writers take turns, so two ingests never run DDL at once."""
    if _schema_version(conn) == SCHEMA_VERSION and _columns(conn, "results") >= {"provenance"}:
        return  # the common case: nothing to do, no lock taken
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"leaderboard store {path} has schema version {version}, newer than this medbridge's "
                f"{SCHEMA_VERSION}; upgrade medbridge to write to it"
            )
        existing = _tables(conn)
        if existing and "runs" not in existing:
            raise StoreError(
                f"{path}: not a medbridge leaderboard store (it has tables {sorted(existing)} but no 'runs'); "
                "give --store a .sqlite file the leaderboard wrote, or a new path"
            )
        for statement in SCHEMA_STATEMENTS:
            conn.execute(statement)
        for table, column, kind in ADDED_COLUMNS:
            if column not in _columns(conn, table):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        # Stores written before version 3 carry a 'rows' view that every open recreated; readers
        # now build that query themselves (fetch_rows), so no open ever needs DDL.
        conn.execute("DROP VIEW IF EXISTS rows")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _save_backup(conn: sqlite3.Connection, path: Path) -> None:
    """Copy the store to ``<store>.last-good`` (atomically: a temporary file renamed over the old
    copy), so damage found later can be undone. A failure only warns: the store itself is fine."""
    backup = backup_path(path)
    tmp = backup.with_name(f".{backup.name}.{os.getpid()}.tmp")
    try:
        dest = sqlite3.connect(tmp)
        try:
            conn.backup(dest)
        finally:
            dest.close()
        os.replace(tmp, backup)
    except (OSError, sqlite3.Error) as err:
        log.warning("could not save a backup of %s to %s (%s); the store itself is fine", path, backup, err)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _connect_write(path: Path) -> sqlite3.Connection:
    _check_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists() and path.stat().st_size > 0
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as err:
        raise StoreError(f"leaderboard store {path}: cannot be opened for writing ({err})") from None
    conn.row_factory = sqlite3.Row
    try:
        if existed:
            _quick_check(conn, path)
        _migrate(conn, path)
    except sqlite3.DatabaseError as err:
        conn.close()
        if _is_corruption(err):
            raise _corrupt(path, str(err)) from None
        raise StoreError(f"leaderboard store {path}: {err}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _roll_back_unfinished_write(path: Path) -> None:
    """A writer killed inside its transaction (kill -9 during an ingest) leaves a hot journal, which a
    read-only connection cannot roll back. Opening the file for writing once makes SQLite restore the
    last committed state (nothing of ours is written); then the read goes on read-only."""
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise StoreError(
            f"leaderboard store {path} holds an unfinished write (its -journal file, left by a killed ingest) "
            f"that cannot be rolled back here ({err}); run any medbridge leaderboard ingest on it where it is "
            "writable, or restore its last good copy"
        ) from None


def _open_read_only(path: Path) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise StoreError(f"leaderboard store {path}: cannot be opened ({err})") from None
    conn.row_factory = sqlite3.Row
    return conn


def _connect_read(path: Path) -> sqlite3.Connection:
    _check_file(path)
    if not path.exists():
        raise StoreError(f"no leaderboard store at {path} (ingest a run first: medbridge leaderboard ingest RUN)")
    conn = _open_read_only(path)
    try:
        try:
            _quick_check(conn, path)
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err) or not Path(f"{path}-journal").exists():
                raise
            conn.close()
            _roll_back_unfinished_write(path)
            conn = _open_read_only(path)
            _quick_check(conn, path)
        if "runs" not in _tables(conn):
            raise StoreError(
                f"{path}: not a medbridge leaderboard store (no 'runs' table); "
                "give --store a .sqlite file the leaderboard wrote"
            )
    except sqlite3.DatabaseError as err:
        conn.close()
        raise StoreError(f"leaderboard store {path}: cannot be read ({err})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def empty_store() -> sqlite3.Connection:
    """An in-memory store with the schema and no runs (what a build reads when there is no store)."""
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    for statement in SCHEMA_STATEMENTS:
        conn.execute(statement)
    return conn


def connect(path: str | Path, *, write: bool = False) -> sqlite3.Connection:
    """A connection to the store at ``path``.

    Read (the default): opened read-only (``mode=ro``), no DDL, nothing created; a missing store,
    a damaged one or a file that is not a store raises ``StoreError``. Write: the file is created if
    missing, checked with ``PRAGMA quick_check`` (a damaged store raises ``CorruptStoreError`` naming
    the file and the way to recover) and the schema is created or migrated under SQLite's write
    lock. Autocommit mode: each run goes in through ``write_bundle``'s own transaction."""
    path = Path(path)
    return _connect_write(path) if write else _connect_read(path)


@contextmanager
def open_store(path: str | Path, *, write: bool = False, backup: bool = True) -> Iterator[sqlite3.Connection]:
    """``connect`` as a context manager. A writing block that ends without an error saves the store
    (checked intact when opened, then written) as ``<store>.last-good`` when it changed anything or
    has no copy yet."""
    conn = connect(path, write=write)
    try:
        yield conn
        if write and backup and (conn.total_changes or not backup_path(path).is_file()):
            _save_backup(conn, Path(path))
    finally:
        conn.close()


def has_run(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def write_bundle(conn: sqlite3.Connection, bundle: RunBundle, ingested_at: str) -> int | None:
    """Insert one run atomically; returns the number of result rows added, or None when the run was
    already there (nothing written). A new run may add 0 rows: every item of a partial run left out.

    The connection must come from ``connect(..., write=True)``. The run is checked for and written
    inside one IMMEDIATE transaction, so two processes ingesting the same run add it once."""
    r = bundle.run
    conn.execute("BEGIN IMMEDIATE")
    try:
        if has_run(conn, r.run_id):
            conn.execute("ROLLBACK")
            return None
        conn.execute(
            "INSERT INTO runs (run_id, kind, model, checkpoint, run, step, trained_on, base_model, date, ingested_at,"
            " source, partial) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            _storable(
                (r.run_id, r.kind, r.model, r.checkpoint, r.run, r.step, r.trained_on, r.base_model, r.date)
                + (ingested_at, r.source, r.partial)
            ),
        )
        cur = conn.executemany(
            f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) VALUES ({','.join('?' * len(RESULT_COLUMNS))})",
            [_storable((r.run_id,) + tuple(getattr(x, c) for c in RESULT_COLUMNS[1:])) for x in bundle.results],
        )
        added = cur.rowcount
        conn.executemany(
            "INSERT INTO items (run_id, task, item_id, first_correct, n, c) VALUES (?,?,?,?,?,?)",
            [_storable((r.run_id, i.task, i.item_id, i.first_correct, i.n, i.c)) for i in bundle.items],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return added


def _rows_query(conn: sqlite3.Connection) -> str:
    """Each result row joined with its run's fields, built from the columns this store has (an
    older store without a column reads it as NULL), so reading needs no view and no DDL."""
    have_results, have_runs = _columns(conn, "results"), _columns(conn, "runs")
    picks = [f"r.{c}" if c in have_results else f"NULL AS {c}" for c in RESULT_COLUMNS]
    picks.append("u.rowid AS run_seq")
    picks += [f"u.{c}" if c in have_runs else f"NULL AS {c}" for c in RUN_COLUMNS]
    return f"SELECT {', '.join(picks)} FROM results r JOIN runs u ON u.run_id = r.run_id"


def fetch_rows(conn: sqlite3.Connection, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
    """Every result row with its run's fields (model, run, step, date, source, ...), oldest ingest
    first; ``where`` filters on those names (``"kind = 'eval'"``)."""
    query = f"SELECT * FROM ({_rows_query(conn)}) WHERE {where} ORDER BY ingested_at, run_seq, task, metric"
    return [dict(row) for row in conn.execute(query, params)]


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
