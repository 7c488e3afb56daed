"""Collapse from evidence about the sampler, not the model's confidence (issue 20 item 5).

A confident model sampled correctly keeps its verdict; a sampler that ignores the temperature (every
item's samples one response) or whose recorded settings cannot sample is still caught."""

from __future__ import annotations

import random

from medbridge.harness_ext import metrics
from medbridge.harness_ext.report import summarize
from medbridge.leaderboard.verdict import COLLAPSED, SHARPEN, decide

SENT = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0}


def oracle_records(dataset: str, n_items: int, *, p: float, seed: int = 0, k: int = 16, same_answer: bool = False,
                   decoding: dict | None = None) -> list[dict]:
    """Records as tests/oracle_model.py's run yields them on a two-option task: each sample right with
    probability ``p``, its text fixed by its letter (so ``distinct`` is the number of distinct letters).
    ``same_answer``: a sampler that ignores the temperature (all samples one draw)."""
    rng = random.Random(f"{dataset}:{seed}")
    out = []
    for i in range(n_items):
        answer, other = ("A", "B") if i % 2 else ("B", "A")
        draws = [answer if rng.random() < p else other for _ in range(1 if same_answer else k)]
        choices = draws * k if same_answer else draws
        rec = metrics.make_record(f"{dataset}/test/{i}", dataset, answer, choices, options={"A": "a", "B": "b"})
        rec["distinct"] = len(set(choices))
        rec["decoding"] = decoding
        out.append(rec)
    return out


def test_a_confident_model_sampled_correctly_is_not_collapsed_and_keeps_its_verdict():
    runs = {f"medmnist_mcq_{name}_passk": oracle_records(name, 32, p=0.99, seed=3) for name in ("breast", "pneumonia")}
    pooled = [r for recs in runs.values() for r in recs]
    # The old rule (mean distinct responses < 1.5) called this collapsed: most items repeat one answer.
    assert metrics.sampling_diversity(pooled) < 1.5
    check = metrics.check_sampler(pooled)
    assert check.collapsed is False and check.varying >= 0.05 * check.items, check
    summary = summarize(runs, iters=100)
    for row in summary["datasets"].values():
        assert row["collapsed"] is False and row["pass_at_16"] > 0.9
        assert decide(row["pass_at_16"], None, 0.5, row["collapsed"])[0] == SHARPEN


def test_a_sampler_that_ignores_the_temperature_is_caught_whatever_the_backend_says_it_sent():
    # Qwen's top_k 1 on a served model: the request said T 0.7, the server decoded greedily.
    runs = {f"medmnist_mcq_{name}_passk": oracle_records(name, 32, p=0.6, same_answer=True, decoding=SENT)
            for name in ("breast", "pneumonia")}
    summary = summarize(runs, iters=100)
    for row in summary["datasets"].values():
        assert row["distinct"] == 1.0 and row["collapsed"] is True
        assert row["sampler"].startswith("samples differ in only 0 of 64 items")
        assert decide(row["pass_at_16"], None, 0.5, row["collapsed"])[0] == COLLAPSED


def test_recorded_settings_that_cannot_sample_are_collapsed_even_when_samples_differ():
    cases = (({**SENT, "top_k": 1}, "top_k=1"), ({**SENT, "do_sample": False}, "do_sample=false"),
             ({**SENT, "top_p": 0.001}, "top_p=0.001"), ({**SENT, "temperature": 0.01}, "temperature=0.01"))
    for settings, why in cases:
        recs = oracle_records("breast", 16, p=0.5, decoding=settings)
        check = metrics.check_sampler(recs)
        assert check.collapsed is True and why in check.reason, (settings, check)
    assert metrics.check_sampler(oracle_records("breast", 16, p=0.5, decoding=SENT)).collapsed is False


def test_tasks_share_evidence_only_when_they_share_a_sampler():
    confident = oracle_records("breast", 16, p=1.0, decoding=SENT)  # every item repeats its answer: looks collapsed
    varied = oracle_records("organa", 16, p=0.5, decoding=SENT)
    pooled = summarize({"medmnist_mcq_breast_passk": confident, "medmnist_mcq_organa_passk": varied}, iters=50)
    assert pooled["datasets"]["medmnist_mcq_breast"]["collapsed"] is False  # same sampler: it samples (organa shows it)
    assert pooled["datasets"]["medmnist_mcq_breast"]["distinct"] == 1.0  # the task's own count is still shown
    other = oracle_records("organa", 16, p=0.5, decoding={**SENT, "server": "another"})
    apart = summarize({"medmnist_mcq_breast_passk": confident, "medmnist_mcq_organa_passk": other}, iters=50)
    assert apart["datasets"]["medmnist_mcq_breast"]["collapsed"] is True
    assert apart["datasets"]["medmnist_mcq_organa"]["collapsed"] is False


def test_a_few_differing_items_are_not_enough_and_unrecorded_diversity_is_unknown():
    recs = oracle_records("breast", 100, p=1.0)
    for r in recs[:4]:  # 4 % of items differ: below MIN_VARYING_SHARE, as batch noise on a greedy server gives
        r["distinct"] = 2
    assert metrics.check_sampler(recs).collapsed is True
    for r in recs[4:6]:
        r["distinct"] = 2
    assert metrics.check_sampler(recs).collapsed is False
    assert metrics.check_sampler([{"item_id": "old", "n": 16}]).collapsed is None
