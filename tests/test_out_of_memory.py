"""A model call that runs out of memory is retried on halves (issue 20 point 3): every
row is still scored, equal to a direct call, the smaller size is kept for the rest of
the split, and the manifest counts it. Real TensorFlow ResourceExhaustedErrors from a
real SavedModel, on Beam and on a local Spark session.

TensorFlow's CPU allocator waits about 10 s for memory to be freed before it raises, so
every call that runs out of memory costs 10 s: the data here makes few of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.engine.validate import MODEL_ERROR
from batch.output.commit import MANIFEST, list_committed_runs
from tests.conftest import score
from tests.memory_models import build_oom_model
from tests.plain_model import POISON_ABOVE, plain_model_expected, write_plain_data

MAX_ROWS = 100


@pytest.fixture(scope="module")
def oom_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_oom_model(tmp_path_factory.mktemp("oom_model") / "model", MAX_ROWS)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    folder = tmp_path_factory.mktemp("data")
    return folder, write_plain_data(folder, files=2, rows_per_file=600, row_group_rows=200)


def test_the_model_really_runs_out_of_memory(oom_model: Path) -> None:
    import tensorflow as tf

    serve = tf.saved_model.load(str(oom_model)).signatures["serving_default"]
    feeds = {"n": tf.zeros([MAX_ROWS], tf.int64), "s": tf.fill([MAX_ROWS], "a")}
    assert serve(x=tf.zeros([MAX_ROWS]), **feeds)["score"].shape == (MAX_ROWS,)
    more = {"n": tf.zeros([MAX_ROWS + 1], tf.int64), "s": tf.fill([MAX_ROWS + 1], "a")}
    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM when allocating"):
        serve(x=tf.zeros([MAX_ROWS + 1]), **more)


def _manifest(output: Path) -> tuple[Path, dict]:
    (run,) = list_committed_runs(output)
    return run.run_dir, json.loads((run.run_dir / MANIFEST).read_text())


def _check_every_row(run_dir: Path, table: pa.Table) -> None:
    predictions = pq.read_table(run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == sorted(table.column("id").to_pylist())
    np.testing.assert_allclose(
        predictions.column("score").to_numpy(),
        plain_model_expected(table.sort_by("id")),
        atol=1e-6,
    )


def test_beam_halves_batches_that_run_out_of_memory(
    oom_model: Path, data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    folder, table = data
    options = ("--key_columns=id", "--split_rows=600", "--batch_size=150")
    assert score(folder, tmp_path, *options, model=oom_model) == 0
    run_dir, manifest = _manifest(tmp_path)
    _check_every_row(run_dir, table)
    assert manifest["counts"]["rows_rejected"] == 0
    # Each split's first batches of 150 rows ran out of memory (one, or both concurrent
    # calls); 75 fit, and the split's later calls held 75 rows.
    oom = manifest["batching"]["out_of_memory"]
    assert oom["batch_rows_by_part"] == {"0": 75, "1": 75}
    assert 2 <= oom["retries"] <= 4
    # Batches read: 150 rows, cut where the 200-row row groups meet (the string input is
    # read dictionary-encoded, a dictionary a row group): 150, 50, 100, 100, 50, 150 a split.
    assert manifest["metrics"]["batches"] == 12


def test_a_row_that_runs_out_of_memory_alone_is_poison(
    oom_model: Path, data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    _, table = data
    poison = pa.table(
        {
            "id": pa.array([10_000, 10_001, 10_002], pa.int64()),
            "x": pa.array([0.5, POISON_ABOVE * 3, -0.5]),
            "n": pa.array([1, 2, 3], pa.int32()),
            "s": pa.array(["a", "b", "c"]),
            "extra": pa.array([0.0, 0.0, 0.0]),
        }
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(table.slice(0, 80), inputs / "a.parquet")
    pq.write_table(poison, inputs / "b.parquet")
    out = tmp_path / "out"
    assert score(inputs, out, "--key_columns=id", "--max_error_rate=0.05", model=oom_model) == 0
    run_dir, manifest = _manifest(out)
    rejected = pq.read_table(run_dir / "rejected")
    assert rejected.column("id").to_pylist() == [10_001]
    assert rejected.column(REASON_COLUMN).to_pylist() == [MODEL_ERROR]
    (message,) = rejected.column(MESSAGE_COLUMN).to_pylist()
    assert "ran out of memory on this one row" in message and "OOM when allocating" in message
    kept = pa.concat_tables([table.slice(0, 80), poison.filter(pa.array([True, False, True]))])
    _check_every_row(run_dir, kept)
    assert manifest["counts"]["rows_scored"] == 82
    # The 3 rows, then the poison row alone.
    assert manifest["batching"]["out_of_memory"]["retries"] == 1


@pytest.mark.slow
def test_spark_halves_batches_that_run_out_of_memory(
    oom_model: Path, data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    folder, table = data
    for mode in ("spark", "splits"):
        out = tmp_path / mode
        assert (
            score(
                folder,
                out,
                "--key_columns=id",
                "--batch_size=150",
                "--runner=PySparkRunner",
                "--spark_master=local[2]",
                f"--spark_conf=batchscore.input={mode}",
                model=oom_model,
            )
            == 0
        )
        run_dir, manifest = _manifest(out)
        _check_every_row(run_dir, table)
        oom = manifest["batching"]["out_of_memory"]
        assert oom["retries"] >= 1 and set(oom["batch_rows_by_part"].values()) == {75}
