"""`medbridge data medmnist`: fetch one MedMNIST-v2 224x224 file through medmnist, or say plainly
how to put it in place by hand when this machine cannot reach the download host."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from medbridge.harness_ext.errors import MedbridgeError


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception (medmnist hides urllib's reason under a bare RuntimeError)."""
    seen = {id(err)}
    while (nxt := err.__cause__ or err.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def manual_download_message(flag: str, root: Path, cause: BaseException) -> str:
    import medmnist

    from medbridge.tasks.medmnist.data import SIZE, npz_path

    info = medmnist.INFO[flag]
    url, md5 = info[f"url_{SIZE}"], info[f"MD5_{SIZE}"]
    reason = str(getattr(cause, "reason", None) or cause).strip() or type(cause).__name__
    return (f"could not download {npz_path(flag, root).name} from {urlparse(url).hostname} "
            f"({type(cause).__name__}: {reason}). To install it by hand: on a machine with internet access "
            f"download {url} (MD5 {md5}), copy it to {npz_path(flag, root)} (all files into one folder), "
            f"and point MEDBRIDGE_MEDMNIST_ROOT at that folder (or pass --root).")


def download_medmnist(flag: str, root: Path) -> int:
    """Make sure ``{flag}_224.npz`` is in ``root`` and in the official layout; return its test-image count.

    medmnist downloads the file (with its MD5 check) when it is missing. Raises MedbridgeError with
    the URL, the MD5 and where to put the file when the download fails."""
    from medbridge.tasks.medmnist.data import MedMNISTFileError, load_split, npz_path

    try:
        images, _ = load_split(flag, "test", root, download=True)
    except MedMNISTFileError as err:
        if npz_path(flag, root).is_file():
            raise  # downloaded (or already there) but unreadable: its own message names the file
        raise MedbridgeError(manual_download_message(flag, root, _root_cause(err))) from err
    return int(images.shape[0])
