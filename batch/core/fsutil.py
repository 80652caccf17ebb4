"""Small filesystem helpers shared by the model repository and the output committer."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def absolute(path: str | os.PathLike[str]) -> str:
    """``path`` as an absolute path (``~`` expanded, symbolic links kept), the form
    manifests record: a relative path would mean another file to a reader elsewhere.
    A bucket URI (``gs://``, ``s3://``) is returned as it is."""
    text = os.fspath(path)
    if text.startswith(("gs://", "s3://")):
        return text
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, in a stable (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def records_sha256(records: Iterable[Iterable[object]]) -> str:
    """sha256 over ``records`` in the order given, each written as its fields (``str``)
    joined by NUL and ended by a newline.

    The one way batchscore fingerprints a list of things: input files, training data,
    directories, contract files. Callers choose the fields and sort the records.
    """
    digest = hashlib.sha256()
    for record in records:
        digest.update(("\0".join(str(item) for item in record) + "\n").encode())
    return digest.hexdigest()


def directory_sha256(root: Path) -> str:
    """Content hash of a directory: relative paths and bytes of every file.

    A changed byte, an added, removed or renamed file all change the hash.
    """
    return records_sha256(
        (path.relative_to(root).as_posix(), file_sha256(path)) for path in iter_files(root)
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created, with its folder, if missing) for the
    block; it waits for the holder, and the kernel drops it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, so anyone who can read a lock file another user
    # created may take it; the mode is left to the umask, as for every other file.
    fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; others on a shared folder must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all: a temporary file beside
    it, renamed into place (readable by all, as a report is meant to be shared)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
