"""Paired comparisons of two evaluations on the same items.

Checkpoints of a training run (and a base vs an RL-trained model) are scored on the same items, so
their difference is tested item by item: McNemar's exact test on the greedy outcomes, and a paired
bootstrap CI for the difference of any per-item metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medbridge.harness_ext import metrics


@dataclass(frozen=True)
class PairedResult:
    n: int  # items both evaluations scored
    a: float  # mean of the metric for A on those items
    b: float
    delta: float  # b - a
    ci_low: float
    ci_high: float
    b_only: int = 0  # McNemar discordant counts (greedy): right only under B
    a_only: int = 0  # right only under A
    p_value: float = math.nan  # McNemar exact two-sided


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at 1/2."""
    n = b_only + a_only
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b_only, a_only), n, 0.5).pvalue)


def item_acc1(row: Mapping[str, Any]) -> float:
    return float(row["first_correct"])


def item_pass16(row: Mapping[str, Any]) -> float:
    return metrics.pass_at_k(int(row["n"]), int(row["c"]), 16)


def paired(items_a: Mapping[Any, Mapping[str, Any]], items_b: Mapping[Any, Mapping[str, Any]], fn: Callable[[Mapping[str, Any]], float] = item_acc1, *, iters: int = 2000, seed: int = 0, mcnemar: bool = True) -> PairedResult | None:
    """Compare B against A over the items both have (keys must match: (task, item_id))."""
    common = sorted(set(items_a) & set(items_b))
    if not common:
        return None
    va = np.array([fn(items_a[k]) for k in common], dtype=float)
    vb = np.array([fn(items_b[k]) for k in common], dtype=float)
    d = vb - va
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(iters, d.size))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975]) if d.size > 1 else (d[0], d[0])
    b_only = a_only = 0
    p = math.nan
    if mcnemar:
        b_only = int(np.sum((vb == 1) & (va == 0)))
        a_only = int(np.sum((va == 1) & (vb == 0)))
        p = mcnemar_exact(b_only, a_only)
    return PairedResult(len(common), float(va.mean()), float(vb.mean()), float(d.mean()), float(lo), float(hi), b_only, a_only, p)
