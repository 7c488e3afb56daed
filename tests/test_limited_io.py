"""harness_ext/limited_io.py: files the user names are read with limits, and every refusal is a user
error (MedbridgeError) that names the file: a device, a FIFO, a folder, an oversized or growing file,
bytes that are not UTF-8, broken JSON or YAML."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from medbridge.harness_ext import limited_io
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.limited_io import InputFileError, InputFileNotFound


def test_reads_json_yaml_and_text_within_the_limit(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    (tmp_path / "a.yaml").write_bytes(b"\xef\xbb\xbfkey: value\n")  # a BOM is dropped
    assert limited_io.load_json(tmp_path / "a.json", what="--json") == {"x": [1, 2]}
    assert limited_io.load_yaml(tmp_path / "a.yaml", what="--config") == {"key": "value"}
    assert limited_io.read_bytes(tmp_path / "a.json", limit=13) == b'{"x": [1, 2]}'


def test_dev_zero_is_refused_without_reading():
    with pytest.raises(InputFileError, match=r"--config /dev/zero: is a character device, not a regular file"):
        limited_io.load_yaml("/dev/zero", what="--config")


def test_a_symlink_to_a_device_is_refused(tmp_path):
    (tmp_path / "cfg.yaml").symlink_to("/dev/zero")
    with pytest.raises(InputFileError, match="character device"):
        limited_io.read_text(tmp_path / "cfg.yaml", what="--config")


def test_a_fifo_without_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    done: list[BaseException] = []
    worker = threading.Thread(target=lambda: done.append(pytest.raises(InputFileError, limited_io.load_json, fifo)))
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert "FIFO" in str(done[0].value) and str(fifo) in str(done[0].value)


def test_folder_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(InputFileError, match=f"--config {tmp_path}: is a folder"):
        limited_io.read_text(tmp_path, what="--config")
    with pytest.raises(InputFileNotFound, match=f"{tmp_path / 'nope.yaml'}: no such file") as missing:
        limited_io.load_yaml(tmp_path / "nope.yaml", what="recipe")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, MedbridgeError)
    assert missing.value.filename == str(tmp_path / "nope.yaml")
    long_name = tmp_path / ("x" * 300)
    with pytest.raises(InputFileError, match="cannot be opened"):
        limited_io.read_bytes(long_name)


def test_oversized_file_is_refused_with_its_size(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 5000)
    with pytest.raises(InputFileError, match=r"results file .*big.json: is 5000 bytes, over the 4096 bytes limit"):
        limited_io.load_json(big, what="results file", limit=4096)


def test_sparse_huge_file_is_refused_before_reading(tmp_path):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(10 * limited_io.CONFIG_LIMIT_BYTES)  # 40 MiB of holes: no disk used
    with pytest.raises(InputFileError, match=r"is 40.0 MiB, over the 4.0 MiB limit"):
        limited_io.load_yaml(huge)


@pytest.mark.parametrize(("content", "loader", "message"), [
    (b"\xff\xfe{}", limited_io.load_json, r"is not UTF-8 text \(byte 0"),
    (b'{"a": 1,,}', limited_io.load_json, r"is not valid JSON \(Expecting property name .* at line 1, column 9\)"),
    (b"[" * 100_000, limited_io.load_json, "nested too deeply"),
    (b"a: [unclosed\n", limited_io.load_yaml, r"is not valid YAML \(.* at line 2, column 1\)"),
])
def test_undecodable_content_names_file_and_position(tmp_path, content, loader, message):
    path = tmp_path / "input"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=message) as err:
        loader(path, what="--x")
    assert str(err.value).startswith(f"--x {path}: ")


def test_open_regular_streams_a_regular_file_and_refuses_a_device(tmp_path):
    (tmp_path / "s.jsonl").write_text("{}\n{}\n")
    with limited_io.open_regular(tmp_path / "s.jsonl", what="samples") as fh:
        assert fh.read().count(b"\n") == 2
    with pytest.raises(InputFileError, match="samples /dev/null: is a character device"):
        limited_io.open_regular("/dev/null", what="samples")


def test_the_command_prints_it_as_one_paragraph_exit_2(capsys):
    from medbridge.error_handling import USER_ERROR_EXIT, run_guarded

    def command() -> int:
        limited_io.load_yaml(Path("/dev/zero"), what="--config")
        return 0

    assert run_guarded(command, []) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.strip() == "medbridge: error: --config /dev/zero: is a character device, not a regular file; " \
                          "pass a file path"


def test_write_text_is_atomic_and_keeps_a_plain_files_mode(tmp_path):
    from medbridge.harness_ext.limited_io import write_text

    out = write_text(tmp_path / "summary.json", '{"a": 1}', what="--json")
    assert out.read_text() == '{"a": 1}'
    assert out.stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    out.chmod(0o640)
    write_text(out, "second")
    assert out.read_text() == "second" and out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def _current_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


@pytest.mark.parametrize(("target", "message"), [
    ("/dev/full", "--json /dev/full: is a character device, not a regular file; pass a file path to write"),
    ("{tmp}", "--json {tmp}: is a folder, not a regular file"),
    ("{tmp}/missing/out.json", "--json {tmp}/missing/out.json: its folder {tmp}/missing does not exist"),
    ("{tmp}/file.txt/out.json", "its folder {tmp}/file.txt is a file"),
    ("{tmp}/" + "n" * 300, "cannot be written (File name too long)"),
])
def test_write_text_refuses_what_it_cannot_write_naming_the_file(tmp_path, target, message):
    from medbridge.harness_ext.limited_io import OutputFileError, write_text

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputFileError) as err:
        write_text(target.format(tmp=tmp_path), "{}", what="--json")
    assert message.format(tmp=tmp_path) in str(err.value)
    assert isinstance(err.value, MedbridgeError)


def test_write_text_to_a_fifo_is_refused_without_blocking(tmp_path):
    from medbridge.harness_ext.limited_io import OutputFileError, write_text

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OutputFileError, match="FIFO"):
        write_text(tmp_path / "pipe", "{}")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """What ENOSPC does halfway through: the old summary stays whole."""
    import errno

    from medbridge.harness_ext.limited_io import OutputFileError, write_text

    out = tmp_path / "summary.json"
    out.write_text("old")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputFileError, match=r"summary.json: cannot be written \(No space left on device\)"):
        write_text(out, "new")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
