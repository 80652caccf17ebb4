"""Incremental reruns: find the committed run that already holds what a job would write.

A run's rows are determined by what it read and how it scored it: the input
files (their fingerprint: path, size, mtime and row count of every file), the
files it skipped as bad, the model (name, version and content hash), the data
contract (the bytes of its files), the key columns and, for a gray release, the
canary model and its fraction (a canary run is never taken for a plain run, nor
the other way round). Two runs that agree on all of these hold the same rows,
so a job whose request matches a committed run need not score again: :func:`find_up_to_date_run` finds that run.

Runner, batch size and split size are not part of the identity (they change
how fast rows are made, not which rows). The error budget is checked instead:
a committed run whose error rate is above the budget now asked for is not
reused, because the new job would have refused to commit it.

This module reads manifests only; it imports neither TensorFlow nor any engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.contract.contract import Contract, contract_sha256
from batch.core.errors import CommitError
from batch.core.fsutil import absolute
from batch.engine.inputs import BadFile, InputFile, fingerprint
from batch.model.resolved import ResolvedModel
from batch.model.signature import DEFAULT_CHOICE, SignatureChoice
from batch.observe.checks import over_error_budget
from batch.output.commit import CommittedRun, list_committed_runs
from batch.release.canary import Canary


@dataclass(frozen=True)
class RunIdentity:
    """Everything that decides which rows a run writes (see the module docstring)."""

    model_name: str
    model_version: str
    model_content_hash: str
    input_fingerprint: str
    skipped_files: tuple[str, ...]
    contract_sha256: str | None
    key_columns: tuple[str, ...]
    # A gray release's canary: (name, version, content hash, fraction); None for a plain run.
    canary: tuple[str, str, str, float] | None = None
    # The signature and MetaGraph tags scored with (manifests before they were recorded:
    # the defaults), and the input columns copied into the predictions.
    signature: tuple[str, tuple[str, ...]] = (DEFAULT_CHOICE.name, DEFAULT_CHOICE.tags)
    passthrough_columns: tuple[str, ...] = ()

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> RunIdentity | None:
        """The identity a committed run's manifest records; None for a manifest that
        lacks a field (written by an older batchscore), which is then never reused."""
        try:
            model = manifest["model"]
            contract = manifest["contract"]
            canary = manifest.get("canary")
            serving = model.get("serving") or {}
            return cls(
                model_name=str(model["name"]),
                model_version=str(model["version"]),
                model_content_hash=str(model["content_hash"]),
                input_fingerprint=str(manifest["input"]["fingerprint"]),
                skipped_files=tuple(
                    sorted(absolute(str(f["path"])) for f in manifest["input"]["skipped_files"])
                ),
                contract_sha256=None if contract is None else str(contract["sha256"]),
                key_columns=tuple(str(c) for c in manifest["key_columns"]),
                canary=None
                if canary is None
                else (
                    str(canary["model"]["name"]),
                    str(canary["model"]["version"]),
                    str(canary["model"]["content_hash"]),
                    float(canary["fraction"]),
                ),
                signature=(
                    str(serving.get("signature", DEFAULT_CHOICE.name)),
                    tuple(str(t) for t in serving.get("tags", DEFAULT_CHOICE.tags)),
                ),
                passthrough_columns=tuple(str(c) for c in manifest.get("passthrough_columns", ())),
            )
        except (KeyError, TypeError, ValueError):
            return None


def run_identity(
    model: ResolvedModel,
    files: Sequence[InputFile],
    skipped_files: Sequence[BadFile],
    contract: Contract | None,
    key_columns: Sequence[str],
    canary: Canary | None = None,
    signature: SignatureChoice = DEFAULT_CHOICE,
    passthrough_columns: Sequence[str] = (),
) -> RunIdentity:
    """The identity of a job about to run, comparable with :meth:`RunIdentity.from_manifest`."""
    return RunIdentity(
        model_name=model.name,
        model_version=model.version,
        model_content_hash=model.content_hash,
        input_fingerprint=fingerprint(files),
        skipped_files=tuple(sorted(absolute(b.path) for b in skipped_files)),
        contract_sha256=contract_sha256(contract) if contract is not None else None,
        key_columns=tuple(key_columns),
        canary=None
        if canary is None
        else (canary.model.name, canary.model.version, canary.model.content_hash, canary.fraction),
        signature=(signature.name, signature.tags),
        passthrough_columns=tuple(passthrough_columns),
    )


def find_up_to_date_run(
    output_root: Path | str,
    *,
    model: ResolvedModel,
    files: Sequence[InputFile],
    skipped_files: Sequence[BadFile],
    contract: Contract | None,
    key_columns: Sequence[str],
    max_error_rate: float,
    canary: Canary | None = None,
    signature: SignatureChoice = DEFAULT_CHOICE,
    passthrough_columns: Sequence[str] = (),
) -> CommittedRun | None:
    """The newest committed run under ``output_root`` that already holds the rows this job
    would write (same :class:`RunIdentity`) and whose error rate is within
    ``max_error_rate``; None if there is none, and the job must score.

    Only runs of the same model name and version are read (one small manifest each).
    A manifest that cannot be read, or that lacks a field, is never trusted.
    """
    identity = run_identity(
        model, files, skipped_files, contract, key_columns, canary, signature, passthrough_columns
    )
    candidates = [
        run
        for run in list_committed_runs(output_root)
        if run.model_name == model.name and run.model_version == model.version
    ]
    for run in reversed(candidates):  # newest first: run ids sort by start time
        try:
            manifest = run.manifest()
        except CommitError:
            continue
        if RunIdentity.from_manifest(manifest.to_json()) != identity:
            continue
        if over_error_budget(manifest.counts.error_rate, max_error_rate):
            continue
        return run
    return None
