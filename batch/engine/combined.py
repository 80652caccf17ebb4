"""Several scoring runs executed as one engine job, each committed on its own.

A backfill of 365 days as 365 jobs pays the engine's start, TensorFlow's import and the
model load 365 times. :class:`CombinedExecution` lets every run go through
:func:`batch.engine.job.run_scoring` as usual (checks, planning, reconciling, its own
commit and checks), each in its own thread, but hands each run a stand-in runner whose
``execute`` only registers the run's splits and waits. Once every run has registered or
ended without work (up to date, refused by a check), the splits of all runs go to the
real runner at once: one pipeline, one model load per worker. Each run then reconciles
and commits alone, so a run whose rows break the error budget or drift fails alone.

A split that fails with a batchscore error (a damaged file, a model error) does not fail
the engine job: :func:`score_unit` stages a note in its run's staging folder, and only
that run fails, with the split's error, when the engine job is done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from batch.core import errors
from batch.core.errors import BatchScoreError
from batch.core.fsutil import read_json, write_json_atomic
from batch.engine.inputs import Split
from batch.engine.job import BatchObserver, Runner, ScoringJob, SplitResult, score_split
from batch.engine.memory import Sharing
from batch.output.commit import RunLayout

log = logging.getLogger(__name__)

# In a staged run of a combined job: notes of splits that failed with a batchscore error.
FAILED_FOLDER = "_failed"

Unit = tuple[int, Split]
"""One split of a combined job: the index of its run's job, and the split."""


@runtime_checkable
class CombinedRunner(Protocol):
    """A runner that scores the splits of several jobs as one engine job."""

    def execute_combined(self, jobs: Sequence[ScoringJob], units: Sequence[Unit]) -> None:
        """Score every unit with :func:`score_unit`; returns when all are staged."""
        ...


def score_unit(
    jobs: Sequence[ScoringJob], unit: Unit, on_batch: BatchObserver | None = None
) -> SplitResult:
    """Score one split of a combined job. A batchscore error fails the split's run only:
    it is staged as a note in that run's staging folder and the engine job goes on."""
    job, split = jobs[unit[0]], unit[1]
    try:
        return score_split(job, split, on_batch)
    except BatchScoreError as exc:
        if not _note_failure(job, split.index, exc):
            raise
        log.warning("run %s: split %d failed: %s", job.layout.run_id, split.index, exc)
        return SplitResult(split.index, 0, 0, 0)


def _note_failure(job: ScoringJob, part: int, exc: BatchScoreError) -> bool:
    """Stages ``exc`` as the failure of ``job``'s run; False where the run has no staging
    folder to hold the note (then the error fails the whole engine job)."""
    if not isinstance(job.layout, RunLayout):
        return False
    write_json_atomic(
        job.layout.staging_dir / FAILED_FOLDER / f"part-{part:05d}.json",
        {"error": type(exc).__name__, "message": str(exc)},
    )
    return True


def staged_failure(job: ScoringJob) -> BatchScoreError | None:
    """The first failure :func:`score_unit` staged for ``job``'s run, as the error it was."""
    if not isinstance(job.layout, RunLayout):
        return None
    notes = sorted((job.layout.staging_dir / FAILED_FOLDER).glob("part-*.json"))
    if not notes:
        return None
    note = read_json(notes[0])
    error_class = getattr(errors, str(note.get("error")), None)
    if not (isinstance(error_class, type) and issubclass(error_class, BatchScoreError)):
        error_class = BatchScoreError
    more = f" ({len(notes) - 1} more split(s) of this run failed)" if len(notes) > 1 else ""
    return error_class(f"{note.get('message')}{more}")


class CombinedExecution:
    """Collects the splits of ``runs`` runs and executes them as one engine job.

    Each run calls :meth:`runner` once (from its own thread) and either ends without
    using it (:meth:`done`) or calls its ``execute``, which blocks until the combined
    engine job has finished. ``make_runner`` builds the real runner when the first run
    needs it (runs that are all up to date start no engine).
    """

    def __init__(self, runs: int, make_runner: Callable[[], Runner]) -> None:
        self._expected = runs
        self._make_runner = make_runner
        self._real: Runner | None = None
        self._condition = threading.Condition()
        self._settled = 0  # runs that registered work or ended
        self._work: list[tuple[ScoringJob, Sequence[Split]]] = []
        self._finished = False
        self._error: BaseException | None = None

    def real_runner(self) -> Runner:
        with self._condition:
            if self._real is None:
                self._real = self._make_runner()
            return self._real

    def runner(self) -> DeferredRunner:
        """The stand-in runner a run scores with."""
        return DeferredRunner(self)

    def done(self) -> None:
        """A run ended without registering work (or failed before it did)."""
        with self._condition:
            self._settle()

    def _settle(self) -> None:
        self._settled += 1
        if self._settled == self._expected:
            self._condition.notify_all()

    def _register(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        """Adds a run's splits; the last run to settle executes the engine job (in its
        thread) and wakes the others. Raises the engine job's error, or the run's own
        staged failure."""
        with self._condition:
            self._work.append((job, splits))
            self._settle()
            leader = self._settled == self._expected
        if leader:
            try:
                self._execute_all()
            except BaseException as exc:
                self._error = exc
            with self._condition:
                self._finished = True
                self._condition.notify_all()
        with self._condition:
            self._condition.wait_for(lambda: self._finished)
        if self._error is not None:
            raise self._error
        failure = staged_failure(job)
        if failure is not None:
            raise failure

    def _execute_all(self) -> None:
        runner = self.real_runner()
        work = [(job, splits) for job, splits in self._work if splits]
        if not work:
            return
        if isinstance(runner, CombinedRunner):
            jobs = [job for job, _ in work]
            units = [(index, split) for index, (_, splits) in enumerate(work) for split in splits]
            runner.execute_combined(jobs, units)
            return
        # An engine without combined jobs: one engine job per run, in this process (its
        # engine and workers, and so the model, are reused); a run that fails with a
        # batchscore error fails alone.
        for job, splits in work:
            try:
                runner.execute(job, splits)
            except BatchScoreError as exc:
                if not _note_failure(job, 0, exc):
                    raise


class DeferredRunner:
    """What each run of a combined execution sees as its runner: ``used`` once the run
    has handed it its splits."""

    def __init__(self, combined: CombinedExecution) -> None:
        self._combined = combined
        self._used = False
        self._name = ""

    # The real runner's, which is built when first asked (a run that is up to date
    # starts no engine); settable as Runner.name is.
    @property
    def name(self) -> str:
        return self._name or self._combined.real_runner().name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def splits_at_once(self) -> int | None:
        # The runs' splits are interleaved in one engine job: the default size (asking the
        # real runner would start it before a run is known to score).
        return None

    @property
    def memory_sharing(self) -> Sharing:
        # The engine's, whichever run's splits its workers score (asked when a run plans
        # its batches, past the checks that can end a run without work).
        return self._combined.real_runner().memory_sharing

    def options(self) -> dict[str, Any]:
        return self._combined.real_runner().options()

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        if self._used:
            raise RuntimeError("a combined execution's runner executes one job")
        self._used = True
        self._combined._register(job, splits)

    @property
    def used(self) -> bool:
        return self._used
