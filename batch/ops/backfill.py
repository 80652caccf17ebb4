"""Score every date partition of a hive-partitioned input, resumably.

Partition ``ROOT/dt=YYYY-MM-DD/`` is scored into its own output root
``OUT/dt=YYYY-MM-DD/``, which holds the usual versioned runs
(``<model>/<version>/run=<run id>/``). Each partition is one ``python -m
jobs.score`` process, so a crash in one cannot take another down, and at most
``parallelism`` of them run at once. Each process writes its outcome to a
``--summary_file``, which is how the backfill learns it (never from terminal output).

A partition that already has a committed run of the same model version on the
same input (the check :func:`batch.ops.incremental.find_up_to_date_run` makes for
``jobs.score``) is skipped, so a backfill that stopped half-way is finished by
running the same command again. ``force`` scores every partition again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core.errors import BatchScoreError, CommitError, UsageError
from batch.demo.paths import demo_model_repo
from batch.engine.job import DEFAULT_MAX_ERROR_RATE
from batch.engine.prepare import (
    OnBadFile,
    check_output_writable,
    job_contract,
    job_key_columns,
    resolve_inputs,
    trust_policy,
)
from batch.model.repository import ModelRepository, resolve_model
from batch.model.resolved import ResolvedModel
from batch.model.signing import verify_once
from batch.observe.checks import FAIL, OK, job_summary
from batch.ops.incremental import find_up_to_date_run
from batch.output.commit import CommittedRun, list_committed_runs

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
    input_dir: Path
    output_root: Path
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


@dataclass(frozen=True, kw_only=True)
class BackfillRequest:
    """What ``python -m jobs.backfill`` is asked. ``score_args`` are passed to every
    ``python -m jobs.score`` process (runner, Beam or Spark options, thresholds); the
    fields below them are the ones the backfill reads itself to skip up-to-date days."""

    input_root: Path
    output_root: Path
    start: dt.date
    end: dt.date
    model: str
    partition_column: str = "dt"
    parallelism: int = 1
    force: bool = False
    allow_missing: bool = False
    score_args: Sequence[str] = ()
    model_repo: str | Path = field(default_factory=demo_model_repo)
    public_key: str | Path | None = None
    allow_unsigned: bool = False
    contract: str | None = None
    key_columns: str | Sequence[str] | None = None
    on_bad_file: OnBadFile = "fail"
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE


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
    input_root: Path, output_root: Path, start: dt.date, end: dt.date, column: str
) -> list[Partition]:
    if end < start:
        raise UsageError(f"--end={end} is before --start={start}; give --start <= --end")
    days = (end - start).days + 1
    partitions = []
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        name = f"{column}={day.isoformat()}"
        partitions.append(Partition(day, column, input_root / name, output_root / name))
    return partitions


def pinned_model_spec(spec: str, model: ResolvedModel) -> str:
    """NAME@VERSION for a registered model, so that every partition gets the same version
    even if another one is registered or promoted during the backfill."""
    return f"{model.name}@{model.version}" if model.registered else spec


def _committed(partition: Partition, model: ResolvedModel) -> list[CommittedRun]:
    return [
        run
        for run in list_committed_runs(partition.output_root)
        if run.model_name == model.name and run.model_version == model.version
    ]


def _counts(run: CommittedRun) -> dict[str, Any]:
    try:
        return dataclasses.asdict(run.manifest().counts)
    except CommitError:
        return {}


def check_up_to_date(
    partition: Partition, model: ResolvedModel, request: BackfillRequest
) -> CommittedRun | None:
    """The committed run that already holds this partition's predictions, if any. A
    partition whose input cannot even be read is not up to date: jobs.score will say why."""
    try:
        inputs = resolve_inputs(str(partition.input_dir), request.on_bad_file)
        contract = job_contract(request.contract, model)
        key_columns = job_key_columns(request.key_columns, model, contract)
    except BatchScoreError:
        return None
    return find_up_to_date_run(
        partition.output_root,
        model=model,
        files=inputs.files,
        skipped_files=inputs.bad,
        contract=contract,
        key_columns=key_columns,
        max_error_rate=request.max_error_rate,
    )


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary


def score_partition(
    partition: Partition,
    command: list[str],
    model: ResolvedModel,
    report: Callable[[str], None],
) -> None:
    """Score one partition in its own ``jobs.score`` process; its summary file says how
    it ended."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="batchscore-backfill-") as scratch:
        summary_file = Path(scratch) / "summary.json"
        result = subprocess.run(
            [
                *command,
                f"--input={partition.input_dir}",
                f"--output={partition.output_root}",
                f"--summary_file={summary_file}",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        summary = _read_summary(summary_file)
    partition.seconds = time.perf_counter() - started
    run_dir = Path(summary["run_dir"]) if summary and summary.get("run_dir") else None
    if result.returncode == 0 and run_dir is not None:
        up_to_date = str((summary and summary.get("reason")) or "").startswith(UP_TO_DATE_REASON)
        partition.status = SKIPPED if up_to_date else SCORED
        partition.detail = UP_TO_DATE_REASON if up_to_date else ""
        partition.run = next(
            (r for r in _committed(partition, model) if r.run_dir == run_dir), None
        )
    elif result.returncode == 0:
        partition.status = FAILED
        partition.detail = "jobs.score exited 0 but its summary names no committed run"
    else:
        partition.status = FAILED
        reason = summary.get("reason") if summary else None
        partition.detail = " ".join(str(reason).split()) if reason else "no error message"
        if result.returncode not in (2, 130):  # not a one-line error: show the crash
            tail = "\n".join(result.stderr.splitlines()[-20:])
            report(f"{partition.name}: jobs.score exited {result.returncode}:\n{tail}")
    if partition.run is not None:
        partition.counts = _counts(partition.run)
    report(f"{partition.name}: {partition.status} ({partition.seconds:.1f}s)")


def backfill(request: BackfillRequest, report: Callable[[str], None] = print) -> BackfillOutcome:
    """Score every partition from ``start`` to ``end`` that is not up to date; ``report``
    is told progress lines (from several threads, one line at a time).

    Raises :class:`BackfillFailed` (after every partition was tried) when any failed or,
    without ``allow_missing``, had no input; the outcome is then the exception's
    ``outcome``.
    """
    started = time.perf_counter()
    if not request.input_root.is_dir():
        raise UsageError(
            f"--input={request.input_root}: expected the folder holding the "
            f"{request.partition_column}=YYYY-MM-DD partitions; no such folder"
        )
    check_output_writable(request.output_root)
    model = resolve_model(request.model, ModelRepository(request.model_repo))
    verify_once(model, trust_policy(request.public_key, request.allow_unsigned))
    partitions = plan_partitions(
        request.input_root,
        request.output_root,
        request.start,
        request.end,
        request.partition_column,
    )
    command = [
        sys.executable,
        "-m",
        "jobs.score",
        f"--model={pinned_model_spec(request.model, model)}",
        *request.score_args,
        *(["--force"] if request.force else []),
    ]
    lock = threading.Lock()

    def tell(line: str) -> None:
        with lock:
            report(line)

    tell(
        f"backfill {partitions[0].name}..{partitions[-1].name} ({len(partitions)} day(s)) "
        f"with {model.label} into {request.output_root}, {request.parallelism} at a time"
    )
    todo = []
    for partition in partitions:
        if not partition.input_dir.is_dir():
            partition.status, partition.detail = MISSING, f"no folder {partition.input_dir}"
            continue
        current = None if request.force else check_up_to_date(partition, model, request)
        if current is not None:
            partition.status, partition.run, partition.detail = SKIPPED, current, UP_TO_DATE_REASON
            partition.counts = _counts(current)
            continue
        todo.append(partition)
    with ThreadPoolExecutor(max_workers=request.parallelism) as pool:
        for future in [pool.submit(score_partition, p, command, model, tell) for p in todo]:
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
