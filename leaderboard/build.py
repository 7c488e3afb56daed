"""`medbridge leaderboard build`: the paper's tables and figures regenerated from the store.

The page is view -> tables -> figures -> render: ``view.View`` reads the store, ``tables.py``
declares the page (one ``@on_page`` function per table, figure row or group of tables, in page
order: ``tables.SECTIONS``), ``comparisons`` and ``figures`` supply the paired tables and the PNGs,
and ``render`` writes ``leaderboard.md`` and a static ``index.html`` (sortable columns, a few lines
of inline JS, no server, no CDN) from that one list of sections. This module runs the list and
writes the site.

Tables 1-3 carry the paper's published rows (``reference.py``), also on an empty store. The site
is written to a temporary folder beside ``out_dir`` and swapped in only when complete, so a failed
build leaves the previous site, PNGs included, as it was.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import glob
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.leaderboard import comparisons, tables
from medbridge.leaderboard.reference import ReferenceRow, load_references
from medbridge.leaderboard.render import render_html, render_markdown
from medbridge.leaderboard.store import connect, default_store_path, display_path, empty_store, fetch_rows
from medbridge.leaderboard.view import View

# Files a build writes; anything else already in the output folder is carried over untouched.
OUTPUT_PATTERNS = ("index.html", "leaderboard.md", "passk_*.png", "steps_*.png")
DEFAULT_OUT = Path("medbridge_leaderboard") / "site"


# ------------------------------------------------------------------ writing the site


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


_LEFTOVER = re.compile(r"\.(?:building|old)-(?:(\d+)-)?")


def clean_leftovers(out: Path) -> list[Path]:
    """Remove the temporary folders of earlier builds into ``out`` that were killed before they
    finished (``.<out>.building-<pid>-*`` / ``.<out>.old-*`` beside it), except a running build's."""
    removed = []
    prefix = f".{out.name}."
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        m = _LEFTOVER.match(path.name[len(prefix) - 1 :])
        if not m or not path.is_dir() or path.is_symlink():
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue  # a build running right now
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the system or
    the file system cannot, so the caller falls back."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _replace_files(built: Path, out: Path) -> None:
    """Fallback without an atomic exchange: move each new file over the old one (os.replace is
    atomic per file), the page last, then drop figures the new page no longer shows. index.html is
    never missing: it is replaced, never removed."""
    ours = sorted(built.iterdir(), key=lambda p: (p.name == "index.html", p.name == "leaderboard.md", p.name))
    for p in ours:
        os.replace(p, out / p.name)
    fresh = {p.name for p in ours}
    for pattern in OUTPUT_PATTERNS:
        for p in out.glob(pattern):
            if p.name not in fresh:
                p.unlink(missing_ok=True)
    shutil.rmtree(built, ignore_errors=True)


def _swap_in(built: Path, out: Path) -> None:
    """Make the complete ``built`` folder the site at ``out``, keeping files a build does not write.

    The swap is one atomic step where the system has one (renameat2 RENAME_EXCHANGE: at every
    instant ``out`` is the whole old site or the whole new one); elsewhere files are replaced one by
    one with index.html last. Either way index.html is never missing."""
    if not out.exists():
        os.rename(built, out)
        return
    ours = {p for pattern in OUTPUT_PATTERNS for p in out.glob(pattern)}
    extras = [p for p in out.iterdir() if p not in ours and not (built / p.name).exists()]
    for p in extras:
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, built / p.name, symlinks=True)
        else:
            shutil.copy2(p, built / p.name, follow_symlinks=False)
    if _renameat2_exchange(built, out):
        # ``built`` now holds the old site (or the symlink ``out`` was: the link goes, not its target)
        built.unlink() if built.is_symlink() else shutil.rmtree(built, ignore_errors=True)
        return
    for p in extras:  # the fallback keeps them in place
        (shutil.rmtree if (built / p.name).is_dir() and not (built / p.name).is_symlink() else os.unlink)(
            built / p.name
        )
    _replace_files(built, out)


def check_out_dir(out: Path, store: Path) -> None:
    """Refuse an output folder whose replacement would take other things with it: the current
    folder, the store's folder, the store file, or a folder above any of them."""
    target = out.expanduser().resolve()
    store_file = store.expanduser().resolve()
    protected = (
        (Path.cwd().resolve(), "the current folder"),
        (store_file.parent, f"the store's folder ({display_path(store_file.parent)})"),
        (store_file, "the store file itself"),
    )
    for path, what in protected:
        if target == path or target in path.parents:
            relation = "is" if target == path else "is a folder above"
            raise MedbridgeError(
                f"--out {display_path(out)} {relation} {what}; a build replaces its --out folder as a whole, "
                f"so give it a folder of its own (e.g. {DEFAULT_OUT})"
            )


def _store_note(store: Path, exists: bool, conn: sqlite3.Connection) -> str:
    """What the page was built from, without the machine's absolute paths."""
    if not exists:
        return (
            f"No leaderboard store at {display_path(store.name)} yet: the tables show the paper's published rows "
            "only (add runs with medbridge leaderboard ingest RUN_FOLDER)."
        )
    n_runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    n_models = conn.execute("SELECT COUNT(DISTINCT model) FROM runs").fetchone()[0]
    return f"Built from the store {display_path(store.name)}: {n_runs} run(s) of {n_models} model(s)."


def build_leaderboard(
    store: str | Path | None,
    out_dir: str | Path,
    *,
    transfer: Sequence[tuple[str, str, str]] | None = None,
    references: Sequence[ReferenceRow] | None = None,
) -> Path:
    """Write leaderboard.md, index.html and the PNGs into out_dir; returns the index.html path.

    ``transfer``: (base model, RL model, training dataset) triples for the RQ3 table; by default
    every training run whose runs carry ``trained_on`` is paired step 0 vs its last step. A store
    that does not exist gives a page with the paper's published rows (and says so); the store is
    opened read-only and never created. The site's folders and files are readable by others
    (0755 / 0644 under the usual umask 022).
    """
    store = Path(store) if store else default_store_path()
    out = Path(out_dir)
    check_out_dir(out, store)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    refs = list(references) if references is not None else load_references()
    exists = store.exists()
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
    try:
        os.chmod(building, 0o777 & ~_umask())  # mkdtemp makes it 0700: the site is for others to read
        with closing(connect(store) if exists else empty_store()) as conn:
            view = View(fetch_rows(conn))
            if transfer:
                pairs = [
                    comparisons.TransferPair(
                        view.find(b, last=False), view.find(r, last=True), comparisons.normalise_dataset(d)
                    )
                    for b, r, d in transfer
                ]
            else:
                pairs = comparisons.auto_pairs(view)
            page = tables.Page(view, conn, refs, building, pairs)
            sections = [s for make in tables.SECTIONS for s in make(page)]
            store_note = _store_note(store, exists, conn)
        ref_note = (
            f"{len(refs)} published rows (italic, marked Published) come from the sources named under each table."
            if refs
            else "No published reference rows."
        )
        built_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        for name, render in (("index.html", render_html), ("leaderboard.md", render_markdown)):
            text = render(sections, store=store_note, ref_note=ref_note, built_at=built_at)
            (building / name).write_text(text, encoding="utf-8")
        _swap_in(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out / "index.html"
