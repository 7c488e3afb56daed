"""Adversarial arguments to the `medbridge` command: every bad input ends in a clear message and exit
code 2 (or 0 where it is valid), never a Python traceback; a bug ends in a message naming the log file
that holds the traceback.

Most cases call ``medbridge.cli.main`` in this process (a fresh process costs seconds of imports);
a few run the console script and ``python -m medbridge.cli`` to check the real entry points.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from medbridge.harness_ext.errors import MedbridgeError, SettingError

from medbridge.cli import main
from medbridge.error_handling import USER_ERROR_EXIT, run_guarded, user_error_message


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Logs into the test's folder; the working folder too (some commands default to ./something)."""
    monkeypatch.setenv("MEDBRIDGE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, Path]:
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder\n")
    truncated_run = tmp_path / "truncated_run"
    truncated_run.mkdir()
    (truncated_run / "model_results.json").write_text('{"results": {"medmnist_mcq_breast": {')
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    (tmp_path / "bad.yaml").write_text("model_name_or_path: [unclosed\n")
    (tmp_path / "unknown_key.yaml").write_text("model_name_or_path: /nope\nlearning_rat: 1.0e-6\n")
    return {"file": a_file, "truncated": truncated_run, "empty": empty_run, "missing": tmp_path / "missing",
            "bad_yaml": tmp_path / "bad.yaml", "unknown_key": tmp_path / "unknown_key.yaml"}


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """main()'s exit code, stdout and stderr; argparse's usage errors and --help leave as SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (argv with {placeholders} from bad_inputs, text the message must hold)
USAGE_ERRORS = [
    (["build-fixtures", "--root", "{missing}", "--test-per-class", "0"], "must be >= 1"),
    (["build-fixtures", "--root", "{missing}", "--train-per-class", "-3"], "must be >= 1"),
    (["build-fixtures", "--root", "{missing}", "--seed", "abc"], "'abc' is not an integer"),
    (["build-fixtures"], "--root"),
    (["build-tiny-model", "--out", "{missing}", "--seed", "-1"], "must be >= 0"),
    (["demo", "--max-new-tokens", "0"], "must be >= 1"),
    (["demo", "--batch-size", "1.5"], "not an integer"),
    (["demo", "--test-per-class", "-2"], "must be >= 1"),
    (["data", "medmnist", "--flags", "nosuchmnist"], "unknown MedMNIST dataset 'nosuchmnist'"),
    (["data"], "required"),
    (["no-such-command"], "invalid choice"),
    ([], "required"),
    (["judge"], "required"),
    (["train", "grpo-but-wrong"], "invalid choice"),
    (["leaderboard", "ingest"], "required"),
    (["report"], "required"),
]


@pytest.mark.parametrize(("argv", "expected"), USAGE_ERRORS, ids=[" ".join(a) or "(none)" for a, _ in USAGE_ERRORS])
def test_adversarial_usage_errors_exit_2_with_usage(capsys, bad_inputs, argv, expected):
    code, _, err = run_cli(capsys, [a.format(**bad_inputs) for a in argv])
    assert code == USER_ERROR_EXIT, err
    assert expected in err and "usage: medbridge" in err
    assert "Traceback" not in err


# Arguments that parse but name something unusable: the command's own message, exit 2.
INPUT_ERRORS = [
    (["build-fixtures", "--root", "{file}"], "{file} is a file, not a folder"),
    (["build-fixtures", "--root", "{file}/below"], "{file} is a file, not a folder"),
    (["build-tiny-model", "--out", "{file}"], "{file} is a file, not a folder"),
    (["data", "medmnist", "--root", "{file}"], "{file} is a file, not a folder"),
    (["demo", "--out", "{file}"], "{file} is a file, not a folder"),
    (["report", "{missing}"], "{missing}"),
    (["report", "{truncated}"], "model_results.json"),
    (["report", "{empty}"], "{empty}"),
    (["report", "{file}"], "{file}"),
    (["rescore", "{missing}"], "{missing}"),
    (["rescore", "{truncated}"], "model_results.json"),
    (["data", "build-medmnist-train", "--names", "breast", "--out", "{missing}/o", "--root", "{missing}"],
     "breastmnist_224.npz"),
    (["train", "grpo", "--config", "{missing}.yaml"], "{missing}.yaml"),
    (["train", "grpo", "--config", "{bad_yaml}"], "{bad_yaml}"),
    (["train", "grpo", "--config", "{unknown_key}"], "unknown key(s) learning_rat"),
    (["train", "sft", "--config", "{file}"], "must be a YAML mapping"),
    (["data", "build-medmnist-train", "--names", "nosuch", "--out", "{missing}"], "unknown MedMNIST dataset 'nosuch'"),
    (["data", "build-pmc-vqa", "--csv", "{file}", "--out", "{missing}"], "missing column(s)"),
    (["judge", "check", "--base-url", "garbage", "--model", "m"], "'garbage' is not an http(s) URL"),
    (["judge", "check", "--base-url", "http://[::1", "--model", "m"], "is not an http(s) URL"),
    (["leaderboard", "build", "--store", "{file}"], "{file}"),
    (["recipe", "{missing}"], "no leaderboard store at"),
]


@pytest.mark.parametrize(("argv", "expected"), INPUT_ERRORS, ids=[" ".join(a) for a, _ in INPUT_ERRORS])
def test_adversarial_bad_inputs_exit_2_naming_the_culprit(capsys, bad_inputs, argv, expected):
    code, _, err = run_cli(capsys, [a.format(**bad_inputs) for a in argv])
    assert code == USER_ERROR_EXIT, err
    assert expected.format(**bad_inputs) in err
    assert "Traceback" not in err and "unexpected error" not in err
    assert len(err.strip().splitlines()) == 1, err  # one paragraph


def test_adversarial_setting_error_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("MEDBRIDGE_JUDGE_TIMEOUT", "soon")
    code, _, err = run_cli(capsys, ["judge", "check", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert code == USER_ERROR_EXIT, err
    assert "MEDBRIDGE_JUDGE_TIMEOUT='soon'" in err and "Traceback" not in err


def test_adversarial_data_root_variable_that_is_a_file_is_named(capsys, bad_inputs, monkeypatch):
    monkeypatch.setenv("MEDBRIDGE_MEDMNIST_ROOT", str(bad_inputs["file"]))
    code, _, err = run_cli(capsys, ["data", "medmnist", "--flags", "breast"])
    assert code == USER_ERROR_EXIT and f"MEDBRIDGE_MEDMNIST_ROOT {bad_inputs['file']}" in err
    assert "Traceback" not in err


def test_adversarial_bad_flag_variable_is_named_by_a_data_command(capsys, tmp_path, monkeypatch):
    from medbridge.tasks.medmnist.fixtures import build_all

    build_all(tmp_path / "fx", test_per_class=1, train_per_class=1, val_per_class=1)
    monkeypatch.setenv("MEDBRIDGE_MEDMNIST_DOWNLOAD", "maybe")
    code, _, err = run_cli(capsys, ["data", "build-medmnist-train", "--names", "breast", "--out", tmp_path / "out",
                                    "--root", tmp_path / "fx"])
    assert code == USER_ERROR_EXIT and "MEDBRIDGE_MEDMNIST_DOWNLOAD='maybe'" in err and "Traceback" not in err


def test_adversarial_judge_serve_missing_python(capsys):
    code, _, err = run_cli(capsys, ["judge", "serve", "--model", "m", "--vllm-python", "/nope/python"])
    assert code == USER_ERROR_EXIT and "/nope/python" in err and "Traceback" not in err


def test_adversarial_data_medmnist_offline_says_how_to_install_by_hand(capsys, tmp_path, monkeypatch):
    """What urllib raises when the host cannot be resolved, raised where medmnist downloads."""
    import torchvision.datasets.utils as tv_utils

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(tv_utils, "download_url", unreachable)
    root = tmp_path / "medmnist"
    code, _, err = run_cli(capsys, ["data", "medmnist", "--flags", "breast", "--root", root])
    assert code == USER_ERROR_EXIT, err
    assert "zenodo.org" in err and "Name or service not known" in err
    assert f"{root / 'breastmnist_224.npz'}" in err and "MEDBRIDGE_MEDMNIST_ROOT" in err
    assert "https://zenodo.org/records/" in err and "MD5" in err
    assert "medbridge data medmnist" not in err.split("error:", 1)[1]  # no "run the same command again"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_adversarial_valid_commands_exit_0(capsys, tmp_path):
    code, out, _ = run_cli(capsys, ["tasks-path"])
    assert code == 0 and Path(out.strip(), "medmnist").is_dir()
    code, out, _ = run_cli(capsys, ["build-fixtures", "--root", tmp_path / "fx", "--test-per-class", "1",
                                    "--train-per-class", "1", "--val-per-class", "1"])
    assert code == 0 and "wrote 12 MedMNIST-format files" in out
    code, out, _ = run_cli(capsys, ["report", "--help"])
    assert code == 0 and "usage: medbridge report" in out


# Commands of other folders that still end with a code other than 2 (see the report to their owners);
# they must at least never print a traceback.


# ------------------------------------------------------------------ the handler itself


def test_adversarial_unexpected_error_names_the_log_with_the_traceback(tmp_path, capsys):
    def buggy() -> int:
        return {}["missing key"]

    code = run_guarded(buggy, ["report", "run"], lambda: "medbridge report")
    err = capsys.readouterr().err
    assert code == 1
    assert "unexpected error: KeyError: 'missing key'" in err and "Traceback" not in err
    log = Path(err.split("the full traceback is in ")[1].split(". ")[0])
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert "command: medbridge report run" in text and "Traceback" in text and "in buggy" in text


def test_adversarial_unwritable_log_dir_falls_back_to_tmp(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("MEDBRIDGE_LOG_DIR", str(blocker))
    code = run_guarded(lambda: 1 / 0, [], lambda: "medbridge x")
    err = capsys.readouterr().err
    assert code == 1 and "ZeroDivisionError" in err and "Traceback" not in err
    assert Path(err.split("the full traceback is in ")[1].split(". ")[0]).is_file()


@pytest.mark.parametrize(("error", "expected"), [
    (MedbridgeError("row 3 of x.jsonl: field 'options'\n  is empty; fix the row"),
     "row 3 of x.jsonl: field 'options' is empty; fix the row"),
    (SettingError("MEDBRIDGE_MEDMNIST_SEED='abc' is not an integer"),
     "MEDBRIDGE_MEDMNIST_SEED='abc' is not an integer"),
    (FileNotFoundError(2, "No such file or directory", "/data/run"), "No such file or directory: /data/run"),
    (IsADirectoryError(21, "Is a directory", "/data"), "Is a directory: /data"),
    (PermissionError(13, "Permission denied", "/root/x"), "Permission denied: /root/x"),
    (json.JSONDecodeError("Expecting value", "{", 1), "invalid JSON (Expecting value at line 1, column 2)"),
])
def test_adversarial_user_errors_are_one_paragraph(error, expected):
    assert user_error_message(error) == expected


def test_adversarial_errors_without_a_culprit_are_bugs():
    # An OSError that names no file, or a plain ValueError, says nothing the user can act on.
    assert user_error_message(FileNotFoundError("gone")) is None
    assert user_error_message(ValueError("bad")) is None
    assert user_error_message(ConnectionResetError(104, "reset")) is None


def test_adversarial_systemexit_message_is_a_user_error(capsys):
    def stop() -> int:
        raise SystemExit("results.json: no medbridge sample records found (was --log_samples set?)")

    assert run_guarded(stop, [], lambda: "medbridge report") == USER_ERROR_EXIT
    assert capsys.readouterr().err == ("medbridge report: error: results.json: no medbridge sample records "
                                       "found (was --log_samples set?)\n")


# ------------------------------------------------------------------ the real entry points


def _entry_point_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MEDBRIDGE_LOG_DIR": str(tmp_path / "logs")}


def test_adversarial_console_script_and_module(tmp_path):
    script = Path(sys.executable).with_name("medbridge")
    runs = [
        ([str(script)] if script.exists() else [sys.executable, "-m", "medbridge.cli"])
        + ["build-fixtures", "--root", str(tmp_path), "--test-per-class", "0"],
        [sys.executable, "-m", "medbridge.cli", "report", str(tmp_path / "missing")],
    ]
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_entry_point_env(tmp_path))
        assert proc.returncode == USER_ERROR_EXIT, proc.stderr
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_adversarial_models_lists_medbridge_vlm(capsys):
    code, out, _ = run_cli(capsys, ["models"])
    names = [line.split("\t")[0] for line in out.splitlines() if "\t" in line]
    assert code == 0 and names == ["medbridge_vlm"]  # test-only backends are registered by tests, not here
    assert "medbridge.harness_ext.backend" in out
