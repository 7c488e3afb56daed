"""Render the leaderboard's sections as a static HTML page and as Markdown, from one list.

Both outputs come from Jinja2 templates (``leaderboard/templates/``) over the same ``Section``
list (tables.SECTIONS), so a new table is one ``@on_page`` function in tables.py. Every piece of
text from the store (model, run and judge names, settings) is escaped: HTML by Jinja2's
autoescape, Markdown by the ``md`` filter.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medbridge.leaderboard.cells import Table, no_paths

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Section:
    """One part of the page: a table, a row of figures, or a titled note that nothing is there yet."""

    id: str
    title: str = ""
    table: Table | None = None
    figures: list[tuple[str, Path]] = field(default_factory=list)
    empty: str = ""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|$#])")


def md_escape(text: Any) -> str:
    """Markdown-safe text: HTML characters as entities, Markdown punctuation backslash-escaped,
    line breaks as spaces (a table cell is one line)."""
    s = html.escape(str(text), quote=False)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"[\r\n]+", " ", s)


def _sortable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@lru_cache(maxsize=2)
def _environment(markdown: bool) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=not markdown,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        # Every value printed on the page passes here: a machine's absolute path never reaches it.
        finalize=lambda value: no_paths(value) if isinstance(value, str) else value,
    )
    env.filters["md"] = md_escape
    env.globals.update(zip=zip, sortable=_sortable)
    return env


def render_html(sections: Sequence[Section], *, store: str, ref_note: str, built_at: str = "") -> str:
    """``store``: one sentence on what the page was built from (never a machine's absolute path)."""
    return (
        _environment(False)
        .get_template("page.html.jinja")
        .render(sections=sections, store=store, ref_note=ref_note, built_at=built_at)
    )


def render_markdown(sections: Sequence[Section], *, store: str, ref_note: str, built_at: str = "") -> str:
    return (
        _environment(True)
        .get_template("page.md.jinja")
        .render(sections=sections, store=store, ref_note=ref_note, built_at=built_at)
    )
