"""SQLite cache of judge verdicts.

A verdict is keyed by (judge identity, prompt template version, the exact inputs), hashed, so the
16 samples of an item that end in the same text are judged once, a finished evaluation re-runs
with no judge request at all, and a different judge (another model behind the same served name,
another URL, another configured judge id) never reuses these verdicts. Only settled verdicts are
stored (a letter, "none", a label ...: the template's own statuses); an invalid or unknown reply
and a ``judge_failed`` sample are left out on purpose, so the next run asks exactly what is missing.

The database runs in WAL mode with a busy timeout and ``INSERT OR IGNORE``: several processes
(lmms-eval ranks, two evaluations sharing a cache) can write at once, and because the judge runs
at temperature 0 whichever identical verdict lands first is the one kept. A corrupt file is
moved aside and replaced (harness_ext/sqlite_store.py); a cache that cannot be read or written
at some moment (locked past the busy timeout) costs a recomputation, never the run.
No API key is ever written here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medbridge.harness_ext import settings
from medbridge.harness_ext.sqlite_store import connect_or_quarantine, is_corruption, quarantine

__all__ = ["UNSETTLED", "VerdictCache", "default_cache_path", "verdict_key"]

log = logging.getLogger(__name__)

# Verdict statuses that are never cached: the judge did not answer, or not in the template's format.
UNSETTLED = ("failed", "invalid", "unknown")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts_v2 (
    key TEXT PRIMARY KEY,
    judge_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    status TEXT NOT NULL,
    value TEXT,
    raw TEXT,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    """$MEDBRIDGE_JUDGE_CACHE, else its default in the settings table."""
    return settings.get_path("MEDBRIDGE_JUDGE_CACHE")


def verdict_key(judge_id: str, prompt_version: str, inputs: Mapping[str, Any]) -> str:
    """Stable hash of everything that can change a temperature-0 verdict."""
    # ensure_ascii: a lone surrogate in a model's response must not make the key unencodable.
    payload = json.dumps([judge_id, prompt_version, inputs], sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def storable_text(text: Any, limit: int = 2000) -> str:
    """Any reply as text SQLite can store: non-strings by repr, lone surrogates escaped."""
    text = text if isinstance(text, str) else repr(text)
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


class VerdictCache:
    """Thread-safe (one connection per thread) and process-safe (SQLite WAL) verdict store."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        # Open and check the file now, so a bad path or a corrupt file is handled before any judging;
        # the other threads' connections skip the integrity scan.
        self._conn(check=True)

    def _conn(self, check: bool = False) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_or_quarantine(self.path, _SCHEMA, busy_timeout_s=self._busy_timeout_s, check=check)
            self._local.conn = conn
        return conn

    def _run(self, sql: str, params: tuple) -> sqlite3.Cursor | None:
        """Execute; a corrupt file is moved aside and the statement retried once on a fresh one."""
        try:
            return self._conn().execute(sql, params)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                log.warning("verdict cache %s: %s (verdict recomputed, not cached)", self.path, exc)
                return None
            self.close()
            quarantine(self.path, f"{type(exc).__name__}: {exc}")
            try:
                return self._conn().execute(sql, params)
            except sqlite3.DatabaseError as again:
                log.warning("verdict cache %s: %s (verdict recomputed, not cached)", self.path, again)
                return None

    def get(self, key: str) -> tuple[str, str | None, str | None] | None:
        """(status, value, raw reply) or None when the key was never settled (or cannot be read)."""
        cur = self._run("SELECT status, value, raw FROM verdicts_v2 WHERE key = ?", (key,))
        row = cur.fetchone() if cur is not None else None
        return (row[0], row[1], row[2]) if row else None

    def put(self, key: str, judge_id: str, prompt_version: str, status: str, value: str | None, raw: Any) -> bool:
        """Store a settled verdict; False when the key was already there (first writer wins) or
        the write could not be done."""
        if status in UNSETTLED:
            raise ValueError(f"refusing to cache unsettled verdict status {status!r}")
        cur = self._run(
            "INSERT OR IGNORE INTO verdicts_v2 (key, judge_id, prompt_version, status, value, raw, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, storable_text(judge_id), prompt_version, status, value, storable_text(raw or ""), time.time()),
        )
        return cur is not None and cur.rowcount == 1

    def count(self) -> int:
        cur = self._run("SELECT COUNT(*) FROM verdicts_v2", ())
        return int(cur.fetchone()[0]) if cur is not None else 0

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
