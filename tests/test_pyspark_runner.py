"""The native Spark runner: real Spark (local and a real standalone cluster), real models.

Parity with the Beam runner, the edge cases of Spark's Arrow batching, spark-submit,
and the one-line errors of the Spark options.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core import errors
from batch.engine.memory import Sharing, WorkerMemory, default_budget
from batch.output.commit import CommittedRun, list_committed_runs
from runners.pyspark import (
    BATCH_SIZE_CONF,
    INPUT_AUTO,
    INPUT_OPTION,
    INPUT_SPARK,
    INPUT_SPLITS,
    SHARED_PATHS_OPTION,
    SparkRunnerError,
    backend_cores,
    choose_input,
    conform_batch,
    executor_memory,
    translate_spark_error,
)
from tests.conftest import TrainedModel, score, score_args
from tests.plain_model import POISON_ABOVE, plain_model_expected, write_plain_data
from tests.spark_cluster import SparkCluster, spark_submit_command, standalone_cluster

PROJECT = Path(__file__).resolve().parent.parent
LOCAL = "local[2]"
SCORE_COLUMNS = ("score", "pair")
DIRECT = "--runner=DirectRunner"
# The data holds dirty rows and poison rows on purpose.
BUDGET = "--max_error_rate=1"


def _dirty_rows(folder: Path) -> None:
    """A file whose rows break the model's input rules (null, NaN, inf) or poison it."""
    table = pa.table(
        {
            "id": pa.array([900_001, 900_002, 900_003, 900_004, 900_005, 900_006], pa.int64()),
            "x": pa.array([0.5, None, float("nan"), float("inf"), POISON_ABOVE * 2, -0.25]),
            "n": pa.array([1, 2, None, 4, 5, 6], pa.int32()),
            "s": pa.array(["a", "b", "c", "d", "e", "f"]),
            "extra": pa.array([0.0] * 6),
        }
    )
    pq.write_table(table, folder / "dirty.parquet")


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    folder = tmp_path_factory.mktemp("plain_data")
    table = write_plain_data(folder, files=3, rows_per_file=5000, row_group_rows=700)
    _dirty_rows(folder)
    return folder, table


def _spark(
    data: Path, output: Path, *options: str, model: Path | TrainedModel, master: str = LOCAL
) -> int:
    """``score`` on the native Spark runner with ``master``."""
    spark = ("--runner=PySparkRunner", f"--spark_master={master}", BUDGET)
    return score(data, output, *spark, *options, model=model)


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


def _read(run: CommittedRun, kind: str) -> pa.Table:
    folder = run.run_dir / kind
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pa.table({})
    return pa.concat_tables(pq.read_table(p) for p in parts)


def _part_schemas(run: CommittedRun, kind: str) -> list[pa.Schema]:
    return [pq.read_schema(p) for p in sorted((run.run_dir / kind).glob("part-*.parquet"))]


def _rows_repr(table: pa.Table, key: str) -> list[str]:
    return [repr(row) for row in table.sort_by(key).to_pylist()]


def assert_same_results(beam: CommittedRun, spark: CommittedRun, key: str) -> None:
    """Same (key, prediction) rows within 1e-6, same dead-letter rows, same counts."""
    beam_rows = _read(beam, "predictions").sort_by(key)
    spark_rows = _read(spark, "predictions").sort_by(key)
    assert spark_rows.schema == beam_rows.schema
    assert spark_rows.column(key).equals(beam_rows.column(key))
    outputs = [
        name
        for name in beam_rows.column_names
        if name not in (key, "model_name", "model_version", "run_id")
    ]
    assert outputs
    for name in outputs:
        ours = np.asarray(spark_rows.column(name).to_pylist(), dtype=np.float64)
        theirs = np.asarray(beam_rows.column(name).to_pylist(), dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0, err_msg=name)
    beam_rejects = _read(beam, "rejected")
    spark_rejects = _read(spark, "rejected")
    if beam_rejects.num_rows:
        assert spark_rejects.schema == beam_rejects.schema
        # repr: NaN input values must compare equal too.
        assert _rows_repr(spark_rejects, key) == _rows_repr(beam_rejects, key)
    else:
        assert spark_rejects.num_rows == 0
    for schemas in (_part_schemas(spark, "predictions"), _part_schemas(spark, "rejected")):
        assert all(s == schemas[0] for s in schemas), "every part has the same schema"
    beam_counts = {k: v for k, v in beam.manifest().to_json()["counts"].items()}
    assert spark.manifest().to_json()["counts"] == beam_counts


def _check_plain_scores(run: CommittedRun, table: pa.Table) -> None:
    """Every key exactly once, each score equal to the model's formula computed with numpy."""
    out = _read(run, "predictions").sort_by("id")
    rejected = _read(run, "rejected")
    ids = out.column("id").to_pylist() + (
        rejected.column("id").to_pylist() if rejected.num_rows else []
    )
    assert sorted(ids) == sorted(table.column("id").to_pylist()), "every key exactly once"
    assert len(ids) == len(set(ids))
    expected_rows = table.sort_by("id").filter(
        pa.compute.is_in(table.sort_by("id").column("id"), out.column("id"))
    )
    np.testing.assert_allclose(
        out.column("score").to_numpy(), plain_model_expected(expected_rows), atol=1e-6
    )


def _input_mode(mode: str) -> tuple[str, ...]:
    return () if mode == INPUT_AUTO else (f"--spark_conf={INPUT_OPTION}={mode}",)


def _part_names(run: CommittedRun) -> list[str]:
    outputs = run.manifest().to_json()["outputs"]
    return sorted(p["path"] for kind in ("predictions", "rejected") for p in outputs[kind])


@pytest.mark.slow
@pytest.mark.parametrize("mode", [INPUT_SPARK, INPUT_SPLITS, INPUT_AUTO])
def test_plain_model_on_local_spark_matches_beam(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path, mode: str
) -> None:
    data_dir, _ = plain_data
    common = ("--key_columns=id", "--batch_size=1000", "--split_rows=2000")
    assert score(data_dir, tmp_path / "beam", DIRECT, BUDGET, *common, model=plain_model) == 0
    spark_args = (*common, *_input_mode(mode))
    assert _spark(data_dir, tmp_path / "spark", *spark_args, model=plain_model) == 0
    beam, spark = _only_run(tmp_path / "beam"), _only_run(tmp_path / "spark")
    assert_same_results(beam, spark, "id")
    reasons = spark.manifest().to_json()["counts"]["rejected_by_reason"]
    assert sum(reasons.values()) == 4 and "model_error" in reasons, reasons
    manifest = spark.manifest().to_json()
    assert manifest["runner"]["name"] == "pyspark"
    assert manifest["runner"]["options"]["master"] == LOCAL
    # By default a local master's workers read the planned splits themselves.
    used = INPUT_SPLITS if mode == INPUT_AUTO else mode
    assert manifest["runner"]["options"]["input"] == used
    reason = manifest["runner"]["options"]["input_reason"]
    assert (LOCAL in reason) if mode == INPUT_AUTO else (f"{INPUT_OPTION}={mode}" in reason)
    assert manifest["runner"]["options"]["confs"] == {}
    if used == INPUT_SPLITS:
        # Parts are the planned splits, named as the Beam runner names them.
        assert _part_names(spark) == _part_names(beam)
    assert not (spark.run_dir.parent / "_staging" / f"run={spark.run_id}").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [INPUT_SPARK, INPUT_SPLITS])
def test_demo_model_on_the_standalone_cluster_matches_beam(
    trained_model: TrainedModel, spark_cluster: SparkCluster, tmp_path: Path, mode: str
) -> None:
    """The tf.Transform + Keras model, scored by two executors of a real cluster."""
    data, common = trained_model.data_dir, ("--batch_size=2000", "--split_rows=3000")
    assert score(data, tmp_path / "beam", DIRECT, BUDGET, *common, model=trained_model) == 0
    spark_args = (*common, *_input_mode(mode))
    master = spark_cluster.master_url
    assert _spark(data, tmp_path / "spark", *spark_args, model=trained_model, master=master) == 0
    beam, spark = _only_run(tmp_path / "beam"), _only_run(tmp_path / "spark")
    assert_same_results(beam, spark, "loan_id")
    assert spark.manifest().to_json()["counts"]["rows_rejected"] > 0, "the fixture's dirty rows"
    assert spark.manifest().to_json()["runner"]["options"]["master"] == spark_cluster.master_url
    apps = spark_cluster.status()["completedapps"]
    assert apps and apps[-1]["state"] == "FINISHED"
    # Both workers ran executors of the job.
    worker_dirs = [spark_cluster.folder / f"worker-{i}" for i in range(2)]
    assert all(any(d.glob("app-*/*/stderr")) for d in worker_dirs)


@pytest.mark.slow
def test_plain_model_on_the_standalone_cluster_via_spark_submit(
    plain_model: Path,
    plain_data: tuple[Path, pa.Table],
    spark_cluster: SparkCluster,
    tmp_path: Path,
) -> None:
    data_dir, table = plain_data
    result = _spark_submit(
        spark_cluster.master_url,
        f"--input={data_dir}",
        f"--model={plain_model}",
        f"--output={tmp_path}",
        "--key_columns=id",
        "--max_error_rate=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = _only_run(tmp_path)
    assert run.manifest().to_json()["runner"]["options"]["master"] == spark_cluster.master_url
    _check_plain_scores(run, pa.concat_tables([table, pq.read_table(data_dir / "dirty.parquet")]))


def _spark_submit(
    master: str, *args: str, submit_options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = spark_submit_command(master, submit_options, args)
    return subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_spark_submit_on_local_takes_its_master(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data_dir, _ = plain_data
    args = (f"--input={data_dir}", f"--model={plain_model}", "--key_columns=id")
    result = _spark_submit("local[1]", *args, f"--output={tmp_path}", "--max_error_rate=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _only_run(tmp_path).manifest().to_json()["runner"]["options"]["master"] == "local[1]"
    conflict = _spark_submit(
        "local[1]", *args, f"--output={tmp_path / 'x'}", "--spark_master=local[2]"
    )
    assert conflict.returncode == 2
    # spark-submit merges the Python driver's stderr into its stdout.
    output = conflict.stdout + conflict.stderr
    error = [line for line in output.splitlines() if "python -m jobs.score: error:" in line]
    assert len(error) == 1 and "give the master in one place only" in error[0], output


@pytest.mark.slow
def test_spark_submit_settings_plan_the_worker_memory(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    """spark-submit's own --conf counts as the job's: spark.task.cpus=2 on local[4] runs
    two tasks at once, two Python workers that each plan with half the machine's budget
    (batchscore's default would be one task of four cores; Spark's, four of one)."""
    data_dir, table = plain_data
    result = _spark_submit(
        "local[4]",
        f"--input={data_dir}",
        f"--model={plain_model}",
        "--key_columns=id",
        f"--output={tmp_path}",
        "--max_error_rate=1",
        submit_options=("--conf", "spark.task.cpus=2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = _only_run(tmp_path)
    manifest = run.manifest().to_json()
    memory = manifest["batching"]["memory"]
    assert memory["shared"] == {
        "worker_processes": 2,
        "splits_per_process": 1,
        "split_budget_bytes": memory["budget_bytes"],
    }
    assert memory["budget_bytes"] == default_budget()[0] // 2
    _check_plain_scores(run, pa.concat_tables([table, pq.read_table(data_dir / "dirty.parquet")]))


# --- edge cases: every key exactly once, scores equal the model's formula ---------------------


def _plain_table(ids: np.ndarray) -> pa.Table:
    rng = np.random.default_rng(int(ids[0]) if len(ids) else 0)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "x": pa.array(rng.normal(size=len(ids)), pa.float64()),
            "n": pa.array(rng.integers(0, 10, size=len(ids)), pa.int32()),
            "s": pa.array([f"code-{i % 97}" for i in ids], pa.string()),
        }
    )


def _score_edge(
    plain_model: Path, data: Path, output: Path, batch_size: int, *options: str
) -> CommittedRun:
    """Score on local Spark; ``options`` are KEY=VALUE Spark settings or --flags."""
    flags = [o if o.startswith("--") else f"--spark_conf={o}" for o in options]
    options = ("--key_columns=id", f"--batch_size={batch_size}", *flags)
    assert _spark(data, output, *options, model=plain_model) == 0
    return _only_run(output)


BOTH_INPUTS = pytest.mark.parametrize("mode", [INPUT_SPARK, INPUT_SPLITS])


@pytest.mark.slow
def test_empty_input_commits_an_empty_run(plain_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(_plain_table(np.arange(0)), data / "empty.parquet")
    run = _score_edge(plain_model, data, tmp_path / "out", 100)
    counts = run.manifest().to_json()["counts"]
    assert (counts["rows_in"], counts["rows_scored"], counts["rows_rejected"]) == (0, 0, 0)


@pytest.mark.slow
def test_empty_files_and_empty_spark_partitions(plain_model: Path, tmp_path: Path) -> None:
    """A zero-row file beside a file of one big row group that Spark cuts into many
    partitions, most of which hold no row group: no stray parts, every row once."""
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(_plain_table(np.arange(0)), data / "empty.parquet")
    table = _plain_table(np.arange(1, 20_001))
    pq.write_table(table, data / "one_group.parquet", row_group_size=20_000)
    run = _score_edge(
        plain_model,
        data,
        tmp_path / "out",
        1000,
        "spark.sql.files.maxPartitionBytes=16384",
        f"{INPUT_OPTION}={INPUT_SPARK}",
    )
    assert len(run.manifest().to_json()["outputs"]["predictions"]) == 1
    _check_plain_scores(run, table)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "batch_size"),
    [
        (1, 100),  # a single row
        (3 * 256 + 1, 256),  # the last Arrow batch holds one row (SPARK-42250)
    ],
)
@BOTH_INPUTS
def test_single_row_and_a_last_batch_of_one_row(
    plain_model: Path, tmp_path: Path, rows: int, batch_size: int, mode: str
) -> None:
    data = tmp_path / "in"
    data.mkdir()
    table = _plain_table(np.arange(rows))
    pq.write_table(table, data / "rows.parquet")
    run = _score_edge(plain_model, data, tmp_path / "out", batch_size, *_input_mode(mode))
    assert run.manifest().to_json()["counts"]["rows_scored"] == rows
    _check_plain_scores(run, table)


@pytest.mark.slow
@BOTH_INPUTS
def test_many_small_files(plain_model: Path, tmp_path: Path, mode: str) -> None:
    data = tmp_path / "in"
    tables = []
    for index in range(50):
        folder = data / f"dt=2026-01-{index % 5 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        table = _plain_table(np.arange(index * 37, index * 37 + 37))
        pq.write_table(table, folder / f"part-{index:03d}.parquet")
        tables.append(table)
    run = _score_edge(plain_model, data, tmp_path / "out", 64, *_input_mode(mode))
    assert len(run.manifest().to_json()["input"]["files"]) == 50
    _check_plain_scores(run, pa.concat_tables(tables))


@pytest.mark.slow
@BOTH_INPUTS
def test_one_large_file_with_many_row_groups(plain_model: Path, tmp_path: Path, mode: str) -> None:
    data = tmp_path / "in"
    data.mkdir()
    table = _plain_table(np.arange(200_000))
    pq.write_table(table, data / "large.parquet", row_group_size=2_500)
    assert pq.ParquetFile(data / "large.parquet").num_row_groups == 80
    # Spark cuts the one file into several partitions by row group (small partitions);
    # with input=splits the planner cuts it into splits of whole row groups.
    run = _score_edge(
        plain_model,
        data,
        tmp_path / "out",
        4096,
        "spark.sql.files.maxPartitionBytes=262144",
        "--split_rows=20000",
        *_input_mode(mode),
    )
    parts = run.manifest().to_json()["outputs"]["predictions"]
    assert len(parts) > 4, "the file was scored as several parts"
    _check_plain_scores(run, table)


@pytest.mark.slow
def test_large_string_batches_keep_the_files_types(plain_model: Path, tmp_path: Path) -> None:
    """Spark may hand strings as large_string; a string key is still written as string."""
    data = tmp_path / "in"
    data.mkdir()
    table = _plain_table(np.arange(3000))
    pq.write_table(table, data / "rows.parquet", row_group_size=500)
    output = tmp_path / "out"
    assert (
        _spark(
            data,
            output,
            "--key_columns=id,s",
            "--batch_size=400",
            "--spark_conf",
            "spark.sql.execution.arrow.useLargeVarTypes=true",
            "spark.sql.files.maxPartitionBytes=16384",
            f"{INPUT_OPTION}={INPUT_SPARK}",
            model=plain_model,
        )
        == 0
    )
    run = _only_run(output)
    schemas = _part_schemas(run, "predictions")
    assert len(schemas) > 1 and all(s == schemas[0] for s in schemas)
    assert schemas[0].field("s").type == pa.string()
    _check_plain_scores(run, table)


# --- one-line errors, before Spark starts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--runner=DirectRunner", "--spark_master=local[2]"],
            "--spark_master and --spark_conf apply to --runner=PySparkRunner",
        ),
        (
            ["--runner=PySparkRunner", "--spark_conf", "executor.memory"],
            "--spark_conf executor.memory: expected KEY=VALUE",
        ),
        (
            ["--runner=PySparkRunner", "--spark_conf=spark.python.worker.reuse=false"],
            "needs Python worker reuse",
        ),
        (
            ["--runner=PySparkRunner", f"--spark_conf={BATCH_SIZE_CONF}=10"],
            "use --batch_size instead",
        ),
        (
            ["--runner=PySparkRunner", f"--spark_conf={INPUT_OPTION}=hdfs"],
            f"--spark_conf {INPUT_OPTION}=hdfs: expected auto (the default: splits where",
        ),
        (
            ["--runner=PySparkRunner", "--spark_conf=batchscore.jvm_cache=maybe"],
            "batchscore.jvm_cache=maybe: expected on or off",
        ),
        (
            ["--runner=PySparkRunner", "--spark_conf=batchscore.threads=4"],
            "unknown PySparkRunner setting",
        ),
        (
            ["--runner=PySparkRunner", "--direct_num_workers=2"],
            "--runner=PySparkRunner takes no Beam options",
        ),
    ],
)
def test_bad_spark_options_fail_in_one_line(
    args: list[str],
    message: str,
    plain_model: Path,
    plain_data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = score(plain_data[0], tmp_path, "--key_columns=id", *args, model=plain_model)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not list_committed_runs(tmp_path)


@pytest.mark.parametrize(
    ("mode", "master", "paths", "shared", "skip", "expected", "why"),
    [
        (INPUT_AUTO, "local[2]", ["/d/a.parquet"], (), False, INPUT_SPLITS, "local[2] runs"),
        (INPUT_AUTO, "spark://127.0.0.1:7077", ["/d/a"], (), False, INPUT_SPLITS, "this host"),
        (INPUT_AUTO, "spark://db7:7077", ["gs://b/a"], (), False, INPUT_SPLITS, "object-store"),
        (INPUT_AUTO, "yarn", ["/nfs/d/a", "/nfs/e/b"], ("/nfs",), False, INPUT_SPLITS, "under"),
        (INPUT_AUTO, "yarn", ["/nfs/d/a", "/tmp/b"], ("/nfs",), False, INPUT_SPARK, "may not"),
        (INPUT_AUTO, "spark://db7:7077", ["/nfsx/a"], ("/nfs",), False, INPUT_SPARK, "PREFIX"),
        (INPUT_AUTO, "yarn", ["/d/a"], (), True, INPUT_SPLITS, "--on_bad_file=skip"),
        (INPUT_SPARK, "local[2]", ["/d/a"], (), False, INPUT_SPARK, f"{INPUT_OPTION}=spark"),
        (INPUT_SPARK, "local[2]", ["/d/a"], (), True, INPUT_SPLITS, "--on_bad_file=skip"),
        (INPUT_SPLITS, "yarn", ["/d/a"], (), False, INPUT_SPLITS, f"{INPUT_OPTION}=splits"),
    ],
)
def test_the_input_mode_is_splits_where_the_workers_can_read_the_paths(
    mode: str,
    master: str,
    paths: list[str],
    shared: tuple[str, ...],
    skip: bool,
    expected: str,
    why: str,
) -> None:
    chosen, reason = choose_input(mode, master, paths, shared, skip)
    assert chosen == expected and why in reason, reason
    if chosen == INPUT_SPARK and mode == INPUT_AUTO:
        assert f"--spark_conf {SHARED_PATHS_OPTION}=PREFIX" in reason, "says how to get splits"


def test_a_core_error_in_a_worker_comes_back_as_itself() -> None:
    spark_text = (
        "An exception was thrown from the Python worker. Please see the stack trace below.\n"
        "Traceback (most recent call last):\n"
        '  File "/work/main/batch/scorer.py", line 245, in _feeds\n'
        "pyarrow.lib.ArrowInvalid: Float value 1.5 was truncated\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        "batch.core.errors.InputDataError: column 'n': cannot convert double to int64 for the model\n"
    )
    error = translate_spark_error(RuntimeError(spark_text))
    assert type(error) is errors.InputDataError
    assert str(error) == "column 'n': cannot convert double to int64 for the model"
    commit = translate_spark_error(RuntimeError("x\nbatch.core.errors.CommitError: no commit\n"))
    assert type(commit) is errors.CommitError and str(commit) == "no commit"
    other = translate_spark_error(RuntimeError("Job aborted.\nValueError: bad thing\n  at x"))
    assert isinstance(other, SparkRunnerError) and "ValueError: bad thing" in str(other)
    assert "\n" not in str(other)


def test_conform_batch_restores_the_files_types() -> None:
    spark_batch = pa.record_batch(
        {
            "id": pa.array([1, 2], pa.int64()),
            "s": pa.array(["a", "b"], pa.large_string()),
            "t": pa.array([1000, 2000], pa.timestamp("us", tz="UTC")),
        }
    )
    files = pa.schema([("id", pa.int64()), ("s", pa.string()), ("t", pa.timestamp("ms"))])
    assert conform_batch(spark_batch, files).schema == files
    # Files that disagree: at least no large types, so every part has the same schema.
    loose = conform_batch(spark_batch, None)
    assert loose.schema.field("s").type == pa.string()
    assert loose.schema.field("t").type == pa.timestamp("us", tz="UTC")


@pytest.mark.slow
def test_the_jvm_class_cache_is_built_once_then_used(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    """A fresh process builds the class-data archive as its JVM exits and keeps it only
    whole; the next process starts its JVM from it. Both score correctly."""
    data_dir, table = plain_data
    cache = tmp_path / "cache"
    env = {**os.environ, "BATCHSCORE_CACHE_DIR": str(cache), "PYSPARK_PYTHON": sys.executable}
    for attempt in ("build", "use"):
        output = tmp_path / attempt
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.score",
                *score_args(
                    data_dir,
                    output,
                    "--runner=PySparkRunner",
                    f"--spark_master={LOCAL}",
                    "--key_columns=id",
                    BUDGET,
                    model=plain_model,
                ),
            ],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "[cds]" not in result.stdout + result.stderr
        building = "spark: building the JVM start-up archive" in result.stderr
        assert building == (attempt == "build"), result.stderr[-3000:]
        archives = sorted(p.name for p in cache.iterdir())
        assert len(archives) == 1 and archives[0].endswith(".jsa"), archives
        _check_plain_scores(_only_run(output), pa.concat_tables([table, _dirty(data_dir)]))


def _dirty(data_dir: Path) -> pa.Table:
    return pq.read_table(data_dir / "dirty.parquet")


STANDALONE_EXECUTOR = [
    "/usr/lib/jvm/java-17/bin/java",
    "-cp",
    "/opt/spark/conf/:/opt/spark/jars/*",
    "org.apache.spark.executor.CoarseGrainedExecutorBackend",
    "--driver-url",
    "spark://CoarseGrainedScheduler@127.0.0.1:40123",
    "--executor-id",
    "0",
    "--cores",
    "8",
    "--app-id",
    "app-20261205104500-0000",
]


def test_an_executors_cores_are_read_from_its_command_line() -> None:
    assert backend_cores(STANDALONE_EXECUTOR) == 8
    yarn = [a.replace("CoarseGrained", "YarnCoarseGrained") for a in STANDALONE_EXECUTOR]
    assert backend_cores([*yarn[:-4], "--cores", "4"]) == 4
    driver = "java -cp x org.apache.spark.deploy.SparkSubmit --master local[2] pyspark-shell"
    assert backend_cores(driver.split()) is None  # a local master's workers: no executor
    assert backend_cores(STANDALONE_EXECUTOR[:-4]) is None  # no --cores given


def test_a_python_worker_finds_its_executors_cores_among_its_parents(tmp_path: Path) -> None:
    """Through /proc: a process whose command line is an executor backend's starts one
    that starts the asking process (as pyspark's daemon forks a worker)."""
    ask = "from runners.pyspark import executor_cores; print(executor_cores())"
    middle = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {ask!r}], check=True)"
    top = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {middle!r}], check=True)"
    backend = ["org.apache.spark.executor.CoarseGrainedExecutorBackend", "--cores", "3"]
    found = subprocess.run(
        [sys.executable, "-c", top, *backend], cwd=PROJECT, capture_output=True, text=True
    )
    assert found.stdout.split() == ["3"], found.stderr[-2000:]
    alone = subprocess.run(
        [sys.executable, "-c", ask], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert alone.stdout.split() == ["None"]


def test_a_workers_memory_is_shared_by_its_executors_task_slots() -> None:
    unknown = WorkerMemory(None, 1 << 20)
    shared = executor_memory(unknown, task_cpus=1, cores=4)
    assert shared is not None and shared.sharing.processes == 4
    assert shared.budget() == default_budget()[0] // 4
    halves = executor_memory(unknown, task_cpus=2, cores=4)
    assert halves is not None and halves.sharing.processes == 2
    assert executor_memory(unknown, task_cpus=1, cores=1) is unknown
    assert executor_memory(unknown, task_cpus=1, cores=None) is unknown  # not an executor
    given = WorkerMemory(2 << 30, 1 << 20)  # --worker_memory: each process's already
    assert executor_memory(given, task_cpus=1, cores=4) is given
    planned = WorkerMemory(None, 1 << 20, sharing=Sharing(processes=2))  # the driver knew
    assert executor_memory(planned, task_cpus=1, cores=4) is planned
    assert executor_memory(None, task_cpus=1, cores=4) is None


@pytest.mark.slow
def test_the_task_slots_of_a_standalone_executor_share_its_memory(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    """A standalone worker of two cores, a job that sets no spark.executor.cores: the
    executor takes both, runs two tasks at once, and each of its Python workers plans with
    half this machine's default budget (the driver could not know it would)."""
    data_dir, _ = plain_data
    with standalone_cluster(tmp_path / "cluster", workers=1, cores=2) as cluster:
        options = ("--key_columns=id", "--batch_size=1000", "--split_rows=2000")
        assert (
            _spark(
                data_dir, tmp_path / "out", *options, model=plain_model, master=cluster.master_url
            )
            == 0
        )
    manifest = _only_run(tmp_path / "out").manifest().to_json()
    memory = manifest["batching"]["memory"]
    assert memory["shared"]["worker_processes"] == 1  # what the driver planned with
    assert memory["worker_budget_bytes"] == default_budget()[0] // 2  # what the workers took
    assert (
        manifest["counts"]["rows_in"]
        == manifest["counts"]["rows_scored"] + manifest["counts"]["rows_rejected"]
    )
