"""End to end through the real lmms-eval CLI with a model whose accuracy is known.

The oracle answers each item correctly with probability p (independently per sample when
sampling, once per item when greedy), so Pass@K must land in its CI around 1-(1-p)^K and Acc@1
near p; and every number lmms-eval reports must be the one we mean.
"""

import numpy as np
import pytest
from medbridge.harness_ext import metrics
from medbridge.harness_ext.report import groups_for, load_run, rescore_run, summarize
from medbridge.tasks.medmnist.catalog import SETS
from medbridge.tasks.medmnist.fixtures import build_all

from .conftest import GREEDY_TASKS, SAMPLED_TASKS, run_lmms_eval

P = 0.3


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    build_all(root / "data", test_per_class=4, train_per_class=1, val_per_class=1)
    proc = run_lmms_eval(
        [
            "--model",
            "oracle",
            "--model_args",
            f"p={P},seed=3",
            "--tasks",
            "medmnist_mcq",
            "--output_path",
            str(root / "out"),
            "--log_samples",
        ],
        root / "data",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_run(root / "out"), proc


@pytest.mark.e2e
def test_all_twelve_datasets_and_groups_are_in_the_results_file(oracle_run):
    run, _ = oracle_run
    res = run.results["results"]
    for task in GREEDY_TASKS:
        assert 0.0 <= res[task]["acc1,none"] <= 1.0
    for task in SAMPLED_TASKS:
        for k in metrics.PASS_KS:
            assert 0.0 <= res[task][f"pass_at_{k:02d},none"] <= 1.0
    for group in ("medmnist_mcq", "medmnist_mcq_radiology", "medmnist_mcq_microscopy", "medmnist_mcq_photography"):
        assert "acc1,none" in res[group] and "pass_at_16,none" in res[group]
    assert set(run.records) == set(GREEDY_TASKS + SAMPLED_TASKS)
    assert all(r["n"] == 16 for t in SAMPLED_TASKS for r in run.records[t])
    assert all(r["n"] == 1 for t in GREEDY_TASKS for r in run.records[t])


@pytest.mark.e2e
def test_reported_numbers_are_the_intended_ones(oracle_run):
    """Recompute each number from the logged responses by hand, not through our aggregations."""
    run, _ = oracle_run
    res = run.results["results"]
    for spec in SETS:
        base = f"medmnist_mcq_{spec.name}"
        # The log keeps the target letter and the raw generations (as "filtered_resps" when the
        # filter left them unchanged).
        greedy = run.samples[base]
        acc = np.mean([s["filtered_resps"].endswith(f"<answer>{s['target']}</answer>") for s in greedy])
        assert res[base]["acc1,none"] == pytest.approx(acc)
        for k in metrics.PASS_KS:
            per_item = []
            for s in run.samples[f"{base}_passk"]:
                flat = s["filtered_resps"]
                assert len(flat) == 16
                c = sum(x.endswith(f"<answer>{s['target']}</answer>") for x in flat)
                per_item.append(metrics.pass_at_k(len(flat), c, k))
            assert res[f"{base}_passk"][f"pass_at_{k:02d},none"] == pytest.approx(np.mean(per_item)), (base, k)
    for group, members in (
        ("medmnist_mcq_radiology", [s for s in SETS if s.modality == "radiology"]),
        ("medmnist_mcq", SETS),
    ):
        want = np.mean([res[f"medmnist_mcq_{s.name}"]["acc1,none"] for s in members])
        assert res[group]["acc1,none"] == pytest.approx(want)
        want16 = np.mean([res[f"medmnist_mcq_{s.name}_passk"]["pass_at_16,none"] for s in members])
        assert res[group]["pass_at_16,none"] == pytest.approx(want16)


@pytest.mark.e2e
def test_pass_at_k_and_acc1_match_the_known_accuracy(oracle_run):
    run, _ = oracle_run
    overall = summarize(run.records, groups=groups_for(run.records), iters=4000)["groups"]["medmnist overall"]
    lo, hi = overall["acc1_ci"]
    assert lo <= P <= hi, (P, overall["acc1"], (lo, hi))
    for k in metrics.PASS_KS:
        expected = 1 - (1 - P) ** k
        lo, hi = overall[f"pass_at_{k:02d}_ci"]
        # The CI of a proportion near 1 can collapse onto the observed value; allow one item's worth.
        slack = 1e-9 if expected < 0.99 else 0.01
        assert lo - slack <= expected <= hi + slack, (k, expected, overall[f"pass_at_{k:02d}"], (lo, hi))
    assert overall["gap"] > 0.5


@pytest.mark.e2e
def test_sample_log_records_option_order_and_outcomes(oracle_run):
    run, _ = oracle_run
    sample = run.samples["medmnist_mcq_oct_passk"][0]
    rec = sample["pass_at_16"]
    assert sorted(rec["options"]) == ["A", "B", "C", "D"] and rec["answer"] == sample["target"]
    assert rec["options"][rec["answer"]] in (
        "Choroidal neovascularization",
        "Diabetic macular edema",
        "Drusen",
        "Normal retina",
    )
    orders = {tuple(s["pass_at_16"]["options"].values()) for s in run.samples["medmnist_mcq_organa_passk"]}
    assert len(orders) > 1  # shuffled per item
    assert len(rec["outcomes"]) == 16 and set(rec["outcomes"]) <= {"correct", "incorrect"}


@pytest.mark.e2e
def test_rescoring_logged_generations_reproduces_the_records(oracle_run):
    run, _ = oracle_run
    rescored = rescore_run(run)
    assert set(rescored) == set(run.records)
    for task, recs in rescored.items():
        assert [r["outcomes"] for r in recs] == [r["outcomes"] for r in run.records[task]]


@pytest.mark.e2e
def test_report_and_rescore_commands(oracle_run, capsys):
    from medbridge.cli import main

    run, _ = oracle_run
    assert main(["report", str(run.results_path), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "medmnist_mcq_breast" in out and "medmnist overall" in out
    assert main(["rescore", str(run.results_path.parent), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "re-scored records:" in out
    rescored = run.results_path.with_name(run.results_path.name.replace("_results.json", "_medbridge_rescored.json"))
    summary = __import__("json").loads(rescored.read_text())
    assert summary["datasets"]["medmnist_mcq_oct"]["acc1"] == pytest.approx(
        run.results["results"]["medmnist_mcq_oct"]["acc1,none"]
    )
