"""Open a SQLite cache file that several processes share, and survive a corrupt one.

Every medbridge cache (judge verdicts, the backend's generated samples) is disposable: losing it
costs only recomputation, while failing on it loses a whole evaluation. So a cache file that
SQLite cannot read is reported by path, moved aside (renamed next to itself, never deleted, so it
can still be inspected or recovered) and replaced by a fresh, empty database.

    conn = connect_or_quarantine(path, "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT)")

The connection is in autocommit mode (``isolation_level=None``), WAL journal, with a busy
timeout, so concurrent writers from several processes wait for each other instead of failing.
A locked database is not corruption: ``sqlite3.OperationalError`` ("database is locked", a
missing folder, a read-only disk) is raised as it is.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["connect_or_quarantine", "is_corruption", "quarantine"]

log = logging.getLogger(__name__)

# SQLite's companion files: moved together with the database so the fresh one starts clean.
_COMPANIONS = ("-wal", "-shm", "-journal")


def is_corruption(exc: BaseException) -> bool:
    """True for errors meaning "this file is not a usable database" (not for locks or I/O)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def quarantine(path: str | Path, reason: str) -> Path | None:
    """Rename a corrupt database (and its -wal/-shm files) aside; returns the new path.

    None when the file is already gone (another process moved it first).
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    for suffix in _COMPANIONS:
        try:
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        except FileNotFoundError:
            pass
    log.warning("cache file %s is corrupt (%s); moved it aside to %s and started a fresh one", path, reason, aside)
    return aside


def _open(path: Path, schema: str, busy_timeout_s: float, check: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=True)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if check:
            # quick_check reads every page once: it catches damage inside the file, not just a bad header.
            result = conn.execute("PRAGMA quick_check(1)").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_or_quarantine(
    path: str | Path, schema: str, *, busy_timeout_s: float = 60.0, check: bool = True
) -> sqlite3.Connection:
    """A connection to the cache at ``path`` with ``schema`` applied (idempotent DDL, e.g.
    ``CREATE TABLE IF NOT EXISTS``); a corrupt file is moved aside and a fresh one created.

    ``check=False`` skips the integrity scan (for extra per-thread connections to a file that
    this process already opened once with the check).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open(path, schema, busy_timeout_s, check)
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        quarantine(path, f"{type(exc).__name__}: {exc}")
    return _open(path, schema, busy_timeout_s, check=False)
