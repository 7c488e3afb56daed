"""harness_ext/sqlite_store.py: a corrupt cache file is reported by path, moved aside (never
deleted) and replaced by a fresh database; a locked one is not mistaken for corruption."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from medbridge.harness_ext.sqlite_store import connect_or_quarantine, is_corruption

SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)"


def _fill(path, n: int = 2000) -> None:
    conn = connect_or_quarantine(path, SCHEMA)
    conn.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{i}", "x" * 200) for i in range(n)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _aside(path):
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


def test_healthy_file_keeps_its_rows(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    _fill(path, 10)
    conn = connect_or_quarantine(path, SCHEMA)
    assert conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 10
    assert _aside(path) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pages_overwritten"])
def test_corrupt_file_is_moved_aside_and_a_fresh_one_works(tmp_path, caplog, damage):
    path = tmp_path / "c.sqlite"
    _fill(path)
    data = path.read_bytes()
    if damage == "garbage":
        bad = b"this is not a database at all\n" * 100
    elif damage == "truncated":
        bad = data[: len(data) // 3 + 17]
    else:  # the header is intact, interior b-tree pages are noise
        bad = data[:4096] + bytes((i * 7 + 3) % 251 for i in range(len(data) - 4096))
    path.write_bytes(bad)
    caplog.set_level(logging.WARNING)
    conn = connect_or_quarantine(path, SCHEMA)
    conn.execute("INSERT INTO kv VALUES ('new', 'v')")
    assert conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 1
    aside = _aside(path)
    assert len(aside) == 1 and aside[0].read_bytes() == bad  # kept, byte for byte
    assert str(path) in caplog.text and str(aside[0]) in caplog.text


def test_locked_database_is_not_corruption(tmp_path):
    path = tmp_path / "c.sqlite"
    _fill(path, 3)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            conn = connect_or_quarantine(path, SCHEMA, busy_timeout_s=0.2)
            conn.execute("INSERT INTO kv VALUES ('x', 'y')")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _aside(path) == []
    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    assert is_corruption(sqlite3.DatabaseError("file is not a database"))
