"""`medbridge recipe`: the boundary-aware verdict per task, from a run folder or from the store."""

from __future__ import annotations

import argparse

import pytest
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.report import load_run, summarize
from medbridge.leaderboard import cli as lb_cli
from medbridge.leaderboard.ingest import ingest_run
from medbridge.leaderboard.verdict import (
    BRIDGE,
    SHARPEN,
    decide,
    format_verdicts,
    matching_recipes,
    rank_recipes,
    recipe,
)

from .test_leaderboard import oracle_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return oracle_run_dir(tmp_path_factory, 0.3, 1)


def test_rule_compares_support_with_tau():
    assert decide(0.49, 0.2, 0.5)[0] == BRIDGE
    assert decide(0.5, 0.2, 0.5)[0] == SHARPEN
    verdict, reason = decide(0.9, 0.4, 0.5)
    assert verdict == SHARPEN and "0.900 >= tau = 0.5" in reason and "+0.500" in reason
    assert decide(None, 0.4, 0.5)[0].startswith("no verdict")


def test_recipe_files_are_matched_by_dataset_and_ranked_by_verdict(tmp_path):
    (tmp_path / "rq3_organa_grpo.yaml").write_text("model_name_or_path: x\n")
    (tmp_path / "rq3_organa_sft.yaml").write_text("model_name_or_path: x\n")
    (tmp_path / "other.yaml").write_text("medmnist_datasets: [pathmnist]\nmodel_name_or_path: y\n")
    found = matching_recipes("medmnist_mcq_organa", "organa", tmp_path)
    assert sorted(p.split("/")[-1] for p in found) == ["rq3_organa_grpo.yaml", "rq3_organa_sft.yaml"]
    assert rank_recipes(found, BRIDGE)[0].endswith("rq3_organa_sft.yaml")
    assert rank_recipes(found, SHARPEN)[0].endswith("rq3_organa_grpo.yaml")
    # "path" inside model_name_or_path is not PathMNIST; the flag in the text is
    assert [p.split("/")[-1] for p in matching_recipes("medmnist_mcq_path", "path", tmp_path)] == ["other.yaml"]
    assert matching_recipes("medmnist_mcq_derma", "derma", tmp_path) == []


def test_a_folder_of_several_runs_is_read_as_the_report_reads_it(tmp_path, capsys):
    import os

    from medbridge.cli import main

    from .synthetic_runs import medmnist_run

    old = medmnist_run(tmp_path, ("breast",), n_items=4, stamp="20260101_000000")
    new = medmnist_run(tmp_path, ("organa",), n_items=4, stamp="20260102_000000")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    os.utime(new, (1_800_000_000, 1_800_000_000))
    with pytest.raises(MedbridgeError, match=r"holds 2 lmms-eval runs: .*--latest"):
        recipe(str(tmp_path))
    assert main(["recipe", str(tmp_path)]) == 2
    assert "--latest" in capsys.readouterr().err
    source, verdicts = recipe(str(tmp_path), latest=True)
    assert source == f"{new} (written 2027-01-15 08:00:00 UTC)"
    assert [v.task for v in verdicts] == ["medmnist_mcq_organa"]
    assert main(["recipe", str(tmp_path), "--latest"]) == 0
    assert f"medbridge recipe for {new} (written 2027-01-15 08:00:00 UTC)" in capsys.readouterr().out
    assert recipe(str(old))[0] == f"{old} (written 2023-11-14 22:13:20 UTC)"  # a results file names itself


@pytest.mark.e2e
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_verdicts_follow_the_run_numbers(run_dir, tau, tmp_path):
    (tmp_path / "rq3_organa_grpo.yaml").write_text("x: 1\n")
    source, verdicts = recipe(str(run_dir), tau=tau, recipes_dir=tmp_path)
    run = load_run(run_dir)
    summary = summarize(run.records, iters=200)["datasets"]
    assert len(verdicts) == 12 and "_results.json (written " in source
    for v in verdicts:
        row = summary[v.task]
        assert v.acc1 == pytest.approx(row["acc1"]) and v.pass16 == pytest.approx(row["pass_at_16"])
        assert v.gap == pytest.approx(row["gap"])
        assert v.verdict == (BRIDGE if row["pass_at_16"] < tau else SHARPEN)
    organa = next(v for v in verdicts if v.task == "medmnist_mcq_organa")
    assert organa.recipes == [str(tmp_path / "rq3_organa_grpo.yaml")]
    text = format_verdicts(source, verdicts, tau)
    assert f"{100 * organa.acc1:5.1f}" in text and "rq3_organa_grpo.yaml" in text and "none yet" in text


@pytest.mark.e2e
def test_cli_reads_a_model_from_the_store(run_dir, tmp_path, capsys):
    store = tmp_path / "lb.sqlite"
    assert ingest_run(store, run_dir, model="my-model") > 0
    parser = argparse.ArgumentParser(prog="medbridge")
    lb_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["recipe", "my-model", "--store", str(store), "--tau", "0.5"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "medbridge recipe for my-model" in out
    assert out.count(SHARPEN) + out.count(BRIDGE) == 12
    args = parser.parse_args(["recipe", "no-such-model", "--store", str(store)])
    with pytest.raises(MedbridgeError, match="no model or run named 'no-such-model'"):
        args.func(args)
