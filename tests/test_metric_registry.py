"""The metric registry: names built by parameterised constructors, lists and aggregations derived from it."""

from __future__ import annotations

import math

import pytest
from medbridge.harness_ext import metric_registry as mr
from medbridge.harness_ext import metrics


def test_constructors_build_the_names_and_values_of_any_k():
    assert [mr.pass_at(k).name for k in (1, 2, 16)] == ["pass_at_01", "pass_at_02", "pass_at_16"]
    assert (mr.maj_at(16).name, mr.pass_hat(16).name) == ("maj_at_16", "all_at_16")
    assert (mr.pass_at(8).label, mr.maj_at(4).label, mr.pass_hat(16).label) == ("Pass@8", "maj@4", "pass^16")
    rec = metrics.make_record("x/1", "x", "A", ["A", "B", "B", "A"])  # 2 of 4 right
    assert mr.pass_at(2).per_item(rec) == pytest.approx(1 - 1 / 6)
    assert mr.pass_hat(2).per_item(rec) == pytest.approx(1 / 6)
    assert mr.maj_at(4).per_item(rec) == 0.5  # a two-way tie that includes the answer
    assert mr.pass_at(8).k == 8 and mr.get("pass_at_16").k == 16


def test_no_reported_name_is_a_substring_of_another():
    # lmms-eval's group aggregation matches metric names by substring.
    names = list(mr.METRICS) + [mr.GAP.name]
    for a in names:
        for b in names:
            assert a == b or a not in b, (a, b)


def test_task_lists_directions_and_group_means_come_from_the_registry():
    greedy, sampled = mr.reported("greedy", judged=False), mr.reported("sampled", judged=False)
    assert greedy == ("acc1", "unparsed_greedy", "n_request_failed")
    sampled_scores = tuple(m.name for m in mr.scores("sampled"))  # Pass@1..16, maj@16, pass^16 today
    assert sampled[: len(sampled_scores)] == sampled_scores
    assert "distinct_per_item" in sampled and "n_request_failed" in sampled
    judged = set(mr.reported("greedy")) - set(greedy)
    assert judged == set(mr.reported("sampled")) - set(sampled) and "n_judge_down" in judged
    assert not any(mr.get(n).higher_is_better for n in ("unparsed_greedy", "n_request_failed", "n_judge_down"))
    assert all(m.higher_is_better for m in mr.scores())
    averaged = mr.group_averaged(sampled=True)
    assert "acc1" in averaged and "pass_at_16" in averaged and not any(n.startswith("n_") for n in averaged)
    assert mr.group_averaged(sampled=False) == ("acc1", "unparsed_greedy")
    with pytest.raises(KeyError, match="unknown metric 'pass_at_32'"):
        mr.get("pass_at_32")


def test_the_judge_counts_are_the_ones_the_judge_computes():
    from medbridge.judges import JUDGE_METRICS, judge_stats

    assert "n_judge_down" in JUDGE_METRICS and "acc1" not in JUDGE_METRICS
    rec = metrics.make_record("x/1", "x", "A", ["A", "B"])
    stats = judge_stats([rec])  # computes every judge metric the registry declares, as its aggregation reports it
    assert {n: mr.get(n).aggregation([rec]) for n in JUDGE_METRICS} == pytest.approx(
        {n: stats[n] for n in JUDGE_METRICS}, nan_ok=True)


def test_the_registrys_judge_counts_refuse_records_whose_verdicts_are_pending():
    """Counting lives in harness_ext/metrics.py (the registry imports no judge); a record still waiting for
    verdicts is an error there, never counted as settled (scoring.aggregation and judges.judge_stats settle first)."""
    rec = metrics.make_record("x/1", "x", "A", ["A", None])
    rec.update(outcomes=["correct", "pending"], sources=["rules", "judge"], judge_choices=[None, None],
               rule_choices=["A", None])
    with pytest.raises(RuntimeError, match="x/1: judge verdicts are still pending"):
        mr.get("n_by_judge").aggregation([rec])
    rec["outcomes"][1], rec["judge_choices"][1] = "correct", "A"
    assert mr.get("n_by_judge").aggregation([rec]) == 1.0 and mr.get("n_by_rules").aggregation([rec]) == 1.0


def test_scores_average_the_scorable_items_only():
    ok = metrics.make_record("x/1", "x", "A", ["A"])
    wrong = metrics.make_record("x/2", "x", "A", ["B"])
    failed = metrics.make_record("x/3", "x", "A", ["A"], failed=[True])
    judge_down = metrics.make_record("x/4", "x", "A", [None], outcomes=["judge_failed"])
    records = [ok, wrong, failed, judge_down]
    assert mr.get("acc1").aggregation(records) == 0.5
    assert mr.get("acc1").item_values(records) == {"x/1": 1.0, "x/2": 0.0}
    assert mr.get("unparsed_greedy").aggregation(records) == 0.0
    assert mr.get("n_request_failed").aggregation(records) == 1.0
    assert math.isnan(mr.get("acc1").aggregation([failed]))
    with pytest.raises(TypeError, match="task-level statistic"):
        mr.get("n_request_failed").item_values(records)


def test_scoring_builds_one_lmms_eval_aggregation_per_registered_metric():
    from medbridge.harness_ext import scoring

    for name in mr.METRICS:
        agg = getattr(scoring, f"agg_{name}")
        assert agg is scoring.aggregation(name) and agg.__name__ == f"agg_{name}"
    with pytest.raises(AttributeError, match="agg_pass_at_32"):
        scoring.agg_pass_at_32  # noqa: B018
    with pytest.raises(KeyError, match="not reported by a task"):
        scoring.aggregation("gap")


def test_no_metric_name_is_spelled_outside_the_registry():
    """``maj_at_16``-style names live in metric_registry.py alone; code elsewhere builds or looks them up."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True)
    spelled = re.compile(r"\b(?:pass|maj|all)_at_(?:\d+\b|\{)")  # a literal name, or one built by an f-string
    found = []
    for rel in files.stdout.split():
        if rel.startswith("tests/") or rel == "harness_ext/metric_registry.py" or not (root / rel).is_file():
            continue
        for lineno, line in enumerate((root / rel).read_text(encoding="utf-8").splitlines(), 1):
            if spelled.search(line.split("#", 1)[0]):
                found.append(f"{rel}:{lineno}: {line.strip()}")
    assert not found, "metric names spelled outside the registry:\n" + "\n".join(found)


def test_a_new_metric_is_one_registry_entry(monkeypatch):
    """maj@8 added once: tasks report it, lmms-eval aggregates it, the report bootstraps it."""
    from medbridge.harness_ext import scoring
    from medbridge.harness_ext.report import summarize

    from .synthetic_runs import records

    maj8 = mr.maj_at(8)
    monkeypatch.setattr(mr, "_ALL", (*mr._ALL, maj8))
    monkeypatch.setitem(mr.METRICS, maj8.name, maj8)
    assert "maj_at_08" in mr.reported("sampled") and "maj_at_08" in mr.group_averaged(sampled=True)
    recs = records("breast", 6, p=0.5, k=16)
    assert scoring.agg_maj_at_08(recs) == pytest.approx(sum(maj8.per_item(r) for r in recs) / 6)
    row = summarize({"medmnist_mcq_breast_passk": recs}, iters=50)["datasets"]["medmnist_mcq_breast"]
    assert row["maj_at_08"] == pytest.approx(scoring.agg_maj_at_08(recs)) and len(row["maj_at_08_ci"]) == 2
