"""A local model repository: ``<repo>/<name>/<version>/`` folders, registered atomically.

Layout of one registered version::

    <repo>/<name>/<version>/
        saved_model/        the SavedModel; ``serving_default`` takes raw 1-D columns
        transform_output/   the tf.Transform output the model's transform layer came from
        metadata.json       name, version, created, signature, training fingerprint, metrics

Versions are positive integers, assigned in order at registration. A version
folder is first assembled under ``<repo>/<name>/.staging-*`` and then renamed
into place, so a reader never sees a half-registered version.

This module never imports TensorFlow: resolving a model must be fast enough to
reject a bad ``--model`` argument before any heavy start-up.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.errors import ModelError
from batch.fsutil import directory_sha256, read_json, write_json_atomic

SAVED_MODEL_DIR = "saved_model"
TRANSFORM_OUTPUT_DIR = "transform_output"
METADATA_FILE = "metadata.json"
LATEST = "latest"


def is_saved_model_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


@dataclass(frozen=True)
class ResolvedModel:
    """A model, found and named, but not loaded."""

    name: str
    version: str
    saved_model_dir: Path
    content_hash: str
    registered: bool
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class ModelRepository:
    """Registered models under one root folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _is_name(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and (p / METADATA_FILE).is_file()
        )

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        meta: dict[str, Any] = read_json(self.version_dir(name, version) / METADATA_FILE)
        return meta

    def resolve(self, spec: str) -> ResolvedModel:
        """Resolve ``NAME``, ``NAME@VERSION`` or ``NAME@latest`` in this repository."""
        name, _, selector = spec.partition("@")
        if not _is_name(name):
            raise ModelError(
                f"model '{spec}': expected NAME, NAME@VERSION or the path of a SavedModel "
                "directory; found neither a registered name nor an existing directory"
            )
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelError(
                f"model '{spec}': no registered model named '{name}' in repository "
                f"{self.root} (registered: {known}). Train one with `python -m jobs.train`, "
                "pass --model_repo=DIR, or give the path of a SavedModel directory"
            )
        if selector in ("", LATEST):
            version = versions[-1]
        elif selector.isdigit() and int(selector) in versions:
            version = int(selector)
        else:
            raise ModelError(
                f"model '{spec}': '{name}' has no version '{selector}' in {self.root} "
                f"(versions: {', '.join(map(str, versions))}; or use @latest)"
            )
        meta = self.metadata(name, version)
        return ResolvedModel(
            name=name,
            version=str(version),
            saved_model_dir=self.version_dir(name, version) / SAVED_MODEL_DIR,
            content_hash=str(meta["content_hash"]),
            registered=True,
            metadata=meta,
        )

    # -- writing -----------------------------------------------------------------
    def register(
        self,
        name: str,
        saved_model_dir: Path,
        metadata: dict[str, Any],
        transform_output_dir: Path | None = None,
    ) -> ResolvedModel:
        """Copy a SavedModel (and its transform output) in as the next version of ``name``."""
        if not _is_name(name):
            raise ModelError(
                f"model name '{name}': expected letters, digits, '_', '-' or '.', "
                "not starting with '.'"
            )
        if not is_saved_model_dir(saved_model_dir):
            raise ModelError(f"{saved_model_dir}: expected a SavedModel directory (saved_model.pb)")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{uuid.uuid4().hex}"
        try:
            shutil.copytree(saved_model_dir, staging / SAVED_MODEL_DIR)
            if transform_output_dir is not None:
                shutil.copytree(transform_output_dir, staging / TRANSFORM_OUTPUT_DIR)
            content_hash = directory_sha256(staging / SAVED_MODEL_DIR)
            for _attempt in range(100):
                version = (self.versions(name) or [0])[-1] + 1
                meta = {
                    **metadata,
                    "name": name,
                    "version": version,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "content_hash": content_hash,
                }
                write_json_atomic(staging / METADATA_FILE, meta)
                try:
                    # rename(2) of a directory onto a missing name is atomic; if a
                    # concurrent registration took this version, try the next one.
                    os.rename(staging, self.version_dir(name, version))
                except OSError:
                    if self.version_dir(name, version).exists():
                        continue
                    raise
                return self.resolve(f"{name}@{version}")
            raise ModelError(f"could not allocate a version for '{name}' in {folder}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _is_name(text: str) -> bool:
    return bool(text) and not text.startswith(".") and all(c.isalnum() or c in "_-." for c in text)


def resolve_model(spec: str, repository: ModelRepository) -> ResolvedModel:
    """Resolve ``--model``: a SavedModel path, a registered version folder, or NAME[@VERSION]."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / METADATA_FILE).is_file() and is_saved_model_dir(path / SAVED_MODEL_DIR):
            meta = read_json(path / METADATA_FILE)
            return ResolvedModel(
                name=str(meta["name"]),
                version=str(meta["version"]),
                saved_model_dir=path / SAVED_MODEL_DIR,
                content_hash=str(meta["content_hash"]),
                registered=True,
                metadata=meta,
            )
        if is_saved_model_dir(path):
            content_hash = directory_sha256(path)
            return ResolvedModel(
                name=path.resolve().name,
                version=f"sha256-{content_hash[:12]}",
                saved_model_dir=path,
                content_hash=content_hash,
                registered=False,
            )
        raise ModelError(
            f"model '{spec}': the directory exists but holds no saved_model.pb; expected a "
            "SavedModel directory (tf.saved_model.save output) or a registered version folder"
        )
    if os.sep in spec or spec.startswith("."):
        raise ModelError(f"model '{spec}': no such directory")
    return repository.resolve(spec)
