"""`medbridge report` on what a user's folder really holds: several runs, tasks that crashed, judge
failures, and decoding that is not the paper's (issues 20 and 24). Runs are written by synthetic_runs."""

from __future__ import annotations

import json
import os

import pytest
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.report import format_table, report_command, summarize

from medbridge.cli import main

from .synthetic_runs import SAMPLED_KWARGS, medmnist_run, records, write_run


def _summary_of(path):
    return json.loads(path.with_name(path.name.replace("_results.json", "_medbridge_summary.json")).read_text())


def test_a_folder_with_several_runs_is_refused_naming_them_unless_latest(tmp_path, capsys):
    old = medmnist_run(tmp_path, ("breast",), n_items=4, stamp="20260101_000000")
    new = medmnist_run(tmp_path, ("organa",), n_items=4, stamp="20260102_000000")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    os.utime(new, (1_800_000_000, 1_800_000_000))
    assert main(["report", str(tmp_path), "--bootstrap", "50"]) == 2
    err = capsys.readouterr().err
    assert "holds 2 lmms-eval runs" in err and str(old) in err and str(new) in err and "--latest" in err
    assert "(written 2023-11-14 22:13:20 UTC)" in err and "(written 2027-01-15 08:00:00 UTC)" in err
    assert main(["report", str(tmp_path), "--latest", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run: {new} (written 2027-01-15 08:00:00 UTC)\n") and "medmnist_mcq_organa" in out
    assert main(["report", str(old), "--bootstrap", "50"]) == 0  # naming the file is never ambiguous
    assert capsys.readouterr().out.startswith(f"run: {old} ")
    assert _summary_of(old)["run"] == str(old) and set(_summary_of(old)["datasets"]) == {"medmnist_mcq_breast"}


def test_a_task_lmms_eval_loaded_but_wrote_no_results_for_is_refused(tmp_path, capsys):
    crashed = {"task": "medmnist_mcq_organa_passk", "generation_kwargs": dict(SAMPLED_KWARGS)}
    path = medmnist_run(tmp_path, ("breast",), n_items=4,
                        configs={"medmnist_mcq_organa_passk": crashed},
                        extra={"group_subtasks": {"medmnist_mcq": ["medmnist_mcq_breast", "medmnist_mcq_organa"]}})
    with pytest.raises(MedbridgeError, match=r"2 task\(s\) of the run have no numbers \(medmnist_mcq_organa: lmms-eval "
                       r"wrote no results.*medmnist_mcq_organa_passk: .*--allow-partial"):
        report_command(path, iters=50)
    assert main(["report", str(path), "--allow-partial", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL RUN: no numbers for medmnist_mcq_organa: lmms-eval wrote no results" in out
    summary = _summary_of(path)
    assert set(summary["missing_tasks"]) == {"medmnist_mcq_organa", "medmnist_mcq_organa_passk"}
    assert "2 task(s) without numbers" in summary["partial"]


def test_a_task_with_results_but_no_records_is_refused(tmp_path):
    path = medmnist_run(tmp_path, ("breast",), n_items=4)
    data = json.loads(path.read_text())
    data["results"]["medmnist_mcq_organa"] = {"alias": "medmnist_mcq_organa", "acc1,none": 0.0}
    path.write_text(json.dumps(data))
    with pytest.raises(MedbridgeError, match="medmnist_mcq_organa: its sample log holds no medbridge records"):
        report_command(path, iters=50)


def _judged(dataset, n_items, failed_items, *, k=16):
    """Judged records; the judge gave no verdict for one sample of the first ``failed_items`` items."""
    recs = records(dataset, n_items, p=1.0, k=k)
    for r in recs[:failed_items]:
        r["outcomes"][-1] = "judge_failed"
        r["choices"][-1] = None
        r["c"] = r["outcomes"].count("correct")
    return recs


def test_judge_failures_are_left_out_counted_and_refused_like_failed_requests(tmp_path, capsys):
    tasks = {"medmnist_mcq_breast": _judged("breast", 6, 2, k=1), "medmnist_mcq_breast_passk": _judged("breast", 6, 3)}
    with pytest.raises(MedbridgeError, match=r"5 item\(s\) with failed judge verdicts \(medmnist_mcq_breast: 2, "
                       r"medmnist_mcq_breast_passk: 3\).*"
                       r"once the judge answers.*--allow-partial"):
        summarize(tasks)
    summary = summarize(tasks, allow_partial=True, iters=50)
    row = summary["datasets"]["medmnist_mcq_breast"]
    # Every answered item is right: a judge outage must not read as wrong answers (it used to score 0).
    assert row["acc1"] == 1.0 and row["pass_at_16"] == 1.0 and row["n_items"] == 4
    assert row["judge_failed"] == 5 and row["request_failed"] == 0
    assert summary["judge_failed"] == {"medmnist_mcq_breast": 2, "medmnist_mcq_breast_passk": 3}
    assert summary["partial"].startswith("5 item(s) with failed judge verdicts")
    assert "PARTIAL RUN: 5 item(s) with failed judge verdicts" in format_table(summary)
    path = write_run(tmp_path, tasks)
    assert main(["report", str(path), "--bootstrap", "50"]) == 2
    assert "failed judge verdicts (medmnist_mcq_breast: 2, medmnist_mcq_breast_passk: 3)" in capsys.readouterr().err


def test_the_report_shows_the_decoding_and_where_it_differs_from_the_papers(tmp_path, capsys):
    greedy, sampled = records("breast", 6, p=0.5), records("breast", 6, p=0.5, k=16, distinct=9)
    organa = records("organa", 6, p=0.5, k=16, distinct=9)
    for r in organa:  # what the backend recorded wins over what the task asked
        r["decoding"] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0,
                         "max_new_tokens": 1024, "num_beams": 1, "min_p": 0.05}
    asked = {**SAMPLED_KWARGS, "top_p": 1.0}  # what `--gen_kwargs top_p=1.0` leaves in the results file
    path = write_run(tmp_path, {"medmnist_mcq_breast": greedy, "medmnist_mcq_breast_passk": sampled,
                                "medmnist_mcq_organa_passk": organa},
                     configs={"medmnist_mcq_breast_passk": {"task": "medmnist_mcq_breast_passk",
                                                            "generation_kwargs": asked}})
    assert main(["report", str(path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "  medmnist_mcq_breast: greedy, repetition_penalty 1.0, max_new_tokens 1024 (asked by the task; the " \
           "backend recorded nothing)" in out
    assert "  medmnist_mcq_breast_passk: T 0.7, top_p 1.0, top_k off" in out
    assert "  medmnist_mcq_organa_passk: T 0.7, top_p 0.9, top_k off, repetition_penalty 1.0, min_p 0.05, " \
           "max_new_tokens 1024 (recorded by the backend)" in out
    assert ("NOT THE PAPER'S DECODING (these numbers are not comparable with its tables): medmnist_mcq_breast_passk: "
            "top_p 1.0 (paper: 0.9) | medmnist_mcq_organa_passk: min_p 0.05 (paper: 0.0)") in out
    rows = _summary_of(path)["datasets"]
    assert rows["medmnist_mcq_breast"]["decoding"]["sampled"] == {
        "settings": {"do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": None, "repetition_penalty": 1.0,
                     "max_new_tokens": 1024},
        "source": "asked",
    }
    assert rows["medmnist_mcq_breast"]["decoding_vs_paper"] == {"greedy": [], "sampled": ["top_p 1.0 (paper: 0.9)"]}
    assert rows["medmnist_mcq_organa"]["decoding"]["sampled"]["source"] == "recorded"


def test_integer_settings_are_shown_as_integers():
    from medbridge.harness_ext import decoding_report

    recorded = decoding_report.normalized({"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 1.0,
                                           "repetition_penalty": 1.05, "num_beams": 4})
    assert decoding_report.paper_differences(recorded, sampled=True) == [
        "temperature 1.0 (paper: 0.7)", "top_k 1 (paper: off)", "repetition_penalty 1.05 (paper: 1.0)",
        "num_beams 4 (paper: 1)"]
    assert decoding_report.describe(recorded) == "T 1.0, top_p 0.9, top_k 1, repetition_penalty 1.05, num_beams 4"


def test_paper_settings_draw_no_difference_line(tmp_path, capsys):
    path = medmnist_run(tmp_path, ("breast",), n_items=4)
    assert main(["report", str(path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "T 0.7, top_p 0.9, top_k off, repetition_penalty 1.0" in out
    assert "all 1 greedy" not in out and "NOT THE PAPER'S" not in out
