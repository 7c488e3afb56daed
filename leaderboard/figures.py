"""The leaderboard's matplotlib figures (PNG): Pass@K curves per modality and a training run's
checkpoints over steps.

Model and run names are user text: every figure is drawn with math parsing off, so a name such as
``$x$`` or ``a_b^c`` is printed as written and can never break a build.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medbridge.harness_ext.metrics import PASS_KS
from medbridge.tasks.medmnist.catalog import MODALITIES

if TYPE_CHECKING:
    from medbridge.leaderboard.comparisons import StepCurve
    from medbridge.leaderboard.view import View

PASSK_METRICS = tuple(f"pass_at_{k:02d}" for k in PASS_KS)

# Names are text: no mathtext, no LaTeX.
TEXT_ONLY = {"text.parse_math": False, "text.usetex": False}


def slug(text: str) -> str:
    """A file- and id-safe form of a name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(TEXT_ONLY):
        yield plt


def passk_figures(view: View, out: Path) -> list[tuple[str, Path]]:
    """One Pass@K-vs-K figure per modality with a sampled group row in the store."""
    from medbridge.leaderboard.tables import group_label

    made = []
    with _pyplot() as plt:
        for m in MODALITIES:
            task = group_label(m)
            pins = view.pins.get((task, "pass_at_16"), [])
            lines = []
            for e in view.entries:
                for pin in pins:
                    rows = [view.get(e, task, name, pin) for name in PASSK_METRICS]
                    if any(r is None or r["value"] is None for r in rows):
                        continue
                    suffix = "" if len(pins) == 1 else f" [setting {pins.index(pin) + 1}]"
                    lines.append((e.label + suffix, rows, view.get(e, task, "acc1")))
            if not lines:
                continue
            fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
            for label, rows, acc in lines:
                ys = [100 * r["value"] for r in rows]
                lo = [100 * (r["ci_low"] if r["ci_low"] is not None else r["value"]) for r in rows]
                hi = [100 * (r["ci_high"] if r["ci_high"] is not None else r["value"]) for r in rows]
                (line,) = ax.plot(PASS_KS, ys, marker="o", label=label)
                ax.fill_between(PASS_KS, lo, hi, alpha=0.15, color=line.get_color())
                if acc is not None and acc["value"] is not None:
                    ax.plot([1], [100 * acc["value"]], marker="s", markerfacecolor="none", color=line.get_color())
            ax.set_xscale("log", base=2)
            ax.set_xticks(PASS_KS, [str(k) for k in PASS_KS])
            ax.set_ylim(0, 100)
            ax.set_xlabel("K (samples)")
            ax.set_ylabel("Pass@K (%)")
            ax.set_title(f"MedMNIST {m}: Pass@K (square: greedy Acc@1)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
            fig.tight_layout()
            path = out / f"passk_{m}.png"
            fig.savefig(path)
            plt.close(fig)
            made.append((m, path))
    return made


def steps_figure(curve: StepCurve, out: Path) -> Path | None:
    """Acc@1 and Pass@16 of a training run's checkpoints over steps; None with nothing to draw."""
    if not any(v is not None for v in curve.acc1):
        return None
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
        ax.plot(curve.steps, [None if v is None else 100 * v for v in curve.acc1], marker="o", label="Acc@1 (greedy)")
        if any(v is not None for v in curve.pass16):
            ax.plot(curve.steps, [None if v is None else 100 * v for v in curve.pass16], marker="^", label="Pass@16")
        ax.set_xlabel("training step")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"{curve.run}: checkpoints over steps", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"steps_{slug(curve.run)}.png"
        fig.savefig(path)
        plt.close(fig)
    return path
