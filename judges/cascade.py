"""Rules first, the judge for what rules cannot settle: per-item records for our MCQ tasks.

``score_doc_judged`` (called from lmms-eval's ``process_results`` through harness_ext/scoring.py)
reads every response with the rule extractor and submits the ones that need the judge to the
process-wide pool, so the judge works on all documents concurrently while lmms-eval keeps
post-processing. The record it returns is a ``JudgedRecord``: a plain ``dict`` (JSON-able, with
"pending" outcomes while verdicts are outstanding) that also holds its outstanding futures.

Interface for distributed runs (lmms-eval 0.7.3, ``evaluator.py``): after ``process_results``,
every rank pickles its per-sample metrics and its logged samples to rank 0
(``torch.distributed.gather_object``) and rank 0 aggregates. A ``JudgedRecord`` settles itself
when it is pickled or deep-copied: ``__reduce_ex__`` waits for its own verdicts, on the rank that
requested them, and pickles as a plain dict with final outcomes. So rank 0's numbers and every
logged sample carry final verdicts, and no rank ever needs another rank's pending table. All
ranks share one judge endpoint (the environment) and one verdict cache (SQLite WAL, safe for
concurrent writers). One process (world size 1): the first aggregation calls
``resolve_pending(records)``, which settles the same objects in place, so the sample log written
after aggregation shows the verdicts too. ``settle_records(records)`` does the same explicitly.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from medbridge.harness_ext import metric_registry, metrics
from medbridge.harness_ext.answers import extract_choice
from medbridge.harness_ext.metrics import cohen_kappa  # judges.cohen_kappa: the agreement statistic
from medbridge.judges.client import JudgePool, Verdict, get_pool
from medbridge.judges.config import JudgeConfig
from medbridge.judges.prompts import MCQ_CHOICE

__all__ = [
    "JUDGE_METRICS",
    "JudgedRecord",
    "cohen_kappa",
    "judge_stats",
    "resolve_pending",
    "score_doc_judged",
    "settle_records",
]

# The per-task metrics judge_stats computes, as the metric registry declares them (judged_only); their
# lmms-eval aggregations are the registry's (harness_ext/scoring.py builds them; metrics.judge_stats counts).
JUDGE_METRICS = tuple(m.name for m in metric_registry.METRICS.values() if m.judged_only)

_JUDGE_OUTCOME = {"none": "unparsed", "invalid": "invalid", "failed": "judge_failed"}
_SETTLE_LOCK = threading.Lock()


class JudgedRecord(dict):
    """A per-item record whose judge verdicts may still be outstanding (see the module docstring).

    The outstanding futures live in an attribute, not in the dict, so the record stays JSON-able;
    pickling or deep-copying settles it first and yields a plain dict.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[tuple[int, concurrent.futures.Future]] = []
        self.pool: JudgePool | None = None

    def settle(self) -> int:
        """Wait for this record's verdicts and fill them in; returns how many were filled."""
        with _SETTLE_LOCK:
            jobs, self.pending = self.pending, []
        for i, future in jobs:
            verdict: Verdict = future.result()
            self["judge_choices"][i] = verdict.outcome_label
            if verdict.status == "letter":
                self["choices"][i] = verdict.letter
                self["outcomes"][i] = metrics.outcome_of(verdict.letter, self["answer"])
            else:
                self["choices"][i] = None
                self["outcomes"][i] = _JUDGE_OUTCOME.get(verdict.status, "invalid")
        if jobs:
            self["c"] = sum(o == "correct" for o in self["outcomes"])
            if self.pool is not None:
                self["judge_model"] = self.pool.judge_name()  # known once a verdict came back
        return len(jobs)

    def __reduce_ex__(self, protocol: int):
        # Pickled for lmms-eval's gather to rank 0 (or deep-copied): settle here, on the requesting rank.
        self.settle()
        return (dict, (dict(self),))


def score_doc_judged(
    doc: Mapping[str, Any],
    responses: Sequence[str | None],
    options: Mapping[str, str],
    config: JudgeConfig,
    pool: JudgePool | None = None,
) -> dict[str, Any]:
    """Per-item record under the cascade: rules now, judge verdicts when the record is settled.

    Extra record fields: ``sources`` ("rules" / "judge" per sample), ``rule_choices``,
    ``judge_choices`` (letter / "none" / "invalid" / "failed" / None when not judged); while
    verdicts are outstanding their ``outcomes`` entries read "pending".
    """
    rule_choices = [extract_choice(r, dict(options)) if isinstance(r, str) else None for r in responses]
    record = JudgedRecord(
        metrics.make_record(doc["item_id"], doc.get("dataset", ""), doc["answer_letter"], rule_choices, options=options)
    )
    record["rule_choices"] = list(rule_choices)
    record["sources"] = ["rules"] * len(rule_choices)
    record["judge_choices"] = [None] * len(rule_choices)
    if config.mode == "rules":
        return record
    question = str(doc.get("question") or doc.get("prompt") or "")
    pool = pool or get_pool(config)
    # Which judge and prompt settled this record: leaderboard pins keep differently judged runs apart.
    record.pool = pool
    record["judge_model"] = pool.judge_name()
    record["judge_prompt_version"] = MCQ_CHOICE.key
    for i, (response, rule) in enumerate(zip(responses, rule_choices)):
        if config.mode == "cascade" and rule is not None:
            continue
        if not isinstance(response, str):
            continue  # nothing was generated: nothing to judge
        record.pending.append((i, pool.submit_choice(question, options, response)))
        record["outcomes"][i] = "pending"
        record["sources"][i] = "judge"
    return record


def settle_records(records: Sequence[Any]) -> int:
    """Settle every ``JudgedRecord`` among ``records`` in place; returns how many verdicts were filled.

    A plain dict that still shows "pending" outcomes lost its verdicts (it was copied without
    being settled): that is an error, never a score.
    """
    filled = 0
    for record in records:
        if isinstance(record, JudgedRecord):
            filled += record.settle()
        elif isinstance(record, dict) and "pending" in (record.get("outcomes") or ()):
            raise RuntimeError(
                f"item {record.get('item_id')}: judge verdicts are pending in a copy of the record that cannot "
                "settle them (records must be settled, or pickled, in the process that requested the verdicts)"
            )
    return filled


def resolve_pending(records: Sequence[Any]) -> int:
    """Alias kept for the tasks' aggregations: idempotent and cheap once settled."""
    return settle_records(records)


def judge_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Settle the task's records (see ``settle_records``), then count how each sample was settled and how
    often rules and judge agree (harness_ext/metrics.py's ``judge_stats``, which the metric registry's
    judge metrics report)."""
    settle_records(records)
    return metrics.judge_stats(records)
