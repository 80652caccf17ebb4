"""Apache Beam adapter: splits become a PCollection, each split is scored by the core.

The pipeline is ``Create(splits) | Reshuffle | ParDo(ScoreSplit)``: only split
descriptors (a path and row-group numbers) travel through Beam; the rows move
as Arrow record batches inside the worker, from the Parquet reader through the
model to the Parquet writer. Each worker process loads the model once (in
``setup``, through the core's process-wide cache) and shares it across threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from batch.inputs import Split
from batch.job import ScoringJob, SplitResult, score_split
from batch.scorer import load_model

METRICS_NAMESPACE = "batchscore"


class ScoreSplitFn(beam.DoFn):
    """Scores one split per element and stages its output parts."""

    def __init__(self, job: ScoringJob) -> None:
        self._job = job
        self._rows_in = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self._rows_scored = Metrics.counter(METRICS_NAMESPACE, "rows_scored")
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._splits = Metrics.counter(METRICS_NAMESPACE, "splits")

    def setup(self) -> None:
        load_model(self._job.model, self._job.trust)

    def process(self, split: Split) -> Iterator[SplitResult]:
        result = score_split(self._job, split)
        self._rows_in.inc(result.rows_in)
        self._rows_scored.inc(result.rows_scored)
        self._rows_rejected.inc(result.rows_rejected)
        self._splits.inc()
        yield result


class ScoreSplits(beam.PTransform):
    """``PCollection[Split] -> PCollection[SplitResult]``, redistributing splits to workers."""

    def __init__(self, job: ScoringJob) -> None:
        super().__init__()
        self._job = job

    def expand(self, splits: beam.PCollection) -> beam.PCollection:
        return (
            splits
            | "Redistribute" >> beam.Reshuffle()
            | "ScoreSplit" >> beam.ParDo(ScoreSplitFn(self._job))
        )


LOCAL_RUNNER = "DirectRunner"


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


class BeamRunner:
    """Runs a scoring job as a Beam pipeline on whatever runner the options name."""

    def __init__(self, pipeline_args: Sequence[str]) -> None:
        self.pipeline_options = PipelineOptions(list(pipeline_args))
        runner = self.pipeline_options.view_as(StandardOptions).runner or LOCAL_RUNNER
        self.name = f"beam:{runner}"

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self.pipeline_options.get_all_options(drop_default=True)
        return options

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        with create_pipeline(self.pipeline_options) as pipeline:
            _ = (
                pipeline
                | "ListSplits" >> beam.Create(list(splits), reshuffle=False)
                | "ScoreSplits" >> ScoreSplits(job)
            )
