import math
from fractions import Fraction
from math import comb

import pytest
from medbridge.harness_ext import metrics
from medbridge.harness_ext.metrics import majority_correct, pass_at_k, pass_hat_k


def test_pass_at_k_matches_exact_combinatorial_value_for_all_n_up_to_64():
    worst = 0.0
    for n in range(1, 65):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                worst = max(worst, abs(pass_at_k(n, c, k) - float(exact)))
    assert worst < 1e-12


def test_pass_hat_k_matches_exact_value():
    for n in range(1, 33):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_hat_k(n, c, k) == pytest.approx(comb(c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows floats; the product form must not.
    assert 0.0 < pass_at_k(1000, 3, 500) <= 1.0
    assert pass_at_k(1000, 0, 500) == 0.0


@pytest.mark.parametrize("n,c,k", [(4, 1, 16), (15, 3, 16), (0, 0, 1)])
def test_k_larger_than_n_is_refused(n, c, k):
    with pytest.raises(ValueError, match="at least"):
        pass_at_k(n, c, k)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_majority_vote_ignores_unparsed_and_splits_ties():
    assert majority_correct(["A", "A", "B", None, None, None], "A") == 1.0
    assert majority_correct(["A", "B"], "A") == 0.5
    assert majority_correct([None, None], "A") == 0.0
    assert majority_correct(["B", "B", "A"], "A") == 0.0


def test_records_keep_unparsed_outcomes_and_never_guess():
    rec = metrics.make_record("x/test/1", "breast", "B", ["B", None, "A", "B"])
    assert rec["outcomes"] == ["correct", "unparsed", "incorrect", "correct"]
    assert (rec["n"], rec["c"]) == (4, 2)
    assert metrics.outcome_rate([rec], "unparsed") == 0.25
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.make_record("x", "d", "A", ["A"], outcomes=["right"])


def test_item_metric_refuses_too_few_samples_and_names_the_item():
    rec = metrics.make_record("organa/test/7", "organa", "C", ["C"] * 4)
    with pytest.raises(ValueError, match="organa/test/7"):
        metrics.item_pass_at_k(rec, 16)


# ---------------------------------------------------------------- failed requests and collapsed sampling

DOC = {
    "item_id": "octmnist/test/1",
    "dataset": "oct",
    "answer_letter": "B",
    "task": "medmnist_mcq_oct",
    "options": '{"A": "Drusen", "B": "Normal retina"}',
    "subset": "balanced50-seed1234",
}
FAIL = "[LMMS_EVAL_REQUEST_FAILED after 5 retries] Connection refused"


def test_failed_request_is_its_own_outcome_never_unparsed_or_incorrect():
    from medbridge.harness_ext import scoring

    responses = ["<answer>B</answer>"] * 14 + [FAIL, "  [MEDBRIDGE_REQUEST_FAILED] server gone"]
    record = scoring.process_sampled(DOC, [responses])["pass_at_16"]
    assert record["outcomes"][-2:] == ["request_failed", "request_failed"]
    assert record["outcomes"][:14] == ["correct"] * 14 and record["c"] == 14
    assert record["distinct"] == 3 and record["subset"] == "balanced50-seed1234"
    greedy = scoring.process_greedy(DOC, [FAIL])["acc1"]
    assert greedy["outcomes"] == ["request_failed"] and greedy["choices"] == [None]
    assert metrics.is_request_failure(None) and not metrics.is_request_failure("the request failed, so B")


def test_items_with_a_failed_request_are_left_out_of_scores_and_counted(caplog):
    from medbridge.harness_ext import scoring

    ok = scoring.process_greedy(DOC, ["<answer>B</answer>"])["acc1"]
    wrong = scoring.process_greedy({**DOC, "item_id": "x/2"}, ["<answer>A</answer>"])["acc1"]
    failed = scoring.process_greedy({**DOC, "item_id": "x/3"}, [FAIL])["acc1"]
    records = [ok, wrong, failed]
    assert scoring.agg_acc1(records) == 0.5  # not 1/3: the failed item is no wrong answer
    assert scoring.agg_unparsed_greedy(records) == 0.0
    with caplog.at_level("WARNING"):
        assert scoring.agg_n_request_failed(records) == 1.0
    assert "REQUEST FAILURES: 1 of 3 item(s)" in caplog.text and "x/3" in caplog.text
    assert scoring.agg_n_request_failed([ok, wrong]) == 0.0


def test_sampling_diversity_and_collapse(caplog):
    from medbridge.harness_ext import scoring

    same = scoring.process_sampled(DOC, [["<answer>B</answer>"] * 16])["pass_at_16"]
    spaced = scoring.process_sampled(DOC, [["<answer>B</answer> ", " <answer>B</answer>"] * 8])["pass_at_16"]
    varied = scoring.process_sampled(DOC, [[f"<think>{i}</think><answer>B</answer>" for i in range(16)]])["pass_at_16"]
    assert (same["distinct"], spaced["distinct"], varied["distinct"]) == (1, 1, 16)
    assert metrics.sampling_diversity([same, varied]) == 8.5
    assert metrics.is_collapsed([same, spaced]) and not metrics.is_collapsed([same, varied])
    assert not metrics.is_collapsed([{"item_id": "old"}])  # records from before the field: unknown, not collapsed
    with caplog.at_level("WARNING"):
        assert scoring.agg_distinct_per_item([same, spaced]) == 1.0
    assert "COLLAPSED SAMPLING" in caplog.text


def test_a_sampled_task_whose_every_request_failed_gives_no_evidence_about_its_sampler(caplog):
    # Sixteen copies of one failure marker are one "distinct response" per item: not a collapsed sampler.
    from medbridge.harness_ext import scoring

    failed = [scoring.process_sampled({**DOC, "item_id": f"x/{i}"}, [[FAIL] * 16])["pass_at_16"] for i in range(4)]
    assert {r["distinct"] for r in failed} == {1} and all(metrics.excluded_outcome(r) for r in failed)
    check = metrics.check_sampler(failed)
    assert check.collapsed is None
    assert check.reason.startswith("no evidence: every item was left out (4 request_failed)")
    with caplog.at_level("WARNING"):
        assert math.isnan(scoring.agg_distinct_per_item(failed))
    assert "COLLAPSED" not in caplog.text
    judged_out = metrics.make_record("x/9", "x", "B", ["B"] * 16, outcomes=["correct"] * 15 + ["judge_failed"])
    judged_out["distinct"] = 1
    assert metrics.check_sampler([judged_out]).reason.startswith("no evidence: every item was left out (1 judge_failed")
    # Left-out items do not dilute the evidence of the answered ones either.
    varied = scoring.process_sampled(DOC, [[f"<think>{i}</think><answer>B</answer>" for i in range(16)]])["pass_at_16"]
    assert metrics.check_sampler(failed + [varied]).collapsed is False
    assert metrics.sampling_diversity(failed + [varied]) == 16


def test_records_carry_the_decoding_the_backend_recorded():
    from medbridge.harness_ext import decoding, scoring

    decoding.clear_effective()
    assert scoring.process_greedy(DOC, ["<answer>B</answer>"])["acc1"]["decoding"] is None
    decoding.record_effective("medmnist_mcq_oct_passk", decoding.effective_settings(decoding.PASSK))
    record = scoring.process_sampled(DOC, [["<answer>B</answer>"] * 16])["pass_at_16"]
    assert record["decoding"]["temperature"] == 0.7 and record["decoding"]["top_k"] == 0
    assert scoring.process_greedy(DOC, ["<answer>B</answer>"])["acc1"]["decoding"] is None
    decoding.clear_effective()
