"""The leaderboard's matplotlib figures (PNG): Pass@K curves per modality and a training run's
checkpoints over steps.

Model and run names are user text: every figure is drawn with math parsing off, so a name such as
``$x$`` or ``a_b^c`` is printed as written and can never break a build.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medbridge.harness_ext import metric_registry as registry
from medbridge.leaderboard.cells import slug
from medbridge.tasks.families import MEDMNIST

if TYPE_CHECKING:
    from medbridge.leaderboard.view import View

PASS_KS = registry.PASS_KS
PASSK_METRICS = tuple(registry.pass_at(k).name for k in PASS_KS)
PASS16 = registry.pass_at(registry.N_SAMPLES).name
ACC1 = registry.acc1().name

# Names are text: no mathtext, no LaTeX.
TEXT_ONLY = {"text.parse_math": False, "text.usetex": False}


@dataclass
class StepCurve:
    """What the steps figure of one training run draws (comparisons.checkpoint_table fills it)."""

    run: str
    steps: list[int]
    acc1: list[float | None]
    pass16: list[float | None]


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(TEXT_ONLY):
        yield plt


def _y_range(values: list[float]) -> tuple[float, float]:
    """A y-axis (in %) that fits the data with a margin: a curve near 2% is not drawn flat against
    a 0-100 axis, and a point at 0% or 100% is not cut by the frame."""
    lo, hi = min(values), max(values)
    pad = max(2.0, 0.08 * (hi - lo))
    return max(-3.0, lo - pad), min(103.0, hi + pad)


def _legend_below(ax: Any, n_entries: int) -> Any:
    """The legend under the plot area, outside it, so it never covers a curve or its CI band."""
    return ax.legend(
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=1 if n_entries > 3 else n_entries,
        frameon=False,
    )


def passk_figure(title: str, lines: list[tuple[str, list[Mapping[str, Any]], Mapping[str, Any] | None]]) -> Any:
    """One Pass@K-vs-K figure: a line with its 95% CI band per (label, Pass@K rows, Acc@1 row)."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
        drawn: list[float] = []
        for label, rows, acc in lines:
            ys = [100 * r["value"] for r in rows]
            lo = [100 * (r["ci_low"] if r["ci_low"] is not None else r["value"]) for r in rows]
            hi = [100 * (r["ci_high"] if r["ci_high"] is not None else r["value"]) for r in rows]
            (line,) = ax.plot(PASS_KS, ys, marker="o", label=label)
            ax.fill_between(PASS_KS, lo, hi, alpha=0.15, color=line.get_color())
            drawn += ys + lo + hi
            if acc is not None and acc["value"] is not None:
                ax.plot([1], [100 * acc["value"]], marker="s", markerfacecolor="none", color=line.get_color())
                drawn.append(100 * acc["value"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(PASS_KS, [str(k) for k in PASS_KS])
        ax.set_ylim(*_y_range(drawn))
        ax.set_xlabel("K (samples)")
        ax.set_ylabel("Pass@K (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        _legend_below(ax, len(lines))
        return fig


def _save(fig: Any, path: Path) -> Path:
    with _pyplot() as plt:
        fig.savefig(path, bbox_inches="tight")  # "tight" keeps the legend below the axes in the file
        plt.close(fig)
    return path


def passk_figures(view: View, out: Path) -> list[tuple[str, Path]]:
    """One Pass@K-vs-K figure per modality with a sampled group row in the store."""
    made = []
    for m in MEDMNIST.modalities:
        task = MEDMNIST.group_label(m)
        pins = view.pins.get((task, PASS16), [])
        lines = []
        for e in view.entries:
            for pin in pins:
                rows = [view.get(e, task, name, pin) for name in PASSK_METRICS]
                if any(r is None or r["value"] is None for r in rows):
                    continue
                suffix = "" if len(pins) == 1 else f" [setting {pins.index(pin) + 1}]"
                lines.append((e.label + suffix, rows, view.get(e, task, ACC1)))
        if lines:
            with _pyplot():  # drawn and saved under the text-only settings (names are never mathtext)
                fig = passk_figure(f"MedMNIST {m}: Pass@K (square: greedy Acc@1)", lines)
                made.append((m, _save(fig, out / f"passk_{m}.png")))
    return made


def steps_figure(curve: StepCurve, out: Path) -> Path | None:
    """Acc@1 and Pass@16 of a training run's checkpoints over steps; None with nothing to draw."""
    if not any(v is not None for v in curve.acc1):
        return None
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
        acc = [None if v is None else 100 * v for v in curve.acc1]
        ax.plot(curve.steps, acc, marker="o", label="Acc@1 (greedy)")
        drawn = [v for v in acc if v is not None]
        n_lines = 1
        if any(v is not None for v in curve.pass16):
            p16 = [None if v is None else 100 * v for v in curve.pass16]
            ax.plot(curve.steps, p16, marker="^", label="Pass@16")
            drawn += [v for v in p16 if v is not None]
            n_lines = 2
        ax.set_xlabel("training step")
        ax.set_ylabel("%")
        ax.set_ylim(*_y_range(drawn))
        ax.set_title(f"{curve.run}: checkpoints over steps", fontsize=9)
        ax.grid(alpha=0.3)
        _legend_below(ax, n_lines)
        return _save(fig, out / f"steps_{slug(curve.run)}.png")
