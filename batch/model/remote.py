"""Models in a bucket: downloaded once per machine into a cache keyed by content hash.

``--model=gs://bucket/models/NAME/VERSION`` (a registered version folder) or
``--model=s3://bucket/path/saved_model`` (a SavedModel folder, its signature
``saved_model.sig`` beside it) is copied into
``$XDG_CACHE_HOME/batchscore/models/<content sha256>-<objects' state>/``. A registered version records
its content hash in ``metadata.json``: a copy whose bytes do not hash to it is refused
(the model was changed in the bucket) and never cached. Resolution then goes on from
the local copy, which is what the driver verifies against its signature and what every
worker process copies, verifies again and loads (batch.model.loading); a worker on
another machine downloads it itself, once (:func:`local_model`).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from pathlib import Path

from batch.core import storage
from batch.core.fsutil import directory_sha256, records_sha256
from batch.model.resolved import SIGNATURE_SUFFIX, ResolvedModel
from batch.model.snapshot import ModelChangedError

CACHE_ENV = "BATCHSCORE_CACHE_DIR"
METADATA = "metadata.json"
SAVED_MODEL = "saved_model"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchscore" / "models"


def fetch_model(uri: str) -> Path:
    """The local copy of the model folder at ``uri`` (downloaded unless cached); the path
    of the copied folder, which has the name of the folder in the bucket."""
    uri = uri.rstrip("/")
    objects = storage.list_files(uri)
    if not objects:
        raise storage.StorageError(
            f"--model={uri}: no objects under this prefix; expected a registered version "
            "folder (metadata.json, saved_model/) or a SavedModel folder (saved_model.pb)"
        )
    names = {o.uri[len(uri) + 1 :] for o in objects}
    expected: str | None = None
    if METADATA in names:
        expected = str(storage.read_json(storage.join(uri, METADATA))["content_hash"])
    # Keyed by the content hash and by what the store says of the objects now, so that a
    # model changed in the bucket is downloaded (and refused) instead of served from the
    # cache; an unchanged one is downloaded once per machine.
    state = records_sha256((o.uri, o.size, o.mtime_ns) for o in objects)
    key = f"{expected}-{state[:16]}" if expected else state
    target = cache_root() / key / storage.name(uri)
    if target.is_dir():
        return target
    building = cache_root() / f".{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
    copy = building / storage.name(uri)
    try:
        storage.download_tree(uri, str(copy))
        signature = uri + SIGNATURE_SUFFIX
        if storage.info(signature) is not None:
            (building / (copy.name + SIGNATURE_SUFFIX)).write_bytes(storage.read_bytes(signature))
        if expected is not None:
            found = directory_sha256(copy / SAVED_MODEL)
            if found != expected:
                raise ModelChangedError(
                    f"model {uri}: its files in the bucket do not match the content hash "
                    f"its metadata.json records (sha256 {found[:12]}..., expected "
                    f"{expected[:12]}...); it was changed after it was registered and is "
                    "refused. Upload the registered version folder again, unchanged, or "
                    "register a new version"
                )
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(building, target.parent)
        except OSError:  # another process cached it first: use theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def version_in_bucket(spec: str, repo: str) -> str:
    """The URI of the registered version folder that ``NAME[@VERSION|@latest|@ALIAS]``
    names in the model repository at the bucket URI ``repo`` (the layout of
    batch.model.repository: ``<repo>/<name>/<version>/metadata.json``,
    ``<repo>/<name>/aliases.json``)."""
    name, _, selector = spec.partition("@")
    folder = storage.join(repo, name)
    prefix = folder + "/"
    versions = sorted(
        int(rel.split("/", 1)[0])
        for rel in (o.uri[len(prefix) :] for o in storage.list_files(folder))
        if rel.split("/", 1)[0].isdigit() and rel.split("/", 1)[1:] == [METADATA]
    )
    if not versions:
        raise storage.StorageError(
            f"--model={spec}: no registered model named '{name}' in the repository {repo} "
            f"(no {folder}/<version>/{METADATA}); check --model_repo and the model name"
        )
    if selector in ("", "latest"):
        return storage.join(folder, str(versions[-1]))
    if selector.isdigit() and int(selector) in versions:
        return storage.join(folder, selector)
    aliases_uri = storage.join(folder, "aliases.json")
    aliases = storage.read_json(aliases_uri).get("aliases", {}) if storage.info(aliases_uri) else {}
    if selector in aliases and int(aliases[selector]["version"]) in versions:
        return storage.join(folder, str(aliases[selector]["version"]))
    raise storage.StorageError(
        f"--model={spec}: '{name}' has no version or alias '{selector}' in {repo} (versions: "
        f"{', '.join(map(str, versions))}; aliases: {', '.join(aliases) or 'none'})"
    )


def local_model(model: ResolvedModel) -> ResolvedModel:
    """``model`` with a SavedModel folder on this machine: a worker that does not see the
    driver's cache (another machine) downloads the model from ``model.source``."""
    if model.source is None or Path(model.saved_model_dir).is_dir():
        return model
    folder = fetch_model(model.source)
    saved_model = folder / SAVED_MODEL if (folder / METADATA).is_file() else folder
    return dataclasses.replace(model, saved_model_dir=saved_model)
