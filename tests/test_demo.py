"""README's demo block, run verbatim: the demo runs the real lmms-eval CLI with lmms-eval's own qwen2_5_vl
backend on the tiny model and all twelve MedMNIST-format fixtures, and prints the table, where the results
are and how to reach the leaderboard page (the demo's own store, never the default one)."""

import json
from pathlib import Path

import pytest

from .conftest import GREEDY_TASKS, SAMPLED_TASKS
from .test_readme import BLOCKS, block_env, run_block, scratch_checkout


@pytest.mark.e2e
@pytest.mark.slow
def test_readme_demo_block_runs_lmms_eval_on_all_twelve_datasets(tmp_path):
    (block,) = [b for b in BLOCKS if b.kind == "demo"]
    folder = scratch_checkout(tmp_path / "checkout")
    proc = run_block(block, folder, block_env(folder), timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = folder / "demo_out"
    # One results file: the run just made.
    results_files = list((out / "results").rglob("*_results.json"))
    assert len(results_files) == 1
    results = json.loads(results_files[0].read_text())
    for task in GREEDY_TASKS:
        assert "acc1,none" in results["results"][task], task
    for task in SAMPLED_TASKS:
        assert "pass_at_16,none" in results["results"][task], task
    assert results["n-samples"]["medmnist_mcq_chest"]["effective"] == 14  # one image per finding
    config = json.dumps(results.get("config", {}))
    assert "Qwen2_5_VL" in config or "qwen2_5_vl" in config
    for line in ("medmnist_mcq_retina", "medmnist overall", "Pass@16", "lmms-eval results:", "rebuild it: medbridge "
                 "leaderboard build --store"):
        assert line in proc.stdout
    index = Path(proc.stdout.split("leaderboard: ")[-1].split()[0])
    page = index.read_text()
    assert index.name == "index.html" and "Table 2" in page and "oct" in page
    assert index.is_relative_to(out) and not (folder / "medbridge_leaderboard").exists()  # not the default store
    assert f"open it: {index.resolve().as_uri()}" in proc.stdout
    summary = json.loads(Path(proc.stdout.split("medbridge summary: ")[1].split()[0]).read_text())
    assert set(summary["groups"]) == {"medmnist radiology", "medmnist microscopy", "medmnist photography",
                                      "medmnist overall"}
    # The tiny model carries Qwen2.5-VL's sampling defaults (top_k 1 among them): the Pass@K tasks
    # must still sample 16 different responses, not 16 copies of the greedy one.
    for name, row in summary["datasets"].items():
        assert row["collapsed"] is False and row["distinct"] > 8, (name, row["distinct"])
    assert "COLLAPSED" not in proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr  # lmms-eval's log is plain text when redirected


def test_demo_help_and_argument_checks(capsys):
    from medbridge.cli import main

    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0 and "--max-new-tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["demo", "--test-per-class", "0"])
    assert done.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_demo_runs_lmms_eval_through_the_shared_builder_at_224_px():
    from medbridge.harness_ext import lmms_eval_cli

    from medbridge import demo

    assert demo.lmms_eval_command is lmms_eval_cli.lmms_eval_command  # one builder for demo, training, tests
    args = dict(kv.split("=", 1) for kv in demo.qwen_cpu_model_args(Path("/m")).split(","))
    assert (args["min_pixels"], args["max_pixels"], args["device"]) == ("3136", "50176", "cpu")


def test_the_demo_reads_the_results_file_its_own_run_wrote(tmp_path):
    # An earlier demo in the same --out left a newer-named run there: the demo names its own, not "the newest".
    import os

    from medbridge.harness_ext.errors import MedbridgeError
    from medbridge.harness_ext.runs import results_files, results_written_since

    from .synthetic_runs import medmnist_run

    folder = tmp_path / "results"
    assert results_files(folder) == {}
    earlier = medmnist_run(folder, ("breast",), n_items=2, stamp="20990101_000000")
    before = results_files(folder)
    with pytest.raises(MedbridgeError, match=r"one \*_results.json under .* for this run, found none"):
        results_written_since(folder, before)
    ours = medmnist_run(folder, ("breast",), n_items=2, stamp="20260101_000000")
    os.utime(ours, (1_700_000_000, 1_700_000_000))  # even an older clock on our file does not matter
    assert results_written_since(folder, before) == ours
    earlier.write_text(earlier.read_text())  # rewritten in place during the run: it is one of the run's too
    os.utime(earlier, ns=(before[earlier] + 1, before[earlier] + 1))
    with pytest.raises(MedbridgeError, match="found .*20260101_000000_results.json; .*20990101_000000_results.json"):
        results_written_since(folder, before)
