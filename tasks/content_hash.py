"""sha256 of the data files a run reads, computed once per version of each file.

A run must say which bytes it read (the records' data provenance), and a cache derived from a file
must follow the file's content, not its name, size or mtime: a replaced file can keep all three
(``os.utime`` sets any mtime). Hashing a multi-gigabyte file on every run is too slow, so each digest
is remembered together with the file's identity: device, inode, size, mtime and ctime. The ctime
cannot be set from user space and changes whenever the file is written, replaced, renamed over or
has its metadata changed, so an unchanged identity means unchanged bytes, and any change costs one
fresh hash. The memo lives under ``$MEDBRIDGE_DATA_CACHE/sha256`` (one small JSON per file); where
it cannot be written, digests are remembered for the process only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from medbridge.harness_ext import settings

DATA_CACHE_ENV = "MEDBRIDGE_DATA_CACHE"
CHUNK = 1 << 22

# realpath -> (identity, sha256): this process's memo in front of the one on disk.
_MEMO: dict[str, tuple[dict[str, int], str]] = {}


def data_cache_dir() -> Path:
    """$MEDBRIDGE_DATA_CACHE, else its default in the settings table: derived data (the hash memo, image
    caches of read-only data folders)."""
    return settings.get_path(DATA_CACHE_ENV)


def identity(path: Path) -> dict[str, int]:
    """What changes whenever the file's bytes can have changed (ctime included: no call sets it)."""
    st = os.stat(path)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def hash_file(path: Path) -> str:
    """sha256 of the file's bytes, read in 4 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _memo_path(real: str) -> Path:
    return data_cache_dir() / "sha256" / f"{hashlib.sha1(os.fsencode(real), usedforsecurity=False).hexdigest()}.json"


def _remembered(real: str, ident: dict[str, int]) -> str | None:
    hit = _MEMO.get(real)
    if hit is not None and hit[0] == ident:
        return hit[1]
    try:
        stored = json.loads(_memo_path(real).read_text())
        if stored["path"] == real and stored["identity"] == ident and len(stored["sha256"]) == 64:
            return str(stored["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no memo, or an unreadable one: hash again
    return None


def _remember(real: str, ident: dict[str, int], digest: str) -> None:
    _MEMO[real] = (ident, digest)
    memo = _memo_path(real)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"path": real, "identity": ident, "sha256": digest}))
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache folder: the process memo still holds it
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256 (hex), hashed only when this version of the file was not hashed before.

    Errors reading the file (OSError) propagate: the caller names the file in its own error."""
    real = os.path.realpath(path)
    ident = identity(Path(real))
    digest = _remembered(real, ident)
    if digest is not None:
        _MEMO[real] = (ident, digest)
        return digest
    for _ in range(3):
        digest = hash_file(Path(real))
        after = identity(Path(real))
        if after == ident:
            _remember(real, ident, digest)
            return digest
        ident = after  # written while it was read: hash the new version
    raise OSError(f"{real} kept changing while it was being hashed")
