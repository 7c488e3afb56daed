"""The README's documented option names and commands stay in sync with the code."""

from pathlib import Path

from medbridge.tasks.medmnist.catalog import SETS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_option_table_matches_catalog():
    for spec in SETS:
        row = "; ".join(f"{i}: {c}" for i, c in enumerate(spec.classes))
        assert f"| `medmnist_mcq_{spec.name}` | {spec.flag} | {spec.modality} |" in README
        assert row in README, spec.name


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/run_tests.sh" in README and "bash scripts/run_tests.sh" in ci


def test_medbridge_help_lists_every_command(capsys):
    import pytest

    from medbridge.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "report", "rescore", "data", "leaderboard", "recipe", "probe", "train", "eval-checkpoint"):
        assert command in out
