"""One adapter per engine: each moves Arrow batches between its engine and batch.engine.

``make_runner`` builds one from command-line style options; Beam and Spark are imported
only when their runner is asked for.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from batch.core.errors import UsageError
from batch.engine.job import Runner


def is_dry_run(pipeline_args: Sequence[str]) -> bool:
    """Whether Beam's ``--dry_run`` is set, read the way Beam reads it (any value but an
    empty one counts), without importing Beam."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dry_run", default="")
    known, _ = parser.parse_known_args(list(pipeline_args))
    return bool(known.dry_run)


def in_process_limit(
    runner: str,
    pipeline_args: Sequence[str],
    rows: int,
    spark_master: str | None = None,
    spark_conf: Sequence[str] = (),
) -> int:
    """The most input rows a job on ``runner`` scores in this process without starting the
    engine (batch.api.ScoreRequest.in_process_rows): ``rows`` on the DirectRunner without
    other options for an engine, since it runs a job's splits in this process one after
    another just as batch.engine.local does; else 0. A Beam option given (workers, running
    mode, experiments) is Beam's to honour, Spark's options are refused by
    :func:`make_runner`, and every other runner scores elsewhere."""
    engine_options = bool(pipeline_args) or spark_master is not None or bool(spark_conf)
    return rows if runner == "DirectRunner" and not engine_options else 0


def make_runner(
    runner: str,
    pipeline_args: Sequence[str],
    spark_master: str | None = None,
    spark_conf: Sequence[str] = (),
) -> Runner:
    """``PySparkRunner`` (native Spark), else a Beam runner of that name with
    ``pipeline_args`` as its pipeline options."""
    if runner == "PySparkRunner":
        if pipeline_args:
            raise UsageError(
                f"--runner=PySparkRunner takes no Beam options, found {' '.join(pipeline_args)}; "
                "pass Spark settings as --spark_conf KEY=VALUE"
            )
        from runners.pyspark import PySparkRunner, parse_spark_confs

        spark = PySparkRunner(spark_master, parse_spark_confs(spark_conf))
        spark.start()  # the JVM boots while the input and the model are checked
        return spark
    if spark_master is not None or spark_conf:
        raise UsageError(
            f"--spark_master and --spark_conf apply to --runner=PySparkRunner, not --runner={runner}"
        )
    from runners.beam import BeamRunner

    return BeamRunner([f"--runner={runner}", *pipeline_args])
