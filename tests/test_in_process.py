"""A small DirectRunner job scored in this process, without Beam (batch.engine.local):
the same run as Beam's, and Beam whenever the job asks for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch.core.columns import REASON_COLUMN, RUN_ID_COLUMN
from batch.engine.local import IN_PROCESS
from batch.output.commit import MANIFEST, CommittedRun, list_committed_runs
from runners import in_process_limit
from tests.conftest import score, score_in_a_new_process
from tests.plain_model import write_plain_data

ROWS = 3 * 1500
BUDGET = "--max_error_rate=0.05"  # the messy rows are 3.7% of them


@pytest.fixture(scope="module")
def messy_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    """Three files of 1,500 rows (row groups of 400), with nulls, NaN and infinities in
    the model's inputs: rows the run must reject, wherever it runs."""
    folder = tmp_path_factory.mktemp("messy")
    table = write_plain_data(folder, files=3, rows_per_file=1500, row_group_rows=400)
    for path in sorted(folder.glob("*.parquet")):
        part = pq.read_table(path)
        x = part.column("x").to_numpy().copy()
        x[7::97] = np.nan
        x[11::131] = np.inf
        mask = np.zeros(part.num_rows, dtype=bool)
        mask[3::89] = True
        part = part.set_column(1, "x", pa.array(x, mask=mask))
        n = part.column("n").to_numpy()
        part = part.set_column(2, "n", pa.array(n, pa.int32(), mask=np.arange(len(n)) % 151 == 5))
        pq.write_table(part, path, row_group_size=400)
    return folder, table


def _manifest(run: CommittedRun) -> dict:
    return json.loads((run.run_dir / MANIFEST).read_text())


def _outputs(run: CommittedRun, kind: str) -> pa.Table:
    table = pq.read_table(run.run_dir / kind).sort_by("id")
    # Every column but the run's id; floats as text, so that NaN (a rejected x) equals NaN.
    return pa.table(
        {
            name: pc.cast(column, pa.string()) if pa.types.is_floating(column.type) else column
            for name, column in zip(table.column_names, table.columns, strict=True)
            if name != RUN_ID_COLUMN
        }
    )


def test_a_small_job_is_scored_in_this_process_without_beam_and_as_beam_scores_it(
    plain_model: Path, messy_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data, table = messy_data
    rc, err, modules = score_in_a_new_process(
        data,
        tmp_path / "in_process",
        "--key_columns=id",
        "--split_rows=800",
        BUDGET,
        model=plain_model,
    )
    assert rc == 0, err
    assert "apache_beam" not in modules
    assert "tensorflow" in modules
    (small,) = list_committed_runs(tmp_path / "in_process")
    runner = _manifest(small)["runner"]
    assert runner["name"] == IN_PROCESS
    assert runner["options"]["input_rows"] == ROWS
    assert runner["options"]["in_process_rows"] == 262144

    # The same job on Beam (0: always start Beam): the same rows scored and rejected.
    assert (
        score(
            data,
            tmp_path / "beam",
            "--key_columns=id",
            "--split_rows=800",
            BUDGET,
            "--in_process_rows=0",
            model=plain_model,
        )
        == 0
    )
    (beam,) = list_committed_runs(tmp_path / "beam")
    assert _manifest(beam)["runner"]["name"] == "beam:DirectRunner"
    assert _manifest(small)["counts"] == _manifest(beam)["counts"]
    assert [len(_manifest(r)["outputs"]["predictions"]) for r in (small, beam)] == [6, 6]
    scored, rejected = _outputs(small, "predictions"), _outputs(small, "rejected")
    assert scored.equals(_outputs(beam, "predictions"))
    assert rejected.equals(_outputs(beam, "rejected"))
    ids = pc.unique(
        pa.concat_arrays(
            [scored.column("id").combine_chunks(), rejected.column("id").combine_chunks()]
        )
    )
    assert len(ids) == table.num_rows, "every row exactly once"
    assert 0 < rejected.num_rows < 200
    assert set(rejected.column(REASON_COLUMN).to_pylist()) == {"null_value", "not_finite"}


@pytest.mark.parametrize(
    "options",
    [
        (f"--in_process_rows={ROWS - 1}",),  # more rows than the limit
        ("--direct_num_workers=1",),  # a Beam option: Beam's to honour
    ],
)
def test_beam_starts_when_the_input_is_larger_or_a_beam_option_is_given(
    plain_model: Path, messy_data: tuple[Path, pa.Table], tmp_path: Path, options: tuple[str, ...]
) -> None:
    data, _ = messy_data
    rc, err, modules = score_in_a_new_process(
        data, tmp_path, "--key_columns=id", BUDGET, *options, model=plain_model
    )
    assert rc == 0, err
    assert "apache_beam" in modules
    (run,) = list_committed_runs(tmp_path)
    assert _manifest(run)["runner"]["name"] == "beam:DirectRunner"
    assert _manifest(run)["counts"]["rows_in"] == ROWS


def test_a_job_that_fails_in_this_process_says_why_in_one_line(
    plain_model: Path, messy_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data, _ = messy_data
    rc, err, modules = score_in_a_new_process(
        data, tmp_path, "--key_columns=id", "--max_error_rate=0.001", model=plain_model
    )
    assert rc == 2
    assert "apache_beam" not in modules
    assert "Traceback" not in err
    assert "165 of 4,500 rows rejected (3.667%), above --max_error_rate=0.001" in err, err
    assert list_committed_runs(tmp_path) == []


def test_only_the_direct_runner_without_beam_options_scores_in_process() -> None:
    assert in_process_limit("DirectRunner", [], 1000) == 1000
    assert in_process_limit("DirectRunner", ["--direct_running_mode=in_memory"], 1000) == 0
    assert in_process_limit("DataflowRunner", [], 1000) == 0
    assert in_process_limit("PySparkRunner", [], 1000) == 0
    assert in_process_limit("DirectRunner", [], 0) == 0
    # Spark's options with another runner are refused by make_runner: no shortcut past it.
    assert in_process_limit("DirectRunner", [], 1000, spark_master="local[2]") == 0
    assert in_process_limit("DirectRunner", [], 1000, spark_conf=["a=b"]) == 0


def test_a_negative_limit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        score(tmp_path, tmp_path / "out", "--in_process_rows=-1")
    assert exit_.value.code == 2
    assert "--in_process_rows: expected an integer >= 0, found -1" in capsys.readouterr().err
