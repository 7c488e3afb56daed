"""The medbridge leaderboard: an append-only SQLite store of evaluation and probe results, and
the builder of the paper's tables and figures (Markdown, static HTML, PNG).

Public API (imported lazily so `import medbridge.leaderboard` stays cheap):
    ingest_run(store_path, run_path, *, model=None, run=None, step=None, trained_on=None, base_model=None) -> int
    build_leaderboard(store, out_dir, *, transfer=None) -> Path   # the index.html
    default_store_path() -> Path
"""

from __future__ import annotations

from typing import Any

__all__ = ["ingest_run", "build_leaderboard", "default_store_path", "IngestError"]


def __getattr__(name: str) -> Any:
    if name in ("ingest_run", "IngestError"):
        from medbridge.leaderboard import ingest

        return getattr(ingest, name)
    if name == "build_leaderboard":
        from medbridge.leaderboard.build import build_leaderboard

        return build_leaderboard
    if name == "default_store_path":
        from medbridge.leaderboard.store import default_store_path

        return default_store_path
    raise AttributeError(name)
