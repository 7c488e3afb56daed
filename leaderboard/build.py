"""`medbridge leaderboard build`: the paper's tables and figures regenerated from the store.

The page is view -> tables -> figures -> render: ``view.View`` reads the store, ``tables`` and
``comparisons`` build one table per function, ``figures`` draws the PNGs, and ``render`` writes
``leaderboard.md`` and a static ``index.html`` (sortable columns, a few lines of inline JS, no
server, no CDN) from one list of sections, ``SECTIONS`` below:

* Table 1: linear-probe accuracy of the frozen vision tower per MedMNIST dataset;
* Table 2: Acc@1 per MedMNIST dataset grouped by modality, with the support gap beside it;
* Pass@K curves per modality (``passk_<modality>.png``) and their numbers;
* Table 3: the six medical VQA benchmarks and their average;
* checkpoints of each training run over steps (``steps_<run>.png``) with paired tests;
* the RQ3 transfer table (base vs RL-trained: in-domain / within / cross-modality deltas);
* the ingested runs.

Tables 1-3 carry the paper's published rows (``reference.py``), also on an empty store. The site
is written to a temporary folder beside ``out_dir`` and swapped in only when complete, so a failed
build leaves the previous site, PNGs included, as it was.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medbridge.leaderboard import comparisons, figures, tables
from medbridge.leaderboard.reference import ReferenceRow, load_references
from medbridge.leaderboard.render import Section, render_html, render_markdown
from medbridge.leaderboard.store import default_store_path, fetch_rows, open_store
from medbridge.leaderboard.view import View

# Files a build writes; anything else already in the output folder is carried over untouched.
OUTPUT_PATTERNS = ("index.html", "leaderboard.md", "passk_*.png", "steps_*.png")


@dataclass
class Context:
    view: View
    conn: sqlite3.Connection
    refs: list[ReferenceRow]
    out: Path  # the folder being built
    transfer: list[comparisons.TransferPair]


def _table(fn: Callable[[Context], tables.Table]) -> Callable[[Context], list[Section]]:
    def make(ctx: Context) -> list[Section]:
        t = fn(ctx)
        return [Section(t.id, t.title, table=t)]

    return make


def _figures(
    title: str, empty: str, fig_id: str, draw: Callable[[Context], list[tuple[str, Path]]]
) -> Callable[[Context], list[Section]]:
    def make(ctx: Context) -> list[Section]:
        return [Section(fig_id, title, figures=draw(ctx), empty=empty)]

    return make


def _step_sections(ctx: Context) -> list[Section]:
    """The figure row of every training run's curve, then one table per run."""
    made, figs = [], []
    for run_name, entries in comparisons.training_runs(ctx.view).items():
        t, curve = comparisons.checkpoint_table(ctx.view, ctx.conn, run_name, entries)
        made.append(Section(t.id, t.title, table=t))
        path = figures.steps_figure(curve, ctx.out)
        if path is not None:
            figs.append((run_name, path))
    head = Section(
        "step-figures",
        "Checkpoints over training steps",
        figures=figs,
        empty="no training-run checkpoints (runs with a step) in the store yet",
    )
    return [head] + made


def _transfer_sections(ctx: Context) -> list[Section]:
    made = [comparisons.transfer_table(ctx.view, ctx.conn, p) for p in ctx.transfer]
    if made:
        return [Section(t.id, t.title, table=t) for t in made]
    return [
        Section(
            "transfer",
            "RQ3 transfer (in-domain / within-modality / cross-modality)",
            empty="no base / RL-trained pair: ingest checkpoints with --trained-on DATASET (step 0 = base), "
            "or build with --base MODEL --rl MODEL --trained-on DATASET",
        )
    ]


# The page, in order. A new table: one function in tables.py and one line here.
SECTIONS: list[Callable[[Context], list[Section]]] = [
    _table(lambda c: tables.table1(c.view, c.refs)),
    _table(lambda c: tables.table2(c.view, c.refs)),
    _figures(
        "Pass@K curves per modality",
        "no sampled (_passk) results yet",
        "passk-figures",
        lambda c: figures.passk_figures(c.view, c.out),
    ),
    _table(lambda c: tables.passk_table(c.view)),
    _table(lambda c: tables.table3(c.view, c.refs)),
    _step_sections,
    _transfer_sections,
    _table(lambda c: tables.runs_table(c.conn)),
]


def _swap_in(built: Path, out: Path) -> None:
    """Replace ``out`` with the complete ``built`` folder, keeping files a build does not write."""
    if out.exists():
        ours = {p for pattern in OUTPUT_PATTERNS for p in out.glob(pattern)}
        for p in out.iterdir():
            if p not in ours and not (built / p.name).exists():
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, built / p.name)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
        built.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        built.rename(out)


def build_leaderboard(
    store: str | Path | None,
    out_dir: str | Path,
    *,
    transfer: Sequence[tuple[str, str, str]] | None = None,
    references: Sequence[ReferenceRow] | None = None,
) -> Path:
    """Write leaderboard.md, index.html and the PNGs into out_dir; returns the index.html path.

    ``transfer``: (base model, RL model, training dataset) triples for the RQ3 table; by default
    every training run whose runs carry ``trained_on`` is paired step 0 vs its last step. An empty
    or new store gives a page with the paper's published rows.
    """
    store = Path(store) if store else default_store_path()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    refs = list(references) if references is not None else load_references()
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        # A store that does not exist yet reads as empty (the page still shows the paper's rows)
        # and is not created by building.
        with open_store(store if store.exists() else ":memory:") as conn:
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
            ctx = Context(view, conn, refs, building, pairs)
            sections = [s for make in SECTIONS for s in make(ctx)]
        ref_note = (
            f"{len(refs)} published row(s) of the paper's Tables 1-3 are shown in italics, marked Published."
            if refs
            else "No published reference rows."
        )
        (building / "index.html").write_text(
            render_html(sections, store=str(store), ref_note=ref_note), encoding="utf-8"
        )
        (building / "leaderboard.md").write_text(
            render_markdown(sections, store=str(store), ref_note=ref_note), encoding="utf-8"
        )
        _swap_in(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out / "index.html"
