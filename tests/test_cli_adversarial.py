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
from medbridge.tasks.families import MEDMNIST

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


def _marked(cases: list[tuple[list[str], str]]) -> list:
    """Cases as pytest params; `train` ones import TRL (seconds): slow."""
    return [pytest.param(argv, expected, id=" ".join(argv).replace("{", "").replace("}", ""),
                         marks=[pytest.mark.slow] if argv[0] == "train" else [])
            for argv, expected in cases]


@pytest.mark.parametrize(("argv", "expected"), _marked(INPUT_ERRORS))
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_adversarial_valid_commands_exit_0(capsys, tmp_path):
    code, out, _ = run_cli(capsys, ["tasks-path"])
    assert code == 0 and Path(out.strip(), "medmnist").is_dir()
    code, out, _ = run_cli(capsys, ["build-fixtures", "--root", tmp_path / "fx", "--test-per-class", "1",
                                    "--train-per-class", "1", "--val-per-class", "1"])
    assert code == 0 and f"wrote {MEDMNIST.count} MedMNIST-format files" in out
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


@pytest.mark.slow
def test_adversarial_models_lists_medbridge_vlm(capsys):
    code, out, _ = run_cli(capsys, ["models"])
    names = [line.split("\t")[0] for line in out.splitlines() if "\t" in line]
    assert code == 0 and names == ["medbridge_vlm"]  # test-only backends are registered by tests, not here
    assert "medbridge.harness_ext.backend" in out


# ------------------------------------------------------------------ round two (issue 21): found by fuzzing
# every subcommand's arguments (names too long, folders, FIFOs, devices, huge numbers, non-UTF-8 names).
# Each case took the bug path (exit 1), hung, or ran out of memory before; now it is one paragraph, exit 2.

LONG = "n" * 300  # over NAME_MAX (255)


@pytest.fixture
def hostile(tmp_path) -> dict[str, Path]:
    from .synthetic_runs import medmnist_run

    medmnist_run(tmp_path / "run", n_items=4)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file.txt").write_text("x\n")
    return {"run": tmp_path / "run", "fifo": tmp_path / "fifo", "long": tmp_path / LONG, "tmp": tmp_path}


# (argv, what the one-paragraph message must hold)
ROUND_TWO = [
    (["build-fixtures", "--root", "{long}"], "File name too long: {long}"),
    (["build-tiny-model", "--out", "{long}"], "File name too long: {long}"),
    (["data", "medmnist", "--flags", "breast", "--root", "{long}"], "File name too long"),
    (["data", "build-medmnist-train", "--names", "breast", "--out", "{tmp}/o", "--root", "{long}"], "too long"),
    (["data", "build-pmc-vqa", "--out", "{tmp}/o", "--csv", "{long}"], "{long}"),
    (["leaderboard", "ingest", "--store", "{tmp}/s.sqlite", "{long}"], "File name too long"),
    (["leaderboard", "build", "--store", "{long}"], "File name too long"),
    (["leaderboard", "build", "--store", "{tmp}/s.sqlite", "--out", "{long}"], "File name too long"),
    (["report", "{long}"], "File name too long: {long}"),
    (["rescore", "{long}"], "File name too long: {long}"),
    (["report", "{run}", "--json", "{long}"], "too long"),
    (["judge", "serve", "--model", "m", "--log", "{long}"], "{long}"),
    (["judge", "serve", "--model", "m", "--vllm-python", "{long}"], "File name too long: {long}"),
    (["report", "{run}", "--json", "/dev/full"], "summary JSON /dev/full: is a character device"),
    (["report", "{run}", "--json", "{fifo}"], "summary JSON {fifo}: is a FIFO"),
    (["report", "{run}", "--json", "{tmp}"], "summary JSON {tmp}: is a folder"),
    (["data", "build-pmc-vqa", "--out", "{tmp}/o", "--csv", "/dev/zero"],
     "PMC-VQA CSV /dev/zero: is a character device"),
    (["data", "build-pmc-vqa", "--out", "{tmp}/o", "--csv", "{fifo}"], "PMC-VQA CSV {fifo}: is a FIFO"),
    (["judge", "serve", "--model", "m", "--log", "{fifo}"], "judge serve --log {fifo}: is a FIFO"),
    (["train", "grpo", "--config", "/dev/zero"], "/dev/zero: is a character device"),
    (["leaderboard", "build", "--store", "{tmp}"], "is a folder"),
    (["leaderboard", "ingest", "{run}", "--store", "{fifo}"], "is not a regular file"),
]


@pytest.mark.parametrize(("argv", "expected"), _marked(ROUND_TWO))
def test_adversarial_round_two_hostile_paths_exit_2_naming_them(capsys, hostile, argv, expected):
    code, _, err = run_cli(capsys, [a.format(**hostile) for a in argv])
    assert code == USER_ERROR_EXIT, err
    last = err.strip().splitlines()[-1]
    assert expected.format(**hostile) in last, err
    assert "Traceback" not in err and "unexpected error" not in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["report", "{run}", "--bootstrap", str(10**20)], "must be <= 100,000"),
    (["rescore", "{run}", "--bootstrap", "0"], "must be >= 1"),
    (["build-fixtures", "--root", "{tmp}/fx", "--test-per-class", str(10**20)], "must be <= 1,000"),
    (["build-fixtures", "--root", "{tmp}/fx", "--seed", str(2**64)], "must be <= 4,294,967,295"),
    (["demo", "--max-new-tokens", str(10**9)], "must be <= 32,768"),
    (["demo", "--batch_size", str(10**9)], "must be <= 4,096"),
])
def test_adversarial_huge_numbers_are_usage_errors(capsys, hostile, argv, expected):
    """10**20 resamples (a numpy error) or images per class (memory until the kernel kills it) before."""
    code, _, err = run_cli(capsys, [a.format(**hostile) for a in argv])
    assert code == USER_ERROR_EXIT and expected in err and "usage: medbridge" in err, err


@pytest.mark.slow
def test_adversarial_a_data_folder_whose_name_is_not_utf8(capsys, tmp_path):
    """The content-hash memo encoded the file's path as strict UTF-8 (UnicodeEncodeError, exit 1)."""
    from medbridge.tasks.medmnist.fixtures import build_all

    root = Path(os.fsdecode(bytes(tmp_path) + b"/data-\xff"))
    build_all(root, test_per_class=1, train_per_class=1, val_per_class=1)
    code, out, err = run_cli(capsys, ["data", "medmnist", "--flags", "breast", "--root", root])
    assert code == 0, err
    assert "breastmnist: ok" in out


@pytest.mark.slow
def test_adversarial_printing_a_non_utf8_path_does_not_fail_the_command(tmp_path):
    """A real process, stdout a pipe: printing the path raised UnicodeEncodeError after the work was done."""
    root = bytes(tmp_path) + b"/fixtures-\xff"
    done = subprocess.run([sys.executable, "-m", "medbridge.cli", "build-fixtures", "--root", root,
                           "--test-per-class", "1", "--train-per-class", "1", "--val-per-class", "1"],
                          capture_output=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert f"wrote {MEDMNIST.count} MedMNIST-format files to".encode() in done.stdout
    assert b"fixtures-\\udcff" in done.stdout


def test_adversarial_version(capsys):
    code, out, _ = run_cli(capsys, ["--version"])
    assert code == 0 and out.startswith("medbridge ") and "lmms-eval 0.7" in out


# ------------------------------------------------------------------ medbridge task errors inside lmms-eval


def test_adversarial_task_error_inside_lmms_eval_ends_the_run_with_exit_2(capsys):
    """lmms-eval retries a failing process_docs and then logs it and exits 0; a guarded one leaves at once."""
    from medbridge.harness_ext import lmms_eval_exit
    from medbridge.harness_ext.errors import MedbridgeError
    from tenacity import retry, stop_after_attempt, wait_fixed

    calls = []

    def process_docs(dataset):
        calls.append(1)
        raise MedbridgeError("MedMNIST file not found: expected /x/breastmnist_224.npz")

    process_docs.__module__ = "medbridge.tasks.medmnist.utils"
    config = {"task": "medmnist_mcq_breast", "process_docs": process_docs, "doc_to_text": str}
    lmms_eval_exit.guard_task_config(config)
    assert config["doc_to_text"] is str  # not ours: left alone
    monkey_state = lmms_eval_exit._ended_with
    try:
        @retry(stop=stop_after_attempt(5), wait=wait_fixed(2))
        def download():  # lmms-eval's ConfigurableTask.download shape
            return config["process_docs"]([])

        with pytest.raises(SystemExit) as done:
            try:
                download()
            except Exception:  # lmms-eval's cli_evaluate: 'except Exception' then exit 0
                pytest.fail("the error reached lmms-eval's handler")
        assert done.value.code == USER_ERROR_EXIT and calls == [1]  # no retries
        err = capsys.readouterr().err
        assert err.strip() == ("lmms-eval: medbridge task medmnist_mcq_breast: error: MedMNIST file not found: "
                               "expected /x/breastmnist_224.npz")
    finally:
        lmms_eval_exit._ended_with = monkey_state


def test_adversarial_bug_inside_lmms_eval_exits_1_naming_the_log(capsys, tmp_path):
    from medbridge.harness_ext import lmms_eval_exit

    def process_results(doc, results):
        return {}["missing"]

    guarded = lmms_eval_exit.guard(process_results, "medvqa_pmc", "process_results")
    state = lmms_eval_exit._ended_with
    try:
        with pytest.raises(SystemExit) as done:
            guarded({}, [])
        assert done.value.code == 1
        err = capsys.readouterr().err
        assert "medbridge task medvqa_pmc: unexpected error in process_results: KeyError" in err
        log = Path(err.split("the full traceback is in ")[1].split(". ")[0])
        assert log.parent == tmp_path / "logs" and "in process_results" in log.read_text()
    finally:
        lmms_eval_exit._ended_with = state


def test_adversarial_retry_errors_are_unwrapped_to_the_users_error():
    from medbridge.harness_ext.lmms_eval_exit import _root_cause
    from tenacity import RetryError, retry, stop_after_attempt

    @retry(stop=stop_after_attempt(1))
    def fails():
        raise SettingError("MEDBRIDGE_JUDGE_MODE='x' is not a mode")

    with pytest.raises(RetryError) as wrapped:
        fails()
    assert str(_root_cause(wrapped.value)) == "MEDBRIDGE_JUDGE_MODE='x' is not a mode"


def test_adversarial_the_plugin_guards_task_utils_loaded_by_file_path():
    """A task YAML's `!function utils.process_docs` is imported by path (module name `utils`): still ours."""
    import importlib.util

    from medbridge.harness_ext import lmms_eval_exit, plugin

    spec = importlib.util.spec_from_file_location("utils", Path(plugin.TASKS_DIR) / "medmnist" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.process_docs.__module__ == "utils" and lmms_eval_exit._is_ours(utils.process_docs)
    from lmms_eval.api.task import ConfigurableTask

    assert getattr(ConfigurableTask.__init__, "_medbridge_guarded", False)  # installed by importing the plugin


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("env", "expected"), [
    ({"MEDBRIDGE_MEDMNIST_ROOT": "{tmp}/nodata"}, "MedMNIST file not found: expected {tmp}/nodata/breastmnist_224.npz"),
    ({"MEDBRIDGE_MEDMNIST_PER_CLASS": "abc"}, "MEDBRIDGE_MEDMNIST_PER_CLASS must be a positive integer or 'all'"),
    ({"MEDBRIDGE_JUDGE_MODE": "bogus"}, "got 'bogus' (MEDBRIDGE_JUDGE_MODE)"),
], ids=["missing-data", "bad-subset-setting", "bad-judge-setting"])
def test_adversarial_lmms_eval_run_with_a_task_error_exits_2(tmp_path, env, expected):
    """The real lmms-eval CLI: before, a 69-line traceback, 'Error during evaluation' and exit 0."""
    from medbridge.tasks.medmnist.fixtures import build_all

    from .conftest import run_lmms_eval

    build_all(tmp_path / "fx", test_per_class=1, train_per_class=1, val_per_class=1)
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    done = run_lmms_eval(["--model", "oracle", "--model_args", "p=0.9", "--tasks", "medmnist_mcq_breast",
                          "--output_path", str(tmp_path / "out")], tmp_path / "fx", env_extra=env, timeout=600)
    assert done.returncode == USER_ERROR_EXIT, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if "medbridge task medmnist_mcq_breast: error:" in line]
    assert len(ours) == 1 and expected.format(tmp=tmp_path) in ours[0], done.stderr[-3000:]
    assert "Error during evaluation" not in done.stderr and not list((tmp_path / "out").rglob("*_results.json"))
    assert "\x1b[" not in done.stdout + done.stderr  # lmms-eval's log is plain text when redirected


# ------------------------------------------------------------------ a missing extra


@pytest.mark.parametrize(("module", "extra"), [("trl", "training"), ("peft.tuners", "training"),
                                               ("tenacity", "judge"), ("vllm", "vllm"), ("flash_attn", "flash-attn"),
                                               ("deepspeed", "deepspeed")])
def test_adversarial_a_missing_extra_says_which_to_install(capsys, module, extra):
    """Read from the installed package's metadata (pyproject's optional-dependencies), not a list of ours."""
    def command() -> int:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    assert run_guarded(command, [], lambda: "medbridge x") == USER_ERROR_EXIT
    err = capsys.readouterr().err.strip()
    assert err == (f"medbridge x: error: this command needs the {extra!r} extra, which is not installed here "
                   f"(no module {module!r}): pip install 'medbridge[{extra}]'")


def test_adversarial_a_missing_module_of_no_extra_is_a_bug(capsys):
    code = run_guarded(lambda: __import__("no_such_module_of_ours"), [], lambda: "medbridge x")
    assert code == 1 and "unexpected error: ModuleNotFoundError" in capsys.readouterr().err
