"""Apache Beam adapter: splits become a PCollection, each split is scored by the core.

The pipeline is three steps::

    ListSplits                          Create: the split descriptors (file, row groups)
    ScoreSplits/Redistribute            Reshuffle: spreads the splits over the workers
    ScoreSplits/ReadValidateScoreWrite  ParDo, per split: read its row groups as Arrow
                                        batches, validate every row against the contract,
                                        score the valid ones, write predictions and
                                        dead-letter rows as staged Parquet parts

Only split descriptors (a path and row-group numbers) travel through Beam; the
rows move as Arrow record batches inside the worker, from the Parquet reader
through the model to the Parquet writer, with reading, scoring and writing
overlapped. Read, validate, score and write are one step on purpose: as
separate Beam steps they would either be fused back into one by the runner or,
if not, shuffle every batch between workers. The step's display data (shown in
the Dataflow UI and the job description) says what each phase does.

Each worker process loads the model once (in ``setup``, through the core's
process-wide cache) and shares it across threads. The run is committed by the
driver after the pipeline finishes (batch.engine.job.run_scoring).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from runners import beam_import  # noqa: F401 (first: Beam without Pub/Sub's client, see there)

# isort: split
import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)
from apache_beam.options.value_provider import ValueProvider

from batch.core.errors import BatchScoreError, UsageError
from batch.engine.combined import Unit, score_unit
from batch.engine.inputs import Split
from batch.engine.job import ScoringJob, SplitResult, job_scorer, score_split
from batch.engine.memory import NOT_SHARED, Sharing

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "batchscore"
# Beam metric names (namespace batchscore), live while the pipeline runs; the manifest's
# numbers come from the parts' stats files (batch.observe.metrics), which retries cannot inflate.
ROWS_READ = "rows_read"
ROWS_SCORED = "rows_scored"
ROWS_REJECTED = "rows_rejected"
REJECTED_PREFIX = "rows_rejected_"  # + reason
BATCHES = "batches"
SPLITS = "splits"
BATCH_LATENCY_MS = "batch_latency_ms"  # distribution
MODEL_LOAD_MS = "model_load_ms"  # distribution, one value per split


class ScoreSplitFn(beam.DoFn):
    """Scores one split per element and stages its output parts."""

    def __init__(self, job: ScoringJob) -> None:
        self._job = job
        self._rows_in = Metrics.counter(METRICS_NAMESPACE, ROWS_READ)
        self._rows_scored = Metrics.counter(METRICS_NAMESPACE, ROWS_SCORED)
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, ROWS_REJECTED)
        self._batches = Metrics.counter(METRICS_NAMESPACE, BATCHES)
        self._splits = Metrics.counter(METRICS_NAMESPACE, SPLITS)
        self._latency = Metrics.distribution(METRICS_NAMESPACE, BATCH_LATENCY_MS)
        self._model_load = Metrics.distribution(METRICS_NAMESPACE, MODEL_LOAD_MS)

    def setup(self) -> None:
        job_scorer(self._job)  # loads (and verifies) every model the job scores with

    def display_data(self) -> dict[str, Any]:
        job = self._job
        return {
            "read": "Parquet row groups of one split as Arrow batches of the rows the planner "
            f"chose for the split, by bytes per row (at least {job.batch_size}; "
            f"{len(job.columns)} columns)",
            "validate": f"every row against {len(job.rules)} contract column rule(s) and the "
            "model's input types; failures go to rejected/ with a reason",
            # A model from a bucket is named by its URI: a Dataflow worker downloads it there.
            "score": f"model {job.model.label} ({job.model.source or job.model.saved_model_dir}), "
            f"{job.scoring_threads} concurrent calls"
            + (f"; {job.variant.describe()}" if job.variant else ""),
            "write": f"predictions/ and rejected/ parts under {job.layout.staging_dir}",
        }

    def _observe_batch(self, rows: int, seconds: float) -> None:
        self._rows_in.inc(rows)
        self._batches.inc()
        self._latency.update(int(seconds * 1000))

    def process(self, split: Split) -> Iterator[SplitResult]:
        yield self._count(score_split(self._job, split, self._observe_batch))

    def _count(self, result: SplitResult) -> SplitResult:
        self._rows_scored.inc(result.rows_scored)
        self._rows_rejected.inc(result.rows_rejected)
        self._splits.inc()
        if result.stats is not None:
            for reason, count in result.stats.rejected_by_reason.items():
                Metrics.counter(METRICS_NAMESPACE, REJECTED_PREFIX + reason).inc(count)
            for seconds in result.stats.model_loads.values():
                self._model_load.update(int(seconds * 1000))
        return result


class ScoreUnitFn(ScoreSplitFn):
    """Scores one split of a combined job (several runs of the same model, e.g. the days
    of a backfill) per element; a split that fails fails its run only (score_unit)."""

    def __init__(self, jobs: Sequence[ScoringJob]) -> None:
        super().__init__(jobs[0])
        self._jobs = tuple(jobs)

    def setup(self) -> None:
        for job in self._jobs:  # loaded once per process: the runs share their model
            job_scorer(job)

    def process(self, unit: Unit) -> Iterator[SplitResult]:  # type: ignore[override]
        yield self._count(score_unit(self._jobs, unit, self._observe_batch))


class ScoreSplits(beam.PTransform):
    """``PCollection[Split] -> PCollection[SplitResult]``, redistributing splits to workers."""

    def __init__(self, job: ScoringJob) -> None:
        super().__init__()
        self._job = job

    def expand(self, splits: beam.PCollection) -> beam.PCollection:
        return (
            splits
            | "Redistribute" >> beam.Reshuffle()
            | "ReadValidateScoreWrite" >> beam.ParDo(ScoreSplitFn(self._job))
        )


LOCAL_RUNNER = "DirectRunner"
DATAFLOW_RUNNER = "DataflowRunner"


class BatchScoreOptions(PipelineOptions):
    """What the job scores, as pipeline options of its own, so that the Dataflow UI and the
    job description show them (jobs.score passes them on Dataflow). A scoring job's steps
    do not read them (the driver plans the splits and the model into the pipeline); a
    classic template's step does (runners.dataflow.ScoreRunFn): there they are runtime
    parameters, given at launch, hence ValueProviders."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_value_provider_argument("--input", help="batchscore: the input scored")
        parser.add_value_provider_argument("--model", help="batchscore: the model scored with")
        parser.add_value_provider_argument("--output", help="batchscore: the output root")
        parser.add_argument("--run_id", help="batchscore: the run this job commits")


def create_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner ``options`` name, with one exception for the DirectRunner.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a
    binary from GitHub at start (impossible offline, and traffic nobody asked
    for), then falls back to the FnApiRunner for batch pipelines. batchscore
    goes to the FnApiRunner directly: the same engine, honouring the same
    ``--direct_num_workers`` and ``--direct_running_mode`` options.
    """
    runner = options.view_as(StandardOptions).runner
    if runner in (None, LOCAL_RUNNER):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


class _QuietBatchScoreErrors(logging.Filter):
    """Drops Beam's traceback for a batchscore error raised by a worker: the error is
    re-raised to the driver and shown there as its one line (jobs.cli.run_main)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, BatchScoreError)


_BEAM_STEP_LOGGER = logging.getLogger("apache_beam.runners.common")
if not any(isinstance(f, _QuietBatchScoreErrors) for f in _BEAM_STEP_LOGGER.filters):
    _BEAM_STEP_LOGGER.addFilter(_QuietBatchScoreErrors())


def _local_splits_at_once(options: PipelineOptions, runner: str) -> int | None:
    """Splits the DirectRunner scores at once: one in this process (in_memory, its
    default), --direct_num_workers with threads or processes (0: one a core); None for
    other runners, whose workers are not known before they start."""
    if runner != LOCAL_RUNNER:
        return None
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":
        return 1
    return direct.direct_num_workers or os.cpu_count() or 1


def _local_memory_sharing(options: PipelineOptions, runner: str) -> Sharing:
    """Who shares the DirectRunner's memory: its multi_threading workers are threads of
    one process (they share its budget), its multi_processing workers processes of this
    machine (they share the machine's). Other runners' workers are not known before they
    start: each takes its own budget (give them --worker_memory shares)."""
    at_once = _local_splits_at_once(options, runner)
    if at_once is None or at_once == 1:
        return NOT_SHARED
    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        return Sharing(splits=at_once)
    return Sharing(processes=at_once)


def _check_runner_name(runner: str | Any) -> None:
    """Refuse a runner Beam does not know now, in one line, rather than as a traceback
    when the pipeline is built."""
    if not isinstance(runner, str):
        return  # a runner object given by a library caller
    known = [path.rsplit(".", 1)[-1] for path in StandardOptions.ALL_KNOWN_RUNNERS]
    lowered = {name.lower() for name in known}
    if "." in runner or runner.lower() in lowered or f"{runner.lower()}runner" in lowered:
        return
    listed = ", ".join(sorted(known))
    raise UsageError(
        f"--runner={runner}: not a runner Beam knows; expected PySparkRunner (batchscore's "
        f"native Spark runner) or one of {listed}, or the dotted name of a PipelineRunner "
        "class"
    )


class BeamRunner:
    """Runs a scoring job as a Beam pipeline on whatever runner the options name."""

    def __init__(self, pipeline_args: Sequence[str]) -> None:
        self.pipeline_options = PipelineOptions(list(pipeline_args))
        standard = self.pipeline_options.view_as(StandardOptions)
        runner = standard.runner or LOCAL_RUNNER
        self.name = f"beam:{runner}"
        self.splits_at_once = _local_splits_at_once(self.pipeline_options, runner)
        self.memory_sharing = _local_memory_sharing(self.pipeline_options, runner)
        # Beam's --dry_run (any non-empty value): build the job, submit nothing.
        self.dry_run = bool(self.pipeline_options.view_as(TestOptions).dry_run)
        self.dry_run_report = ""
        if self.dry_run and runner != DATAFLOW_RUNNER:
            raise UsageError(
                f"--dry_run builds a Dataflow job without submitting it; it applies to "
                f"--runner={DATAFLOW_RUNNER}, not --runner={runner}"
            )
        if runner == DATAFLOW_RUNNER:
            from runners.dataflow import check_dataflow_options

            check_dataflow_options(self.pipeline_options)
        _check_runner_name(runner)
        if standard.no_wait_until_finish:
            raise UsageError(
                "--no_wait_until_finish: batchscore commits the run when the pipeline has "
                "finished, so it must wait for it; drop the option (run the command in the "
                "background instead)"
            )

    def _staging(self) -> contextlib.AbstractContextManager[None]:
        """On Dataflow, --setup_file's sdist is built outside the checkout."""
        if self.pipeline_options.view_as(StandardOptions).runner != DATAFLOW_RUNNER:
            return contextlib.nullcontext()
        from runners.dataflow import setup_package_built_outside_checkout

        return setup_package_built_outside_checkout()

    def options(self) -> dict[str, Any]:
        """The pipeline options given, ValueProviders as their values (those without one,
        runtime parameters of a template, left out)."""
        options: dict[str, Any] = self.pipeline_options.get_all_options(drop_default=True)
        return {
            name: value.get() if isinstance(value, ValueProvider) else value
            for name, value in options.items()
            if not isinstance(value, ValueProvider) or value.is_accessible()
        }

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        self.pipeline_options.view_as(BatchScoreOptions).run_id = job.layout.run_id
        # Leaving the block runs the pipeline and waits for it (a dry run returns at once).
        with self._staging(), create_pipeline(self.pipeline_options) as pipeline:
            _ = (
                pipeline
                | "ListSplits" >> beam.Create(list(splits), reshuffle=False)
                | "ScoreSplits" >> ScoreSplits(job)
            )
        if self.dry_run:
            from runners.dataflow import write_dry_run

            self.dry_run_report = write_dry_run(pipeline.result, self.pipeline_options).describe()
            return
        log_beam_metrics(pipeline.result)

    def execute_combined(self, jobs: Sequence[ScoringJob], units: Sequence[Unit]) -> None:
        """The splits of several runs (batch.engine.combined) as one pipeline."""
        with self._staging(), create_pipeline(self.pipeline_options) as pipeline:
            _ = (
                pipeline
                | "ListSplits" >> beam.Create(list(units), reshuffle=False)
                | "Redistribute" >> beam.Reshuffle()
                | "ReadValidateScoreWrite" >> beam.ParDo(ScoreUnitFn(jobs))
            )
        log_beam_metrics(pipeline.result)


def log_beam_metrics(result: Any) -> None:
    """Log the job's batchscore counters as the runner reports them (committed values
    where the runner has them, else attempted)."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception as exc:  # a runner without metrics support: nothing to show
        log.info("beam metrics unavailable: %s", exc)
        return
    values = {}
    for counter in found["counters"]:
        values[counter.key.metric.name] = (
            counter.committed if counter.committed is not None else counter.attempted
        )
    log.info(
        "beam metrics (namespace %s): %s",
        METRICS_NAMESPACE,
        " ".join(f"{name}={value}" for name, value in sorted(values.items())),
    )
