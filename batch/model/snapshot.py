"""A private copy of a model, so that the bytes verified are the bytes loaded.

A model folder can change between the moment the driver verified it and the moment a
worker loads it (a swapped ``saved_model/``, a replaced variable file). So a process
that loads a model first copies the SavedModel directory and its signature file into a
folder only this process uses, hashing every file as it is read, once. The copy's
content hash must be the one the model was resolved with (else the model changed since
the job started); then the copy is verified against its signature and loaded. Nothing
is looked up by path afterwards.

Copies live under ``$TMPDIR/batchscore-models-<uid>/`` (mode 0700), one folder per
process and model; they are removed when the process exits normally and, otherwise, by
the next process that makes a copy once their process is gone.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from batch.core.errors import ModelError
from batch.core.fsutil import file_sha256, records_sha256
from batch.model.resolved import ResolvedModel, signature_path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
SNAPSHOT_ROOT_ENV = "BATCHSCORE_MODEL_COPIES"


class ModelChangedError(ModelError):
    """The model's files are not the ones the job resolved (swapped after the check)."""


def snapshot_root() -> Path:
    """Where this user's private model copies live."""
    configured = os.environ.get(SNAPSHOT_ROOT_ENV)
    root = Path(configured) if configured else Path(tempfile.gettempdir())
    return root / f"batchscore-models-{os.getuid()}"


def private_copy(model: ResolvedModel) -> ResolvedModel:
    """``model`` as a private copy of its SavedModel directory and signature file.

    Every file is read once, hashed as it is copied; the copy is refused (and removed)
    unless its content hash is ``model.content_hash``. Symbolic links are copied as
    links (verification then refuses a signed model that holds one, as it would in place).
    """
    source = Path(model.saved_model_dir)
    folder = _new_folder(model.content_hash)
    target = folder / source.name
    try:
        digest = _copy_tree(source, target)
        sig = signature_path(source)
        if sig.is_file():
            shutil.copyfile(sig, signature_path(target))
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ModelError(
            f"model {model.label} ({source}): cannot be read into a private copy before "
            f"loading ({exc.strerror or exc}: {exc.filename or source}); check that the "
            f"model folder is complete and readable, and that {folder.parent} has space"
        ) from exc
    if digest != model.content_hash:
        shutil.rmtree(folder, ignore_errors=True)
        raise ModelChangedError(
            f"model {model.label} ({source}): its files changed after the job resolved it "
            f"(content sha256 {digest[:12]}..., expected {model.content_hash[:12]}...); "
            "nothing of it was loaded. A model folder must not change while jobs use it: "
            "register a new version instead, and rerun"
        )
    return dataclasses.replace(model, saved_model_dir=target)


def _copy_tree(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target``; the content hash of what was read, computed as
    :func:`batch.core.fsutil.directory_sha256` computes it (same records, same order)."""
    records: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        here = Path(dirpath)
        relative = here.relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames):
            path = here / name
            rel = (relative / name).as_posix()
            if path.is_symlink():
                os.symlink(os.readlink(path), target / relative / name)
                records.append((rel, file_sha256(path)))
                continue
            records.append((rel, _copy_file(path, target / relative / name)))
    return records_sha256(records)


def _copy_file(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "xb") as writer:
        if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
            raise OSError(f"{source}: not a regular file")
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _new_folder(content_hash: str) -> Path:
    root = snapshot_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    _remove_orphans(root)
    folder = root / f"{os.getpid()}-{content_hash[:16]}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _remove_orphans(root: Path) -> None:
    """Remove copies whose process is gone (it was killed before its exit handler ran)."""
    for folder in root.iterdir():
        pid_text = folder.name.split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive (another user's process would be EPERM; not our folder)
            continue
