"""Sample-level metrics: Acc@1, unbiased Pass@K, pass^K, maj@K, excluded outcomes, judge counts, the
sampler check.

Every function here works on plain numbers or on per-item *records* (the dicts our tasks'
``process_results`` return), so lmms-eval aggregations, the re-scoring command and the
leaderboard all compute a number the same way. The reported metrics themselves (names,
aggregations, directions) are registered in ``metric_registry``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The outcome of one generated sample. "invalid" comes from the judge (an answer outside the options).
# Two outcomes are the infrastructure's, never the model's: "request_failed" (the backend got no answer:
# a server or request failure) and "judge_failed" (the judge gave no verdict: down, deadline). An item
# with either is left out of every score, counted, and warned about (EXCLUDED_OUTCOMES).
REQUEST_FAILED = "request_failed"
JUDGE_FAILED = "judge_failed"
EXCLUDED_OUTCOMES = (REQUEST_FAILED, JUDGE_FAILED)
OUTCOMES = ("correct", "incorrect", "unparsed", "invalid", JUDGE_FAILED, REQUEST_FAILED)
PASS_KS = (1, 2, 4, 8, 16)

# What a backend returns instead of an answer when a request failed: lmms-eval's API backends write
# "[LMMS_EVAL_REQUEST_FAILED after N retries] <error>"; medbridge's backends use their own prefix.
REQUEST_FAILED_MARKERS = ("[LMMS_EVAL_REQUEST_FAILED", "[MEDBRIDGE_REQUEST_FAILED")

# The sampler check (check_sampler): a sampler that honours the temperature makes some items' samples
# differ; one that ignores it (an inherited top_k=1, a server's own defaults) repeats one response for
# every item. Fewer than this share of items with differing samples is that signature. A confident model
# is not: at p = 0.99 on two options about 15% of items still differ somewhere among 16 samples, and
# real reasoning traces differ token by token far more often than their answers do.
MIN_VARYING_SHARE = 0.05
# Recorded settings under which a sampler cannot sample (or keeps only the top token).
MIN_TOP_P = 0.01
MIN_TEMPERATURE = 0.05

log = logging.getLogger(__name__)


def is_request_failure(response: Any) -> bool:
    """True when ``response`` is no answer at all: missing, or a backend's request-failure marker."""
    if response is None:
        return True
    return isinstance(response, str) and response.lstrip().startswith(REQUEST_FAILED_MARKERS)


def count_distinct(responses: Sequence[Any]) -> int:
    """Distinct responses among one item's samples, compared whitespace-stripped."""
    return len({r.strip() if isinstance(r, str) else repr(r) for r in responses})


def _check_counts(n: int, c: int, k: int) -> None:
    if n < 0 or c < 0 or k < 1:
        raise ValueError(f"need n >= 0, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if c > n:
        raise ValueError(f"more correct samples than samples: c={c} > n={n}")
    if k > n:
        # Estimating Pass@K from fewer than K samples is not defined; never extrapolate.
        raise ValueError(f"Pass@{k} needs at least {k} samples per item, got n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@K from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms large binomials.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased pass^K (all K samples correct): C(c, k) / C(n, k)."""
    _check_counts(n, c, k)
    if c < k:
        return 0.0
    # prod_{i=0}^{k-1} (c - i) / (n - i), stable for any n.
    return float(np.prod((c - np.arange(k)) / (n - np.arange(k))))


def majority_correct(choices: Sequence[str | None], answer: str) -> float:
    """maj@K over the given samples: 1 if the answer is the strict plurality vote, 0.5 on a
    two-way tie that includes it, ... (1/t for a t-way tie). Unreadable samples do not vote."""
    votes = Counter(c for c in choices if c is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    leaders = [c for c, v in votes.items() if v == top]
    return 1.0 / len(leaders) if answer in leaders else 0.0


# ---------------------------------------------------------------- per-item records
# A record is what a task's process_results returns for one item:
#   {"item_id", "dataset", "answer", "options": {letter: text}, "choices": [letter|None per sample],
#    "outcomes": [one of OUTCOMES per sample], "n", "c"}
# lmms-eval's sample log drops the document, so the record carries what re-scoring needs.


def outcome_of(choice: str | None, answer: str) -> str:
    """Rule-based outcome of one sample: an unreadable answer is 'unparsed', never a guess."""
    if choice is None:
        return "unparsed"
    return "correct" if choice == answer else "incorrect"


def make_record(item_id: str, dataset: str, answer: str, choices: Sequence[str | None],
                outcomes: Sequence[str] | None = None, options: Mapping[str, str] | None = None,
                failed: Sequence[bool] | None = None) -> dict[str, Any]:
    """One item's record. ``failed[i]`` marks sample i as a failed request (outcome ``request_failed``)."""
    if outcomes is None:
        outcomes = [outcome_of(c, answer) for c in choices]
    outcomes = [REQUEST_FAILED if failed is not None and failed[i] else o for i, o in enumerate(outcomes)]
    bad = [o for o in outcomes if o not in OUTCOMES]
    if bad:
        raise ValueError(f"unknown outcome(s) {bad} for item {item_id}")
    return {
        "item_id": item_id,
        "dataset": dataset,
        "answer": answer,
        "options": dict(options or {}),
        "choices": list(choices),
        "outcomes": outcomes,
        "n": len(outcomes),
        "c": sum(o == "correct" for o in outcomes),
    }


def item_pass_at_k(record: Mapping[str, Any], k: int) -> float:
    try:
        return pass_at_k(record["n"], record["c"], k)
    except ValueError as err:
        raise ValueError(f"item {record.get('item_id')}: {err}") from None


def item_pass_hat_k(record: Mapping[str, Any], k: int) -> float:
    try:
        return pass_hat_k(record["n"], record["c"], k)
    except ValueError as err:
        raise ValueError(f"item {record.get('item_id')}: {err}") from None


def item_maj_at_k(record: Mapping[str, Any], k: int) -> float:
    if k > record["n"]:
        raise ValueError(f"item {record.get('item_id')}: maj@{k} needs at least {k} samples, got n={record['n']}")
    return majority_correct(record["choices"][:k], record["answer"])


def item_acc1(record: Mapping[str, Any]) -> float:
    """Accuracy of the first (greedy) sample."""
    if record["n"] < 1:
        raise ValueError(f"item {record.get('item_id')}: no sample")
    return 1.0 if record["outcomes"][0] == "correct" else 0.0


def excluded_outcome(record: Mapping[str, Any]) -> str | None:
    """The infrastructure outcome (``request_failed`` before ``judge_failed``) that leaves an item out, or None."""
    outcomes = record.get("outcomes") or ()
    return next((o for o in EXCLUDED_OUTCOMES if o in outcomes), None)


def scorable(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records every score is computed over: items with a failed request or a failed judge verdict
    are left out (neither says anything about the model)."""
    return [r for r in records if excluded_outcome(r) is None]


def excluded_items(records: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """outcome -> item ids left out of every score for it (outcomes with no item are omitted).

    The one helper report and ingest use to refuse (or mark partial) a run with excluded items."""
    out: dict[str, list[str]] = {}
    for r in records:
        outcome = excluded_outcome(r)
        if outcome is not None:
            out.setdefault(outcome, []).append(str(r.get("item_id")))
    return {o: out[o] for o in EXCLUDED_OUTCOMES if o in out}


_WHY = {REQUEST_FAILED: ("REQUEST FAILURES", "had a failed request", "once the backend answers"),
        JUDGE_FAILED: ("JUDGE FAILURES", "got no judge verdict for a sample", "once the judge answers")}


def n_excluded(records: Sequence[Mapping[str, Any]], outcome: str, *, task: str = "") -> int:
    """Items left out of every score for ``outcome`` (one of EXCLUDED_OUTCOMES); a loud warning when any."""
    if outcome not in EXCLUDED_OUTCOMES:
        raise ValueError(f"{outcome!r} is not an excluded outcome ({', '.join(EXCLUDED_OUTCOMES)})")
    left_out = excluded_items(records).get(outcome, [])
    if left_out:
        head, what, when = _WHY[outcome]
        where = f" of {task}" if task else ""
        log.warning("%s: %d of %d item(s)%s %s and are left out of every score (first: %s); re-run them %s.",
                    head, len(left_out), len(records), where, what, ", ".join(left_out[:5]), when)
    return len(left_out)


def task_of(records: Sequence[Mapping[str, Any]]) -> str:
    """The dataset(s) a task's records belong to, for messages."""
    return ", ".join(sorted({str(r.get("dataset")) for r in records if r.get("dataset")}))


def outcome_rate(records: Sequence[Mapping[str, Any]], outcome: str) -> float:
    """Share of the scorable items' samples with ``outcome``; NaN when there is none."""
    records = scorable(records)
    total = sum(r["n"] for r in records)
    if total == 0:
        return math.nan
    return sum(o == outcome for r in records for o in r["outcomes"]) / total


# ---------------------------------------------------------------- who settled each sample (rules / judge)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (scikit-learn); nan when undefined,
    1.0 when both raters gave the same single label to every item."""
    if len(a) != len(b):
        raise ValueError("kappa needs two label lists of equal length")
    if not a:
        return math.nan
    if len(set(a) | set(b)) == 1:
        return 1.0
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when chance agreement is total: nan
        return float(cohen_kappa_score(list(a), list(b)))


def judge_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Counts of how each sample was settled plus rule-vs-judge agreement, over a task's settled records
    (the judge's own ``medbridge.judges.judge_stats`` settles outstanding verdicts first).

    Records without a ``sources`` field (rules-only scoring) count every readable sample as
    settled by rules. A record that still shows "pending" outcomes is an error, never a count.
    """
    for r in records:
        if "pending" in (r.get("outcomes") or ()):
            raise RuntimeError(f"item {r.get('item_id')}: judge verdicts are still pending; settle the records "
                               "first (medbridge.judges.settle_records)")
    out = dict.fromkeys(("n_by_rules", "n_by_judge", "n_unparseable", "n_judge_invalid", "n_judge_down"), 0)
    both_rule, both_judge = [], []
    for r in records:
        sources = r.get("sources") or ["rules"] * r["n"]
        judged = r.get("judge_choices") or [None] * r["n"]
        rules = r.get("rule_choices") or r["choices"]
        for src, outcome, jc, rc in zip(sources, r["outcomes"], judged, rules):
            if outcome == "unparsed":
                out["n_unparseable"] += 1
            if src == "rules" and outcome != "unparsed":
                out["n_by_rules"] += 1
            elif src == "judge":
                if outcome == "invalid":
                    out["n_judge_invalid"] += 1
                elif outcome == JUDGE_FAILED:
                    out["n_judge_down"] += 1
                else:
                    out["n_by_judge"] += 1
            if rc is not None and jc is not None and len(jc) == 1:
                both_rule.append(rc)
                both_judge.append(jc)
    agree = sum(x == y for x, y in zip(both_rule, both_judge))
    out["rule_judge_agree"] = agree / len(both_rule) if both_rule else math.nan
    out["rule_judge_kappa"] = cohen_kappa(both_rule, both_judge)
    out["n_both"] = len(both_rule)
    return out


# ---------------------------------------------------------------- the sampler check (collapse)


def sampling_diversity(records: Sequence[Mapping[str, Any]]) -> float:
    """Mean number of distinct responses per sampled item over the scorable items (records without
    ``distinct`` are skipped); NaN when none carries it. A failed request's marker is no response."""
    values = [r["distinct"] for r in scorable(records) if r.get("distinct") is not None]
    return float(np.mean(values)) if values else math.nan


def degenerate_settings(settings: Mapping[str, Any] | None) -> str | None:
    """Why recorded decoding settings cannot sample (``"top_k=1"``, ``"do_sample=false"``, ...), or None."""
    if not isinstance(settings, Mapping):
        return None

    def number(key: str) -> float | None:
        value = settings.get(key)
        if isinstance(value, bool) or value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    if settings.get("do_sample") is False or str(settings.get("do_sample")).lower() == "false":
        return "do_sample=false"
    temperature, top_p, top_k = number("temperature"), number("top_p"), number("top_k")
    if temperature is not None and temperature < MIN_TEMPERATURE:
        return f"temperature={temperature:g}"
    if top_k == 1:
        return "top_k=1"
    if top_p is not None and top_p < MIN_TOP_P:
        return f"top_p={top_p:g}"
    return None


@dataclass(frozen=True)
class SamplerCheck:
    """What a sampled task's records say about its sampler.

    ``collapsed`` is True when the recorded settings cannot sample, or when (almost) no item's samples
    differ: then Pass@K is Acc@1 in disguise and draws no verdict. None when the records say nothing:
    no ``distinct`` recorded (runs from before the field), or every item left out (EXCLUDED_OUTCOMES)."""

    collapsed: bool | None
    reason: str
    items: int = 0  # sampled items with ``distinct`` recorded
    varying: int = 0  # items whose samples are not all one response
    distinct: float = math.nan  # mean distinct responses per item


def _settings_key(settings: Any) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def check_sampler(records: Sequence[Mapping[str, Any]]) -> SamplerCheck:
    """Evidence about the sampler, not the model's confidence (see MIN_VARYING_SHARE).

    Pass the records of every sampled task that shares one sampler (same backend and settings): the
    more items, the surer the check. A confident model keeps some items whose samples differ; a sampler
    that ignores the temperature has none (or the settings it recorded already say it cannot sample).

    Items left out of every score (a failed request, a failed judge verdict) are left out here too: 16
    copies of one failure marker say nothing about the sampler. With none left there is no evidence."""
    left_out = excluded_items(records)
    records = scorable(records)
    if left_out and not records:
        causes = ", ".join(f"{len(ids)} {outcome}" for outcome, ids in left_out.items())
        return SamplerCheck(None, f"no evidence: every item was left out ({causes}), so nothing shows how the "
                            "sampler decodes")
    for settings in {_settings_key(r.get("decoding")): r.get("decoding") for r in records}.values():
        why = degenerate_settings(settings)
        if why:
            return SamplerCheck(True, f"the backend recorded {why}: it cannot sample",
                                distinct=sampling_diversity(records))
    counts = [r["distinct"] for r in records if r.get("distinct") is not None]
    if not counts:
        return SamplerCheck(None, "distinct responses per item were not recorded")
    varying = sum(1 for d in counts if d > 1)
    mean = float(np.mean(counts))
    if varying >= MIN_VARYING_SHARE * len(counts) and varying > 0:
        return SamplerCheck(False, f"samples differ in {varying} of {len(counts)} items: the sampler samples",
                            len(counts), varying, mean)
    return SamplerCheck(True, f"samples differ in only {varying} of {len(counts)} items (under "
                        f"{MIN_VARYING_SHARE:.0%}): every item repeats one response, as a sampler that ignores "
                        "the temperature does", len(counts), varying, mean)


def is_collapsed(records: Sequence[Mapping[str, Any]]) -> bool:
    """True when check_sampler finds the sampler collapsed (False when it cannot tell)."""
    return check_sampler(records).collapsed is True


def aggregate_diversity(records: Sequence[Mapping[str, Any]]) -> float:
    """lmms-eval's ``distinct_per_item``: the mean distinct responses per item, with a loud warning when
    check_sampler finds this task's sampler collapsed."""
    check = check_sampler(records)
    if check.collapsed:
        log.warning("COLLAPSED SAMPLING in %s: %s (%.2f distinct responses per item); its Pass@K is a greedy "
                    "score. Check the decoding recorded in the sample log.", task_of(records) or "a sampled task",
                    check.reason, check.distinct)
    return sampling_diversity(records)
