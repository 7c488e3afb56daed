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

from medbridge.harness_ext import metrics
from medbridge.harness_ext.answers import extract_choice

GREEDY_METRICS = ("acc1", "unparsed_greedy")
SAMPLED_METRICS = tuple(f"pass_at_{k:02d}" for k in metrics.PASS_KS) + ("maj_at_16", "all_at_16", "unparsed_sampled")


def doc_options(doc: Mapping[str, Any]) -> dict[str, str]:
    opts = doc["options"]
    return json.loads(opts) if isinstance(opts, str) else dict(opts)


def score_doc(doc: Mapping[str, Any], responses: Sequence[str | None]) -> dict[str, Any]:
    """Rule-based choice and outcome for each response of one document."""
    options = doc_options(doc)
    choices = [extract_choice(r, options) if isinstance(r, str) else None for r in responses]
    return metrics.make_record(doc["item_id"], doc.get("dataset", ""), doc["answer_letter"], choices, options=options)


def process_greedy(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    record = score_doc(doc, results[:1])
    return {name: record for name in GREEDY_METRICS}


def process_sampled(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    # With `repeats` and a take_first_k filter, the document's one request carries all samples.
    responses = results[0] if len(results) == 1 and isinstance(results[0], list) else results
    if len(responses) == 1:
        # lmms-eval's per-sample re-scoring for its stability statistics: Pass@K is only defined
        # over the whole set of samples, so a single sample scores nothing.
        return {}
    record = score_doc(doc, responses)
    return {name: record for name in SAMPLED_METRICS}


def aggregation(name: str) -> Callable[[list[dict[str, Any]]], float]:
    """The lmms-eval aggregation for one reported metric name."""
    if name.startswith("unparsed_"):

        def agg(records: list[dict[str, Any]]) -> float:
            return metrics.outcome_rate(records, "unparsed")

    else:
        if name not in metrics.ITEM_METRICS:
            raise KeyError(f"unknown metric {name!r}")

        def agg(records: list[dict[str, Any]]) -> float:
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
