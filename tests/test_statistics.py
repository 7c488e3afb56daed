"""harness_ext/statistics.py: the one place CIs, paired differences and group means are computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medbridge.harness_ext import statistics
from medbridge.harness_ext.report import summarize

from .synthetic_runs import records


def test_stable_seed_depends_only_on_the_name_and_seed():
    assert statistics.stable_seed("medmnist_mcq_breast") == statistics.stable_seed("medmnist_mcq_breast")
    assert statistics.stable_seed("medmnist_mcq_breast") != statistics.stable_seed("medmnist_mcq_organa")
    assert statistics.stable_seed("x", 0) != statistics.stable_seed("x", 1)
    a = statistics.rng_for("medmnist_mcq_breast").integers(0, 1000, 5)
    assert list(a) == list(statistics.rng_for("medmnist_mcq_breast").integers(0, 1000, 5))


def test_bootstrap_ci_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(3)
    small, large = rng.random(20) < 0.6, rng.random(2000) < 0.6
    lo_s, hi_s = statistics.bootstrap_ci(small)
    lo_l, hi_l = statistics.bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert all(math.isnan(x) for x in statistics.bootstrap_ci([]))
    assert statistics.bootstrap_ci([0.25]) == (0.25, 0.25)
    with pytest.raises(ValueError, match="at least one bootstrap resample"):
        statistics.bootstrap_ci([1.0, 0.0], iters=0)


def test_mean_over_datasets_is_the_unweighted_mean_with_a_ci_around_it():
    rng = np.random.default_rng(0)
    a_point, a_draws = statistics.mean_and_draws([1.0] * 9 + [0.0], rng)
    b_point, b_draws = statistics.mean_and_draws([0.0] * 90 + [1.0] * 10, rng)
    mean, (lo, hi) = statistics.mean_over_datasets([a_point, b_point], [a_draws, b_draws])
    assert mean == pytest.approx((0.9 + 0.1) / 2)  # not the pooled 19/110
    assert lo < mean < hi
    with pytest.raises(ValueError, match="one set of draws per dataset"):
        statistics.mean_over_datasets([0.5], [])


def test_paired_difference_counts_discordant_items_and_tests_them():
    a = {i: 1.0 if i < 10 else 0.0 for i in range(40)}
    b = {i: 1.0 if i < 30 else 0.0 for i in range(40)}
    b[0] = 0.0  # one item right only under A
    res = statistics.paired_difference(a, b)
    assert (res.n, res.b_only, res.a_only) == (40, 20, 1)
    assert res.delta == pytest.approx((29 - 10) / 40)
    assert res.ci_low < res.delta < res.ci_high and res.ci_low > 0
    assert res.p_value == pytest.approx(statistics.mcnemar_exact(20, 1)) and res.p_value < 1e-4
    assert statistics.paired_difference({1: 1.0}, {2: 1.0}) is None
    only_shared = statistics.paired_difference({1: 1.0, 2: 0.0}, {2: 1.0, 3: 0.0})
    assert only_shared.n == 1 and only_shared.delta == 1.0


def test_mcnemar_exact_known_values():
    assert statistics.mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)
    assert statistics.mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert statistics.mcnemar_exact(0, 0) == 1.0


def test_a_datasets_ci_does_not_depend_on_which_other_tasks_ran():
    breast = records("breast", 30, p=0.6)
    organa = records("organa", 25, p=0.3)
    alone = summarize({"medmnist_mcq_breast": breast}, iters=500)["datasets"]["medmnist_mcq_breast"]
    both = summarize({"medmnist_mcq_organa": organa, "medmnist_mcq_breast": breast}, iters=500)["datasets"][
        "medmnist_mcq_breast"
    ]
    assert alone["acc1_ci"] == both["acc1_ci"]
    assert alone["acc1_ci"][0] < alone["acc1"] < alone["acc1_ci"][1]
