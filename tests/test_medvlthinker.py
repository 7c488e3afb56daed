"""MedVLThinker's evaluation protocol (tasks/medvqa/medvlthinker.py, task group medvqa_medvlthinker): the
prompt bytes, the items per benchmark, their lenient grader on a table of responses, both verdicts per
response, the protocol's metrics and the report section; end to end through lmms-eval on the tiny model."""

from __future__ import annotations

import json

import pytest
from medbridge.harness_ext import metrics
from medbridge.tasks.families import MEDVLTHINKER, MEDVQA
from medbridge.tasks.medvqa import data
from medbridge.tasks.medvqa import medvlthinker as protocol
from medbridge.tasks.medvqa.catalog import SETS
from medbridge.tasks.medvqa.fixtures import SHAPES, build_medvqa_fixture

from .conftest import run_lmms_eval

SIZES = {spec.name: len(SHAPES) + i for i, spec in enumerate(SETS)}  # a different count per benchmark


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    import os

    for key in list(os.environ):
        if key.startswith("MEDBRIDGE_MEDVQA_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(tmp_path_factory.mktemp("data_cache")))


def _add_rows(folder, rows):
    """Extra rows in MedVLThinker-Eval's schema, in a second parquet file of the test split."""
    import datasets
    import pyarrow.parquet as pq

    first = folder / "data" / "test-00000-of-00001.parquet"
    features = datasets.Features.from_arrow_schema(pq.read_schema(first))
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / "data" / "test-extra.parquet"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = build_medvqa_fixture(tmp_path_factory.mktemp("mvt") / "eval", SIZES)
    # Rows the protocol must not take: the open PathVQA questions and an MMMU open question, as a set
    # built without MedVLThinker's filters would hold them (same schema, other dataset_name).
    import pyarrow.parquet as pq

    row = pq.read_table(folder / "data" / "test-00000-of-00001.parquet").to_pylist()[0]
    extra = [{**row, "dataset_name": name, "dataset_index": 10_000 + i}
             for i, name in enumerate(["pathvqa_open", "pathvqa_open", "MMMU-medical-open"])]
    _add_rows(folder, extra)
    return folder


# ------------------------------------------------------------------ prompt


def test_rendered_prompt_bytes_for_a_fixture_item(source):
    items = protocol.build_items("vqarad", source=str(source))
    item = next(it for it in items if it["dataset_index"] == min(i["dataset_index"] for i in items))
    options = json.loads(item["options"])
    assert list(options.values()) in (["No", "Yes"], ["Yes", "No"])  # the fixture's item 0 is yes/no
    want = (
        b"You will solve a problem/request. You should provide your thoughts within <think> </think> tags "
        b"before providing the answer.\\nWrite your final answer within <answer> </answer> tags.\n\n"
        b"Question: VQA-RAD fixture item 0: which option does the image show?\n\nOptions:\n\n"
        b"A. " + options["A"].encode() + b"\n\nB. " + options["B"].encode()
    )
    assert item["prompt"].encode() == want
    # The instruction's "\n" is a backslash and an n (a raw string in their code), not a newline.
    assert b"answer.\\nWrite" in want and item["prompt"].count("\n") == 8
    assert item["task"] == "medvqa_medvlthinker_vqarad" and item["prompt_version"] == protocol.PROMPT_VERSION


def test_options_keep_the_row_s_order_and_ten_letters():
    text = protocol.prompt_text("Q?", {"B": "two", "A": "one"})
    assert text.endswith("Question: Q?\n\nOptions:\n\nB. two\n\nA. one")
    ten = protocol.prompt_text("Q?", {letter: f"o{letter}" for letter in "ABCDEFGHIJ"})
    assert ten.endswith("\n\nI. oI\n\nJ. oJ") and ten.count("\n\n") == 12


@pytest.mark.slow  # imports lmms-eval (about 5 s)
def test_lmms_eval_builds_one_user_turn_images_first_no_system_message(source, monkeypatch):
    import medbridge.harness_ext.plugin  # noqa: F401  (registers the task folder)
    from lmms_eval.tasks import TaskManager, get_task_dict

    monkeypatch.setenv(data.SOURCE_ENV, str(source))
    task = get_task_dict([MEDVLTHINKER.task("mmmu")], TaskManager("ERROR"), task_type="chat")[MEDVLTHINKER.task("mmmu")]
    doc = next(d for d in task.test_docs() if d["n_images"] == 2)
    messages = task.doc_to_messages(doc)
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert content[-1]["text"] == doc["prompt"]
    assert task.config.repeats == protocol.RUNS and task.config.generation_kwargs["max_new_tokens"] == 4096


# ------------------------------------------------------------------ items


def test_item_counts_per_benchmark_follow_the_protocol_s_filters(source, monkeypatch):
    # Our subset settings do not apply: the protocol takes every row of the benchmark's dataset_name.
    monkeypatch.setenv(data.SUBSET_ENV, "2")
    for spec in SETS:
        items = protocol.build_items(spec.name, source=str(source))
        assert len(items) == SIZES[spec.name], spec.name
        assert {it["source_dataset_name"] for it in items} == {spec.dataset_name}
        assert {it["subset"] for it in items} == {"full"}
        assert all(it["task"] == MEDVLTHINKER.task(spec) for it in items)
    # The ordinary medvqa task of the same source still draws its subset.
    assert len(data.build_items("pathvqa", source=str(source))[0]) == 2


def test_a_source_whose_counts_differ_from_medvlthinker_eval_is_named(source, caplog):
    from loguru import logger

    handler = logger.add(caplog.handler, format="{message}")
    try:
        protocol.build_items("slake", source=str(source))
    finally:
        logger.remove(handler)
    assert f"holds {SIZES['slake']} rows of SLAKE, MedVLThinker-Eval holds 416" in caplog.text
    # MedVLThinker's published item counts (their paper and eval set), for the benchmarks they cover.
    published = {"pmc": 2000, "mmmu": 170, "medxpertqa": 2000, "pathvqa": 3362, "slake": 416, "vqarad": 272}
    assert {name: protocol.EXPECTED_ROWS[name] for name in published} == published


# ------------------------------------------------------------------ their grader

# (response, answer letter, answer text) -> (their prediction, their verdict)
GRADER_TABLE = [
    ("<think>It is a CT.</think><answer>B</answer>", "B", "CT", "B", True),
    ("<think>x</think><answer>B. CT</answer>", "B", "CT", "B. CT", True),
    ("<answer>  ct </answer>", "B", "CT", "ct", True),  # option text, any case
    ("<answer>b</answer>", "B", "CT", "b", True),  # letter, any case
    ("<answer>A</answer> wait, no: <answer>B</answer>", "B", "CT", "B", True),  # the last tag counts
    ("<answer>B</answer> on second thought <answer>A</answer>", "B", "CT", "A", False),
    ("<answer>\nB\nbecause the image is a CT</answer>", "B", "CT", "B", True),  # its first line
    ("<answer>B or C</answer>", "B", "CT", "B or C", False),
    ("<answer>B.</answer>", "B", "CT", "B.", False),  # not one of the three accepted forms
    ("<answer>(B)</answer>", "B", "CT", "(B)", False),
    ("<answer><think>B</think></answer>", "B", "CT", "B", True),  # tags stripped after extraction
    ("The answer is B", "B", "CT", "B", True),  # no tag: "answer is"
    ("So the answer is: CT", "B", "CT", "CT", True),  # "answer is:"
    ("Answer: B\nbecause of the density", "B", "CT", "B", True),  # "answer:" takes the rest of its line
    ("Answer:\nB", "B", "CT", "B", True),  # whitespace after the colon may cross a line
    ("answer: A\nanswer: B", "B", "CT", "B", True),  # the last match of the pattern
    ("answer: A. Then answer: B", "B", "CT", "A. Then answer: B", False),  # one match: ".*" runs to the line end
    ("Answer: MRI. The final answer is B", "B", "CT", "MRI. The final answer is B", False),  # "answer:" wins
    ("My choice is: B. CT", "B", "CT", "B. CT", True),  # "is:"
    ("B", "B", "CT", "B", True),  # nothing matches: the whole response
    ("The correct option is (B)", "B", "CT", "The correct option is (B)", False),
    ("<answer>B</answer", "B", "CT", "B</answer", False),  # an unclosed tag is no tag
    ("", "B", "CT", "", False),
]


@pytest.mark.parametrize("response, letter, text, prediction, verdict", GRADER_TABLE)
def test_their_grader_on_a_table_of_responses(response, letter, text, prediction, verdict):
    assert protocol.extract_prediction(response) == prediction
    assert protocol.grade_prediction(protocol.extract_prediction(response), text, letter) is verdict


# ------------------------------------------------------------------ both verdicts, the metrics, the report


def _doc(source):
    return data.to_dataset(protocol.build_items("pmc", source=str(source)))[0]


def test_each_response_records_both_verdicts(source):
    doc = _doc(source)
    letter, text = doc["answer_letter"], doc["answer_text"]
    wrong = next(k for k in json.loads(doc["options"]) if k != letter)
    responses = [f"<think>x</think><answer>{letter}</answer>", f"The answer is {text}", f"<answer>{wrong}</answer>"]
    out = protocol.process_results(doc, [responses])
    assert set(out) == set(protocol.REPORTED) and len({id(r) for r in out.values()}) == 1
    record = out["medvlthinker_acc"]
    assert record["medvlthinker"]["correct"] == [True, True, False]
    assert record["medvlthinker"]["predictions"] == [letter, text, wrong]
    assert record["outcomes"][0] == "correct" and record["outcomes"][2] == "incorrect"
    assert record["n"] == protocol.RUNS and record["runs"] == protocol.RUNS
    assert record["data_sha256"] == doc["data_sha256"] and record["subset"] == "full"
    # lmms-eval's per-response re-scoring of repeated requests scores nothing.
    assert protocol.process_results(doc, [responses[0]]) == {}


def _record(item, theirs, ours, failed=False):
    outcomes = ["request_failed"] * len(ours) if failed else ["correct" if o else "incorrect" for o in ours]
    rec = metrics.make_record(item, "pmc", "A", ["A" if o else "B" for o in ours], outcomes=outcomes,
                              options={"A": "CT", "B": "MRI"})
    rec["medvlthinker"] = {"correct": list(theirs), "predictions": ["A" if t else "B" for t in theirs]}
    return rec


RECORDS = [
    _record("i1", [True, True, True], [True, True, True]),
    _record("i2", [True, False, True], [True, False, False]),
    _record("i3", [False, False, False], [False, True, True]),
    _record("i4", [True, True, False], [True, True, False]),
    _record("i5", [True, True, True], [True, True, True], failed=True),  # left out of every number
]


def test_the_protocol_metrics_are_run_means_with_their_spread():
    assert protocol.run_accuracies(RECORDS) == [0.75, 0.5, 0.5]
    assert protocol.agg_medvlthinker_acc(RECORDS) == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert protocol.agg_medvlthinker_spread(RECORDS) == pytest.approx(0.25)
    assert protocol.run_accuracies(RECORDS, protocol.ours) == [0.75, 0.75, 0.5]
    assert protocol.agg_medbridge_acc(RECORDS) == pytest.approx(2 / 3)
    assert protocol.agg_grader_agreement(RECORDS) == pytest.approx(9 / 12)  # 3 of 12 responses disagree
    names = [m.name for m in protocol.METRICS] + ["acc1"]
    assert not [(a, b) for a in names for b in names if a != b and a in b]  # lmms-eval matches by substring


def test_the_report_shows_both_accuracies_and_the_disagreeing_items():
    task = MEDVLTHINKER.task("pmc")
    summary, text = protocol.protocol_report({task: RECORDS, "medvqa_pmc": RECORDS})
    row = summary["tasks"][task]
    assert list(summary["tasks"]) == [task] and row["n_items"] == 4
    assert row["medvlthinker_acc"] == pytest.approx(7 / 12) and row["medbridge_acc"] == pytest.approx(2 / 3)
    assert [(d["item_id"], d["run"], d["theirs"], d["ours"]) for d in row["disagreements"]] == [
        ("i2", 3, True, False), ("i3", 2, False, True), ("i3", 3, False, True)]
    assert summary["average"]["complete"] is False and summary["average"]["n_tasks"] == 1
    assert "58.33" in text and "66.67" in text and "i2 run 3: theirs right, ours wrong" in text
    assert "average (partial: 1 tasks)" in text
    assert protocol.protocol_report({"medvqa_pmc": RECORDS}) == ({}, "")


def test_a_re_scored_record_is_graded_again_from_the_logged_responses():
    task = MEDVLTHINKER.task("pmc")
    rescored = {k: v for k, v in RECORDS[1].items() if k != "medvlthinker"}
    sample = {"acc1": RECORDS[1], "resps": [["<answer>A</answer>", "<answer>MRI</answer>", "answer: ct"]]}
    summary, _ = protocol.protocol_report({task: [rescored]}, {task: [sample]})
    assert summary["tasks"][task]["run_accuracies"] == [1.0, 0.0, 1.0]


# ------------------------------------------------------------------ end to end


@pytest.mark.e2e
def test_lmms_eval_runs_the_group_on_the_tiny_model(tmp_path, tiny_model_dir):
    """The .ci/run check: `lmms-eval --tasks medvqa_medvlthinker --limit 2` on the tiny model, then
    `medbridge report` with both graders."""
    import subprocess
    import sys

    from medbridge.harness_ext.runs import load_run

    src = build_medvqa_fixture(tmp_path / "eval", 3)
    model_args = (f"pretrained={tiny_model_dir},device=cpu,device_map=cpu,attn_implementation=sdpa,"
                  "min_pixels=3136,max_pixels=50176")
    proc = run_lmms_eval(
        ["--model", "qwen2_5_vl", "--model_args", model_args, "--tasks", protocol.NAME, "--limit", "2",
         "--gen_kwargs", "max_new_tokens=8", "--batch_size", "8", "--output_path", str(tmp_path / "out"),
         "--log_samples"],
        tmp_path,
        module="lmms_eval",
        env_extra={data.SOURCE_ENV: str(src), "MEDBRIDGE_DATA_CACHE": str(tmp_path / "data_cache")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = load_run(tmp_path / "out")
    res = run.results["results"]
    for spec in SETS:
        task = MEDVLTHINKER.task(spec)
        assert run.results["n-samples"][task]["effective"] == 2
        recs = run.records[task]
        assert len(recs) == 2 and all(r["n"] == protocol.RUNS for r in recs)
        assert all(len(r["medvlthinker"]["correct"]) == protocol.RUNS for r in recs)
        # The decoding the backend sent for the task is on every record (the plugin enforces the task's own).
        assert all(r["decoding"]["temperature"] in (0.0, 1.0) and r["decoding"]["do_sample"] is False for r in recs)
        assert res[task]["medvlthinker_acc,none"] == pytest.approx(protocol.agg_medvlthinker_acc(recs))
        cfg = run.results["configs"][task]
        assert cfg["repeats"] == protocol.RUNS and cfg["generation_kwargs"]["temperature"] == 0.0
    assert res[protocol.NAME]["medvlthinker_acc,none"] == pytest.approx(
        sum(res[MEDVLTHINKER.task(s)]["medvlthinker_acc,none"] for s in SETS) / len(SETS))
    report = subprocess.run([sys.executable, "-m", "medbridge.cli", "report", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "MedVLThinker protocol" in report.stdout and MEDVLTHINKER.task("pmc") in report.stdout
    summary = json.loads(next((tmp_path / "out").rglob("*_medbridge_summary.json")).read_text())
    assert set(summary["medvlthinker"]["tasks"]) == set(MEDVLTHINKER.greedy_tasks)
    assert MEDVQA.task("pmc") != MEDVLTHINKER.task("pmc")
