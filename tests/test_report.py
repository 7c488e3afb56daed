"""`medbridge report`: refusals (short items, failed requests, inconsistent records), partial
groups, collapsed sampling, on lmms-eval-shaped folders written by tests/synthetic_runs.py."""

from __future__ import annotations

import json
import re

import pytest
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.report import format_table, groups_for, report_command, summarize
from medbridge.leaderboard.verdict import COLLAPSED, decide

from medbridge.cli import main

from .synthetic_runs import medmnist_run, records, write_run


def test_an_item_with_fewer_than_k_samples_is_refused_by_name():
    sampled = records("breast", 6, p=0.5, k=16)
    short = records("breast", 1, p=0.5, k=8)[0]
    short["item_id"] = "breast/test/99"
    with pytest.raises(
        MedbridgeError,
        match=r"task medmnist_mcq_breast_passk, item breast/test/99: 8 sample\(s\) where the task's other items",
    ):
        summarize({"medmnist_mcq_breast_passk": sampled + [short]})


def test_failed_requests_are_refused_unless_partial_results_are_allowed(tmp_path):
    recs = records("breast", 10, p=0.5, k=16)
    for r in recs[:3]:
        r["outcomes"][5] = "request_failed"
        r["c"] = r["outcomes"].count("correct")
    path = write_run(tmp_path, {"medmnist_mcq_breast_passk": recs, "medmnist_mcq_breast": records("breast", 10, p=0.5)})
    with pytest.raises(
        MedbridgeError, match=r"3 item\(s\) with failed requests \(medmnist_mcq_breast_passk: 3\).*--allow-partial"
    ):
        report_command(path)
    assert main(["report", str(path)]) == 2  # the command prints the paragraph and exits 2
    summary = summarize({"medmnist_mcq_breast_passk": recs}, allow_partial=True)
    row = summary["datasets"]["medmnist_mcq_breast"]
    assert row["request_failed"] == 3 and row["n_items"] == 7  # left out, counted, never scored
    assert "PARTIAL RUN: 3 item(s) with failed requests" in format_table(summary)


def test_inconsistent_records_are_refused_naming_task_and_item():
    recs = records("breast", 4, p=0.0, k=16)
    recs[2]["c"] = 16  # c = n = 16 with sixteen wrong outcomes would score Pass@16 = 1.0
    with pytest.raises(
        MedbridgeError, match=r"task medmnist_mcq_breast_passk, record 3: item breast/test/2: c=16 but 0"
    ):
        summarize({"medmnist_mcq_breast_passk": recs})
    recs = records("breast", 2, p=0.5, k=4)
    recs[0]["n"] = 5
    with pytest.raises(MedbridgeError, match="n=5 but 4 outcomes"):
        summarize({"medmnist_mcq_breast_passk": recs})
    recs = records("breast", 2, p=0.5, k=4)
    recs[1]["outcomes"][0] = "maybe"
    with pytest.raises(MedbridgeError, match=r"unknown outcome\(s\) \['maybe'\]"):
        summarize({"medmnist_mcq_breast_passk": recs})


def test_a_group_is_labelled_partial_unless_all_its_datasets_ran():
    from medbridge.tasks.families import MEDMNIST

    n_all = MEDMNIST.count  # derived from the catalog: a 13th dataset changes no test
    recs = {f"medmnist_mcq_{n}": records(n, 5, p=0.5) for n in ("breast", "organa")}
    summary = summarize(recs, groups=groups_for(recs), iters=200)
    overall = summary["groups"]["medmnist overall"]
    assert overall["partial"] and (overall["n_datasets"], overall["n_members"]) == (2, n_all)
    text = format_table(summary)
    assert f"medmnist overall (partial: 2 of {n_all})" in text
    assert not re.search(r"^medmnist overall\s+\d", text, re.M)
    microscopy = [s.name for s in MEDMNIST.entries if s.modality == "microscopy"]
    blood = {f"medmnist_mcq_{n}": records(n, 5, p=0.5) for n in microscopy}
    full = summarize(blood, groups=groups_for(blood), iters=200)["groups"]["medmnist microscopy"]
    assert not full["partial"]


def test_collapsed_sampling_is_flagged_and_draws_no_verdict(tmp_path, capsys):
    # Two samplers: one that ignores the temperature (every item repeats one response), one that samples.
    collapsed = records("breast", 8, p=1.0, k=16, distinct=1)
    diverse = records("organa", 8, p=0.5, k=16, distinct=9)
    for recs, server in ((collapsed, "server A"), (diverse, "server B")):
        for r in recs:
            r["decoding"] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "server": server}
    summary = summarize({"medmnist_mcq_breast_passk": collapsed, "medmnist_mcq_organa_passk": diverse}, iters=200)
    assert summary["datasets"]["medmnist_mcq_breast"]["collapsed"] is True
    assert "samples differ in only 0 of 8 items" in summary["datasets"]["medmnist_mcq_breast"]["sampler"]
    assert summary["datasets"]["medmnist_mcq_organa"]["collapsed"] is False
    assert summary["datasets"]["medmnist_mcq_organa"]["distinct"] == pytest.approx(9.0)
    text = format_table(summary)
    assert "COLLAPSED sampling in medmnist_mcq_breast: samples differ in only 0 of 8 items" in text
    assert "Sampler check (medmnist_mcq_organa): samples differ in 8 of 8 items: the sampler samples." in text
    unknown = summarize({"medmnist_mcq_breast_passk": records("breast", 4, p=0.5, k=16)}, iters=100)
    assert unknown["datasets"]["medmnist_mcq_breast"]["collapsed"] is None  # not recorded: unknown, not "fine"
    assert decide(0.9, 0.2, 0.5, collapsed=True)[0] == COLLAPSED


def test_report_writes_the_summary_json_and_rejects_zero_resamples(tmp_path, capsys):
    path = medmnist_run(tmp_path, ("breast",), n_items=6)
    assert main(["report", str(tmp_path), "--bootstrap", "100"]) == 0
    summary = json.loads(path.with_name(path.name.replace("_results.json", "_medbridge_summary.json")).read_text())
    assert set(summary["datasets"]) == {"medmnist_mcq_breast"} and summary["request_failed"] == {}
    with pytest.raises(MedbridgeError, match="at least 1 resample"):
        report_command(path, iters=0)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
