"""`medbridge report` and `medbridge recipe` on runs of the real lmms-eval CLI (issue 20 items 3-5):
a judge that is down, a confident model sampled correctly, a sampler that ignores the temperature."""

from __future__ import annotations

import json
import socket

import pytest

from medbridge.cli import main

from .conftest import run_lmms_eval

TWO_OPTION_TASKS = "medmnist_mcq_breast,medmnist_mcq_breast_passk,medmnist_mcq_pneumonia,medmnist_mcq_pneumonia_passk"


def _closed_port_url() -> str:
    with socket.socket() as s:  # a port nothing listens on: every judge request is refused
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from medbridge.tasks.medmnist.fixtures import build_all

    root = tmp_path_factory.mktemp("report_e2e") / "data"
    build_all(root, test_per_class=16, train_per_class=1, val_per_class=1)
    return root


def _oracle(out, data_root, model_args: str, tasks: str = TWO_OPTION_TASKS, env: dict | None = None):
    proc = run_lmms_eval(["--model", "oracle", "--model_args", model_args, "--tasks", tasks,
                          "--output_path", str(out), "--log_samples"], data_root, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.e2e
@pytest.mark.slow
def test_a_judge_that_is_down_is_never_scored_and_the_report_refuses_the_run(tmp_path, data_root, capsys):
    env = {"MEDBRIDGE_JUDGE_MODE": "judge", "MEDBRIDGE_JUDGE_BASE_URL": _closed_port_url(),
           "MEDBRIDGE_JUDGE_MODEL": "judge", "MEDBRIDGE_JUDGE_MAX_ATTEMPTS": "2", "MEDBRIDGE_JUDGE_TIMEOUT": "5",
           "MEDBRIDGE_JUDGE_CACHE": str(tmp_path / "cache.sqlite")}
    proc = _oracle(tmp_path / "out", data_root, "p=1.0,seed=1", tasks="medmnist_mcq_breast", env=env)
    assert "JUDGE FAILURES: 32 of 32 item(s) of breast got no judge verdict" in proc.stderr
    results = next((tmp_path / "out").rglob("*_results.json"))
    res = json.loads(results.read_text())["results"]["medmnist_mcq_breast"]
    assert res["n_judge_down,none"] == 32 and res["acc1,none"] != 0.0  # NaN: nothing answered; never 0 %
    assert main(["report", str(tmp_path / "out"), "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err
    assert "32 item(s) with failed judge verdicts (medmnist_mcq_breast: 32)" in err and "--allow-partial" in err
    assert main(["report", str(tmp_path / "out"), "--allow-partial", "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL RUN: 32 item(s) with failed judge verdicts (medmnist_mcq_breast: 32)" in out
    summary = json.loads(next((tmp_path / "out").rglob("*_medbridge_summary.json")).read_text())
    assert summary["judge_failed"] == {"medmnist_mcq_breast": 32} and summary["datasets"] == {}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_confident_model_keeps_its_verdict_and_a_sampler_ignoring_the_temperature_is_caught(
    tmp_path, data_root, capsys
):
    _oracle(tmp_path / "confident", data_root, "p=0.99,seed=3")
    assert main(["report", str(tmp_path / "confident"), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "COLLAPSED" not in out and "NOT THE PAPER'S" not in out
    assert "all 2 sampled tasks: T 0.7, top_p 0.9, top_k off, repetition_penalty 1.0" in out
    assert main(["recipe", str(tmp_path / "confident")]) == 0
    verdicts = capsys.readouterr().out
    assert "sharpen with RL" in verdicts and "no verdict: sampling collapsed" not in verdicts

    _oracle(tmp_path / "greedy_server", data_root, "p=0.99,seed=3,ignore_temperature=true")
    assert main(["report", str(tmp_path / "greedy_server"), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "COLLAPSED sampling in medmnist_mcq_breast, medmnist_mcq_pneumonia: samples differ in only 0 of 64 " in out
    assert main(["recipe", str(tmp_path / "greedy_server")]) == 0
    assert capsys.readouterr().out.count("no verdict: sampling collapsed") == 2
