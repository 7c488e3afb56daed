"""The medvqa group end to end through the real lmms-eval CLI, on fixtures in the hub schema.

The oracle model (right with probability p) checks the numbers; the tiny random Qwen2.5-VL checks
that a real VLM backend takes the items (several images, up to ten options) and that the group
reports all six benchmarks plus their unweighted average.
"""

import json
import re

import numpy as np
import pytest
from medbridge.harness_ext import metrics
from medbridge.harness_ext.report import load_run, summarize
from medbridge.tasks.families import MEDVQA
from medbridge.tasks.medvqa import data
from medbridge.tasks.medvqa.catalog import SETS
from medbridge.tasks.medvqa.fixtures import build_medvqa_fixture

from .conftest import run_lmms_eval

SUBSET = 4
# Six good rows per benchmark, except VQA-RAD: three good and two bad ones, so filling its subset of
# four meets both bad rows (skipped, counted and logged in the oracle run; fatal in the strict one).
SIZES = {"pmc": 6, "mmmu": 6, "medxpertqa": 6, "pathvqa": 6, "slake": 6, "vqarad": 3}
BAD = [("vqarad", "malformed_options"), ("vqarad", "missing_image")]


def medvqa_env(source, **extra) -> dict:
    env = {data.SOURCE_ENV: str(source), data.SUBSET_ENV: str(SUBSET), data.SEED_ENV: "1234", data.SKIP_BAD_ENV: "0"}
    env.update(extra)
    return env


def group_checks(res) -> None:
    """Each benchmark is in the results and the group value is the plain mean of the six."""
    greedy, sampled = MEDVQA.greedy_tasks, MEDVQA.sampled_tasks
    for metric, tasks in (("acc1", greedy), ("pass_at_16", sampled), ("pass_at_01", sampled)):
        values = [res[t][f"{metric},none"] for t in tasks]
        assert all(0.0 <= v <= 1.0 for v in values), (metric, values)
        assert res["medvqa"][f"{metric},none"] == pytest.approx(np.mean(values)), metric


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("medvqa_oracle")
    source = build_medvqa_fixture(root / "eval", SIZES, bad=BAD)
    proc = run_lmms_eval(
        [
            "--model",
            "oracle",
            "--model_args",
            "p=0.4,seed=5",
            "--tasks",
            "medvqa",
            "--output_path",
            str(root / "out"),
            "--log_samples",
        ],
        root,
        env_extra=medvqa_env(source, MEDBRIDGE_MEDVQA_SKIP_BAD="1"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_run(root / "out"), source, proc


@pytest.mark.e2e
def test_oracle_numbers_are_the_intended_ones(oracle_run):
    run, _, _ = oracle_run
    res = run.results["results"]
    group_checks(res)
    for spec in SETS:
        greedy = run.samples[MEDVQA.task(spec)]
        assert len(greedy) == min(SUBSET, SIZES[spec.name])
        acc = np.mean([s["filtered_resps"].endswith(f"<answer>{s['target']}</answer>") for s in greedy])
        assert res[MEDVQA.task(spec)]["acc1,none"] == pytest.approx(acc)
        per_item = []
        for s in run.samples[MEDVQA.passk_task(spec)]:
            assert len(s["filtered_resps"]) == 16
            c = sum(x.endswith(f"<answer>{s['target']}</answer>") for x in s["filtered_resps"])
            per_item.append(metrics.pass_at_k(16, c, 4))
        assert res[MEDVQA.passk_task(spec)]["pass_at_04,none"] == pytest.approx(np.mean(per_item))
    # Our report's Table 3 row (mean of the six, with a CI) agrees with lmms-eval's group value.
    average = summarize(run.records, groups=MEDVQA.report_groups(), iters=200)["groups"]["medvqa average"]
    assert average["acc1"] == pytest.approx(res["medvqa"]["acc1,none"])
    assert average["pass_at_16"] == pytest.approx(res["medvqa"]["pass_at_16,none"])


@pytest.mark.e2e
def test_logged_item_ids_are_the_seeded_subset(oracle_run):
    run, source, proc = oracle_run
    for spec in SETS:
        want, _ = data.build_items(spec.name, source=source, subset=SUBSET, seed=1234, skip_bad=True)
        for task in (MEDVQA.task(spec), MEDVQA.passk_task(spec)):
            recs = run.records[task]
            assert sorted(r["item_id"] for r in recs) == sorted(it["item_id"] for it in want), task
            assert {r["subset"] for r in recs} == {f"seeded{SUBSET}-seed1234"}
            assert {r["n_skipped_in_source"] for r in recs} == {2 if spec.name == "vqarad" else 0}
            assert all(r["dataset"] == spec.name for r in recs)
    # Once per task that reads VQA-RAD (greedy and sampled), loudly.
    assert (proc.stdout + proc.stderr).count("SKIPPED 2 bad row(s) of VQA-RAD") == 2
    # Ten options A-J reach the scorer intact (the fixture's MedXpertQA item 0 has them, if drawn).
    full, _ = data.build_items("medxpertqa", source=source, subset="full")
    assert max(len(json.loads(it["options"])) for it in full) == 10


@pytest.mark.e2e
def test_bad_rows_stop_the_run_by_default(tmp_path):
    source = build_medvqa_fixture(tmp_path / "eval", {"vqarad": 3}, bad=BAD)
    strict = run_lmms_eval(
        ["--model", "oracle", "--tasks", "medvqa_vqarad", "--output_path", str(tmp_path / "out"), "--log_samples"],
        tmp_path,
        env_extra=medvqa_env(source),
    )
    out = strict.stdout + strict.stderr
    assert "2 bad row(s) in VQA-RAD (task medvqa_vqarad)" in out
    assert "vqa_rad_closed/3: options is not valid JSON" in out and "vqa_rad_closed/4: the row has no image" in out
    assert not list((tmp_path / "out").rglob("*_results.json"))


@pytest.mark.e2e
def test_tiny_qwen_runs_the_group_and_reports_the_average(tmp_path, tiny_model_dir):
    source = build_medvqa_fixture(tmp_path / "eval", 2)
    model_args = (
        f"pretrained={tiny_model_dir},device=cpu,device_map=cpu,attn_implementation=sdpa,"
        "min_pixels=3136,max_pixels=50176"
    )
    proc = run_lmms_eval(
        [
            "--model",
            "qwen2_5_vl",
            "--model_args",
            model_args,
            "--tasks",
            "medvqa",
            "--gen_kwargs",
            "max_new_tokens=8",
            "--batch_size",
            "16",
            "--output_path",
            str(tmp_path / "out"),
            "--log_samples",
        ],
        tmp_path,
        module="lmms_eval",
        env_extra=medvqa_env(source),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = load_run(tmp_path / "out")
    res = run.results["results"]
    group_checks(res)
    assert set(MEDVQA.greedy_tasks + MEDVQA.sampled_tasks) <= set(res)
    for spec in SETS:
        assert run.results["n-samples"][MEDVQA.task(spec)]["effective"] == 2
        assert all(r["n"] == 16 for r in run.records[MEDVQA.passk_task(spec)])
        cfg = run.results["configs"][MEDVQA.passk_task(spec)]["generation_kwargs"]
        assert cfg["max_new_tokens"] == 8 and cfg["temperature"] == 0.7 and cfg["top_p"] == 0.9
    # The printed table has every benchmark and the group row.
    printed = proc.stdout + proc.stderr
    for name in MEDVQA.greedy_tasks + MEDVQA.sampled_tasks:
        assert re.search(rf"\| - {name} *\|", printed), name
    assert "|medvqa|none  |      |acc1" in printed
