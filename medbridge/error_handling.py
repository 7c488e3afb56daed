"""How the `medbridge` command reports a failure: never a bare traceback.

A user-fixable error (``MedbridgeError``, a missing or unreadable file the user named, a broken YAML
or JSON file) is printed as one paragraph and the command exits 2, like an argparse usage error.
Anything else is a bug: its traceback goes to a log file under ``$MEDBRIDGE_LOG_DIR`` (default
``~/.cache/medbridge/logs``, else the temp folder) and the command prints the error, where the log is,
and exits 1.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError

USER_ERROR_EXIT = 2  # argparse's code for a usage error; ours for every error the user can fix
BUG_EXIT = 1
LOG_DIR_ENV = "MEDBRIDGE_LOG_DIR"

# OSErrors without a path that still mean "your machine or your output target", not a bug in medbridge.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "the disk quota is used up",
                       errno.EROFS: "write somewhere else", errno.EMFILE: "raise the open-file limit (ulimit -n)"}


def _one_paragraph(text: str) -> str:
    return " ".join(text.split())


def extra_of_module(module: str) -> str | None:
    """The medbridge extra (pyproject's optional-dependencies) that installs ``module``, if any."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requirements = requires("medbridge") or []
    except PackageNotFoundError:
        return None
    top = module.split(".")[0].lower()
    extras = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if "extra ==" not in marker:
            continue
        distribution = name.strip().split()[0]
        for stop in "<>=!~[ ":
            distribution = distribution.split(stop)[0]
        if distribution.lower().replace("-", "_") == top:
            extras.append(marker.split("extra ==")[1].strip().strip("'\""))
    # A package in several extras (deepspeed: [deepspeed] and [test]): the one named after it, else the
    # first that is not the tests' own.
    for extra in extras:
        if extra.replace("-", "_") == top:
            return extra
    return next((e for e in extras if e != "test"), extras[0] if extras else None)


def user_error_message(err: BaseException) -> str | None:
    """The one-paragraph message for an error the user can fix, or None when ``err`` is a bug."""
    if isinstance(err, MedbridgeError):
        return _one_paragraph(str(err)) or type(err).__name__
    if isinstance(err, ModuleNotFoundError) and err.name and (extra := extra_of_module(err.name)):
        return (f"this command needs the {extra!r} extra, which is not installed here (no module {err.name!r}): "
                f"pip install 'medbridge[{extra}]'")
    if isinstance(err, OSError) and err.filename is not None:
        # Any OSError on a path (missing, a folder, a name too long, no permission, a read-only disk...)
        # is about a path the user gave or the machine; the message names the path.
        reason = err.strerror or type(err).__name__
        target = f" -> {err.filename2}" if err.filename2 is not None else ""
        return _one_paragraph(f"{reason}: {err.filename}{target}")
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS:
        return _one_paragraph(f"{err.strerror or os.strerror(err.errno)} ({_ENVIRONMENT_ERRNOS[err.errno]})")
    if isinstance(err, json.JSONDecodeError):
        return _one_paragraph(f"invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})")
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(err, yaml.YAMLError):
        return _one_paragraph(f"invalid YAML: {err}")
    return None


def log_dir() -> Path:
    """Where tracebacks of unexpected errors go: $MEDBRIDGE_LOG_DIR, ~/.cache/medbridge/logs, or $TMPDIR."""
    chosen = settings.get_path(LOG_DIR_ENV)
    try:
        chosen.mkdir(parents=True, exist_ok=True)
        if os.access(chosen, os.W_OK):
            return chosen
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "medbridge-logs"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _redactor(argv: list[str]) -> Callable[[str], str] | None:
    """Text -> text without the judge secrets of this command line (or of clients made here); None when
    the judge package cannot be loaded."""
    try:
        from medbridge.judges.http import argv_secrets, redact_text

        secrets = argv_secrets(argv)
    except Exception:  # noqa: BLE001 -- a broken install must not hide the original error
        return None
    return lambda text: redact_text(text, secrets)


def write_traceback(err: BaseException, argv: list[str]) -> Path:
    """Write the full traceback of ``err`` (and the command line) to a new log file; return its path."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    fd, name = tempfile.mkstemp(prefix=f"medbridge-error-{stamp}-", suffix=".log", dir=log_dir())
    # The file is for a bug report: no judge key, token or URL credential goes into it.
    redact = _redactor(argv)
    if redact is None:  # the judge package itself is broken: keep neither
        command, report = "(not recorded)", f"{type(err).__name__} (traceback not recorded)"
    else:
        command, report = redact(" ".join(argv)), redact("".join(traceback.format_exception(err)))
    with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as fh:
        fh.write("command: medbridge " + command + "\n\n")
        fh.write(report)
    return Path(name)


def run_guarded(func: Callable[[], int], argv: list[str], command: Callable[[], str] = lambda: "medbridge",
                *, stderr: TextIO | None = None) -> int:
    """Run one command; turn any failure into a message and an exit code (see the module docstring).

    ``command`` gives the command's name for the message (known only once its arguments are parsed);
    argparse's own exits (usage errors, --help) pass through as SystemExit with their code."""
    stderr = sys.stderr if stderr is None else stderr
    try:
        return func()
    except KeyboardInterrupt:
        print(f"{command()}: interrupted", file=stderr)
        return 130
    except SystemExit as exc:
        # Modules stop with SystemExit("message") for bad input; argparse's own exits carry a code.
        if isinstance(exc.code, str):
            print(f"{command()}: error: {_one_paragraph(exc.code)}", file=stderr)
            return USER_ERROR_EXIT
        raise
    except Exception as err:  # noqa: BLE001 - this is the command's last line of defence
        message = user_error_message(err)
        if message is not None:
            print(f"{command()}: error: {message}", file=stderr)
            return USER_ERROR_EXIT
        try:
            where = f"the full traceback is in {write_traceback(err, argv)}"
        except OSError as log_err:
            where = f"no log file could be written ({log_err}); set {LOG_DIR_ENV} to a writable folder"
        redact = _redactor(argv)
        detail = _one_paragraph(redact(str(err)) if redact else "(message not shown)")[:500]
        print(f"{command()}: unexpected error: {type(err).__name__}: {detail}\n{where}. "
              "This is a bug in medbridge, not in your input: please report it with that file.", file=stderr)
        return BUG_EXIT
