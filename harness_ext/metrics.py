"""Sample-level metrics: Acc@1, unbiased Pass@K, pass^K, maj@K, sampling diversity, failed requests.

Every function here works on plain numbers or on per-item *records* (the dicts our tasks'
``process_results`` return), so lmms-eval aggregations, the re-scoring command and the
leaderboard all compute a number the same way.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# The outcome of one generated sample. "invalid" and "judge_failed" come from the judge;
# "request_failed" means the backend got no answer at all (a server or request failure): it is the
# infrastructure's outcome, never the model's, so such items are left out of every score and counted.
REQUEST_FAILED = "request_failed"
OUTCOMES = ("correct", "incorrect", "unparsed", "invalid", "judge_failed", REQUEST_FAILED)
PASS_KS = (1, 2, 4, 8, 16)

# What a backend returns instead of an answer when a request failed: lmms-eval's API backends write
# "[LMMS_EVAL_REQUEST_FAILED after N retries] <error>"; medbridge's backends use their own prefix.
REQUEST_FAILED_MARKERS = ("[LMMS_EVAL_REQUEST_FAILED", "[MEDBRIDGE_REQUEST_FAILED")

# Sampling at the paper's temperature gives (nearly) all-distinct reasoning traces; a task whose
# items average fewer distinct responses than this sampled the same text again and again (e.g. a
# checkpoint's top_k=1 leaked into decoding), so its Pass@K is a greedy score in disguise.
COLLAPSE_THRESHOLD = 1.5

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


def has_request_failure(record: Mapping[str, Any]) -> bool:
    return REQUEST_FAILED in (record.get("outcomes") or ())


def scorable(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records every score is computed over: items with a failed request are left out."""
    return [r for r in records if not has_request_failure(r)]


def n_request_failed(records: Sequence[Mapping[str, Any]], *, task: str = "") -> int:
    """Items with at least one failed request; a loud warning when there are any."""
    failed = [r.get("item_id") for r in records if has_request_failure(r)]
    if failed:
        where = f" of {task}" if task else ""
        log.warning("REQUEST FAILURES: %d of %d item(s)%s had a failed request and are left out of every score "
                    "(first: %s); re-run them once the backend answers.", len(failed), len(records), where,
                    ", ".join(map(str, failed[:5])))
    return len(failed)


def sampling_diversity(records: Sequence[Mapping[str, Any]]) -> float:
    """Mean number of distinct responses per sampled item (records without ``distinct`` are skipped);
    NaN when no record carries it."""
    values = [r["distinct"] for r in records if r.get("distinct") is not None]
    return float(np.mean(values)) if values else math.nan


def is_collapsed(records: Sequence[Mapping[str, Any]]) -> bool:
    """True when sampled items average fewer than COLLAPSE_THRESHOLD distinct responses."""
    diversity = sampling_diversity(records)
    return not math.isnan(diversity) and diversity < COLLAPSE_THRESHOLD


def outcome_rate(records: Sequence[Mapping[str, Any]], outcome: str) -> float:
    records = scorable(records)
    total = sum(r["n"] for r in records)
    if total == 0:
        return math.nan
    return sum(o == outcome for r in records for o in r["outcomes"]) / total


ITEM_METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "acc1": item_acc1,
    **{f"pass_at_{k:02d}": (lambda r, k=k: item_pass_at_k(r, k)) for k in PASS_KS},
    "maj_at_16": lambda r: item_maj_at_k(r, 16),
    "all_at_16": lambda r: item_pass_hat_k(r, 16),
}
"""Every per-item metric by its reported name. No name is a substring of another, because
lmms-eval's group aggregation matches metric names by substring."""


def mean_metric(records: Sequence[Mapping[str, Any]], name: str) -> float:
    """Mean of a per-item metric over the scorable items (those with a failed request are left out)."""
    records = scorable(records)
    if not records:
        return math.nan
    fn = ITEM_METRICS[name]
    return float(np.mean([fn(r) for r in records]))
