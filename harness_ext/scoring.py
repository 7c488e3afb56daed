"""lmms-eval glue shared by every medbridge multiple-choice task.

``process_results`` turns a document's generations into one per-item record (see
``metrics.make_record``) and returns it under every metric name; each metric's aggregation then
computes its number from the list of records. Keeping the whole record per item means the sample
log holds every choice and outcome, so runs can be re-scored and compared item by item later.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medbridge.harness_ext import decoding, judge, metrics
from medbridge.harness_ext.answers import extract_choice

log = logging.getLogger(__name__)

N_SAMPLES = 16  # samples per item of the sampled tasks (the paper's Pass@16)
# What each task reports (the task YAMLs are generated from these lists, see tasks/config_writer.py).
# n_request_failed: items left out of every score because a request failed (a count, not a score).
GREEDY_METRICS = ("acc1", "unparsed_greedy", "n_request_failed")
# distinct_per_item: mean distinct responses among an item's samples (collapse check, metrics.is_collapsed).
SAMPLED_METRICS = tuple(f"pass_at_{k:02d}" for k in metrics.PASS_KS) + (
    "maj_at_16", "all_at_16", "unparsed_sampled", "distinct_per_item", "n_request_failed")
# Reported by every task; the numbers appear only when a judge is configured (see judge.py).
JUDGE_REPORTED = judge.JUDGE_METRICS
# What a group averages over its tasks (unweighted): the scores, not the counts.
GROUP_GREEDY_METRICS = ("acc1", "unparsed_greedy")
GROUP_SAMPLED_METRICS = tuple(m for m in SAMPLED_METRICS if m != "n_request_failed")
_LOWER_IS_BETTER = ("unparsed_greedy", "unparsed_sampled", "n_unparseable", "n_judge_invalid", "n_judge_down",
                    "n_request_failed")
# Copied from the doc into each record when present: lmms-eval drops the doc from the sample log, and a
# logged run must still say which subset it scored and how many bad source rows were skipped.
PROVENANCE = ("subset", "source", "n_skipped_in_source")
HIGHER_IS_BETTER = {name: name not in _LOWER_IS_BETTER for name in GREEDY_METRICS + SAMPLED_METRICS + JUDGE_REPORTED}


def doc_options(doc: Mapping[str, Any]) -> dict[str, str]:
    opts = doc["options"]
    return json.loads(opts) if isinstance(opts, str) else dict(opts)


def score_doc(doc: Mapping[str, Any], responses: Sequence[str | None],
              config: judge.JudgeConfig | None = None) -> dict[str, Any]:
    """Choice and outcome for each response of one document: rule-based, or through the judge
    when a judge mode is configured (its verdicts then arrive at aggregation, see judge.py).

    A response that is a failed request (metrics.is_request_failure) is never read as an answer: its
    outcome is ``request_failed`` and the item is left out of every score, so it is not judged either."""
    options = doc_options(doc)
    failed = [metrics.is_request_failure(r) for r in responses]
    if config is not None and config.mode != "rules" and not any(failed):
        return judge.score_doc_judged(doc, responses, options, config)
    choices = [None if bad or not isinstance(r, str) else extract_choice(r, options)
               for r, bad in zip(responses, failed, strict=True)]
    return metrics.make_record(doc["item_id"], doc.get("dataset", ""), doc["answer_letter"], choices, options=options,
                               failed=failed)


def _with_judge_metrics(record: dict[str, Any], names: Sequence[str], config: judge.JudgeConfig) -> dict[str, Any]:
    # The judge's counts are reported only when a judge runs (the sample log stores the record
    # once per metric name, so rules-only runs stay as small as before).
    if config.mode != "rules":
        names = tuple(names) + judge.JUDGE_METRICS
    return {name: record for name in names}


def task_name(doc: Mapping[str, Any], sampled: bool) -> str | None:
    """The lmms-eval task a doc belongs to (docs carry their greedy task's name as ``task``)."""
    base = doc.get("task")
    return None if not base else f"{base}_passk" if sampled else str(base)


def _annotate(record: dict[str, Any], doc: Mapping[str, Any], sampled: bool) -> dict[str, Any]:
    """Provenance the sample log must carry: the doc's subset/source and the decoding the backend used."""
    for key in PROVENANCE:
        if key in doc:
            record[key] = doc[key]
    task = task_name(doc, sampled)
    # None: the backend recorded nothing (it does not go through harness_ext/decoding.py).
    record["decoding"] = decoding.effective_for(task) if task else None
    return record


def process_greedy(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    config = judge.active_config()
    record = _annotate(score_doc(doc, results[:1], config), doc, sampled=False)
    return _with_judge_metrics(record, GREEDY_METRICS, config)


def process_sampled(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    # With `repeats` and a take_first_k filter, the document's one request carries all samples.
    responses = results[0] if len(results) == 1 and isinstance(results[0], list) else results
    if len(responses) == 1:
        # lmms-eval's per-sample re-scoring for its stability statistics: Pass@K is only defined
        # over the whole set of samples, so a single sample scores nothing.
        return {}
    config = judge.active_config()
    record = _annotate(score_doc(doc, responses, config), doc, sampled=True)
    record["distinct"] = metrics.count_distinct(responses)
    return _with_judge_metrics(record, SAMPLED_METRICS, config)


def aggregation(name: str) -> Callable[[list[dict[str, Any]]], float]:
    """The lmms-eval aggregation for one reported metric name.

    Every aggregation first waits for the task's outstanding judge verdicts and fills them into
    the records (in place, so the sample log shows them); that is a no-op without a judge.
    """
    if name in judge.JUDGE_METRICS:
        return judge.stats_aggregation(name)
    if name == "n_request_failed":

        def agg(records: list[dict[str, Any]]) -> float:
            return float(metrics.n_request_failed(records, task=_task_of(records)))

    elif name == "distinct_per_item":

        def agg(records: list[dict[str, Any]]) -> float:
            value = metrics.sampling_diversity(records)
            if metrics.is_collapsed(records):
                log.warning("COLLAPSED SAMPLING in %s: %.2f distinct responses per item (threshold %s); its Pass@K "
                            "is a greedy score. Check the decoding recorded in the sample log.",
                            _task_of(records) or "a sampled task", value, metrics.COLLAPSE_THRESHOLD)
            return value

    elif name.startswith("unparsed_"):

        def agg(records: list[dict[str, Any]]) -> float:
            judge.resolve_pending(records)
            return metrics.outcome_rate(records, "unparsed")

    else:
        if name not in metrics.ITEM_METRICS:
            raise KeyError(f"unknown metric {name!r}")

        def agg(records: list[dict[str, Any]]) -> float:
            judge.resolve_pending(records)
            return metrics.mean_metric(records, name) if records else math.nan

    agg.__name__ = f"agg_{name}"
    return agg


def _task_of(records: Sequence[Mapping[str, Any]]) -> str:
    datasets = sorted({str(r.get("dataset")) for r in records if r.get("dataset")})
    return ", ".join(datasets)


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Any = None) -> str:
    """Every medbridge item carries its full prompt (built by prompts.format_mcq_prompt)."""
    return doc["prompt"]


# The aggregation of every reported metric, by the names the task YAMLs reference
# (`!function utils.agg_<metric>`; each task folder's utils.py re-exports them).
agg_acc1 = aggregation("acc1")
agg_unparsed_greedy = aggregation("unparsed_greedy")
agg_pass_at_01 = aggregation("pass_at_01")
agg_pass_at_02 = aggregation("pass_at_02")
agg_pass_at_04 = aggregation("pass_at_04")
agg_pass_at_08 = aggregation("pass_at_08")
agg_pass_at_16 = aggregation("pass_at_16")
agg_maj_at_16 = aggregation("maj_at_16")
agg_all_at_16 = aggregation("all_at_16")
agg_unparsed_sampled = aggregation("unparsed_sampled")
agg_distinct_per_item = aggregation("distinct_per_item")
agg_n_request_failed = aggregation("n_request_failed")
agg_n_by_rules = aggregation("n_by_rules")
agg_n_by_judge = aggregation("n_by_judge")
agg_n_unparseable = aggregation("n_unparseable")
agg_n_judge_invalid = aggregation("n_judge_invalid")
agg_n_judge_down = aggregation("n_judge_down")
agg_rule_judge_agree = aggregation("rule_judge_agree")
agg_rule_judge_kappa = aggregation("rule_judge_kappa")
