"""A model found and named but not loaded, and where its signature lives.

The base of the model concern: the repository (batch.model.repository) resolves
names to it, signing (batch.model.signing) verifies it, loading
(batch.model.loading) loads it. It imports neither, so they need not import
each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIGNATURE_SUFFIX = ".sig"


def signature_path(saved_model_dir: Path | str) -> Path:
    """``<dir>.sig`` beside the SavedModel directory (outside what it signs)."""
    path = Path(os.path.abspath(Path(saved_model_dir).expanduser()))
    return path.with_name(path.name + SIGNATURE_SUFFIX)


@dataclass(frozen=True)
class ResolvedModel:
    """A model, found and named, but not loaded."""

    name: str
    version: str
    saved_model_dir: Path
    content_hash: str
    registered: bool
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    # The alias it was resolved through (NAME@production), if any.
    alias: str | None = field(default=None, compare=False)
    # Where it was downloaded from (a gs:// or s3:// URI; batch.model.remote), if anywhere.
    source: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def signature_file(self) -> Path:
        """Where its signature is (or would be): ``<saved_model_dir>.sig``."""
        return signature_path(self.saved_model_dir)
