"""With --wandb_args, lmms-eval logs the medbridge summary beside its own metrics (harness_ext/wandb_summary.py):
per dataset and per modality mean, Acc@1, Pass@K, maj@K and the gap with 95% CIs and item counts, a table of
those rows with their pins, and the decoding in the config. Checked in W&B's offline mode by reading back the
records the run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def read_offline_run(wandb_dir: Path) -> tuple[dict[str, object], dict[str, object]]:
    """(summary, config) as the offline run recorded them (its .wandb file of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    (path,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    summary: dict[str, object] = {}
    config: dict[str, object] = {}
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    return summary, config


@pytest.mark.e2e
@pytest.mark.slow
def test_wandb_gets_the_medbridge_summary_beside_lmms_evals_metrics(tmp_path):
    from medbridge.tasks.medmnist.fixtures import build_all

    from .conftest import run_lmms_eval

    build_all(tmp_path / "fx", test_per_class=2, train_per_class=1, val_per_class=1)
    done = run_lmms_eval(
        ["--model", "oracle", "--model_args", "p=0.7", "--tasks", "medmnist_mcq_microscopy",
         "--output_path", str(tmp_path / "out"), "--log_samples",
         "--wandb_args", "project=medbridge-test,mode=offline"],
        tmp_path / "fx", cwd=tmp_path, env_extra={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary, config = read_offline_run(tmp_path)

    # lmms-eval's own metrics are still there, and ours beside them
    assert "medmnist_mcq_blood/acc1" in summary or "medmnist_mcq_blood/acc1,none" in summary, sorted(summary)[:20]
    ours = {k for k in summary if k.startswith("medbridge/")}
    for row in ("medmnist_mcq_blood", "medmnist_mcq_path", "medmnist_mcq_tissue", "medmnist microscopy"):
        for metric in ("acc1", "pass_at_16", "gap"):
            for suffix in ("", "_ci_low", "_ci_high", "_n"):
                assert f"medbridge/{row}/{metric}{suffix}" in ours, (row, metric, suffix)
    assert "medbridge/results/_type" in summary  # the table of rows with their pins

    # the numbers are the report's numbers for the same run
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    from medbridge.harness_ext.report import summarize_run
    from medbridge.harness_ext.runs import load_run

    report = summarize_run(load_run(results_file))
    blood = report["datasets"]["medmnist_mcq_blood"]
    assert summary["medbridge/medmnist_mcq_blood/acc1"] == pytest.approx(blood["acc1"])
    assert summary["medbridge/medmnist_mcq_blood/gap_ci_low"] == pytest.approx(blood["gap_ci"][0])
    assert summary["medbridge/medmnist microscopy/pass_at_16"] == pytest.approx(
        report["groups"]["medmnist microscopy"]["pass_at_16"])

    medbridge = config["medbridge"]
    assert medbridge["results_file"] == str(results_file)
    sampled = medbridge["decoding"]["medmnist_mcq_blood"]["sampled"]
    assert json.dumps(sampled).count("0.7") >= 1  # the temperature the samples were drawn at
    assert "partial" not in medbridge
