"""All resampling in one place: per-item bootstrap CIs, paired differences, means over datasets.

``medbridge report``, the leaderboard and the vision probe compute every interval here, so a
number and its CI mean the same thing wherever they are shown. Items are resampled, never
samples of one item. Each dataset draws from its own generator, seeded from a stable hash of
its name, so a dataset's CI does not depend on which other tasks were in the run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ITERS = 2000
ALPHA = 0.05  # 95% intervals


def stable_seed(name: str, seed: int = 0) -> int:
    """A seed that depends only on ``name`` and ``seed`` (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def rng_for(name: str, seed: int = 0) -> np.random.Generator:
    """The generator of one dataset's resamples."""
    return np.random.default_rng(stable_seed(name, seed))


def _check_iters(iters: int) -> None:
    if iters < 1:
        raise ValueError(f"need at least one bootstrap resample, got iters={iters}")


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    iters: int = ITERS,
    alpha: float = ALPHA,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over items (resampling items, not samples)."""
    _check_iters(iters)
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (math.nan, math.nan)
    if arr.size == 1:
        return (float(arr[0]), float(arr[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(iters, arr.size))
    if statistic is np.mean:
        stats = arr[idx].mean(axis=1)
    else:
        stats = np.array([statistic(arr[row]) for row in idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def mean_and_draws(values: Sequence[float], rng: np.random.Generator, iters: int = ITERS) -> tuple[float, np.ndarray]:
    """Mean of per-item values and ``iters`` bootstrap means of them (kept, so that group means
    can be resampled dataset by dataset)."""
    _check_iters(iters)
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, np.full(iters, math.nan)
    idx = rng.integers(0, arr.size, size=(iters, arr.size))
    return float(arr.mean()), arr[idx].mean(axis=1)


def interval(draws: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval of bootstrap draws."""
    lo, hi = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean_over_datasets(
    points: Sequence[float], draws: Sequence[np.ndarray], alpha: float = ALPHA
) -> tuple[float, tuple[float, float]]:
    """The unweighted mean of dataset means (the paper's group rows) and its CI, from every
    dataset's own item resamples averaged draw by draw."""
    if not points or len(points) != len(draws):
        raise ValueError(f"need one set of draws per dataset, got {len(points)} means and {len(draws)} draws")
    return float(np.mean(points)), interval(np.mean(np.stack(draws), axis=0), alpha)


# ------------------------------------------------------------------ paired comparisons


@dataclass(frozen=True)
class PairedResult:
    n: int  # items both evaluations scored
    a: float  # mean of the metric for A on those items
    b: float
    delta: float  # b - a
    ci_low: float
    ci_high: float
    b_only: int = 0  # McNemar discordant counts (0/1 values): right only under B
    a_only: int = 0  # right only under A
    p_value: float = math.nan  # McNemar exact two-sided


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at 1/2."""
    n = b_only + a_only
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b_only, a_only), n, 0.5).pvalue)


def paired_difference(
    values_a: Mapping[Hashable, float],
    values_b: Mapping[Hashable, float],
    *,
    iters: int = ITERS,
    seed: int = 0,
    mcnemar: bool = True,
    alpha: float = ALPHA,
) -> PairedResult | None:
    """B minus A over the items both have (same keys): mean difference, a paired bootstrap CI,
    and (for 0/1 values) McNemar's exact test. None when they share no item."""
    _check_iters(iters)
    shared = set(values_a) & set(values_b)
    try:
        common = sorted(shared)
    except TypeError:  # keys of mixed types: any fixed order will do
        common = sorted(shared, key=repr)
    if not common:
        return None
    va = np.array([values_a[k] for k in common], dtype=float)
    vb = np.array([values_b[k] for k in common], dtype=float)
    d = vb - va
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(iters, d.size))
    lo, hi = np.quantile(d[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2]) if d.size > 1 else (d[0], d[0])
    b_only = a_only = 0
    p = math.nan
    if mcnemar:
        b_only = int(np.sum((vb == 1) & (va == 0)))
        a_only = int(np.sum((va == 1) & (vb == 0)))
        p = mcnemar_exact(b_only, a_only)
    return PairedResult(
        len(common), float(va.mean()), float(vb.mean()), float(d.mean()), float(lo), float(hi), b_only, a_only, p
    )
