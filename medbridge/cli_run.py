"""How a `medbridge` command runs, for every entry point that runs one (medbridge/cli.py's ``medbridge``, and
``python -m medbridge.tiny_model``, which is ``medbridge build-tiny-model``).

- ``run_command``: parse, name every (sub)command for its messages, and run under the one handler
  (medbridge/error_handling.py: a user error is one paragraph and exit 2, a bug names its log file);
  stdout and stderr print a path that is not UTF-8 escaped instead of failing.
- ``stdout_for_the_result_only``: what libraries print while a command works goes to stderr, so that
  ``$(medbridge ...)`` captures the one line the command prints after.
- ``folder_to_write``: an output folder flag is checked before any work (an existing file there is a user error).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from medbridge.error_handling import run_guarded
from medbridge.harness_ext.errors import MedbridgeError

__all__ = ["folder_to_write", "name_commands", "run_command", "stdout_for_the_result_only"]


def folder_to_write(path: str | Path, what: str) -> Path:
    """``path`` as a folder we may create or write into; an existing file there is a user error."""
    folder = Path(path).expanduser()
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise MedbridgeError(f"{what} {folder}: {parent} is a file, not a folder; pass a folder path")
            break
    return folder


@contextlib.contextmanager
def stdout_for_the_result_only() -> Iterator[None]:
    """While a command works, whatever libraries print to stdout (deepspeed's accelerator notice is a
    logging handler bound to the real stdout) goes to stderr, so ``$(medbridge build-tiny-model ...)``
    captures the one line the command prints after."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def name_commands(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command its full name (e.g. "medbridge judge check") for error messages."""
    parser.set_defaults(command_name=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                name_commands(child)


def run_command(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) with ``build_parser()`` and run the chosen command's
    ``func``, guarded. argparse's own exits (a usage error: 2, --help: 0) leave as SystemExit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for stream in (sys.stdout, sys.stderr):
        # A path that is not UTF-8 (a surrogate escape) prints as \udcff instead of failing the command.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parsed: list[argparse.Namespace] = []

    def parse_and_run() -> int:
        parser = build_parser()
        name_commands(parser)
        parsed.append(parser.parse_args(argv))
        return parsed[0].func(parsed[0])

    return run_guarded(parse_and_run, argv, lambda: parsed[0].command_name if parsed else "medbridge")
