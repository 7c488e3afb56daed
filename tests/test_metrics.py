from fractions import Fraction
from math import comb

import numpy as np
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


def test_metric_names_are_not_substrings_of_each_other():
    # lmms-eval's group aggregation matches metric names by substring.
    from medbridge.harness_ext.judge import JUDGE_METRICS
    from medbridge.harness_ext.scoring import GREEDY_METRICS, SAMPLED_METRICS

    names = list(GREEDY_METRICS + SAMPLED_METRICS + JUDGE_METRICS)
    for a in names:
        for b in names:
            assert a == b or a not in b, (a, b)


def test_bootstrap_ci_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.3
    large = rng.random(5000) < 0.3
    lo_s, hi_s = metrics.bootstrap_ci(small)
    lo_l, hi_l = metrics.bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
