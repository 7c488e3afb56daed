"""Every metric medbridge reports, in one registry: name, per-item value, aggregation, direction, label.

In the spirit of lm-evaluation-harness's ``register_metric`` (a metric carries its aggregation and
higher-is-better with its name) and Inspect AI's ``pass_at(k)`` reducer (one parameterised builder,
not one function per k). Scoring derives the metric lists of the task YAMLs and lmms-eval's
aggregation functions from it; report, ingest, tables and figures loop over it.

How to use it (other modules: never spell ``"maj_at_16"`` or ``f"pass_at_{k:02d}"`` yourself)::

    from medbridge.harness_ext import metric_registry as mr

    mr.get("pass_at_16")                  # one Metric by its reported name
    mr.pass_at(16).name                   # "pass_at_16": the name of Pass@16, built, not spelled
    for m in mr.scores("sampled"):        # the per-item scores of a sampled task, with bootstrap CIs
        value = m.per_item(record)        #   Pass@1..16, maj@16, pass^16 (acc1 for "greedy")
    for m in mr.scores():                 # every score: acc1 first, then the sampled ones
        print(m.label, m.higher_is_better)
    mr.GAP                                # the support gap Pass@16 - Acc@1 (paired over items)
    mr.reported("greedy", judged=True)    # what a greedy task reports to lmms-eval, judge counts included
    mr.group_averaged(sampled=True)       # what a task group averages over its tasks
    m.aggregation(records)                # the task-level number lmms-eval reports (records already settled)

A ``Metric`` with ``per_item`` is a score: the mean of ``per_item`` over a task's scorable items
(``metrics.scorable``: items with a failed request or a failed judge verdict are left out). One
without is a task-level statistic (a count, a rate, a diversity). No reported name is a substring
of another: lmms-eval's group aggregation matches metric names by substring (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from medbridge.harness_ext import metrics

Record = Mapping[str, Any]
Kind = Literal["greedy", "sampled", "both"]

PASS_KS = metrics.PASS_KS  # the paper's Pass@K curve: K in {1, 2, 4, 8, 16}
N_SAMPLES = 16  # samples per item of a sampled task (the paper's Pass@16)


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    ``task_kind``: which tasks report it ("greedy": the Acc@1 task, "sampled": its ``_passk`` twin).
    ``aggregation``: the task-level number from the task's per-item records (lmms-eval calls it through
    scoring.aggregation, which settles judge verdicts first). ``per_item``: the item's value, for scores.
    ``group_mean``: a task group reports the unweighted mean of its tasks' values.
    ``k``: samples an item needs. ``judged_only``: reported only when a judge runs.
    """

    name: str
    label: str
    higher_is_better: bool
    task_kind: Kind
    aggregation: Callable[[Sequence[Record]], float]
    per_item: Callable[[Record], float] | None = None
    group_mean: bool = False
    k: int = 1
    judged_only: bool = False
    description: str = ""

    @property
    def is_score(self) -> bool:
        """A mean of per-item values over the scorable items (bootstrapped, shown with a CI)."""
        return self.per_item is not None

    def reported_by(self, kind: Literal["greedy", "sampled"]) -> bool:
        return self.task_kind in (kind, "both")

    def item_values(self, records: Sequence[Record]) -> dict[str, float]:
        """item_id -> per-item value over the scorable records (a score's raw material for CIs)."""
        if self.per_item is None:
            raise TypeError(f"{self.name} is a task-level statistic, it has no per-item value")
        return {r["item_id"]: self.per_item(r) for r in metrics.scorable(records)}


def _score(name: str, label: str, kind: Kind, per_item: Callable[[Record], float], k: int, description: str) -> Metric:
    def aggregate(records: Sequence[Record]) -> float:
        kept = metrics.scorable(records)
        return float(np.mean([per_item(r) for r in kept])) if kept else math.nan

    return Metric(name, label, True, kind, aggregate, per_item, group_mean=True, k=k, description=description)


# ---------------------------------------------------------------- parameterised constructors


def acc1() -> Metric:
    return _score("acc1", "Acc@1", "greedy", metrics.item_acc1, 1,
                  "Accuracy@1: the greedy answer (temperature 0, one sample per item) is right")


def pass_at(k: int) -> Metric:
    """Unbiased Pass@k from the item's n >= k samples (1 - C(n-c, k) / C(n, k))."""
    return _score(f"pass_at_{k:02d}", f"Pass@{k}", "sampled", lambda r: metrics.item_pass_at_k(r, k), k,
                  f"unbiased Pass@{k} from the item's n samples (c right): 1 - C(n-c, {k})/C(n, {k}), the chance "
                  f"that a draw of {k} holds a right one")


def maj_at(k: int) -> Metric:
    """Majority vote over the first k samples (ties split, unreadable samples do not vote)."""
    return _score(f"maj_at_{k:02d}", f"maj@{k}", "sampled", lambda r: metrics.item_maj_at_k(r, k), k,
                  f"the majority vote of the first {k} samples is right (ties split; unreadable samples do not vote)")


def pass_hat(k: int) -> Metric:
    """Unbiased pass^k: all k samples right (C(c, k) / C(n, k)). Reported as ``all_at_<k>``."""
    return _score(f"all_at_{k:02d}", f"pass^{k}", "sampled", lambda r: metrics.item_pass_hat_k(r, k), k,
                  f"unbiased pass^{k}: all {k} samples are right, C(c, {k})/C(n, {k})")


def unparsed(kind: Literal["greedy", "sampled"]) -> Metric:
    return Metric(f"unparsed_{kind}", f"unparsed ({kind})", False, kind,
                  lambda records: metrics.outcome_rate(records, "unparsed"), group_mean=True,
                  description="share of scorable samples with no readable answer")


def _excluded_count(outcome: str, label: str, description: str) -> Metric:
    def aggregate(records: Sequence[Record]) -> float:
        return float(metrics.n_excluded(records, outcome, task=metrics.task_of(records)))

    return Metric(f"n_{outcome}", label, False, "both", aggregate, description=description)


def _judge_stat(name: str, label: str, higher_is_better: bool, description: str, warn: str = "") -> Metric:
    def aggregate(records: Sequence[Record]) -> float:
        if warn:
            metrics.n_excluded(records, warn, task=metrics.task_of(records))
        return float(metrics.judge_stats(records)[name])

    return Metric(name, label, higher_is_better, "both", aggregate, judged_only=True, description=description)


# The support gap: Pass@16 - Acc@1 over the items both tasks scored (a paired, per-item difference).
# It spans a greedy and a sampled task, so it is no task's lmms-eval metric; report computes it.
GAP = Metric("gap", "gap", True, "both", lambda records: math.nan, group_mean=True, k=N_SAMPLES,
             description="Pass@16 - Acc@1, paired over the items both tasks scored")
GAP_TERMS = ("pass_at_16", "acc1")  # GAP = first - second; both are registered scores

_ALL: tuple[Metric, ...] = (
    acc1(),
    unparsed("greedy"),
    *(pass_at(k) for k in PASS_KS),
    maj_at(N_SAMPLES),
    pass_hat(N_SAMPLES),
    unparsed("sampled"),
    Metric("distinct_per_item", "distinct", True, "sampled", metrics.aggregate_diversity, group_mean=True,
           description="mean number of distinct responses (whitespace-stripped) among an item's samples; "
           "the sampler (collapse) check reads it"),
    _excluded_count(metrics.REQUEST_FAILED, "failed requests",
                    "items left out of every score because the backend got no answer"),
    _judge_stat("n_by_rules", "settled by rules", True, "samples the rule extractor settled"),
    _judge_stat("n_by_judge", "settled by the judge", True, "samples the judge settled"),
    _judge_stat("n_unparseable", "unparseable", False, "samples neither rules nor the judge could read"),
    _judge_stat("n_judge_invalid", "judge invalid", False, "samples the judge answered outside the options"),
    # Samples whose verdict failed (judge down, deadline): their items are left out of every score, like
    # failed requests; the aggregation warns naming them, and report refuses the run without --allow-partial.
    _judge_stat("n_judge_down", "judge failures", False,
                "samples the judge gave no verdict for; their items are left out of every score",
                warn=metrics.JUDGE_FAILED),
    _judge_stat("rule_judge_agree", "rule-judge agreement", True, "share of samples where rules and judge agree"),
    _judge_stat("rule_judge_kappa", "rule-judge kappa", True, "Cohen's kappa of rules vs judge"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
"""Every task-level metric by its reported name (GAP, a cross-task difference, is kept apart)."""


def get(name: str) -> Metric:
    if name == GAP.name:
        return GAP
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r} (known: {', '.join(METRICS)}, {GAP.name})") from None


def scores(kind: Literal["greedy", "sampled"] | None = None) -> tuple[Metric, ...]:
    """The per-item scores (Acc@1, Pass@k, maj@k, pass^k), in report order; of one kind of task if given."""
    return tuple(m for m in _ALL if m.is_score and (kind is None or m.reported_by(kind)))


def reported(kind: Literal["greedy", "sampled"], *, judged: bool = True) -> tuple[str, ...]:
    """The metric names a greedy or sampled task reports to lmms-eval (judge counts when ``judged``)."""
    return tuple(m.name for m in _ALL if m.reported_by(kind) and (judged or not m.judged_only))


def group_averaged(*, sampled: bool) -> tuple[str, ...]:
    """What a task group's ``aggregate_metric_list`` averages (scores and rates, never counts)."""
    kinds = ("greedy", "sampled") if sampled else ("greedy",)
    return tuple(m.name for m in _ALL if m.group_mean and any(m.reported_by(k) for k in kinds))


def higher_is_better(name: str) -> bool:
    return get(name).higher_is_better
