"""medbridge_vlm through the real lmms-eval CLI (subprocesses) on MedMNIST fixtures + the tiny model.

* a greedy and a Pass@16 task: 16 samples per sampled item, one prefill per item (engine counters);
* a run killed half-way (the test-only ``medbridge_vlm_crashing`` model below exits the process
  after N stored items) resumes from the sample cache, generates only the missing items, and ends
  with exactly the results of an uninterrupted run;
* lmms-eval's standard per-clone path, replaying the very same samples (the test-only ``replay``
  model below), reports the same metrics as our grouped backend.

This module doubles as the launcher of those subprocesses: ``python -m medbridge.tests.test_backend_e2e
<lmms-eval args>`` registers medbridge_vlm, ``medbridge_vlm_crashing`` and ``replay`` and runs the
lmms-eval CLI.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest
from lmms_eval.api.model import lmms
from medbridge.harness_ext.backend.model import MedbridgeVLM

TASKS = ["medmnist_mcq_blood", "medmnist_mcq_blood_passk", "medmnist_mcq_oct_passk"]
LIMIT = 3
K = 16


class ReplayModel(lmms):
    """Test-only simple model: lmms-eval's ordinary per-clone path, answering clone i of a document
    with the i-th response recorded for it in the JSON file ``responses`` ({task: {doc_id: [...]}})."""

    is_simple = True

    def __init__(self, responses: str, **kwargs) -> None:
        super().__init__()
        self.responses = json.loads(Path(responses).read_text())
        self.served: dict[tuple[str, str], int] = defaultdict(int)

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:  # one call per clone, exactly as lmms-eval hands them over
            _ctx, _gen_kwargs, _visual, doc_id, task, _split = req.args
            i = self.served[(task, str(doc_id))]
            self.served[(task, str(doc_id))] += 1
            out.append(self.responses[task][str(doc_id)][i])
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


class CrashingVLM(MedbridgeVLM):
    """Test-only: medbridge_vlm that kills its own process (``os._exit(3)``, no cleanup, as a crash
    would) once ``crash_after_items`` generated items are stored in the sample cache."""

    def __init__(self, crash_after_items: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crash_after_items = int(crash_after_items)

    def _item_stored(self) -> None:
        if self.items_generated >= self.crash_after_items:
            self._write_stats()
            os._exit(3)


def main() -> None:
    from lmms_eval.cli.dispatch import main as lmms_eval_main
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelManifest
    from medbridge.harness_ext.backend import register

    register()  # a no-op once harness_ext/plugin.py lists the backend
    for model_id, kind, path in (
        ("replay", "simple_class_path", f"{LAUNCHER}.ReplayModel"),
        ("medbridge_vlm_crashing", "chat_class_path", f"{LAUNCHER}.CrashingVLM"),
    ):
        MODEL_REGISTRY_V2.register_manifest(ModelManifest(model_id=model_id, **{kind: path}), overwrite=True)
    lmms_eval_main()


# ---------------------------------------------------------------------------- tests
LAUNCHER = "medbridge.tests.test_backend_e2e"


def _model_args(model_dir: Path, **extra) -> str:
    args = {
        "pretrained": model_dir,
        "engine": "transformers",
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "min_pixels": 3136,
        "max_pixels": 50176,
        "seed": 7,
        **extra,
    }
    return ",".join(f"{k}={v}" for k, v in args.items())


def _run(model_dir: Path, data_root: Path, out: Path, *, model: str = "medbridge_vlm", **extra):
    from .conftest import run_lmms_eval

    stats = out / "stats.json"
    proc = run_lmms_eval(
        [
            "--model",
            model,
            "--model_args",
            _model_args(model_dir, stats_path=stats, **extra),
            "--tasks",
            ",".join(TASKS),
            "--limit",
            str(LIMIT),
            "--gen_kwargs",
            "max_new_tokens=8",
            "--output_path",
            str(out / "results"),
            "--log_samples",
        ],
        data_root,
        module=LAUNCHER,
        timeout=600,
    )
    return proc, (json.loads(stats.read_text()) if stats.exists() else None)


def _metrics(run) -> dict:
    """Every reported number, per task (lmms-eval's stderr entries and aliases left out)."""
    return {
        t: {m: v for m, v in r.items() if "," in m and "stderr" not in m}
        for t, r in run.results["results"].items()
        if t in TASKS
    }


def _responses(run) -> dict:
    from medbridge.harness_ext.report import responses_of

    return {t: {str(s["doc_id"]): responses_of(s) for s in run.samples[t]} for t in TASKS}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_model_dir):
    from medbridge.tasks.medmnist.fixtures import build_all

    root = tmp_path_factory.mktemp("backend_e2e")
    build_all(root / "data", test_per_class=1, train_per_class=1, val_per_class=1)
    return root, tiny_model_dir


@pytest.fixture(scope="module")
def full_run(fixtures):
    from medbridge.harness_ext.report import load_run

    root, model_dir = fixtures
    proc, stats = _run(model_dir, root / "data", root / "full", cache_dir=root / "full" / "cache")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_run(root / "full" / "results"), stats


@pytest.mark.e2e
def test_k_samples_per_item_from_one_prefill_each(full_run):
    run, stats = full_run
    for task in TASKS:
        assert len(run.samples[task]) == LIMIT
        for line in run.samples[task]:
            responses = [r for r in _flat(line)]
            if task.endswith("_passk"):
                assert len(responses) == K
                assert len(set(responses)) > 1  # sampled: not one answer copied K times
                assert line["pass_at_16"]["n"] == K
            else:
                assert len(responses) == 1
    items = LIMIT * len(TASKS)
    eng = stats["engine"]
    # One prompt encoding per document, counted by the engine from the tensors it ran: a blood item's
    # greedy request and its 16 samples share one prefill.
    assert eng["jobs"] == items and eng["prefill_prompts"] == eng["prefill_calls"] == items - LIMIT
    assert eng["prefill_tokens"] == eng["prompt_tokens"]
    assert eng["generated_samples"] == LIMIT * 1 + 2 * LIMIT * K
    assert stats["items_generated"] == items and stats["items_from_cache"] == 0
    assert "pass_at_16,none" in run.results["results"]["medmnist_mcq_oct_passk"]
    assert "acc1,none" in run.results["results"]["medmnist_mcq_blood"]


def _flat(line) -> list:
    from medbridge.harness_ext.report import responses_of

    return responses_of(line)


@pytest.mark.e2e
def test_killed_run_resumes_generating_only_what_is_missing(fixtures, full_run):
    from medbridge.harness_ext.report import load_run

    root, model_dir = fixtures
    out, cache_dir = root / "killed", root / "killed" / "cache"
    crashed, crash_stats = _run(
        model_dir, root / "data", out, model="medbridge_vlm_crashing", cache_dir=cache_dir, crash_after_items=4
    )
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    assert crash_stats["items_generated"] == 4
    assert not list((out / "results").rglob("*_results.json"))
    db = sqlite3.connect(cache_dir / "medbridge_samples.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    stored_before = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert stored_before == crash_stats["cache"]["writes"] > 0

    resumed, stats = _run(model_dir, root / "data", out, cache_dir=cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    items = LIMIT * len(TASKS)
    assert stats["items_from_cache"] == 4 and stats["items_generated"] == items - 4
    assert stats["engine"]["jobs"] == items - 4
    # One prefill per regenerated document: a blood item's greedy and Pass@16 requests share one.
    regenerated = db.execute("SELECT DISTINCT task, doc_id FROM samples WHERE run_id=?", (stats["cache"]["run_id"],))
    documents = {(task.removesuffix("_passk"), doc_id) for task, doc_id in regenerated.fetchall()}
    assert stats["engine"]["prefill_prompts"] == len(documents)
    assert stats["cache"]["hits"] == stored_before
    total = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    written_now = db.execute("SELECT COUNT(*) FROM samples WHERE run_id=?", (stats["cache"]["run_id"],)).fetchone()[0]
    assert written_now == stats["engine"]["generated_samples"] == total - stored_before

    run, _ = full_run
    assert _responses(load_run(out / "results")) == _responses(run)
    assert _metrics(load_run(out / "results")) == _metrics(run)


@pytest.mark.e2e
def test_clone_path_with_the_same_samples_reports_the_same_metrics(fixtures, full_run):
    from medbridge.harness_ext.report import load_run

    from .conftest import run_lmms_eval

    root, _ = fixtures
    run, _ = full_run
    responses = _responses(run)
    for task in TASKS:  # greedy docs are served once, sampled docs once per clone
        for doc_id, rs in responses[task].items():
            assert len(rs) == (K if task.endswith("_passk") else 1), (task, doc_id)
    path = root / "replay.json"
    path.write_text(json.dumps(responses))
    proc = run_lmms_eval(
        [
            "--model",
            "replay",
            "--model_args",
            f"responses={path}",
            "--tasks",
            ",".join(TASKS),
            "--limit",
            str(LIMIT),
            "--output_path",
            str(root / "replay"),
            "--log_samples",
        ],
        root / "data",
        module=LAUNCHER,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    replayed = load_run(root / "replay")
    assert _responses(replayed) == responses
    assert _metrics(replayed) == _metrics(run)
    # medbridge_vlm records the decoding it used and the model it loaded in every record; the replay model
    # records neither.
    assert all(r["decoding"] and r["model"]["fingerprint"] for t in TASKS for r in run.records[t])
    assert all("model" not in r for t in TASKS for r in replayed.records[t])
    assert _without_backend_records(replayed.records) == _without_backend_records(run.records)


def _without_backend_records(records: dict) -> dict:
    return {t: [{k: v for k, v in r.items() if k not in ("decoding", "model")} for r in rs]
            for t, rs in records.items()}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
