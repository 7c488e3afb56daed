"""A resumable cache of generated samples (SQLite, WAL), one row per sample.

lmms-eval's own ``--use_cache`` skips sampled requests (temperature > 0 or n > 1), which is
exactly what a long Pass@16 run needs to survive a crash. A row is keyed by

* the model fingerprint (``model_identity``: the sha256 of the config, tokenizer and weight files, each
  hashed once per file version; a hub id is resolved to the cached snapshot it loads, by revision),
* the prompt fingerprint (task name, rendered prompt text and the pixels of every image),
* the document id and the sample index,
* the seed (-1 for greedy decoding, which does not depend on it),
* the generation fingerprint (sampling settings + everything in the engine that changes output).

Samples of one item are written in one transaction, so a killed run leaves whole items behind
and the resumed run regenerates only the items (or sample indices) that are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.sqlite_store import connect_or_quarantine

SCHEMA_VERSION = 1
# Files whose bytes define the model's behaviour and are small enough to hash fully.
_SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def resolve_checkpoint(pretrained: str | os.PathLike) -> tuple[Path, str | None]:
    """(the folder a model is loaded from, its hub revision or None): ``pretrained`` itself when it is a
    folder, else the Hugging Face cache's snapshot of the hub id (the one ``from_pretrained`` and vLLM load,
    after they downloaded it). A hub id that is not in the cache is an error: nothing would identify it."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path, None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(str(pretrained), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as err:
        raise MedbridgeError(
            f"{pretrained}: neither a checkpoint folder nor a model in the Hugging Face cache, so its weights cannot "
            f"be fingerprinted ({type(err).__name__}). Load it once (the engine downloads it) or pass the folder."
        ) from None
    return folder, folder.name  # snapshots/<commit>: the hub revision


def model_identity(pretrained: str | os.PathLike) -> dict[str, Any]:
    """What identifies a checkpoint's behaviour: ``{"name", "revision", "files": {name: sha256}, "fingerprint"}``.

    Every file in ``_SMALL_FILES`` and every weight file is hashed by content (tasks/content_hash.py: once per
    file version, remembered across runs, so a 15 GB checkpoint is hashed once, not per run). New weights
    behind the same name or folder change the fingerprint; so does another hub revision."""
    from medbridge.tasks.content_hash import file_sha256

    folder, revision = resolve_checkpoint(pretrained)
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(f"{folder}: no weight files ({', '.join(_WEIGHT_SUFFIXES)}) to fingerprint")
    files = {name: file_sha256(folder / name) for name in _SMALL_FILES if (folder / name).is_file()}
    files.update({p.name: file_sha256(p) for p in weights})
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"name": str(pretrained), "revision": revision, "files": files, "fingerprint": digest}


def model_fingerprint(pretrained: str | os.PathLike) -> str:
    """sha256 over the content of a checkpoint's config, tokenizer and weight files (``model_identity``)."""
    return model_identity(pretrained)["fingerprint"]


def image_digest(image: Any) -> bytes:
    """sha256 of an image's pixels (PIL image) or of a path/URL string."""
    h = hashlib.sha256()
    if hasattr(image, "tobytes") and hasattr(image, "size"):
        h.update(f"{image.mode}:{image.size}".encode())
        h.update(image.tobytes())
    else:
        h.update(f"ref:{image}".encode())
    return h.digest()


def prompt_fingerprint(task: str, prompt_text: str, images: Iterable[Any]) -> str:
    h = hashlib.sha256()
    h.update(task.encode() + b"\0" + prompt_text.encode() + b"\0")
    for image in images:
        h.update(image_digest(image))
    return h.hexdigest()


@dataclass(frozen=True)
class ItemKey:
    """Everything but the sample index: identifies one item's generation."""

    model_fp: str
    prompt_fp: str
    task: str
    doc_id: str
    seed: int
    gen_fp: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    model_fp TEXT NOT NULL, prompt_fp TEXT NOT NULL, task TEXT NOT NULL, doc_id TEXT NOT NULL,
    seed INTEGER NOT NULL, gen_fp TEXT NOT NULL, sample_idx INTEGER NOT NULL,
    response TEXT NOT NULL, n_tokens INTEGER, run_id TEXT NOT NULL, meta TEXT,
    created REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (model_fp, prompt_fp, task, doc_id, seed, gen_fp, sample_idx));
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT);
"""
_COLUMNS = "model_fp, prompt_fp, task, doc_id, seed, gen_fp, sample_idx, response, n_tokens, run_id, meta"
_KEY_MATCH = "model_fp=? AND prompt_fp=? AND task=? AND doc_id=? AND seed=? AND gen_fp=?"


class SampleCache:
    """Per-sample response store; safe to share between processes and ranks (WAL, short
    transactions, a busy timeout). Each thread gets its own connection (the prepare thread looks
    up, the generating thread stores). A corrupt file is reported by path, moved aside (never
    deleted) and replaced by a fresh one (harness_ext/sqlite_store.py): the run goes on and
    regenerates what the lost file held."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.run_id = uuid.uuid4().hex  # which process wrote a row: lets tests see what a resumed run generated
        self.hits = 0  # samples served from the cache
        self.misses = 0  # samples looked up and not found
        self.writes = 0  # samples stored by this process
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        db = self._db(check=True)
        row = db.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute("INSERT OR IGNORE INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise MedbridgeError(
                f"{self.path}: sample cache schema {row[0]}, this medbridge writes {SCHEMA_VERSION}; "
                "point cache_dir at another folder (or move this file away)."
            )

    def _db(self, check: bool = False) -> sqlite3.Connection:
        """This thread's connection (the first one, made in __init__, checks the file's integrity)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect_or_quarantine(self.path, _SCHEMA, check=check)
            with self._connections_lock:
                self._connections.append(db)
        return db

    @staticmethod
    def _where(key: ItemKey) -> tuple:
        return (key.model_fp, key.prompt_fp, key.task, key.doc_id, key.seed, key.gen_fp)

    def get(self, key: ItemKey, n: int) -> dict[int, tuple[str, int | None]]:
        """The cached samples of indices 0..n-1 (index -> (response, n_tokens))."""
        rows = (
            self._db()
            .execute(
                f"SELECT sample_idx, response, n_tokens FROM samples WHERE {_KEY_MATCH} AND sample_idx < ?",
                self._where(key) + (n,),
            )
            .fetchall()
        )
        found = {int(i): (r, t) for i, r, t in rows}
        self.hits += len(found)
        self.misses += n - len(found)
        return found

    def put(
        self, key: ItemKey, samples: Mapping[int, tuple[str, int | None]], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Store one item's new samples in one transaction (all or nothing)."""
        meta_json = json.dumps(dict(meta or {}), sort_keys=True)
        rows = [
            self._where(key) + (int(i), text, n_tok, self.run_id, meta_json) for i, (text, n_tok) in samples.items()
        ]
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(f"INSERT OR REPLACE INTO samples ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.writes += len(rows)

    def count(self, run_id: str | None = None) -> int:
        if run_id is None:
            return self._db().execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        return self._db().execute("SELECT COUNT(*) FROM samples WHERE run_id=?", (run_id,)).fetchone()[0]

    def counters(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "run_id": self.run_id,
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
        }

    def close(self) -> None:
        """Close every thread's connection (call from the thread that owns the cache, at the end)."""
        with self._connections_lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.ProgrammingError:  # made in another thread: closed when that thread's object goes
                    pass
            self._connections.clear()
        self._local = threading.local()
