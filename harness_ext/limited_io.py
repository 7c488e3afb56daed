"""Reading a file the user named, with limits: never a device, a FIFO or an unbounded read.

A config, recipe, results or reference file the user points us at may be anything: ``/dev/zero``
(endless), a FIFO (blocks forever), a directory, a 5 GB file, bytes that are not UTF-8. Each of these
is a user error, raised as ``InputFileError`` (a ``MedbridgeError``: the `medbridge` command prints it
as one paragraph naming the file and exits 2), before more than ``limit`` bytes are read.

API (``what`` names the input in the message, e.g. ``"--config"`` or ``"results file"``):

- ``read_bytes(path, what=..., limit=DEFAULT_LIMIT_BYTES) -> bytes``
- ``read_text(path, what=..., limit=...) -> str`` (UTF-8; a decode error names the byte offset)
- ``load_json(path, what=..., limit=...) -> Any`` (a syntax error names line and column)
- ``load_yaml(path, what=..., limit=...) -> Any`` (``yaml.safe_load``; a syntax error names the position)
- ``open_regular(path, what=...) -> BinaryIO``: an open binary handle on a regular file, for streaming
  readers (JSONL sample logs) that must not be capped but must not read a device or a FIFO either.
- ``write_text(path, text, what=...) -> Path``: an output file the user named (``--json``, ``--out``),
  written atomically (a temporary file beside it, then a rename) and refused when the path is a folder,
  a device (``/dev/full``) or a FIFO; a failed write (disk full, read-only) raises ``OutputFileError``
  naming the file and leaves any older file there untouched.
- ``check_output_file(path, what=...)``: the same refusals, for a file another writer opens (a log to append to).

``CONFIG_LIMIT_BYTES`` suits hand-written configs and recipes; ``DEFAULT_LIMIT_BYTES`` machine-written
JSON (lmms-eval results files). A missing file raises ``InputFileNotFound``, which is also a
``FileNotFoundError`` so callers that treat "not there" specially keep working.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MedbridgeError

MIB = 1024 * 1024
CONFIG_LIMIT_BYTES = 4 * MIB  # recipes, task and judge configs: written by hand, a few KB
DEFAULT_LIMIT_BYTES = 256 * MIB  # machine-written JSON (results files with per-task configs)


class FileArgumentError(MedbridgeError):
    """A file the user named cannot be used; the message names it (and what it was for) and says why."""

    def __init__(self, path: str | os.PathLike[str], what: str, problem: str) -> None:
        self.path = Path(path)
        self.what = what
        label = f"{what} {os.fspath(path)}" if what else os.fspath(path)
        super().__init__(f"{label}: {problem}")


class InputFileError(FileArgumentError):
    """A file the user named cannot be read as input."""


class OutputFileError(FileArgumentError):
    """A file the user named cannot be written."""


class InputFileNotFound(InputFileError, FileNotFoundError):
    """The named file does not exist (also a FileNotFoundError for callers that handle absence)."""

    def __init__(self, path: str | os.PathLike[str], what: str, problem: str) -> None:
        InputFileError.__init__(self, path, what, problem)
        self.errno, self.strerror, self.filename = errno.ENOENT, problem, str(path)

    def __str__(self) -> str:  # OSError's own __str__ would print "[Errno 2] ..." instead of our message
        return self.args[0]


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.1f} MiB" if n_bytes >= MIB else f"{n_bytes} bytes"


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], *, what: str = "") -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; otherwise raise ``InputFileError``.

    Opened with O_NONBLOCK so a FIFO with no writer cannot hang us before the check; the flag is
    cleared again once the file is known to be regular."""
    text_path = os.fspath(path)
    try:
        fd = os.open(text_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputFileNotFound(text_path, what, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(text_path, what, "is a folder, not a file") from None
    except OSError as err:
        raise InputFileError(text_path, what, f"cannot be opened ({err.strerror or err})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputFileError(text_path, what, f"is {_kind_of(mode)}, not a regular file; pass a file path")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike[str], *, what: str = "", limit: int = DEFAULT_LIMIT_BYTES) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes (a file that grows while we read
    is caught too: we never read more than ``limit + 1`` bytes)."""
    with open_regular(path, what=what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise InputFileError(path, what, f"is {_size_text(size)}, over the {_size_text(limit)} limit for this "
                                             "input; is it the right file?")
        try:
            data = fh.read(limit + 1)
        except OSError as err:
            raise InputFileError(path, what, f"cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise InputFileError(path, what, f"grew past the {_size_text(limit)} limit for this input while being read")
    return data


def read_text(path: str | os.PathLike[str], *, what: str = "", limit: int = DEFAULT_LIMIT_BYTES) -> str:
    """``read_bytes`` decoded as UTF-8 (a leading byte-order mark is dropped)."""
    data = read_bytes(path, what=what, limit=limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputFileError(path, what, f"is not UTF-8 text (byte {err.start}: {err.reason})") from None


def load_json(path: str | os.PathLike[str], *, what: str = "", limit: int = DEFAULT_LIMIT_BYTES) -> Any:
    """The JSON document in ``path``; a syntax error names the line and column."""
    text = read_text(path, what=what, limit=limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputFileError(path, what, f"is not valid JSON ({err.msg} at line {err.lineno}, "
                                         f"column {err.colno})") from None
    except RecursionError:
        raise InputFileError(path, what, "is not usable JSON (nested too deeply)") from None


def load_yaml(path: str | os.PathLike[str], *, what: str = "", limit: int = CONFIG_LIMIT_BYTES) -> Any:
    """The YAML document in ``path`` (``yaml.safe_load``); a syntax error names the position."""
    import yaml

    text = read_text(path, what=what, limit=limit)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        position = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputFileError(path, what, f"is not valid YAML ({problem}{position})") from None
    except RecursionError:
        raise InputFileError(path, what, "is not usable YAML (nested too deeply)") from None


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def check_output_file(path: str | os.PathLike[str], *, what: str = "") -> int | None:
    """Refuse ``path`` as a file to write (or append to) unless it is a regular file or a new name in an
    existing folder; returns the existing file's mode, None for a new file."""
    target = Path(path)
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new file (or a folder that is a file: said below)
        mode = None
    except OSError as err:
        raise OutputFileError(target, what, f"cannot be written ({err.strerror or err})") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputFileError(target, what, f"is {_kind_of(mode)}, not a regular file; pass a file path to write")
    parent = target.parent
    if not parent.is_dir():
        problem = f"its folder {parent} is a file" if parent.exists() else f"its folder {parent} does not exist"
        raise OutputFileError(target, what, problem)
    return mode


def write_text(path: str | os.PathLike[str], text: str, *, what: str = "") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see the module docstring for what is refused."""
    target = Path(path)
    mode = check_output_file(target, what=what)
    parent = target.parent
    tmp_name = None
    try:
        # A short temporary name: the target's own name may already be at the file system's length limit.
        fd, tmp_name = tempfile.mkstemp(prefix=".medbridge-", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # mkstemp makes the file 0600; give it the mode a plain open() would have (or the old file's).
        os.chmod(tmp_name, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as err:
        raise OutputFileError(target, what, f"cannot be written ({err.strerror or err})") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    return target
