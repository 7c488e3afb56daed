"""Judge mode through the real lmms-eval CLI with a deterministic judge over real HTTP
(tests/fake_judge_server.py): every answer is judged concurrently from one pool, the results
file carries the per-task judge counts and rule-vs-judge agreement, and the sample log shows the
final verdicts (no pending marker left)."""

from __future__ import annotations

import json

import pytest
from medbridge.harness_ext.report import load_run
from medbridge.tasks.medmnist.fixtures import build_all
from medbridge.tests.fake_judge_server import MODEL_NAME, FakeJudgeServer

from .conftest import run_lmms_eval


def _run_messy_derma(tmp_path, base_url: str, mode: str):
    """lmms-eval's CLI: the messy test model on medmnist_mcq_derma, judged by the stub at ``base_url``."""
    env = {
        "MEDBRIDGE_JUDGE_BASE_URL": base_url,
        "MEDBRIDGE_JUDGE_MODEL": MODEL_NAME,
        "MEDBRIDGE_JUDGE_MODE": mode,
        "MEDBRIDGE_JUDGE_CACHE": str(tmp_path / "cache.sqlite"),
    }
    args = ["--model", "messy", "--tasks", "medmnist_mcq_derma"]
    args += ["--output_path", str(tmp_path / "out"), "--log_samples"]
    return run_lmms_eval(args, tmp_path / "data", env_extra=env)


@pytest.mark.e2e
def test_judge_mode_task_reports_counts_and_agreement(tmp_path):
    build_all(tmp_path / "data", test_per_class=2, train_per_class=1, val_per_class=1)
    with FakeJudgeServer(delay_s=0.05) as server:
        proc = _run_messy_derma(tmp_path, server.base_url, "judge")
        assert proc.returncode == 0, proc.stderr[-4000:]
        seen = server.state
    run = load_run(tmp_path / "out")
    res = run.results["results"]["medmnist_mcq_derma"]
    records = run.records["medmnist_mcq_derma"]
    n = len(records)
    readable = sum(1 for i in range(n) if i % 4 in (0, 3))
    assert res["n_by_rules,none"] == 0 and res["n_by_judge,none"] == n
    # This judge reads answers the way the rules do: full agreement where both gave a letter.
    assert res["rule_judge_agree,none"] == 1.0 and res["rule_judge_kappa,none"] == pytest.approx(1.0)
    assert res["n_unparseable,none"] == n - readable
    # One request per distinct (options, answer): the question is the same for the whole dataset.
    distinct = {
        (
            json.dumps(s["acc1"]["options"]),
            s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0],
        )
        for s in run.samples["medmnist_mcq_derma"]
    }
    assert seen.counts["requests"] == len(distinct)
    assert seen.max_inflight > 1  # judged concurrently, not one document after another
    for r in records:
        assert (
            "judge_job" not in r
            and r["sources"] == ["judge"]
            and r["judge_choices"][0] == (r["rule_choices"][0] or "none")
        )


@pytest.mark.e2e
def test_adversarial_odd_judge_replies_never_lose_an_lmms_eval_run(tmp_path):
    """A judge whose every reply is a JSON object instead of text: the run still writes its results,
    the unreadable answers count as judge-invalid (never correct), and nothing is left pending."""
    build_all(tmp_path / "data", test_per_class=2, train_per_class=1, val_per_class=1)
    with FakeJudgeServer(reply="dict") as server:
        proc = _run_messy_derma(tmp_path, server.base_url, "cascade")
        assert proc.returncode == 0, proc.stderr[-4000:]
    run = load_run(tmp_path / "out")
    res = run.results["results"]["medmnist_mcq_derma"]
    records = run.records["medmnist_mcq_derma"]
    unreadable = sum(1 for i in range(len(records)) if i % 4 in (1, 2))
    assert res["n_judge_invalid,none"] == unreadable and res["n_judge_down,none"] == 0
    assert res["n_by_rules,none"] == len(records) - unreadable
    for r in records:
        assert "pending" not in r["outcomes"]
        for src, outcome in zip(r["sources"], r["outcomes"]):
            assert (src == "judge") == (outcome == "invalid")
