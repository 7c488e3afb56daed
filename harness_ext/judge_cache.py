"""SQLite cache of judge verdicts.

A verdict is keyed by (judge model, prompt version, the exact inputs), hashed, so the 16 samples
of an item that end in the same text are judged once and a finished evaluation re-runs with no
judge request at all. Only settled verdicts are stored ("letter", "none", "invalid"); a
``judge_failed`` sample is left out on purpose, so the next run judges exactly what is missing.

The database runs in WAL mode with a busy timeout and ``INSERT OR IGNORE``: several processes
(e.g. lmms-eval workers, two evaluations sharing a cache) can write at once, and because the
judge runs at temperature 0 whichever identical verdict lands first is the one kept.
No API key or endpoint URL is ever written here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["VerdictCache", "default_cache_path", "verdict_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    judge_model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    status TEXT NOT NULL,
    value TEXT,
    raw TEXT,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    env = os.environ.get("MEDBRIDGE_JUDGE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medbridge" / "judge_cache.sqlite"


def verdict_key(judge_model: str, prompt_version: str, inputs: Mapping[str, Any]) -> str:
    """Stable hash of everything that can change a temperature-0 verdict."""
    payload = json.dumps([judge_model, prompt_version, inputs], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Thread-safe (one connection per thread) and process-safe (SQLite WAL) verdict store."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        conn = self._conn()
        conn.execute(_SCHEMA)
        conn.commit()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> tuple[str, str | None, str | None] | None:
        """(status, value, raw reply) or None when the key was never settled."""
        row = self._conn().execute("SELECT status, value, raw FROM verdicts WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def put(self, key: str, judge_model: str, prompt_version: str, status: str, value: str | None, raw: str | None) -> bool:
        """Store a settled verdict; False when the key was already there (first writer wins)."""
        if status not in ("letter", "none", "invalid", "correct", "incorrect", "label"):
            raise ValueError(f"refusing to cache unsettled verdict status {status!r}")
        cur = self._conn().execute(
            "INSERT OR IGNORE INTO verdicts (key, judge_model, prompt_version, status, value, raw, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, judge_model, prompt_version, status, value, (raw or "")[:2000], time.time()),
        )
        return cur.rowcount == 1

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
