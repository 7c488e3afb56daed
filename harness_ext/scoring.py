"""lmms-eval glue shared by every medbridge multiple-choice task.

``process_results`` turns a document's generations into one per-item record (see
``metrics.make_record``) and returns it under every metric name; each metric's aggregation then
computes its number from the list of records. Keeping the whole record per item means the sample
log holds every choice and outcome, so runs can be re-scored and compared item by item later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medbridge.harness_ext import judge, metrics
from medbridge.harness_ext.answers import extract_choice

N_SAMPLES = 16  # samples per item of the sampled tasks (the paper's Pass@16)
# What each task reports (the task YAMLs are generated from these lists, see tasks/config_writer.py).
GREEDY_METRICS = ("acc1", "unparsed_greedy")
SAMPLED_METRICS = tuple(f"pass_at_{k:02d}" for k in metrics.PASS_KS) + ("maj_at_16", "all_at_16", "unparsed_sampled")
# Reported by every task; the numbers appear only when a judge is configured (see judge.py).
JUDGE_REPORTED = judge.JUDGE_METRICS
# What a group averages over its tasks (unweighted): the scores, not the counts.
GROUP_GREEDY_METRICS = GREEDY_METRICS
GROUP_SAMPLED_METRICS = SAMPLED_METRICS
_LOWER_IS_BETTER = ("unparsed_greedy", "unparsed_sampled", "n_unparseable", "n_judge_invalid", "n_judge_down")
HIGHER_IS_BETTER = {name: name not in _LOWER_IS_BETTER for name in GREEDY_METRICS + SAMPLED_METRICS + JUDGE_REPORTED}


def doc_options(doc: Mapping[str, Any]) -> dict[str, str]:
    opts = doc["options"]
    return json.loads(opts) if isinstance(opts, str) else dict(opts)


def score_doc(doc: Mapping[str, Any], responses: Sequence[str | None], config: judge.JudgeConfig | None = None) -> dict[str, Any]:
    """Choice and outcome for each response of one document: rule-based, or through the judge
    when a judge mode is configured (its verdicts then arrive at aggregation, see judge.py)."""
    options = doc_options(doc)
    if config is not None and config.mode != "rules":
        return judge.score_doc_judged(doc, responses, options, config)
    choices = [extract_choice(r, options) if isinstance(r, str) else None for r in responses]
    return metrics.make_record(doc["item_id"], doc.get("dataset", ""), doc["answer_letter"], choices, options=options)


def _with_judge_metrics(record: dict[str, Any], names: Sequence[str], config: judge.JudgeConfig) -> dict[str, Any]:
    # The judge's counts are reported only when a judge runs (the sample log stores the record
    # once per metric name, so rules-only runs stay as small as before).
    if config.mode != "rules":
        names = tuple(names) + judge.JUDGE_METRICS
    return {name: record for name in names}


def process_greedy(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    config = judge.active_config()
    record = score_doc(doc, results[:1], config)
    return _with_judge_metrics(record, GREEDY_METRICS, config)


def process_sampled(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    # With `repeats` and a take_first_k filter, the document's one request carries all samples.
    responses = results[0] if len(results) == 1 and isinstance(results[0], list) else results
    if len(responses) == 1:
        # lmms-eval's per-sample re-scoring for its stability statistics: Pass@K is only defined
        # over the whole set of samples, so a single sample scores nothing.
        return {}
    config = judge.active_config()
    record = score_doc(doc, responses, config)
    return _with_judge_metrics(record, SAMPLED_METRICS, config)


def aggregation(name: str) -> Callable[[list[dict[str, Any]]], float]:
    """The lmms-eval aggregation for one reported metric name.

    Every aggregation first waits for the task's outstanding judge verdicts and fills them into
    the records (in place, so the sample log shows them); that is a no-op without a judge.
    """
    if name in judge.JUDGE_METRICS:
        return judge.stats_aggregation(name)
    if name.startswith("unparsed_"):

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
agg_n_by_rules = aggregation("n_by_rules")
agg_n_by_judge = aggregation("n_by_judge")
agg_n_unparseable = aggregation("n_unparseable")
agg_n_judge_invalid = aggregation("n_judge_invalid")
agg_n_judge_down = aggregation("n_judge_down")
agg_rule_judge_agree = aggregation("rule_judge_agree")
agg_rule_judge_kappa = aggregation("rule_judge_kappa")
