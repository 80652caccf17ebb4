"""A committed run's ``_MANIFEST.json`` as a typed, versioned model: written in one place
(:func:`batch.output.commit.commit_run` through :meth:`Manifest.write`) and read through
one reader (:func:`read_manifest`) by verify, the report, incremental runs, backfills and
comparisons.

``format_version`` 2 is the first that states itself; manifests written before it
(no ``format_version``) are read as version 1, which has the same fields. A reader
refuses a newer version than it knows, naming the file and what to upgrade.

The fields that decide what a run is (run id, model, keys, input, counts, outputs) are
typed; the observability sections (metrics, drift, checks, summary) and sections a
:class:`batch.engine.job.ScoringVariant` adds (e.g. ``canary``) stay JSON objects,
documented where they are made (batch.observe.*, batch.release.canary).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core import storage
from batch.core.errors import CommitError
from batch.core.fsutil import read_json, write_json_atomic

MANIFEST = "_MANIFEST.json"
MANIFEST_FORMAT = 2


@dataclass(frozen=True)
class Counts:
    rows_in: int
    rows_scored: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    error_rate: float
    max_error_rate: float


@dataclass(frozen=True)
class OutputPart:
    """One Parquet file of a committed run, as the manifest lists it."""

    path: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    run_id: str
    batchscore_version: str
    model: dict[str, Any]
    input: dict[str, Any]
    key_columns: list[str]
    runner: dict[str, Any]
    batch_size: int
    started: str
    finished: str
    counts: Counts
    outputs: dict[str, list[OutputPart]]
    contract: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    # Sections added by scoring variants and any key this version does not model.
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = MANIFEST_FORMAT

    @property
    def model_label(self) -> str:
        return f"{self.model.get('name')}@{self.model.get('version')}"

    def to_json(self) -> dict[str, Any]:
        payload = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        payload["counts"] = dataclasses.asdict(self.counts)
        payload["outputs"] = {
            kind: [dataclasses.asdict(part) for part in parts]
            for kind, parts in self.outputs.items()
        }
        return {**payload, **self.extra}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], source: str = "manifest") -> Manifest:
        version = int(payload.get("format_version", 1))
        if version > MANIFEST_FORMAT:
            raise CommitError(
                f"{source}: manifest format_version {version} is newer than this batchscore "
                f"reads ({MANIFEST_FORMAT}); upgrade batchscore to read this run"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            counts = Counts(**payload["counts"])
            outputs = {
                kind: [OutputPart(**part) for part in parts]
                for kind, parts in payload["outputs"].items()
            }
            values = {k: v for k, v in payload.items() if k in known}
            values.update(counts=counts, outputs=outputs, format_version=version)
            extra = {k: v for k, v in payload.items() if k not in known}
            return cls(**values, extra=extra)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CommitError(
                f"{source}: not a batchscore run manifest ({type(exc).__name__}: {exc}); "
                "expected the _MANIFEST.json a committed run holds"
            ) from exc

    def write(self, run_dir: Path) -> None:
        """Write ``run_dir/_MANIFEST.json`` whole or not at all."""
        write_json_atomic(run_dir / MANIFEST, self.to_json())


def read_manifest(run_dir: Path | str) -> Manifest:
    """The manifest of the run in ``run_dir``; a missing or unreadable one is a
    :class:`CommitError` naming the file."""
    if storage.is_uri(run_dir):
        path: Path | str = storage.join(str(run_dir), MANIFEST)
    else:
        path = Path(run_dir) / MANIFEST
    try:
        payload = storage.read_json(str(path)) if isinstance(path, str) else read_json(path)
    except storage.StorageError as exc:
        raise CommitError(f"{exc}; a committed run holds a {MANIFEST}") from exc
    except OSError as exc:
        raise CommitError(
            f"{path}: cannot read the run manifest ({exc.strerror or exc}); a committed run "
            "holds one"
        ) from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CommitError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(payload, Mapping):
        raise CommitError(f"{path}: expected a JSON object, found {type(payload).__name__}")
    return Manifest.from_json(payload, str(path))
