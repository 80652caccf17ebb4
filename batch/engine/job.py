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
import shutil
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from batch.contract.contract import ColumnRule, Contract, contract_sha256
from batch.core import storage
from batch.core.columns import (
    CONSTANT_COLUMNS,
)
from batch.core.dictionaries import decode_dictionaries, decoded_schema
from batch.core.errors import (
    DamagedFileError,
    DriftExceeded,
    ErrorBudgetExceeded,
    InputDataError,
    ModelError,
    UsageError,
)
from batch.core.faults import ATTEMPT_WRITTEN, SCORING, fault_point
from batch.core.fsutil import absolute, read_json, write_json_atomic
from batch.engine.inputs import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SPLIT_ROWS,
    MAX_BATCH_ROWS,
    SPLITS_PER_SLOT,
    BadFile,
    IgnoredFile,
    InputFile,
    Split,
    check_split_unchanged,
    complete_null_counts,
    engine_split_rows,
    fingerprint,
    open_split,
    plan_splits,
)
from batch.engine.memory import (
    NOT_SHARED,
    ROW_GROUP_COPIES,
    SOFT_LIMIT,
    WORKER_FIXED_ESTIMATE,
    Depths,
    IntakeGate,
    Sharing,
    WorkerMemory,
    depth_choices,
    gated_map,
    memory_section,
    plan_depths,
    rss_bytes,
    split_budget,
    target_batch_bytes,
    use_jemalloc,
    worker_budget,
)
from batch.engine.overlap import BackgroundWriter
from batch.engine.scorer import BatchScorer, MemoryBackoff, dictionary_inputs
from batch.engine.sizing import (
    DEFAULT_BATCH_BYTES,
    BatchPlan,
    BatchSizing,
    largest_row_group_bytes,
    plan_batches,
)
from batch.engine.validate import RowValidator, reject_schema
from batch.model.loading import (
    MODEL_CALLS_AT_ONCE,
    LoadedModel,
    load_model,
    plan_model_rows,
    plan_model_threads,
)
from batch.model.resolved import ResolvedModel
from batch.model.signature import (
    DEFAULT_CHOICE,
    SignatureChoice,
    SignatureInfo,
    schema_problems,
)
from batch.model.signing import STRICT, TrustPolicy, VerificationResult, verify_once
from batch.model.tflite import model_backend
from batch.observe.checks import FAIL, WARN, RunOutcome, run_checks, run_summary, worst
from batch.observe.drift import (
    CATEGORICAL,
    Baseline,
    DriftCounts,
    DriftThresholds,
    count_features,
    count_prediction,
    drift_report,
)
from batch.observe.metrics import (
    PartStats,
    end_attempt,
    merge_part_stats,
    metrics_section,
    process_id,
    progress_path,
    start_attempt,
    stats_path,
    write_part_stats,
    write_progress,
)
from batch.observe.progress import LOG_EVERY_S, ProgressMode, ProgressMonitor
from batch.output.commit import (
    PREDICTIONS,
    REJECTED,
    CommittedRun,
    PartWriter,
    RunLayout,
    RunLock,
    clean_stale_runs,
    commit_run,
    count_reasons,
)
from batch.output.manifest import Manifest
from batch.output.objstore import (
    ObjectRunLayout,
    RunLease,
    choose_attempts,
    commit_object_run,
    new_attempt_id,
    write_attempt,
)

log = logging.getLogger(__name__)

# In a staged run: notes of splits whose file was found damaged (--on_bad_file=skip).
SKIPPED_FOLDER = "_skipped"

DEFAULT_SCORING_THREADS = MODEL_CALLS_AT_ONCE
DEFAULT_MAX_ERROR_RATE = 0.001
DEFAULT_DRIFT_THRESHOLDS = DriftThresholds()


@dataclass(frozen=True)
class ScoringJob:
    """Everything a worker needs to score a split; small and picklable."""

    model: ResolvedModel
    # On disk (rename + flock) or in a bucket (attempt names + manifest + lease).
    layout: RunLayout | ObjectRunLayout
    key_columns: tuple[str, ...]
    # What to read: the keys, the model's inputs, and any other contract column
    # present (so dead-letter rows keep the columns the contract knows).
    columns: tuple[str, ...]
    rules: tuple[ColumnRule, ...] = ()
    # Rows per batch where a split names none (Split.batch_rows): the smallest the planner
    # chose, which Spark uses when it reads the input itself.
    batch_size: int = DEFAULT_BATCH_SIZE
    # Concurrent model calls per split: one call leaves cores idle between ops.
    scoring_threads: int = DEFAULT_SCORING_THREADS
    # The cores those calls share in a worker process (None: every core it may run on);
    # each op of a call uses its share (batch.model.loading.plan_model_threads).
    scoring_cpus: int | None = None
    # What a worker accepts as loadable (public key bytes, --allow_unsigned); every
    # worker verifies the model itself before loading it (default: batch.model.signing.STRICT).
    trust: TrustPolicy = STRICT
    # Scores part of the rows another way (e.g. a canary model: batch.release.canary).
    variant: ScoringVariant | None = None
    # The model's training statistics; scoring counts the same bins (None: no drift).
    baseline: Baseline | None = None
    # How often a part writes its rows done for the driver's progress display.
    progress_interval_s: float = 1.0
    # Write rows whose prediction is NaN or infinite instead of dead-lettering them.
    keep_non_finite: bool = False
    # Which signature (and MetaGraph) every worker loads, and how its input is fed.
    signature: SignatureChoice = DEFAULT_CHOICE
    # Input columns copied into the prediction rows beside the keys (--passthrough_columns).
    passthrough_columns: tuple[str, ...] = ()
    # --on_bad_file=skip: a file found damaged inside while reading is skipped whole.
    skip_bad_files: bool = False
    # The worker's memory budget and the largest batch (None: today's depths, no limit).
    memory: WorkerMemory | None = None
    # The text columns read dictionary-encoded where a file stores them so: the
    # category columns of the checks (encoded_columns) and the model's string inputs.
    encoded: frozenset[str] = frozenset()
    # The whole input's rows (None: not known): a worker moves its model's string work
    # onto distinct values only for a job large enough (batch.model.loading.plan_model_rows).
    input_rows: int | None = None


@dataclass(frozen=True)
class SplitResult:
    split_index: int
    rows_in: int
    rows_scored: int
    rows_rejected: int
    # What the part counted (also staged as its _stats file, which the manifest uses).
    stats: PartStats | None = None


@dataclass(frozen=True)
class _ScoredBatch:
    rows: int
    predictions: list[pa.RecordBatch]
    rejected: list[pa.RecordBatch]
    seconds: float
    reasons: Counter[str]
    drift: DriftCounts | None
    filled: Mapping[str, int]
    passed_to_oov: Mapping[str, int]


class Scorer(Protocol):
    """What a worker scores batches with: a :class:`BatchScorer`, or one that wraps it."""

    @property
    def loaded(self) -> LoadedModel:
        """The model the run is named after."""
        ...

    @property
    def input_types(self) -> dict[str, pa.DataType]: ...

    @property
    def takes_encoded(self) -> frozenset[str]:
        """Input columns it takes dictionary-encoded (batch.engine.scorer.dictionary_feed)."""
        ...

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema: ...

    def score_isolating(
        self, batch: pa.RecordBatch
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]: ...


class ScoringVariant(Protocol):
    """Changes how part of a run is scored without the engine knowing how: it is checked
    on the driver, wraps each worker's scorer, and adds one section to the manifest.

    Features are added by wrapping: the canary release (batch.release.canary.Canary) is
    one. A variant must be small and picklable: it travels to the workers in the job.
    """

    manifest_key: str

    def prepare(
        self,
        model: ResolvedModel,
        signature: SignatureInfo,
        key_columns: Sequence[str],
        trust: TrustPolicy,
        choice: SignatureChoice = DEFAULT_CHOICE,
    ) -> dict[str, Any]:
        """Check the variant against the run's model (``signature``, the one ``choice``
        selects) before any work; its manifest section."""
        ...

    def wrap(self, scorer: BatchScorer, job: ScoringJob) -> Scorer:
        """The scorer a worker uses instead of ``scorer``."""
        ...

    def finish(self, staging_dir: Path, section: dict[str, Any]) -> None:
        """Complete the manifest section from the staged parts, before the commit."""
        ...

    def describe(self) -> str:
        """One phrase for job descriptions (e.g. Beam's display data)."""
        ...


class Runner(Protocol):
    """An engine that executes :func:`score_split` for every split."""

    name: str

    @property
    def splits_at_once(self) -> int | None:
        """How many splits the engine scores at the same time, where that is known before
        it starts (None: not known, e.g. a cluster that scales); without --split_rows the
        splits are planned larger where few run at once (engine_split_rows)."""
        ...

    @property
    def memory_sharing(self) -> Sharing:
        """The worker processes on one machine and the splits each scores at once, where
        that is known before the engine starts (else one and one): the memory plan shares
        the budget among them (batch.engine.memory)."""
        ...

    def options(self) -> dict[str, Any]:
        """The engine options worth recording in the manifest."""
        ...

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        """Score all splits; returns when every split's parts are staged."""
        ...


def read_columns(job: ScoringJob) -> list[str]:
    """The input columns a job reads: keys, model inputs, other contract columns."""
    return list(job.columns)


def encoded_columns(rules: Iterable[ColumnRule], baseline: Baseline | None) -> frozenset[str]:
    """The columns read dictionary-encoded where a file stores them so, for the checks:
    those whose values are looked up in a list of categories (the contract's string_domain,
    the drift baseline's categories), which then costs one lookup per distinct value. A job
    also reads so the model's string inputs (batch.engine.scorer.dictionary_inputs)."""
    names = {rule.name for rule in rules if rule.categories is not None}
    if baseline is not None:
        names.update(f.name for f in baseline.features if f.kind == CATEGORICAL)
    return frozenset(names)


def job_scorer(job: ScoringJob, backoff: MemoryBackoff | None = None) -> Scorer:
    """The job's model as this process's scorer, wrapped by the job's variant if any;
    ``backoff``: the split's batch limit after a call ran out of memory."""
    plan_model_threads(job.scoring_threads, job.scoring_cpus)  # before this process's first load
    use_jemalloc()  # before this process reads its first batch
    plan_model_rows(job.input_rows)
    scorer = BatchScorer(
        load_model(job.model, job.trust, job.signature),
        job.key_columns,
        job.layout.run_id,
        keep_non_finite=job.keep_non_finite,
        passthrough=job.passthrough_columns,
        backoff=backoff,
    )
    return scorer if job.variant is None else job.variant.wrap(scorer, job)


BatchObserver = Callable[[int, float], None]
"""Told (rows, seconds to validate and score) after every batch, in the calling thread:
runners feed their engine's live metrics with it (Beam counters, Spark accumulators)."""


def score_batches(
    job: ScoringJob,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    part_index: int,
    on_batch: BatchObserver | None = None,
    restarted: dict[str, int] | None = None,
) -> SplitResult:
    """Validate and score ``batches`` (of ``schema``), staging them as part ``part_index``;
    ``restarted``: the part runs again after its earlier execution died (its attempt and
    the halved batch rows, recorded in the stats).

    The engine-independent heart of a run: every runner hands each unit of
    work here, with a part index that is stable across retries of that unit.
    Besides the Parquet parts it stages the part's stats (batch.observe.metrics).
    """
    started = time.perf_counter()
    backoff = MemoryBackoff()
    scorer = job_scorer(job, backoff)
    depths, gate = worker_depths(job)  # after the model is loaded: its RSS counts
    validator = RowValidator(
        scorer.input_types,
        job.rules,
        scorer.loaded.signature.optional_columns(),
        keep_encoded=scorer.takes_encoded,
    )
    baseline = job.baseline
    stats = PartStats(model_loads={process_id(): scorer.loaded.load_seconds})
    if restarted:
        stats.restarted_parts = {str(part_index): dict(restarted)}
    layout = job.layout
    # In a bucket every execution of a part writes under its own attempt name; on disk the
    # part's name is fixed and a retry renames onto it.
    attempt = new_attempt_id() if isinstance(layout, ObjectRunLayout) else None

    def part_path(kind: str) -> Path | str:
        if isinstance(layout, ObjectRunLayout):
            assert attempt is not None
            return layout.attempt_part(kind, part_index, attempt)
        return layout.staged_part(kind, part_index)

    # Progress files are for the driver's display on a shared disk; none in a bucket.
    staging = None if isinstance(layout, ObjectRunLayout) else layout.staging_dir
    with (
        PartWriter(
            part_path(PREDICTIONS),
            scorer.output_schema(schema),
            create_empty=True,
            dictionary_columns=CONSTANT_COLUMNS,
        ) as scored,
        PartWriter(
            part_path(REJECTED),
            reject_schema(schema),
            # Part 0 is written even when empty, so that every committed run has rejected/
            # with the dead-letter schema and readers need no special case.
            create_empty=part_index == 0,
        ) as rejects,
    ):
        writer = BackgroundWriter(depths.write_queue)

        def validate_and_score(batch: pa.RecordBatch) -> _ScoredBatch:
            begin = time.perf_counter()
            part = validator.partition(batch)
            predictions, poisoned = scorer.score_isolating(part.valid)
            seconds = time.perf_counter() - begin
            rejected = [part.rejected, *poisoned]
            reasons = count_reasons(rejected)
            drift = None
            if baseline is not None:
                drift = count_features(baseline, batch)
                for scored_batch in predictions:
                    counts = count_prediction(baseline, scored_batch)
                    if counts is not None:
                        drift.add(DriftCounts(prediction=counts))
            return _ScoredBatch(
                batch.num_rows,
                predictions,
                rejected,
                seconds,
                reasons,
                drift,
                part.filled,
                part.passed_to_oov,
            )

        next_progress = started + job.progress_interval_s
        try:
            for done in gated_map(validate_and_score, batches, depths, gate):
                stats.rows_read += done.rows
                stats.observe_batch(done.seconds)
                if on_batch is not None:
                    on_batch(done.rows, done.seconds)
                stats.rejected_by_reason.update(done.reasons)
                stats.filled.update(done.filled)
                stats.passed_to_oov.update(done.passed_to_oov)
                if done.drift is not None:
                    stats.drift = stats.drift or DriftCounts()
                    stats.drift.add(done.drift)
                fault_point(SCORING)
                for batch in done.predictions:
                    writer.submit(scored.write, batch)
                for batch in done.rejected:
                    writer.submit(rejects.write, batch)
                if staging is not None and time.perf_counter() >= next_progress:
                    write_progress(staging, part_index, stats.rows_read)
                    next_progress = time.perf_counter() + job.progress_interval_s
        finally:
            writer.drain()
    # The parts are renamed into place: record what they hold, replacing what an
    # earlier attempt of this part wrote.
    stats.rows_scored, stats.rows_rejected = scored.rows, rejects.rows
    stats.scoring_seconds = time.perf_counter() - started
    stats.intake_waits, stats.intake_wait_seconds = gate.waits, gate.wait_seconds
    stats.peak_rss_bytes = gate.peak_rss
    stats.worker_budget_bytes = gate.budget or 0
    stats.per_value_ops = scorer.loaded.function.per_value_ops
    stats.per_value_parts = 1 if stats.per_value_ops else 0
    if backoff.rows is not None:
        stats.out_of_memory_retries = backoff.retries
        stats.batch_rows_after_out_of_memory = {str(part_index): backoff.rows}
    if isinstance(layout, ObjectRunLayout):
        assert attempt is not None
        fault_point(ATTEMPT_WRITTEN)
        files = [
            {
                "kind": kind,
                "path": storage.join(kind, storage.name(str(writer.path))),
                **writer.describe(),
            }
            for kind, writer in ((PREDICTIONS, scored), (REJECTED, rejects))
            if writer.written
        ]
        write_attempt(layout, part_index, attempt, stats, files)
    else:
        write_part_stats(layout.staging_dir, part_index, stats)
        write_progress(layout.staging_dir, part_index, stats.rows_read)
    return SplitResult(part_index, stats.rows_read, scored.rows, rejects.rows, stats)


def worker_depths(job: ScoringJob) -> tuple[Depths, IntakeGate]:
    """How many batches this worker holds in each place, and the gate that slows its
    intake near the budget (batch.engine.memory), from its RSS now."""
    if job.memory is None:
        return depth_choices(job.scoring_threads)[0], IntakeGate(None)
    memory = job.memory
    rss = rss_bytes() or 0
    budget = memory.budget()
    # With other splits at once in this process, their batches are in ``rss`` already:
    # this split's part of the rest is, if anything, smaller than planned.
    mine = split_budget(budget, rss, memory.sharing.splits)
    depths, _ = plan_depths(
        mine, rss + memory.reader_bytes, memory.batch_bytes, job.scoring_threads
    )
    return depths, IntakeGate(int(budget * SOFT_LIMIT), budget)


def score_split(
    job: ScoringJob, split: Split, on_batch: BatchObserver | None = None
) -> SplitResult:
    """Read one split (row groups of one file) as Arrow batches and score them.

    With ``job.skip_bad_files``, a split whose file turns out damaged inside is staged as
    a skip note instead of parts; the driver then drops every part of that file
    (:func:`drop_damaged_files`)."""
    try:
        batch_rows = split.batch_rows or job.batch_size
        # An earlier execution of this split that died without an exception (the kernel's
        # OOM killer, a lost worker) left its marker.
        attempt, marker = (
            start_attempt(job.layout.staging_dir, split.index)
            if isinstance(job.layout, RunLayout)
            else (0, None)
        )
        batch_rows, restarted = rows_after_restarts(batch_rows, attempt, split.index)
        schema, batches = read_split(split, read_columns(job), batch_rows, job.encoded)
        result = score_batches(job, batches, schema, split.index, on_batch, restarted)
        if marker is not None:
            end_attempt(marker)
        return result
    except DamagedFileError as exc:
        if not job.skip_bad_files:
            raise
        log.warning("skipping %s (--on_bad_file=skip): %s", split.path, exc)
        assert isinstance(job.layout, RunLayout)  # refused for a bucket output (run_scoring)
        write_json_atomic(
            job.layout.staging_dir / SKIPPED_FOLDER / f"part-{split.index:05d}.json",
            {"path": split.path, "reason": str(exc)},
        )
        return SplitResult(split.index, 0, 0, 0)


def rows_after_restarts(
    batch_rows: int, attempt: int, part_index: int
) -> tuple[int, dict[str, int] | None]:
    """Batch rows for execution ``attempt`` (0: the first) of part ``part_index``: halved
    per earlier execution that died (the kernel's OOM killer answers a batch too big for
    the worker with SIGKILL, which no exception handler sees), down to one; and what the
    part's stats record (None for a first execution)."""
    if attempt <= 0:
        return batch_rows, None
    rows = max(1, batch_rows >> attempt)
    log.warning(
        "part %d runs again after %d execution(s) that died; batches of %d rows (halved per "
        "earlier execution)",
        part_index,
        attempt,
        rows,
    )
    return rows, {"attempt": attempt, "batch_rows": rows}


def drop_damaged_files(staging_dir: Path, splits: Sequence[Split]) -> list[BadFile]:
    """The files whose splits staged a skip note, after removing every part, stats and
    progress file of all their splits: a damaged file contributes no row, like a file
    whose footer is damaged."""
    notes = sorted((staging_dir / SKIPPED_FOLDER).glob("part-*.json"))
    damaged: dict[str, str] = {}
    for note in notes:
        entry = read_json(note)
        damaged.setdefault(str(entry["path"]), str(entry["reason"]))
    for split in splits:
        if split.path in damaged:
            for kind in (PREDICTIONS, REJECTED):
                (staging_dir / kind / f"part-{split.index:05d}.parquet").unlink(missing_ok=True)
            stats_path(staging_dir, split.index).unlink(missing_ok=True)
            progress_path(staging_dir, split.index).unlink(missing_ok=True)
    shutil.rmtree(staging_dir / SKIPPED_FOLDER, ignore_errors=True)
    return [BadFile(path, reason) for path, reason in sorted(damaged.items())]


def read_split(
    split: Split, columns: Sequence[str], batch_size: int, encoded: Collection[str] = ()
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema of ``columns`` in one split, and its rows as Arrow batches, streamed.

    The text columns named in ``encoded`` stay dictionary-encoded where the file stores
    them with dictionaries and its row groups are not much smaller than the batches
    (:func:`open_split`; the validator, the drift counting and the model's feeds take them
    so); every other column is decoded. The schema is the decoded one."""
    parquet = open_split(split, encoded, batch_size)
    schema = decoded_schema(pa.schema([parquet.schema_arrow.field(name) for name in columns]))
    batches = parquet.iter_batches(
        batch_size=batch_size, row_groups=list(split.row_groups), columns=list(columns)
    )
    return schema, (decode_dictionaries(b, encoded) for b in _naming_file(batches, split))


def _naming_file(batches: Iterator[pa.RecordBatch], split: Split) -> Iterator[pa.RecordBatch]:
    """A data page that cannot be decoded fails the job naming the file and row groups."""
    try:
        yield from batches
    except (OSError, pa.ArrowException) as exc:
        raise DamagedFileError(
            f"{split.path}: row groups {list(split.row_groups)} cannot be read as Parquet "
            f"({' '.join(str(exc).split())}); the footer was readable, so the file is "
            "damaged inside. Replace it, or pass --on_bad_file=skip to score the other files"
        ) from exc
    check_split_unchanged(split)


def model_signature(
    model: ResolvedModel, trust: TrustPolicy, choice: SignatureChoice = DEFAULT_CHOICE
) -> SignatureInfo:
    """The signature ``choice`` (serving_default by default): from registered metadata if
    it records that one completely, else by loading the model (verified against ``trust``
    first)."""
    recorded = model.metadata.get("signature")
    if recorded and choice.is_default:
        try:
            signature = SignatureInfo.from_json(recorded)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"model {model.label}: metadata.json has an unreadable 'signature' entry ({exc})"
            ) from exc
        lone = list(signature.inputs.values())
        # Metadata written before tf.Example reading records no parsed features: one
        # string input may be serialized tf.Examples, which only the graph tells.
        if signature.examples is not None or not (len(lone) == 1 and lone[0].dtype == "string"):
            return signature
    # The driver's own load, for the signature only (no call prepared); Spark's JVM may be
    # starting meanwhile (runners.pyspark), and must not inherit the file descriptor 2
    # that TensorFlow's import holds.
    return load_model(model, trust, choice, to_call=False).signature


def check_inputs(
    files: Sequence[InputFile],
    signature: SignatureInfo,
    key_columns: Sequence[str],
    contract: Contract | None,
    passthrough_columns: Sequence[str] = (),
) -> None:
    """Fail before any scoring if any file cannot feed the model or breaks the contract,
    listing every problem (file, column, expected, found)."""
    problems = []
    for file in files:
        problems += schema_problems(file.schema, signature, key_columns, file.path)
        problems += [
            f"{file.path}: column '{name}' is missing; --passthrough_columns names it"
            for name in passthrough_columns
            if file.schema.get_field_index(name) < 0
        ]
        if contract is not None:
            required = [rule.name for rule in contract.columns.values() if rule.required]
            problems += contract.schema_problems(
                file.schema, complete_null_counts(file, required), file.num_rows, file.path
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
    passthrough_columns: Sequence[str] = (),
) -> tuple[str, ...]:
    extra = [name for name in (contract.columns if contract else ()) if name in schema.names]
    return tuple(
        dict.fromkeys([*key_columns, *passthrough_columns, *signature.input_columns(), *extra])
    )


def check_passthrough(
    passthrough_columns: Sequence[str], key_columns: Sequence[str], signature: SignatureInfo
) -> None:
    """A passed-through column may not share a name with a key, an output or a column
    batchscore adds (each names one column of the prediction rows)."""
    taken = {
        **{name: "a key column" for name in key_columns},
        **{name: "a model output" for name in signature.outputs},
        **{name: "a column batchscore adds" for name in CONSTANT_COLUMNS},
    }
    clashes = [f"'{n}' is {taken[n]}" for n in passthrough_columns if n in taken]
    if clashes:
        raise UsageError(
            f"--passthrough_columns: {'; '.join(clashes)}, so the prediction rows would have "
            "two columns of that name; pass only other input columns"
        )


def model_manifest(model: ResolvedModel, verification: VerificationResult) -> dict[str, Any]:
    """How manifests and comparisons describe a model: identity, origin and what was checked."""
    return {
        "name": model.name,
        "version": model.version,
        "content_hash": model.content_hash,
        "path": absolute(model.saved_model_dir),
        "registered": model.registered,
        "alias": model.alias,
        "signature": verification.to_manifest(),
        # How its model part runs: tensorflow, or tflite (LiteRT after the transform graph).
        "backend": model_backend(model.saved_model_dir),
        # Where the version's record lives, and what produced it (jobs.models show).
        "metadata_file": (
            absolute(Path(model.saved_model_dir).parent / "metadata.json")
            if model.registered
            else None
        ),
        "lineage": model.metadata.get("lineage"),
    }


@dataclass(frozen=True)
class RunSummary:
    run: CommittedRun
    manifest: Manifest
    wall_seconds: float
    # The summary for schedulers: the manifest's, plus what happened after the commit.
    summary: dict[str, Any]

    @property
    def predictions_per_second(self) -> float:
        return self.manifest.counts.rows_scored / max(self.wall_seconds, 1e-9)


class DryRunComplete(Exception):
    """A runner asked only to build its job (Beam's ``--dry_run``) has built it: nothing
    was staged, scored or committed. The message says what was built."""


@dataclass(frozen=True, kw_only=True)
class ScoringRun:
    """One scoring run as values: the resolved inputs, model and output, and the
    options of the run. :func:`run_scoring` executes it with a :class:`Runner`.

    ``variant``: scores part of the rows another way (a canary release:
    batch.release.canary.Canary); its manifest section is named by it. ``drift``: count
    the model's baseline bins while scoring (when it has a baseline). ``progress``: how
    the driver shows progress (batch.observe.progress). ``keep_non_finite``: write rows
    whose prediction is NaN or infinite (by default they go to the dead-letter as
    non_finite_prediction and count against the error budget). ``started``: the
    ``time.perf_counter()`` the job's wall time counts from (default: when run_scoring
    starts).
    """

    input_spec: str
    files: Sequence[InputFile]
    model: ResolvedModel
    # A folder, or a gs:// / s3:// URI (the object-store commit protocol).
    output_root: Path | str
    key_columns: Sequence[str]
    run_id: str
    contract: Contract | None = None
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    skipped_files: Sequence[BadFile] = ()
    ignored_files: Sequence[IgnoredFile] = ()
    # Rows per batch (--batch_size); None: chosen per split by bytes (batch_bytes).
    batch_size: int | None = None
    batch_bytes: int = DEFAULT_BATCH_BYTES
    # Bytes a worker may use (--worker_memory); None: its cgroup's or machine's, less headroom.
    worker_memory: int | None = None
    # Rows per split (--split_rows); None: chosen for the engine (engine_split_rows).
    split_rows: int | None = None
    started: float | None = None
    trust: TrustPolicy = STRICT
    variant: ScoringVariant | None = None
    drift: bool = True
    drift_thresholds: DriftThresholds = DEFAULT_DRIFT_THRESHOLDS
    progress: ProgressMode = "off"
    progress_every_s: float = LOG_EVERY_S
    keep_non_finite: bool = False
    signature: SignatureChoice = DEFAULT_CHOICE
    passthrough_columns: Sequence[str] = ()
    skip_bad_files: bool = False

    def __post_init__(self) -> None:
        for option, value in (("batch_size", self.batch_size), ("split_rows", self.split_rows)):
            if value is not None and not 1 <= value <= MAX_BATCH_ROWS:
                raise UsageError(
                    f"--{option}={value}: expected a number of rows from 1 to {MAX_BATCH_ROWS:,}"
                )


def plan_batching(
    run: ScoringRun,
    splits: Sequence[Split],
    columns: Sequence[str],
    sharing: Sharing = NOT_SHARED,
) -> tuple[BatchPlan, WorkerMemory]:
    """Each split's batch rows (batch.engine.sizing) within the worker memory budget
    (batch.engine.memory): the batch target is lowered until the deepest overlap fits
    beside the worker's start-up and the Parquet reader's row groups, in each split's
    part of the budget where the runner scores several at once (``sharing``). The plan's
    section (``batching`` in the manifest) gets the memory plan as ``memory``."""
    budget, source = worker_budget(run.worker_memory, sharing)
    fixed = max(rss_bytes() or 0, WORKER_FIXED_ESTIMATE)
    reader = ROW_GROUP_COPIES * largest_row_group_bytes(run.files, columns)
    threads = DEFAULT_SCORING_THREADS
    mine = split_budget(budget, fixed, sharing.splits)
    target = target_batch_bytes(mine, fixed + reader, run.batch_bytes, threads)
    sizing = BatchSizing(target, forced_rows=run.batch_size)
    batching = plan_batches(run.files, splits, columns, sizing)
    depths, split_peak = plan_depths(mine, fixed + reader, batching.largest_bytes, threads)
    peak = fixed + (split_peak - fixed) * sharing.splits
    batching.section["memory"] = memory_section(
        budget, source, fixed, reader, depths, peak, batching.largest_bytes, sharing
    )
    if peak > budget:
        log.warning(
            "batches of up to %d bytes with %d bytes of worker start-up and %d held by the "
            "Parquet reader (row groups) exceed the worker memory budget of %d bytes (%s) "
            "even one at a time%s; intake will wait near the budget, and calls that run out "
            "of memory are retried on halves",
            batching.largest_bytes,
            fixed,
            reader,
            budget,
            source,
            f" in each of {sharing.splits} splits at once" if sharing.splits > 1 else "",
        )
    return batching, WorkerMemory(run.worker_memory, batching.largest_bytes, reader, sharing)


def planned_split_rows(run: ScoringRun, runner: Runner) -> tuple[int, str]:
    """Rows per split and how they were chosen (the manifest's ``batching.splits``)."""
    if run.split_rows is not None:
        return run.split_rows, "--split_rows"
    at_once = runner.splits_at_once
    rows = engine_split_rows(sum(f.num_rows for f in run.files), at_once)
    if rows == DEFAULT_SPLIT_ROWS:
        return rows, "default"
    return rows, f"the engine scores {at_once} split(s) at once: about {SPLITS_PER_SLOT} each"


def run_scoring(
    run: ScoringRun,
    runner: Runner,
    *,
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> RunSummary:
    """Check, score ``run`` with ``runner``, reconcile, run the checks and commit it.

    ``on_outcome`` is told the run summary, metrics and drift once the run is
    committed or refused by a check (error budget, drift with action fail).
    """
    model, files, key_columns, contract = run.model, run.files, run.key_columns, run.contract
    trust, variant, drift, run_id = run.trust, run.variant, run.drift, run.run_id
    max_error_rate = run.max_error_rate
    started = time.perf_counter() if run.started is None else run.started
    started_at = dt.datetime.now(dt.UTC)
    # Refuse an untrusted model here, before any work; workers verify again themselves.
    verification = verify_once(model, trust)
    signature = model_signature(model, trust, run.signature)
    variant_manifest = (
        None
        if variant is None
        else variant.prepare(model, signature, key_columns, trust, run.signature)
    )
    check_passthrough(run.passthrough_columns, key_columns, signature)
    check_inputs(files, signature, key_columns, contract, run.passthrough_columns)
    split_rows, split_rule = planned_split_rows(run, runner)
    splits = plan_splits(files, split_rows)
    # Absolute, so that the manifest and the summary name the run wherever they are read.
    layout: RunLayout | ObjectRunLayout
    if storage.is_uri(str(run.output_root)):
        layout = ObjectRunLayout(
            str(run.output_root).rstrip("/"), model.name, model.version, run_id
        )
        _check_object_store_options(run)
    else:
        layout = RunLayout(Path(absolute(run.output_root)), model.name, model.version, run_id)
    columns = (
        columns_to_read(files[0].schema, signature, key_columns, contract, run.passthrough_columns)
        if files
        else ()
    )
    batching, worker_memory = plan_batching(run, splits, columns, runner.memory_sharing)
    batching.section["splits"] = {
        "count": len(splits),
        "split_rows": split_rows,
        "rule": split_rule,
    }
    splits = batching.splits
    baseline = Baseline.load(model.saved_model_dir, model.label) if drift else None
    rows_in = sum(f.num_rows for f in files)
    job = ScoringJob(
        model=model,
        layout=layout,
        key_columns=tuple(key_columns),
        columns=columns,
        rules=tuple(contract.columns.values()) if contract else (),
        batch_size=batching.smallest_rows,
        trust=trust,
        variant=variant,
        baseline=baseline,
        keep_non_finite=run.keep_non_finite,
        skip_bad_files=run.skip_bad_files,
        signature=run.signature,
        passthrough_columns=tuple(run.passthrough_columns),
        memory=worker_memory,
        encoded=encoded_columns(contract.columns.values() if contract else (), baseline)
        | dictionary_inputs(signature, key_columns, run.passthrough_columns),
        input_rows=rows_in,
    )
    manifest: dict[str, Any] = {
        "batchscore_version": importlib.metadata.version("batchscore"),
        "model": {
            **model_manifest(model, verification),
            "serving": {
                "signature": run.signature.name,
                "tags": list(run.signature.tags),
                "input": "tf_example" if signature.examples is not None else "tensors",
                "columns": {n: c.describe() for n, c in signature.input_columns().items()},
            },
        },
        "input": {
            "spec": run.input_spec,
            "fingerprint": fingerprint(files),
            "files": [
                {"path": absolute(f.path), "bytes": f.size, "rows": f.num_rows} for f in files
            ],
            "skipped_files": [
                {"path": absolute(b.path), "reason": b.reason} for b in run.skipped_files
            ],
            "ignored": [{"path": absolute(i.path), "reason": i.reason} for i in run.ignored_files],
        },
        "contract": (
            {
                "name": contract.name,
                "source": absolute(contract.source),
                "sha256": contract_sha256(contract),
                # Nulls replaced before the model (rules.toml [fill]).
                "fill": contract.fills(),
            }
            if contract
            else None
        ),
        "key_columns": list(key_columns),
        "passthrough_columns": list(run.passthrough_columns),
        "runner": {"name": runner.name, "options": runner.options()},
        "batch_size": batching.smallest_rows,
        "batching": batching.section,
        "started": started_at.isoformat(timespec="seconds"),
    }
    if variant is not None and variant_manifest is not None:
        manifest[variant.manifest_key] = variant_manifest
    if getattr(runner, "dry_run", False):
        # The runner builds its job (e.g. a Dataflow job description) and submits nothing:
        # the output is not touched, nothing is staged or committed.
        runner.execute(job, splits)
        raise DryRunComplete(
            getattr(runner, "dry_run_report", "")
            or f"dry run on {runner.name}: nothing was scored or committed"
        )
    guard: RunLease | RunLock
    if isinstance(layout, RunLayout):
        cleaned = clean_stale_runs(layout.version_dir)
        guard = RunLock(layout)
    else:
        guard = RunLease(layout)  # entering it removes dead runs' objects
    log.info("scoring %d split(s) of %d file(s) with %s", len(splits), len(files), runner.name)
    with guard:
        if isinstance(guard, RunLease):
            cleaned = guard.cleaned
        if cleaned:
            log.warning(
                "removed %d stale run folder(s) left by dead jobs: %s", len(cleaned), cleaned
            )
        local_staging = layout.staging_dir if isinstance(layout, RunLayout) else None
        with ProgressMonitor(
            local_staging, rows_in, run.progress, log_every_s=run.progress_every_s
        ) as monitor:
            runner.execute(job, splits)
        chosen = None if isinstance(layout, RunLayout) else choose_attempts(layout)
        damaged = [] if local_staging is None else drop_damaged_files(local_staging, splits)
        if damaged:  # found while reading, with --on_bad_file=skip: as if skipped at listing
            gone = {bad.path for bad in damaged}
            files = [f for f in files if f.path not in gone]
            rows_in = sum(f.num_rows for f in files)
            manifest["input"]["files"] = [
                entry for entry in manifest["input"]["files"] if entry["path"] not in gone
            ]
            manifest["input"]["skipped_files"] += [
                {"path": b.path, "reason": b.reason} for b in damaged
            ]
        if variant is not None and variant_manifest is not None and local_staging is not None:
            variant.finish(local_staging, variant_manifest)
        stats = chosen.stats() if chosen is not None else merge_part_stats(Path(layout.staging_dir))
        batching.section["memory"].update(
            worker_budget_bytes=stats.worker_budget_bytes or None,
            peak_rss_bytes=stats.peak_rss_bytes,
            intake_waits=stats.intake_waits,
            intake_wait_seconds=round(stats.intake_wait_seconds, 3),
        )
        manifest["model"]["serving"]["per_value"] = {
            "ops": dict(sorted(stats.per_value_ops.items())),
            "parts": stats.per_value_parts,
        }
        if manifest["contract"] is not None:
            manifest["contract"]["filled_rows"] = dict(sorted(stats.filled.items()))
            manifest["contract"]["passed_to_oov"] = dict(sorted(stats.passed_to_oov.items()))
        batching.section["out_of_memory"] = {
            "retries": stats.out_of_memory_retries,
            "batch_rows_by_part": dict(sorted(stats.batch_rows_after_out_of_memory.items())),
            # Parts run again after a worker died (e.g. the kernel's OOM killer), with
            # half the batch rows per earlier execution.
            "restarted_parts": dict(sorted(stats.restarted_parts.items())),
        }
        if stats.rows_read != rows_in:
            log.warning(
                "the parts' stats count %d rows read, the input footers %d; the manifest's "
                "metrics may be incomplete",
                stats.rows_read,
                rows_in,
            )
        drift_section = drift_report(
            baseline, stats.drift, run.drift_thresholds, disabled=not drift
        )
        checks = run_checks(stats.rows_read, stats.rows_rejected, max_error_rate, drift_section)
        counts = {
            "rows_read": stats.rows_read,
            "rows_scored": stats.rows_scored,
            "rows_rejected": stats.rows_rejected,
        }
        metrics = metrics_section(stats, time.perf_counter() - started, monitor.timeline())

        def summary_for(run_dir: Path | str | None, reason: str | None = None) -> dict[str, Any]:
            return run_summary(
                run_id=run_id,
                run_dir=str(run_dir) if run_dir is not None else None,
                checks=checks,
                counts=counts,
                drift_status=drift_section["status"],
                reason=reason,
                model=model.label,
            )

        def tell(summary: dict[str, Any]) -> None:
            if on_outcome is not None:
                on_outcome(RunOutcome(summary, metrics, drift_section, model.name, model.version))

        # The summary as it will be once committed (the commit writes the manifest).
        manifest.update(
            metrics=metrics, drift=drift_section, checks=checks, summary=summary_for(layout.run_dir)
        )
        try:
            if drift_section["status"] == FAIL:
                raise DriftExceeded(_drift_failure(run_id, drift_section, layout.staging_dir))
            if isinstance(layout, RunLayout):
                committed = commit_run(layout, manifest, rows_in, max_error_rate)
            else:
                assert chosen is not None
                committed = commit_object_run(layout, manifest, rows_in, max_error_rate, chosen)
        except (ErrorBudgetExceeded, DriftExceeded) as exc:
            tell(summary_for(None, str(exc)))
            raise
    summary = manifest["summary"]
    if committed.warnings:  # after the commit point: the run stands, the summary says so
        summary = {**summary, "status": worst([summary["status"], WARN]) or WARN}
        summary["warnings"] = list(committed.warnings)
    tell(summary)
    return RunSummary(committed, committed.manifest(), time.perf_counter() - started, summary)


def _check_object_store_options(run: ScoringRun) -> None:
    """What the object-store protocol does not do yet, refused before any work."""
    for used, option in (
        (run.variant is not None, "--canary"),
        (run.skip_bad_files, "--on_bad_file=skip"),
    ):
        if used:
            raise UsageError(
                f"{option} with --output={run.output_root}: not supported yet for an output in "
                "a bucket; write the run to a local or mounted folder, or drop the option"
            )


def _drift_failure(run_id: str, drift: dict[str, Any], staging: Path | str) -> str:
    entries = [*drift["features"], *([drift["prediction"]] if drift["prediction"] else [])]
    failed = [e for e in entries if e["status"] == FAIL]
    listed = ", ".join(
        f"{e['name']} (PSI {e['psi']:.3f}"
        + (f", unseen {e['unseen_share']:.1%}" if e.get("unseen_share") else "")
        + ")"
        for e in failed
    )
    limits = drift["thresholds"]
    return (
        f"run {run_id}: {len(failed)} of {len(entries)} feature(s) drifted beyond "
        f"--max_drift={limits['max_psi']:g} / --max_unseen_share={limits['max_unseen_share']:g} "
        f"with --on_drift=fail: {listed}; nothing was committed (staged files kept in {staging} "
        "for inspection). Check the input against the model's training data, or score with "
        "--on_drift=warn"
    )
