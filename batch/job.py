"""A scoring job from plan to commit, whatever engine executes it.

``run_scoring`` is the template: it reads the input footers, checks them
against the model, lets a :class:`Runner` score every split (each split ends
as staged Parquet parts), then reconciles and commits the run. Runners only
move splits to workers; the work on a split is :func:`score_split`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import InputDataError, ModelError, UsageError
from batch.faults import SCORING, fault_point
from batch.incremental import contract_sha256
from batch.inputs import DEFAULT_SPLIT_ROWS, BadFile, InputFile, Split, fingerprint, plan_splits
from batch.model_repo import ResolvedModel
from batch.output import (
    PREDICTIONS,
    REJECTED,
    CommittedRun,
    PartWriter,
    RunLayout,
    RunLock,
    clean_stale_runs,
    commit_run,
)
from batch.overlap import BackgroundWriter, ordered_map, read_ahead
from batch.routing import ROUTING_HASH, Canary
from batch.scorer import (
    CONSTANT_COLUMNS,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    BatchScorer,
    CanaryScorer,
    load_model,
)
from batch.signature import SignatureInfo, schema_problems, signature_differences
from batch.signing import STRICT, TrustPolicy, VerificationResult, verify_once
from batch.validate import RowValidator, reject_schema
from schemas.contract import ColumnRule, Contract

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16384
DEFAULT_SCORING_THREADS = 2
DEFAULT_MAX_ERROR_RATE = 0.001


@dataclass(frozen=True)
class ScoringJob:
    """Everything a worker needs to score a split; small and picklable."""

    model: ResolvedModel
    layout: RunLayout
    key_columns: tuple[str, ...]
    # What to read: the keys, the model's inputs, and any other contract column
    # present (so dead-letter rows keep the columns the contract knows).
    columns: tuple[str, ...]
    rules: tuple[ColumnRule, ...] = ()
    batch_size: int = DEFAULT_BATCH_SIZE
    # Concurrent model calls per split: one call leaves cores idle between ops.
    scoring_threads: int = DEFAULT_SCORING_THREADS
    # What a worker accepts as loadable (public key bytes, --allow_unsigned); every
    # worker verifies the model itself before loading it (default: batch.signing.STRICT).
    trust: TrustPolicy = STRICT
    # A gray release: the share of keys the canary model scores instead of ``model``.
    canary: Canary | None = None


@dataclass(frozen=True)
class SplitResult:
    split_index: int
    rows_in: int
    rows_scored: int
    rows_rejected: int


class Runner(Protocol):
    """An engine that executes :func:`score_split` for every split."""

    name: str

    def options(self) -> dict[str, Any]:
        """The engine options worth recording in the manifest."""
        ...

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        """Score all splits; returns when every split's parts are staged."""
        ...


def read_columns(job: ScoringJob) -> list[str]:
    """The input columns a job reads: keys, model inputs, other contract columns."""
    return list(job.columns)


def job_scorer(job: ScoringJob) -> BatchScorer | CanaryScorer:
    """The job's model as this process's scorer; with a canary, both, routed by key."""
    scorer = BatchScorer(load_model(job.model, job.trust), job.key_columns, job.layout.run_id)
    if job.canary is None:
        return scorer
    canary = BatchScorer(
        load_model(job.canary.model, job.trust), job.key_columns, job.layout.run_id
    )
    return CanaryScorer(scorer, canary, job.key_columns, job.canary.fraction)


def score_batches(
    job: ScoringJob, batches: Iterable[pa.RecordBatch], schema: pa.Schema, part_index: int
) -> SplitResult:
    """Validate and score ``batches`` (of ``schema``), staging them as part ``part_index``.

    The engine-independent heart of a run: every runner hands each unit of
    work here, with a part index that is stable across retries of that unit.
    """
    scorer = job_scorer(job)
    validator = RowValidator(scorer.input_types, job.rules)
    rows_in = 0
    with (
        PartWriter(
            job.layout.staged_part(PREDICTIONS, part_index),
            scorer.output_schema(schema),
            create_empty=True,
            dictionary_columns=CONSTANT_COLUMNS,
        ) as scored,
        PartWriter(
            job.layout.staged_part(REJECTED, part_index),
            reject_schema(schema),
            create_empty=False,
        ) as rejects,
    ):
        writer = BackgroundWriter()

        def validate_and_score(
            batch: pa.RecordBatch,
        ) -> tuple[int, list[pa.RecordBatch], list[pa.RecordBatch]]:
            part = validator.partition(batch)
            predictions, poisoned = scorer.score_isolating(part.valid)
            return batch.num_rows, predictions, [part.rejected, *poisoned]

        try:
            for rows, predictions, rejected in ordered_map(
                validate_and_score, read_ahead(batches), workers=job.scoring_threads
            ):
                rows_in += rows
                fault_point(SCORING)
                for batch in predictions:
                    writer.submit(scored.write, batch)
                for batch in rejected:
                    writer.submit(rejects.write, batch)
        finally:
            writer.drain()
    return SplitResult(part_index, rows_in, scored.rows, rejects.rows)


def score_split(job: ScoringJob, split: Split) -> SplitResult:
    """Read one split (row groups of one file) as Arrow batches and score them."""
    schema, batches = read_split(split, read_columns(job), job.batch_size)
    return score_batches(job, batches, schema, split.index)


def read_split(
    split: Split, columns: Sequence[str], batch_size: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema of ``columns`` in one split, and its rows as Arrow batches, streamed."""
    parquet = pq.ParquetFile(split.path)
    schema = pa.schema([parquet.schema_arrow.field(name) for name in columns])
    batches = parquet.iter_batches(
        batch_size=batch_size, row_groups=list(split.row_groups), columns=list(columns)
    )
    return schema, _naming_file(batches, split)


def _naming_file(batches: Iterator[pa.RecordBatch], split: Split) -> Iterator[pa.RecordBatch]:
    """A data page that cannot be decoded fails the job naming the file and row groups."""
    try:
        yield from batches
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(
            f"{split.path}: row groups {list(split.row_groups)} cannot be read as Parquet "
            f"({' '.join(str(exc).split())}); the footer was readable, so the file is "
            "damaged inside. Replace it"
        ) from exc


def model_signature(model: ResolvedModel, trust: TrustPolicy) -> SignatureInfo:
    """The serving signature: from registered metadata if present, else by loading the model
    (verified against ``trust`` first)."""
    recorded = model.metadata.get("signature")
    if recorded:
        try:
            return SignatureInfo.from_json(recorded)
        except (KeyError, TypeError) as exc:
            raise ModelError(
                f"model {model.label}: metadata.json has an unreadable 'signature' entry ({exc})"
            ) from exc
    return load_model(model, trust).signature


def check_inputs(
    files: Sequence[InputFile],
    signature: SignatureInfo,
    key_columns: Sequence[str],
    contract: Contract | None,
) -> None:
    """Fail before any scoring if any file cannot feed the model or breaks the contract,
    listing every problem (file, column, expected, found)."""
    problems = []
    for file in files:
        problems += schema_problems(file.schema, signature, key_columns, file.path)
        if contract is not None:
            problems += contract.schema_problems(
                file.schema, file.null_counts, file.num_rows, file.path
            )
    if problems:
        shown = problems[:20]
        more = (
            f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        )
        raise InputDataError(
            f"{len(problems)} input problem(s); fix the data or choose the matching model:\n  "
            + "\n  ".join(shown)
            + more
        )


def columns_to_read(
    schema: pa.Schema,
    signature: SignatureInfo,
    key_columns: Sequence[str],
    contract: Contract | None,
) -> tuple[str, ...]:
    extra = [name for name in (contract.columns if contract else ()) if name in schema.names]
    return tuple(dict.fromkeys([*key_columns, *signature.inputs, *extra]))


def model_manifest(model: ResolvedModel, verification: VerificationResult) -> dict[str, Any]:
    """How manifests and comparisons describe a model: identity, origin and what was checked."""
    return {
        "name": model.name,
        "version": model.version,
        "content_hash": model.content_hash,
        "path": str(model.saved_model_dir),
        "registered": model.registered,
        "alias": model.alias,
        "signature": verification.to_manifest(),
    }


@dataclass(frozen=True)
class RunSummary:
    run: CommittedRun
    manifest: dict[str, Any]
    wall_seconds: float

    @property
    def predictions_per_second(self) -> float:
        return self.manifest["counts"]["rows_scored"] / max(self.wall_seconds, 1e-9)


class DryRunComplete(Exception):
    """A runner asked only to build its job (Beam's ``--dry_run``) has built it: nothing
    was staged, scored or committed. The message says what was built."""


def run_scoring(
    *,
    input_spec: str,
    files: Sequence[InputFile],
    model: ResolvedModel,
    output_root: Path,
    key_columns: Sequence[str],
    runner: Runner,
    run_id: str,
    contract: Contract | None = None,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    skipped_files: Sequence[BadFile] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    split_rows: int = DEFAULT_SPLIT_ROWS,
    started: float | None = None,
    trust: TrustPolicy = STRICT,
    canary: Canary | None = None,
) -> RunSummary:
    """Check, score with ``runner``, reconcile and commit one run (a gray release of
    ``canary.model`` on ``canary.fraction`` of the keys, if given)."""
    started = time.perf_counter() if started is None else started
    started_at = dt.datetime.now(dt.UTC)
    # Refuse an untrusted model here, before any work; workers verify again themselves.
    verification = verify_once(model, trust)
    signature = model_signature(model, trust)
    canary_manifest = None
    if canary is not None:
        canary_manifest = {
            "model": model_manifest(canary.model, verify_once(canary.model, trust)),
            "fraction": canary.fraction,
            "routing": ROUTING_HASH,
            "key_columns": list(key_columns),
        }
        check_canary_signature(model, signature, canary, model_signature(canary.model, trust))
    check_inputs(files, signature, key_columns, contract)
    splits = plan_splits(files, split_rows)
    layout = RunLayout(output_root, model.name, model.version, run_id)
    columns = columns_to_read(files[0].schema, signature, key_columns, contract) if files else ()
    job = ScoringJob(
        model=model,
        layout=layout,
        key_columns=tuple(key_columns),
        columns=columns,
        rules=tuple(contract.columns.values()) if contract else (),
        batch_size=batch_size,
        trust=trust,
        canary=canary,
    )
    manifest = {
        "batchscore_version": importlib.metadata.version("batchscore"),
        "model": model_manifest(model, verification),
        "input": {
            "spec": input_spec,
            "fingerprint": fingerprint(files),
            "files": [{"path": f.path, "bytes": f.size, "rows": f.num_rows} for f in files],
            "skipped_files": [{"path": b.path, "reason": b.reason} for b in skipped_files],
        },
        "contract": (
            {"name": contract.name, "source": contract.source, "sha256": contract_sha256(contract)}
            if contract
            else None
        ),
        "key_columns": list(key_columns),
        "runner": {"name": runner.name, "options": runner.options()},
        "batch_size": batch_size,
        "started": started_at.isoformat(timespec="seconds"),
    }
    if canary_manifest is not None:
        manifest["canary"] = canary_manifest
    if getattr(runner, "dry_run", False):
        # The runner builds its job (e.g. a Dataflow job description) and submits nothing:
        # the output is not touched, nothing is staged or committed.
        runner.execute(job, splits)
        raise DryRunComplete(
            getattr(runner, "dry_run_report", "")
            or f"dry run on {runner.name}: nothing was scored or committed"
        )
    rows_in = sum(f.num_rows for f in files)
    cleaned = clean_stale_runs(layout.version_dir)
    if cleaned:
        log.warning("removed %d stale run folder(s) left by dead jobs: %s", len(cleaned), cleaned)
    log.info("scoring %d split(s) of %d file(s) with %s", len(splits), len(files), runner.name)
    with RunLock(layout):
        layout.staging_dir.mkdir(parents=True)
        runner.execute(job, splits)
        if canary_manifest is not None:
            canary_manifest["rows_scored"] = rows_by_model(layout.staging_dir)
        run = commit_run(layout, manifest, rows_in, max_error_rate)
    return RunSummary(run, run.manifest(), time.perf_counter() - started)


def check_canary_signature(
    model: ResolvedModel, signature: SignatureInfo, canary: Canary, canary_signature: SignatureInfo
) -> None:
    """A canary writes into the same predictions output: it must take and give the same tensors."""
    if not 0.0 < canary.fraction < 1.0:
        raise UsageError(
            f"--canary_fraction={canary.fraction}: expected a share strictly between 0 and 1 "
            "(e.g. 0.1 for 10% of keys); to score everything with one model use --model alone"
        )
    if canary.model.content_hash == model.content_hash:
        raise UsageError(
            f"--canary={canary.model.label} has the same files as --model={model.label}; a "
            "canary must be another model. Promote the candidate to the canary alias first"
        )
    differences = signature_differences(signature, canary_signature)
    if differences:
        raise ModelError(
            f"--canary={canary.model.label}: its serving signature differs from --model="
            f"{model.label}'s ({'; '.join(differences)}); a canary writes into the same "
            "predictions output, so it must take and give the same tensors. Choose a candidate "
            "with the same signature, or compare the two with `python -m jobs.compare`"
        )


def rows_by_model(run_dir: Path) -> dict[str, int]:
    """Prediction rows of a (staged) run by the model that scored them: {"NAME@VERSION": rows}."""
    counts: Counter[str] = Counter()
    for path in sorted((run_dir / PREDICTIONS).glob("part-*.parquet")):
        table = pq.read_table(path, columns=[MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN])
        for row in (
            table.group_by([MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN])
            .aggregate([([], "count_all")])
            .to_pylist()
        ):
            counts[f"{row[MODEL_NAME_COLUMN]}@{row[MODEL_VERSION_COLUMN]}"] += row["count_all"]
    return dict(sorted(counts.items()))
