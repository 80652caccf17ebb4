"""Batches sized by bytes (issue 20 point 1): the planner reads bytes per row from the
footers and gives each split target_bytes of rows a batch; --batch_size forces rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.engine.inputs import DEFAULT_BATCH_SIZE, InputFile, plan_splits, read_input_file
from batch.engine.memory import default_budget
from batch.engine.sizing import (
    DEFAULT_BATCH_BYTES,
    MIN_BATCH_ROWS,
    BatchPlan,
    BatchSizing,
    bytes_per_row,
    parse_bytes,
    plan_batches,
)
from batch.output.commit import MANIFEST, list_committed_runs
from tests.conftest import score
from tests.memory_models import write_wide_data
from tests.plain_model import plain_model_expected, write_plain_data

COLUMNS = ("id", "x", "n", "s")


def _plan(
    folder: Path, sizing: BatchSizing, columns: tuple[str, ...] = COLUMNS
) -> tuple[list[InputFile], BatchPlan]:
    files = [read_input_file(p) for p in sorted(folder.glob("*.parquet"))]
    return files, plan_batches(files, plan_splits(files), columns, sizing)


def test_parse_bytes() -> None:
    assert parse_bytes("4G") == 4 << 30
    assert parse_bytes("512m") == 512 << 20
    assert parse_bytes("1.5GiB") == 3 << 29
    assert parse_bytes("300000") == 300000
    for bad in ("", "-1G", "0", "4X", "G"):
        with pytest.raises(ValueError, match="expected a positive size"):
            parse_bytes(bad)


def test_narrow_rows_keep_the_fixed_batch(tmp_path: Path) -> None:
    write_plain_data(tmp_path, files=2, rows_per_file=5000, row_group_rows=1000)
    files, plan = _plan(tmp_path, BatchSizing())
    assert {s.batch_rows for s in plan.splits} == {DEFAULT_BATCH_SIZE}
    assert plan.section["rule"] == "bytes"
    low, high = plan.section["estimated_bytes_per_row"].values()
    # id and x 8 bytes, n 4, s a short code with 4 bytes of offset: about 30 bytes a row.
    table = pq.read_table(files[0].path, columns=list(COLUMNS))
    assert 0.5 < low / (table.nbytes / table.num_rows) <= high / (table.nbytes / table.num_rows) < 2


def test_wide_rows_get_fewer_rows_a_batch(tmp_path: Path) -> None:
    table = write_wide_data(tmp_path, files=2, rows=400, text_bytes=50_000)
    files, plan = _plan(tmp_path, BatchSizing())
    actual = table.nbytes / table.num_rows
    for split in plan.splits:
        estimate = bytes_per_row(files[0], split, COLUMNS)
        assert estimate is not None and abs(estimate - actual) / actual < 0.05
        assert split.batch_rows == DEFAULT_BATCH_BYTES // estimate
    # 32 MiB of 50 KB rows.
    assert plan.section["batch_rows"] == {"min": 670, "max": 670}
    # A smaller target and the row floor.
    _, small = _plan(tmp_path, BatchSizing(target_bytes=1 << 20))
    assert {s.batch_rows for s in small.splits} == {20}
    _, tiny = _plan(tmp_path, BatchSizing(target_bytes=1000))
    assert {s.batch_rows for s in tiny.splits} == {MIN_BATCH_ROWS}
    # Only the columns read count: without s the rows are narrow again.
    _, narrow = _plan(tmp_path, BatchSizing(), columns=("id", "x"))
    assert {s.batch_rows for s in narrow.splits} == {DEFAULT_BATCH_SIZE}
    # --batch_size forces rows.
    _, forced = _plan(tmp_path, BatchSizing(forced_rows=65536))
    assert {s.batch_rows for s in forced.splits} == {65536}
    assert forced.section["rule"] == "rows (--batch_size)"


def test_dictionary_columns_count_their_decoded_width(tmp_path: Path) -> None:
    """A dictionary-encoded int64 column stores ~1 byte a row; Arrow holds 8."""
    rows = 20_000
    table = pa.table({"id": pa.array(np.arange(rows) % 3, pa.int64())})
    pq.write_table(table, tmp_path / "d.parquet")
    files, plan = _plan(tmp_path, BatchSizing(target_bytes=80_000), columns=("id",))
    assert files[0].row_group_bytes[0]["id"] < rows * 2
    assert plan.section["estimated_bytes_per_row"] == {"min": 8.0, "max": 8.0}
    assert {s.batch_rows for s in plan.splits} == {10_000}


def _split_batches(rows: int) -> int:
    """Batches of ``rows`` in which a job reads the two 300-row files of write_wide_data
    (a split a file, two row groups each): the batch that spans a file's row groups is cut
    where they meet, as the text column is read dictionary-encoded (each row group stores
    its own dictionary)."""
    return 2 * (math.ceil(300 / rows) + (1 if 150 % rows else 0))


def test_beam_job_scores_wide_rows_in_byte_sized_batches(plain_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    table = write_wide_data(data, files=2, rows=300, text_bytes=20_000)
    out = tmp_path / "out"
    assert score(data, out, "--key_columns=id", "--batch_bytes=1M", model=plain_model) == 0
    (run,) = list_committed_runs(out)
    manifest = json.loads((run.run_dir / MANIFEST).read_text())
    batching = manifest["batching"]
    assert batching["rule"] == "bytes" and batching["target_bytes"] == 1 << 20
    rows = batching["batch_rows"]["min"]
    assert rows == batching["batch_rows"]["max"] == (1 << 20) // (table.nbytes / table.num_rows)
    assert manifest["batch_size"] == rows
    assert manifest["metrics"]["batches"] == _split_batches(rows)
    predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == list(range(600))
    with np.errstate(over="ignore"):  # long texts: sigmoid of a large negative number
        expected = plain_model_expected(table.sort_by("id"))
    np.testing.assert_allclose(predictions.column("score").to_numpy(), expected, atol=1e-6)


@pytest.mark.slow
def test_spark_job_scores_wide_rows_in_byte_sized_batches(
    plain_model: Path, tmp_path: Path
) -> None:
    """On the native Spark runner: with input=splits each split is read in its own batch
    rows; when Spark reads the input, its Arrow batches hold the smallest size chosen."""
    data = tmp_path / "data"
    table = write_wide_data(data, files=2, rows=300, text_bytes=20_000)
    for mode in ("spark", "splits"):
        out = tmp_path / mode
        options = (
            "--key_columns=id",
            "--batch_bytes=1M",
            "--runner=PySparkRunner",
            "--spark_master=local[2]",
            f"--spark_conf=batchscore.input={mode}",
        )
        assert score(data, out, *options, model=plain_model) == 0
        (run,) = list_committed_runs(out)
        manifest = json.loads((run.run_dir / MANIFEST).read_text())
        rows = manifest["batching"]["batch_rows"]["max"]
        assert rows == manifest["batch_size"] == (1 << 20) // (table.nbytes / table.num_rows)
        memory = manifest["batching"]["memory"]
        if mode == "spark":
            # local[2], Spark reading: two tasks at once, two Python workers of this
            # machine, each with half its default budget.
            assert memory["budget_bytes"] == default_budget()[0] // 2
            assert memory["worker_budget_bytes"] == memory["budget_bytes"]  # the workers' own
            assert memory["shared"]["worker_processes"] == 2
            assert "shared by 2 worker processes" in memory["budget_source"]
        else:  # one task of two cores, one Python worker with two scoring threads
            assert memory["budget_bytes"] == memory["worker_budget_bytes"] == default_budget()[0]
            assert memory["shared"]["worker_processes"] == 1
        if mode == "splits":
            assert manifest["metrics"]["batches"] == _split_batches(rows)
        else:  # Spark's partitions cut batches too: at least as many
            assert manifest["metrics"]["batches"] >= 2 * math.ceil(300 / rows)
        predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
        assert predictions.column("id").to_pylist() == list(range(600))
