"""Input checks that do not depend on what a writer chose to record, and a file rewritten
mid-run (issue 22, point 8)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.errors import InputDataError
from batch.engine.inputs import null_counts_from_data, plan_splits, read_input_file
from batch.engine.job import read_split
from batch.output.commit import list_committed_runs
from jobs.score import main as score_main
from tests.plain_model import build_plain_model, write_plain_data


def test_null_counts_are_read_from_the_data_when_the_footer_has_none(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    table = pa.table({"a": pa.nulls(10, pa.string()), "b": pa.array(range(10))})
    pq.write_table(table, path, write_statistics=False)
    file = read_input_file(path)
    assert file.null_counts == {}
    assert null_counts_from_data(file, ["a", "b", "missing"]) == {"a": 10, "b": 0}


def test_an_entirely_null_required_column_is_caught_without_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_plain_model(tmp_path / "model")
    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    path = data / "part-000.parquet"
    table = pq.read_table(path).append_column("note", pa.nulls(50, pa.string()))
    pq.write_table(table, path, write_statistics=False)
    contract = tmp_path / "contract"
    contract.mkdir()
    (contract / "schema.pbtxt").write_text(
        'feature { name: "note" type: BYTES presence { min_fraction: 1.0 } }\n'
    )
    rc = score_main(
        [
            f"--input={data}",
            f"--model={model}",
            f"--output={tmp_path / 'out'}",
            "--key_columns=id",
            f"--contract={contract}",
        ]
    )
    assert rc == 2
    assert "column 'note' is null in all 50 rows" in capsys.readouterr().err
    assert not list_committed_runs(tmp_path / "out")


def test_a_file_rewritten_after_planning_fails_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"k": list(range(100))}), path)
    (split,) = plan_splits([read_input_file(path)])
    before = path.stat()
    pq.write_table(pa.table({"k": list(range(100, 200))}), path)  # same rows, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(
        InputDataError, match=re.escape(f"{path}: the file changed while the run was scoring")
    ):
        read_split(split, ["k"], 10)


def test_an_unchanged_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"k": list(range(100))}), path)
    (split,) = plan_splits([read_input_file(path)])
    _, batches = read_split(split, ["k"], 10)
    assert sum(b.num_rows for b in batches) == 100
