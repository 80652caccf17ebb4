"""Score every date partition of a hive-partitioned input as one job, resumably.

Partition ``ROOT/dt=YYYY-MM-DD/`` is scored into its own output root
``OUT/dt=YYYY-MM-DD/``, which holds the usual versioned runs
(``<model>/<version>/run=<run id>/``). The days are one engine job
(:class:`batch.engine.combined.CombinedExecution`): TensorFlow is imported, the engine
started and the model loaded once per worker, not once per day. Each day is still its
own run: checked, reconciled and committed alone, so a day whose input is bad, whose
rejected rows exceed the error budget or whose drift fails the run (``--on_drift=fail``)
fails alone while the others commit.

A partition that already has a committed run of the same model version on the same
input (the check :func:`batch.ops.incremental.find_up_to_date_run` makes for every
scoring job) is skipped, so a backfill that stopped half-way is finished by running the
same command again. ``force`` scores every partition again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core import storage
from batch.core.errors import BatchScoreError, CommitError, UsageError
from batch.demo.paths import model_repo_or_demo
from batch.engine.combined import CombinedExecution
from batch.engine.job import Runner
from batch.engine.prepare import check_output_writable, trust_policy
from batch.model.repository import ModelRepository, resolve_model
from batch.model.resolved import ResolvedModel
from batch.model.signing import verify_once
from batch.observe.checks import FAIL, OK, job_summary
from batch.output.commit import CommittedRun

log = logging.getLogger(__name__)

SCORED = "scored"
SKIPPED = "skipped"
FAILED = "failed"
MISSING = "missing input"
STATUSES = (SCORED, SKIPPED, MISSING, FAILED)

UP_TO_DATE_REASON = "up to date"


class BackfillFailed(BatchScoreError):
    """Some partitions failed or had no input; the others are committed."""

    # What was done, every partition included (set when raised by :func:`backfill`).
    outcome: BackfillOutcome | None = None


@dataclass
class Partition:
    day: dt.date
    column: str
    input_dir: Path | str  # a folder or a bucket prefix (gs://, s3://)
    output_root: Path | str
    status: str = ""
    run: CommittedRun | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.column}={self.day.isoformat()}"

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.name,
            "status": self.status,
            "run_dir": str(self.run.run_dir) if self.run is not None else None,
            "counts": self.counts,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class DayResult:
    """How a day's scoring ended: a new committed run, or one found up to date."""

    run: CommittedRun
    up_to_date: bool


ScoreDay = Callable[[Path | str, Path | str, ResolvedModel, Runner], DayResult]
"""Scores one day: (its input folder, its output root, the pinned model, the runner to
execute with) -> how it ended; raises a BatchScoreError when the day fails. The scoring
options are the callable's (:func:`batch.api.backfill_day_scorer` binds a ScoreRequest's)."""


@dataclass(frozen=True, kw_only=True)
class BackfillRequest:
    """What ``python -m jobs.backfill`` is asked. ``score_day`` scores one day with the
    scoring options of the backfill; ``make_runner`` builds the engine every day shares
    (once, and only if some day needs scoring)."""

    input_root: Path | str  # a folder or a bucket prefix (gs://, s3://)
    output_root: Path | str
    start: dt.date
    end: dt.date
    model: str
    score_day: ScoreDay
    make_runner: Callable[[], Runner]
    partition_column: str = "dt"
    allow_missing: bool = False
    # None: the demo's repository, where the demo's defaults apply (batch.demo.paths).
    model_repo: str | Path | None = None
    public_key: str | Path | None = None
    allow_unsigned: bool = False


@dataclass(frozen=True)
class BackfillOutcome:
    model: ResolvedModel
    partitions: list[Partition]
    seconds: float

    def tally(self) -> dict[str, int]:
        return {s: sum(1 for p in self.partitions if p.status == s) for s in STATUSES}

    def summary_json(self, error: str | None = None) -> dict[str, Any]:
        return job_summary(
            "backfill",
            FAIL if error else OK,
            model=self.model.label,
            reason=error,
            tally=self.tally(),
            partitions=[p.to_json() for p in self.partitions],
        )


def plan_partitions(
    input_root: Path | str, output_root: Path | str, start: dt.date, end: dt.date, column: str
) -> list[Partition]:
    if end < start:
        raise UsageError(f"--end={end} is before --start={start}; give --start <= --end")
    days = (end - start).days + 1
    partitions = []
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        name = f"{column}={day.isoformat()}"
        partitions.append(
            Partition(day, column, _child(input_root, name), _child(output_root, name))
        )
    return partitions


def _child(root: Path | str, name: str) -> Path | str:
    return Path(root) / name if isinstance(root, Path) else storage.child(root, name)


def _counts(run: CommittedRun) -> dict[str, Any]:
    try:
        return dataclasses.asdict(run.manifest().counts)
    except CommitError:
        return {}


def _score(
    partition: Partition,
    request: BackfillRequest,
    model: ResolvedModel,
    combined: CombinedExecution,
    report: Callable[[str], None],
) -> None:
    """Score one day as a run of the combined job; how it ends is recorded on ``partition``."""
    started = time.perf_counter()
    runner = combined.runner()
    try:
        result = request.score_day(partition.input_dir, partition.output_root, model, runner)
    except BatchScoreError as exc:
        partition.status, partition.detail = FAILED, " ".join(str(exc).split())
    except Exception as exc:  # a bug, not bad data: this day fails, with the traceback logged
        log.exception("%s: unexpected error", partition.name)
        partition.status, partition.detail = FAILED, f"{type(exc).__name__}: {exc}"
    else:
        partition.run, partition.counts = result.run, _counts(result.run)
        partition.status = SKIPPED if result.up_to_date else SCORED
        partition.detail = UP_TO_DATE_REASON if result.up_to_date else ""
    finally:
        if not runner.used:
            combined.done()
    partition.seconds = time.perf_counter() - started
    if partition.status != SKIPPED:
        report(f"{partition.name}: {partition.status} ({partition.seconds:.1f}s)")


def backfill(request: BackfillRequest, report: Callable[[str], None] = print) -> BackfillOutcome:
    """Score every partition from ``start`` to ``end`` that is not up to date; ``report``
    is told progress lines (from several threads, one line at a time).

    Raises :class:`BackfillFailed` (after every partition was tried) when any failed or,
    without ``allow_missing``, had no input; the outcome is then the exception's
    ``outcome``.
    """
    started = time.perf_counter()
    if not storage.is_folder(request.input_root):
        raise UsageError(
            f"--input={request.input_root}: expected the folder holding the "
            f"{request.partition_column}=YYYY-MM-DD partitions; no such folder"
        )
    check_output_writable(request.output_root)
    model = resolve_model(
        request.model, ModelRepository(model_repo_or_demo(request.model_repo, request.model))
    )
    verify_once(model, trust_policy(request.public_key, request.allow_unsigned))
    partitions = plan_partitions(
        request.input_root,
        request.output_root,
        request.start,
        request.end,
        request.partition_column,
    )
    lock = threading.Lock()

    def tell(line: str) -> None:
        with lock:
            report(line)

    tell(
        f"backfill {partitions[0].name}..{partitions[-1].name} ({len(partitions)} day(s)) "
        f"with {model.label} into {request.output_root}, as one job"
    )
    todo = []
    for partition in partitions:
        if storage.is_folder(partition.input_dir):
            todo.append(partition)
        else:
            partition.status, partition.detail = MISSING, f"no folder {partition.input_dir}"
    if todo:
        # Every day is checked and planned in its own thread, then all their splits are
        # one engine job (the last day to be planned starts it), then each day commits.
        combined = CombinedExecution(len(todo), request.make_runner)
        with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="day") as pool:
            for future in [pool.submit(_score, p, request, model, combined, tell) for p in todo]:
                future.result()
    outcome = BackfillOutcome(model, partitions, time.perf_counter() - started)
    failed = [p for p in partitions if p.status == FAILED]
    missing = [] if request.allow_missing else [p for p in partitions if p.status == MISSING]
    if failed or missing:
        names = ", ".join(p.name for p in [*failed, *missing])
        error = BackfillFailed(
            f"{len(failed)} partition(s) failed and {len(missing)} had no input: {names}. "
            "The other partitions are committed. Fix the cause and run the same command "
            "again: committed partitions are skipped"
            + (
                ""
                if request.allow_missing or not missing
                else " (--allow_missing accepts days without input)"
            )
        )
        error.outcome = outcome
        raise error
    return outcome
