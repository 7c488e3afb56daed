"""What ``medbridge train`` and ``medbridge eval-checkpoint`` say to a user: --config in the help, a missing
training extra named as such, recipes that are not regular files refused before they are read, and where
results and leaderboard rows went."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _medbridge(*args: str, env_extra: dict[str, str] | None = None, timeout: int = 300):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "medbridge.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_train_without_the_training_extra_says_what_to_install(tmp_path):
    # A `trl` that fails to import exactly as a missing package does (ModuleNotFoundError, name='trl').
    fake = tmp_path / "no_trl" / "trl"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'trl'\", name='trl')\n")
    pythonpath = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for args in (["train", "care", "--help"], ["train", "grpo", "--config", "training/recipes/tiny_cpu_grpo.yaml"]):
        proc = _medbridge(*args, env_extra={"PYTHONPATH": pythonpath})
        assert proc.returncode == 2, proc.stderr
        assert "pip install 'medbridge[training]'" in proc.stderr and "no module 'trl'" in proc.stderr
        assert "bug in medbridge" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_help_shows_config_first(capsys):
    from medbridge.cli import main

    for trainer in ("grpo", "care", "sft"):
        assert main(["train", trainer, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: medbridge train {trainer} --config RECIPE.yaml")
        options = out[out.index("options:") :]
        assert options.index("--config RECIPE.yaml") < options.index("--output_dir")  # listed first
        assert "--resume_from_checkpoint" in out


@pytest.mark.slow
def test_recipe_that_is_not_a_regular_file_is_refused_with_exit_2(tmp_path, capsys):
    from medbridge.cli import main

    fifo = tmp_path / "recipe.fifo"
    os.mkfifo(fifo)  # nobody writes: reading it would block forever
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse, 64 MiB
    for path, why in (("/dev/zero", "character device"), (str(fifo), "FIFO"), (str(huge), "MiB")):
        assert main(["train", "grpo", "--config", path]) == 2, path
        err = capsys.readouterr().err
        assert path in err and why in err, err
    assert main(["train", "grpo", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_train_evaluate_usage(capsys):
    from medbridge.cli import main

    assert main(["train", "evaluate"]) == 2
    assert "medbridge train evaluate OUTPUT_DIR [--retry-failed]" in capsys.readouterr().err
    assert main(["train", "evaluate", "--help"]) == 0


def test_eval_checkpoint_says_where_results_and_rows_went(tmp_path, monkeypatch, capsys):
    from medbridge.training import callbacks

    from medbridge.cli import main

    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    results = tmp_path / "out" / "x_results.json"
    monkeypatch.setattr(callbacks, "evaluate_checkpoint", lambda checkpoint, settings, output: results)
    monkeypatch.setattr(callbacks, "ingest_into_leaderboard", lambda store, out, **kw: 7)
    common = ["eval-checkpoint", str(ckpt), "--tasks", "medmnist_mcq_breast", "--output", str(results.parent)]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert f"results: {results}" in out and "leaderboard: not added (pass --store STORE" in out
    monkeypatch.chdir(tmp_path)
    assert main([*common, "--leaderboard", "lb.sqlite", "--run", "r", "--step", "3"]) == 0
    out = capsys.readouterr().out
    assert f"leaderboard {Path(tmp_path, 'lb.sqlite')}: 7 row(s) added, run r, step 3" in out


@pytest.mark.slow
def test_trl_checkpointing_default_uses_the_new_name_without_a_future_warning():
    import warnings

    from medbridge.training.configs import parse_recipe

    recipe = str(Path(__file__).resolve().parents[1] / "training" / "recipes" / "tiny_cpu_grpo.yaml")
    for extra, expected in (([], True), (["--gradient_checkpointing", "false"], False)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _, cfg, _ = parse_recipe("grpo", ["--config", recipe, "--output_dir", "/tmp/x", *extra])
        assert cfg.gradient_checkpointing is expected  # TRL's default (True), or the recipe's
        assert getattr(cfg, "activation_checkpointing", expected) is expected
        assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
