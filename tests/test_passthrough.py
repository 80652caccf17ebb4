"""--passthrough_columns: input columns copied into the prediction rows beside the keys."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.columns import CONSTANT_COLUMNS, MODEL_NAME_COLUMN, RUN_ID_COLUMN
from batch.output.commit import CommittedRun, list_committed_runs
from tests.conftest import score
from tests.plain_model import write_plain_data


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, pa.Table]:
    folder = tmp_path / "in"
    table = write_plain_data(folder, files=2, rows_per_file=300, row_group_rows=100)
    return folder, table


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


def _check(run: CommittedRun, table: pa.Table) -> None:
    predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
    assert predictions.schema.names[:3] == ["id", "extra", "s"]
    assert predictions["extra"].to_pylist() == table["extra"].to_pylist()
    assert predictions["s"].to_pylist() == table["s"].to_pylist()
    assert run.manifest().to_json()["passthrough_columns"] == ["extra", "s"]
    _check_constant_columns(run)


def _check_constant_columns(run: CommittedRun) -> None:
    """The columns batchscore adds read back as plain strings (not dictionaries), from
    parts that store each as a dictionary page of its one value."""
    predictions = pq.read_table(run.run_dir / "predictions")
    for name in CONSTANT_COLUMNS:
        assert predictions.schema.field(name).type == pa.string()
    assert set(predictions[RUN_ID_COLUMN].to_pylist()) == {run.run_id}
    assert set(predictions[MODEL_NAME_COLUMN].to_pylist()) == {
        run.manifest().to_json()["model"]["name"]
    }
    for part in sorted((run.run_dir / "predictions").glob("part-*.parquet")):
        metadata = pq.ParquetFile(part).metadata
        index = metadata.schema.names.index(MODEL_NAME_COLUMN)
        for group in range(metadata.num_row_groups):
            assert metadata.row_group(group).column(index).has_dictionary_page


def test_columns_are_copied_beside_the_keys(
    plain_model: Path, data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    folder, table = data
    args = ("--key_columns=id", "--passthrough_columns=extra,s")
    assert score(folder, tmp_path / "out", *args, model=plain_model) == 0
    _check(_only_run(tmp_path / "out"), table)
    # Another choice of columns is another run, not "up to date".
    assert score(folder, tmp_path / "out", "--key_columns=id", model=plain_model) == 0
    assert len(list_committed_runs(tmp_path / "out")) == 2


def test_columns_of_types_only_arrows_schema_names_keep_them(
    plain_model: Path, tmp_path: Path
) -> None:
    """A time zone and large_string are not Parquet's own types: the parts then store
    Arrow's schema, and the constant columns are still strings, not dictionaries."""
    folder = tmp_path / "in"
    table = write_plain_data(folder, files=1, rows_per_file=200, row_group_rows=100)
    zoned = pa.array(range(200), pa.int64()).cast(pa.timestamp("us", tz="Europe/Paris"))
    wide = table["s"].cast(pa.large_string())
    table = table.append_column("at", zoned).append_column("text", wide)
    (folder / "part-000.parquet").unlink()
    pq.write_table(table, folder / "part-000.parquet", row_group_size=100)
    args = ("--key_columns=id", "--passthrough_columns=at,text")
    assert score(folder, tmp_path / "out", *args, model=plain_model) == 0
    run = _only_run(tmp_path / "out")
    predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
    assert predictions.schema.field("at").type == pa.timestamp("us", tz="Europe/Paris")
    assert predictions.schema.field("text").type == pa.large_string()
    assert predictions["at"].to_pylist() == table["at"].to_pylist()
    assert predictions["text"].to_pylist() == table["text"].to_pylist()
    for name in CONSTANT_COLUMNS:
        assert predictions.schema.field(name).type == pa.string()
    assert set(predictions[RUN_ID_COLUMN].to_pylist()) == {run.run_id}


@pytest.mark.slow
def test_on_spark(plain_model: Path, data: tuple[Path, pa.Table], tmp_path: Path) -> None:
    folder, table = data
    rc = score(
        folder,
        tmp_path / "out",
        "--key_columns=id",
        "--passthrough_columns=extra,s",
        "--runner=PySparkRunner",
        "--spark_master=local[2]",
        model=plain_model,
    )
    assert rc == 0
    _check(_only_run(tmp_path / "out"), table)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("id", "--passthrough_columns: 'id' is a key column"),
        ("score", "--passthrough_columns: 'score' is a model output"),
        ("nope", "part-000.parquet: column 'nope' is missing; --passthrough_columns names it"),
    ],
)
def test_a_bad_column_is_refused_before_compute(
    plain_model: Path,
    data: tuple[Path, pa.Table],
    columns: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _ = data
    rc = score(
        folder,
        tmp_path / "out",
        "--key_columns=id",
        f"--passthrough_columns={columns}",
        model=plain_model,
    )
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not list_committed_runs(tmp_path / "out")
