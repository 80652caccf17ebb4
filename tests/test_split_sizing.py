"""Splits sized for the engine (issue 21, thirteenth look): without --split_rows, an engine
known to score few splits at once gets larger splits (batch.engine.inputs.engine_split_rows),
so that fewer split starts and ends leave its cores idle; the manifest records the choice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from batch.engine.inputs import (
    DEFAULT_SPLIT_ROWS,
    MAX_BATCH_ROWS,
    SPLITS_PER_SLOT,
    engine_split_rows,
    plan_splits,
    read_input_file,
)
from batch.engine.local import InProcessRunner
from batch.engine.memory import NOT_SHARED, Sharing
from batch.output.commit import MANIFEST, list_committed_runs
from runners.beam import BeamRunner
from runners.pyspark import MAX_LOCAL_TASK_CPUS, PySparkRunner
from tests.conftest import score
from tests.plain_model import plain_model_expected, write_plain_data


def test_engine_split_rows_keeps_the_default_where_many_run_or_the_input_is_small() -> None:
    assert engine_split_rows(10_000_000, None) == DEFAULT_SPLIT_ROWS
    assert engine_split_rows(10_000_000, 0) == DEFAULT_SPLIT_ROWS
    # Small inputs keep the default's parallelism: never fewer rows than it.
    assert engine_split_rows(1_000_000, 1) == DEFAULT_SPLIT_ROWS
    assert engine_split_rows(0, 1) == DEFAULT_SPLIT_ROWS
    assert engine_split_rows(10_000_000, 64) == DEFAULT_SPLIT_ROWS


def test_engine_split_rows_gives_each_slot_about_eight_splits() -> None:
    assert SPLITS_PER_SLOT == 8
    assert engine_split_rows(10_000_000, 1) == 1_250_000
    assert engine_split_rows(10_000_001, 1) == 1_250_001  # rounded up: never a ninth split
    assert engine_split_rows(10_000_000, 2) == 625_000
    assert engine_split_rows(10**12, 1) == MAX_BATCH_ROWS


def test_runners_say_how_many_splits_they_score_at_once() -> None:
    assert BeamRunner([]).splits_at_once == 1  # the DirectRunner in this process
    assert BeamRunner(["--direct_num_workers=4"]).splits_at_once == 1  # still in_memory
    threads = ["--direct_num_workers=3", "--direct_running_mode=multi_threading"]
    assert BeamRunner(threads).splits_at_once == 3
    every_core = ["--direct_num_workers=0", "--direct_running_mode=multi_processing"]
    assert BeamRunner(every_core).splits_at_once == os.cpu_count()
    assert InProcessRunner(10, 100).splits_at_once == 1
    # A local Spark master's task slots: batchscore reading the input, one task per up to
    # MAX_LOCAL_TASK_CPUS cores (scoring with as many threads) unless the job sets
    # spark.task.cpus; a cluster's are known once its session runs.
    assert PySparkRunner("local[2]").splits_at_once == 1
    assert PySparkRunner("local[8]").splits_at_once == 8 // MAX_LOCAL_TASK_CPUS
    cores = os.cpu_count() or 1
    assert PySparkRunner("local[*]").splits_at_once == cores // min(cores, MAX_LOCAL_TASK_CPUS)
    assert PySparkRunner("local").splits_at_once == 1
    spark_reads = {"batchscore.input": "spark"}
    assert PySparkRunner("local[2]", spark_reads).splits_at_once == 2
    halves = {"spark.task.cpus": "2"}
    assert PySparkRunner("local[4]", halves).splits_at_once == 2
    assert PySparkRunner("local[4]", {"spark.task.cpus": "x"}).splits_at_once == 1  # default
    assert PySparkRunner("k8s://https://127.0.0.1:6443").splits_at_once is None
    # Task slots are Python worker processes: a local master's share this machine's
    # memory, a cluster executor's the executor's.
    assert PySparkRunner("local[4]", halves).memory_sharing == Sharing(processes=2)
    assert PySparkRunner("local[2]", spark_reads).memory_sharing == Sharing(processes=2)
    assert PySparkRunner("local[2]").memory_sharing == NOT_SHARED  # one task, two threads
    assert PySparkRunner("local").memory_sharing == NOT_SHARED
    k8s = "k8s://https://127.0.0.1:6443"
    assert PySparkRunner(k8s).memory_sharing == NOT_SHARED  # the executor's cores unknown
    executors = {"spark.executor.cores": "8", "spark.task.cpus": "2"}
    assert PySparkRunner(k8s, executors).memory_sharing == Sharing(processes=4)
    assert PySparkRunner(k8s, {"spark.executor.cores": "1"}).memory_sharing == NOT_SHARED


def _manifest(out: Path) -> dict[str, Any]:
    (run,) = list_committed_runs(out)
    manifest: dict[str, Any] = json.loads((run.run_dir / MANIFEST).read_text())
    return manifest


ENGINES = {
    "beam": ((), "beam:DirectRunner"),
    "spark": (("--runner=PySparkRunner", "--spark_master=local[1]"), "pyspark"),
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_job_without_split_rows_plans_larger_splits_and_scores_every_row(
    engine: str, plain_model: Path, tmp_path: Path
) -> None:
    """2,621,440 rows in row groups of 65,536: the DirectRunner in this process and Spark's
    local[1] score one split at a time, so they get 8 splits of 327,680 rows instead of the
    default's 10 of 262,144; every row is scored as the numpy expectation says, either way."""
    engine_options, runner_name = ENGINES[engine]
    data = tmp_path / "data"
    rows = 40 * 65_536
    table = write_plain_data(data, files=1, rows_per_file=rows, row_group_rows=65_536)
    files = [read_input_file(p) for p in sorted(data.glob("*.parquet"))]
    assert len(plan_splits(files)) == 10  # the default size

    expected = plain_model_expected(table)
    runs: dict[str, tuple[list[str], dict[str, Any]]] = {
        "engine": ([], {"count": 8, "split_rows": rows // 8}),
        "given": (
            [f"--split_rows={DEFAULT_SPLIT_ROWS}"],
            {"count": 10, "split_rows": DEFAULT_SPLIT_ROWS, "rule": "--split_rows"},
        ),
    }
    for name, (options, wanted) in runs.items():
        out = tmp_path / name
        options = [*engine_options, "--key_columns=id", *options]
        assert score(data, out, *options, model=plain_model) == 0
        manifest = _manifest(out)
        splits = manifest["batching"]["splits"]
        assert {k: splits[k] for k in wanted} == wanted, splits
        assert manifest["runner"]["name"] == runner_name
        (run,) = list_committed_runs(out)
        predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
        assert predictions.num_rows == rows
        assert len(list((run.run_dir / "predictions").glob("*.parquet"))) == wanted["count"]
        np.testing.assert_allclose(predictions.column("score").to_numpy(), expected, atol=1e-6)
    chosen = _manifest(tmp_path / "engine")["batching"]["splits"]
    assert chosen["rule"] == "the engine scores 1 split(s) at once: about 8 each"
