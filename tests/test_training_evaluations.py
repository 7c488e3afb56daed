"""Checkpoint evaluations after training: the plan a fresh evaluator process reads, which staged checkpoints
are still to evaluate (also after a kill and a resume), and what the commands print about where results
and leaderboard rows went. lmms-eval itself is replaced by a function here; the real run is the e2e test
``test_training_trainers.py::test_tiny_recipe_puts_every_checkpoint_on_the_leaderboard``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _checkpoint(output_dir: Path, step: int) -> Path:
    ckpt = output_dir / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_text("w")
    (ckpt / "optimizer.pt").write_text("o")
    return ckpt


@pytest.fixture
def fake_lmms_eval(monkeypatch):
    """evaluate_checkpoint / ingest without lmms-eval: step 2 fails the first time it is evaluated."""
    from medbridge.training import callbacks

    calls: list[tuple[int, str]] = []

    def evaluate(checkpoint, settings, output_path):
        step = int(Path(checkpoint).name.split("-")[1])
        calls.append((step, (Path(checkpoint) / "model.safetensors").read_text()))
        if step == 2 and sum(s == 2 for s, _ in calls) == 1:
            raise callbacks.CheckpointEvalError("no results for task(s) ['t']")
        Path(output_path).mkdir(parents=True, exist_ok=True)
        results = Path(output_path) / "r_results.json"
        results.write_text("{}")
        return results

    monkeypatch.setattr(callbacks, "evaluate_checkpoint", evaluate)
    monkeypatch.setattr(callbacks, "ingest_into_leaderboard", lambda store, out, **kw: 5)
    return calls


def _callback(output_dir: Path, store: Path | None):
    from medbridge.training.callbacks import CheckpointEvalCallback, EvalSettings

    return CheckpointEvalCallback(
        EvalSettings(tasks=["t"], limit=2, env={"X": "1"}),
        eval_root=output_dir / "evaluations",
        run_name="run-a",
        leaderboard_store=store,
    )


def _save(cb, output_dir: Path, step: int, weights: str = "w") -> None:
    from types import SimpleNamespace

    ckpt = output_dir / f"checkpoint-{step}"
    if not ckpt.is_dir():
        _checkpoint(output_dir, step)
    (ckpt / "model.safetensors").write_text(weights)
    state = SimpleNamespace(is_world_process_zero=True, global_step=step)
    cb.on_save(SimpleNamespace(output_dir=str(output_dir)), state, None)


def test_plan_round_trip_and_pending_checkpoints(tmp_path, fake_lmms_eval, capsys):
    from types import SimpleNamespace

    from medbridge.training.callbacks import CheckpointEvalCallback, pending_checkpoints
    from medbridge.training.evaluations import evaluate_pending

    out, store = tmp_path / "run", tmp_path / "lb.sqlite"
    cb = _callback(out, store)
    cb.on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None)
    again = CheckpointEvalCallback.from_plan(out / "evaluations")
    assert again.settings == cb.settings and again.run_name == "run-a"
    assert again.leaderboard_store == str(store.resolve())  # absolute: the evaluator may run elsewhere

    for step in (1, 2, 3):
        _save(cb, out, step)
    assert fake_lmms_eval == []  # nothing ran during training (no device of its own)
    assert [s for s, _ in pending_checkpoints(out / "evaluations", "run-a")] == [1, 2, 3]

    records = evaluate_pending(out)
    printed = capsys.readouterr()
    assert [r["step"] for r in records] == [1, 2, 3] and "error" in records[1]
    assert all("evaluator_pid" in r and "gpu_memory_mib_before" in r for r in records)
    results = out / "evaluations" / "step-1" / "r_results.json"
    line = f"checkpoint-1: results {results}; leaderboard {store.resolve()}: 5 row(s) (run run-a, step 1)"
    assert line in printed.out
    assert "checkpoint-2: evaluation FAILED: CheckpointEvalError: no results for task(s) ['t']" in printed.err
    assert str(out / "evaluations" / "evaluations.jsonl") in printed.out

    # Nothing left by default; --retry-failed redoes step 2 only.
    assert pending_checkpoints(out / "evaluations", "run-a") == []
    assert [s for s, _ in pending_checkpoints(out / "evaluations", "run-a", retry_failed=True)] == [2]
    assert [r["step"] for r in evaluate_pending(out, retry_failed=True)] == [2]
    assert pending_checkpoints(out / "evaluations", "run-a", retry_failed=True) == []


def test_a_step_saved_again_after_a_resume_is_evaluated_again(tmp_path, fake_lmms_eval):
    """A kill after checkpoint-1 was evaluated; the resumed run saves checkpoint-1 again (other weights):
    that staging has no record yet, so it is evaluated with the weights it holds now."""
    from medbridge.training.callbacks import pending_checkpoints
    from medbridge.training.evaluations import evaluate_pending

    out = tmp_path / "run"
    cb = _callback(out, None)
    cb.write_plan()
    _save(cb, out, 1, weights="before the kill")
    evaluate_pending(out)
    assert pending_checkpoints(out / "evaluations", "run-a") == []
    _save(_callback(out, None), out, 1, weights="after the resume")
    assert [s for s, _ in pending_checkpoints(out / "evaluations", "run-a")] == [1]
    evaluate_pending(out)
    assert fake_lmms_eval == [(1, "before the kill"), (1, "after the resume")]


def test_evaluations_during_training_pick_up_what_a_killed_run_left(tmp_path, fake_lmms_eval):
    from types import SimpleNamespace

    from medbridge.training.callbacks import CheckpointEvalCallback, EvalSettings

    out = tmp_path / "run"
    first = _callback(out, None)
    _save(first, out, 1)  # staged, then the process was killed before evaluating it
    cb = CheckpointEvalCallback(
        EvalSettings(tasks=["t"]), eval_root=out / "evaluations", run_name="run-a", during_training=True
    )
    cb.on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None)
    assert [r["step"] for r in cb.wait(timeout=10)] == [1]


def test_evaluator_command_exit_codes(tmp_path, fake_lmms_eval, capsys):
    from medbridge.training.evaluations import main

    assert main([]) == 2
    assert main([str(tmp_path / "not-a-run")]) == 2  # no plan.json: a user error, one paragraph
    assert "plan.json does not exist" in capsys.readouterr().err
    out = tmp_path / "run"
    cb = _callback(out, None)
    cb.write_plan()
    _save(cb, out, 2)
    assert main([str(out)]) == 1  # step 2 fails the first time: recorded, printed, exit 1
    assert main([str(out), "--retry-failed"]) == 0
    assert json.loads((out / "evaluations" / "evaluations.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_a_retried_evaluation_reads_the_results_file_it_wrote(tmp_path, monkeypatch):
    """An earlier attempt left a run in the same output folder (newer by name and by clock): the checkpoint's
    evaluation reads the file its own lmms-eval process wrote, never "the newest" one there."""
    import os
    import sys

    from medbridge.training import callbacks

    from .synthetic_runs import medmnist_run

    out = tmp_path / "evaluations" / "step-2"
    earlier = medmnist_run(out, ("breast",), n_items=2, sampled=False, stamp="20990101_000000")
    os.utime(earlier, (2_000_000_000, 2_000_000_000))
    writer = (
        "import os, sys; from medbridge.tests.synthetic_runs import medmnist_run; "
        "p = medmnist_run(sys.argv[1], ('blood',), n_items=2, sampled=False, stamp='20260101_000000'); "
        "os.utime(p, (1_700_000_000, 1_700_000_000))"
    )
    monkeypatch.setattr(callbacks, "build_eval_command", lambda ckpt, s, o: [sys.executable, "-c", writer, str(o)])
    settings = callbacks.EvalSettings(["medmnist_mcq_blood"])
    results = callbacks.evaluate_checkpoint(tmp_path / "checkpoint-2", settings, out)
    assert results.name.endswith("20260101_000000_results.json") and results != earlier
