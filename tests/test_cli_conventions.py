"""The `medbridge` command's conventions (issue 24): lmms-eval's spelling for the flags it shares with
lmms-eval (old spellings kept as hidden aliases), one name per concept across every subcommand,
`--version`, and plain text when the output is not a terminal."""

from __future__ import annotations

import argparse
import io

import pytest

from medbridge.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def _visible_options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions if a.help is not argparse.SUPPRESS for o in a.option_strings}


# What lmms-eval calls --model_args, --gen_kwargs, --output_path, --batch_size; what the leaderboard calls
# --store and --run-name. Any other visible spelling of these concepts is a second name for one thing.
SECOND_NAMES = {"--model-args", "--gen-kwargs", "--output", "--output-path", "--batch-size", "--run", "--leaderboard",
                "--run_name", "--model_name", "--store-path", "--leaderboard-store"}


def test_every_subcommand_spells_shared_flags_one_way():
    seen = {}
    for path, parser in _parsers(build_parser()):
        visible = _visible_options(parser)
        assert not visible & SECOND_NAMES, (" ".join(path), sorted(visible & SECOND_NAMES))
        for option in visible:
            seen.setdefault(option, []).append(" ".join(path))
    # the shared spellings are in use where the concept is
    assert "eval-checkpoint" in seen["--model_args"] and "eval-checkpoint" in seen["--output_path"]
    assert {"demo", "eval-checkpoint", "probe"} <= set(seen["--batch_size"])
    assert {"leaderboard ingest", "eval-checkpoint"} <= set(seen["--run-name"])
    assert {"leaderboard ingest", "leaderboard build", "recipe", "probe", "eval-checkpoint"} <= set(seen["--store"])


@pytest.mark.parametrize(("old", "new"), [
    (["--model-args", "pretrained={checkpoint}"], ["--model_args", "pretrained={checkpoint}"]),
    (["--gen-kwargs", "max_new_tokens=8"], ["--gen_kwargs", "max_new_tokens=8"]),
    (["--batch-size", "4"], ["--batch_size", "4"]),
    (["--output", "out"], ["--output_path", "out"]),
    (["--leaderboard", "lb.sqlite"], ["--store", "lb.sqlite"]),
    (["--run", "r1"], ["--run-name", "r1"]),
])
def test_old_spellings_still_parse_the_same(old, new):
    base = ["eval-checkpoint", "ckpt", "--tasks", "medmnist_mcq_breast"]
    parser = build_parser()
    old_ns, new_ns = vars(parser.parse_args(base + old)), vars(parser.parse_args(base + new))
    old_ns.pop("func"), new_ns.pop("func")
    assert old_ns == new_ns


def test_old_spellings_are_hidden_from_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval-checkpoint", "--help"])
    out = capsys.readouterr().out
    assert "--model_args" in out and "--run-name" in out and "--store" in out
    assert "--model-args" not in out and "--leaderboard" not in out and "--run " not in out


def test_demo_and_probe_take_the_old_batch_size_spelling_too():
    parser = build_parser()
    assert parser.parse_args(["demo", "--batch-size", "3"]).batch_size == 3
    assert parser.parse_args(["demo"]).batch_size == 16
    assert parser.parse_args(["probe", "--model", "m", "--datasets", "breast", "--batch-size", "8"]).batch_size == 8


def test_version_names_medbridge_lmms_eval_and_python(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    out = capsys.readouterr().out.strip()
    assert done.value.code == 0
    assert out.startswith(f"medbridge {version('medbridge')} (lmms-eval {version('lmms-eval')}, Python 3.")


# ------------------------------------------------------------------ plain text when redirected


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "env", "coloured"), [
    (io.StringIO(), {}, False),                      # a pipe or file: plain
    (_Terminal(), {}, True),                         # a terminal: lmms-eval's colours
    (_Terminal(), {"NO_COLOR": "1"}, False),         # https://no-color.org
    (io.StringIO(), {"FORCE_COLOR": "1"}, True),
])
def test_lmms_eval_logger_is_plain_unless_a_terminal(monkeypatch, stream, env, coloured):
    """lmms-eval's own call, `logger.add(sys.stdout, colorize=True, format=...)`, after the plugin loaded."""
    from loguru import logger
    from medbridge.harness_ext import lmms_eval_console

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lmms_eval_console.install()
    sink = logger.add(stream, colorize=True, format="<green>{message}</green>", level="INFO")
    try:
        logger.info("hello")
    finally:
        logger.remove(sink)
    assert ("\x1b[" in stream.getvalue()) is coloured and "hello" in stream.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("entry", [["medbridge.cli", "build-tiny-model"], ["medbridge.tiny_model"]])
def test_build_tiny_model_stdout_is_the_path_alone(tmp_path, entry):
    """`$(medbridge build-tiny-model --out DIR)` in the README: libraries' notices (deepspeed's accelerator
    warning, a logging handler bound to the real stdout) went into the captured path before; the module's
    own entry point (`python -m medbridge.tiny_model`) is the same command."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", *entry, "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"{tmp_path / 'm'}\n"
