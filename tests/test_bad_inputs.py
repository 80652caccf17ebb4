"""Bad input end to end: schema mismatches, corrupt files, the error budget, poison rows."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.output.commit import list_committed_runs
from tests.conftest import score
from tests.plain_model import POISON_ABOVE, write_plain_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    write_plain_data(folder, files=3, rows_per_file=400, row_group_rows=100)
    return folder


def _rewrite(path: Path, **columns: pa.Array) -> None:
    table = pq.read_table(path)
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        table = (
            table.set_column(index, name, values)
            if index >= 0
            else table.append_column(name, values)
        )
    pq.write_table(table, path)


class TestSchemaIsCheckedBeforeAnyCompute:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (
                {"drop": "n"},
                "part-001.parquet: column 'n' is missing; the model expects it as int64",
            ),
            (
                {"n": pa.array(["1"] * 400)},
                "part-001.parquet: column 'n' is string; the model expects int64",
            ),
            (
                {"n": pa.array(range(400), pa.uint64())},
                "part-001.parquet: column 'n' is uint64; the model expects int64",
            ),
            (
                {"n": pa.array(range(400), pa.float64())},
                "part-001.parquet: column 'n' is double; the model expects int64: a float column "
                "never feeds an integer input",
            ),
        ],
        ids=["missing column", "wrong type", "narrowing int", "float to int is refused"],
    )
    def test_every_file_that_cannot_feed_the_model_is_named(
        self,
        change: dict[str, object],
        message: str,
        plain_model: Path,
        data: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        for path in sorted(data.glob("*.parquet")):
            table = pq.read_table(path)
            if "drop" in change:
                table = table.drop_columns([str(change["drop"])])
            else:
                for name, values in change.items():
                    table = table.set_column(table.schema.get_field_index(name), name, values)
            pq.write_table(table, path)
        rc = score(data, tmp_path / "out", "--key_columns=id", model=plain_model)
        err = capsys.readouterr().err
        assert rc == 2
        assert "3 input problem(s)" in err
        assert message in err
        assert not (tmp_path / "out").exists() or not list_committed_runs(tmp_path / "out")

    def test_int32_widens_to_int64_and_float64_feeds_float32(
        self, plain_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # write_plain_data writes n as int32 and x as float64.
        rc = score(data, tmp_path / "out", "--key_columns=id", model=plain_model)
        err = capsys.readouterr().err
        assert rc == 0, err

    def test_contract_types_and_required_columns(
        self, plain_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        contract = tmp_path / "contract"
        contract.mkdir()
        (contract / "schema.pbtxt").write_text(
            'feature { name: "id" type: INT presence { min_fraction: 1.0 } }\n'
            'feature { name: "extra" type: BYTES presence { min_fraction: 1.0 } }\n'
            'feature { name: "note" type: BYTES presence { min_fraction: 1.0 } }\n'
        )
        first = sorted(data.glob("*.parquet"))
        for path in first:
            _rewrite(path, note=pa.nulls(400, pa.string()))
        rc = score(
            data, tmp_path / "out", "--key_columns=id", f"--contract={contract}", model=plain_model
        )
        err = capsys.readouterr().err
        assert rc == 2
        assert "column 'extra' is double; contract 'contract' declares it STRING" in err
        assert (
            "column 'note' is null in all 400 rows; contract 'contract' declares it required" in err
        )


class TestCorruptFiles:
    @staticmethod
    def _corrupt(data: Path, kind: str) -> Path:
        victim = data / "part-001.parquet"
        if kind == "zero bytes":
            victim.write_bytes(b"")
        elif kind == "truncated footer":
            victim.write_bytes(victim.read_bytes()[:-20])
        elif kind == "not parquet":
            victim.write_text("loan_id,score\n1,0.5\n")
        elif kind == "schema differs from siblings":
            _rewrite(victim, n=pa.array(["x"] * 400))
        return victim

    KINDS = ("zero bytes", "truncated footer", "not parquet", "schema differs from siblings")
    REASONS: ClassVar[dict[str, str]] = {
        "zero bytes": "expected a Parquet file",
        "truncated footer": "expected a Parquet file",
        "not parquet": "expected a Parquet file",
        "schema differs from siblings": "its schema differs from its 2 sibling file(s): column 'n' is string, not int32",
    }

    @pytest.mark.parametrize("kind", KINDS)
    def test_the_job_fails_naming_the_file(
        self,
        kind: str,
        plain_model: Path,
        data: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        victim = self._corrupt(data, kind)
        rc = score(data, tmp_path / "out", "--key_columns=id", model=plain_model)
        err = capsys.readouterr().err
        assert rc == 2
        assert "1 bad input file(s)" in err and "--on_bad_file=skip" in err
        assert re.search(re.escape(f"{victim}: ") + ".*" + re.escape(self.REASONS[kind]), err)
        assert not list_committed_runs(tmp_path / "out")

    @pytest.mark.parametrize("kind", KINDS)
    def test_skip_scores_the_rest_and_records_the_file(
        self,
        kind: str,
        plain_model: Path,
        data: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        victim = self._corrupt(data, kind)
        rc = score(
            data, tmp_path / "out", "--key_columns=id", "--on_bad_file=skip", model=plain_model
        )
        err = capsys.readouterr().err
        assert rc == 0, err
        (run,) = list_committed_runs(tmp_path / "out")
        manifest = run.manifest().to_json()
        assert manifest["counts"]["rows_in"] == manifest["counts"]["rows_scored"] == 800
        (skipped,) = manifest["input"]["skipped_files"]
        assert skipped["path"] == str(victim)
        assert self.REASONS[kind] in skipped["reason"]


@pytest.mark.parametrize("engine", [(), ("--in_process_rows=0",)], ids=["in_process", "beam"])
def test_a_damaged_data_page_fails_naming_the_file(
    plain_model: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    engine: tuple[str, ...],
) -> None:
    victim = data / "part-000.parquet"
    damaged = bytearray(victim.read_bytes())
    damaged[4:40] = b"\xff" * 36  # the first page header; the footer stays intact
    victim.write_bytes(bytes(damaged))
    rc = score(data, tmp_path / "out", "--key_columns=id", *engine, model=plain_model)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{victim}: row groups [0, 1, 2, 3] cannot be read as Parquet" in err
    assert "the file is damaged inside" in err
    assert not list_committed_runs(tmp_path / "out")


class TestErrorBudget:
    @staticmethod
    def _dirty(data: Path, bad_rows: int) -> None:
        path = data / "part-000.parquet"
        x = pq.read_table(path).column("x").to_pylist()
        for i in range(bad_rows):
            x[i * 3] = None
        _rewrite(path, x=pa.array(x, pa.float64()))

    def test_above_the_budget_nothing_is_committed(
        self, plain_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self._dirty(data, 13)  # 13 of 1200 rows: 1.08%
        rc = score(
            data, tmp_path / "out", "--key_columns=id", "--max_error_rate=0.01", model=plain_model
        )
        err = capsys.readouterr().err
        assert rc == 2
        assert (
            "13 of 1,200 rows rejected (1.083%), above --max_error_rate=0.01; nothing was committed"
            in err
        )
        assert "By reason: null_value: 13" in err
        assert "Examples: [id=0] column 'x' is null; it is required; [id=3]" in err
        assert not list_committed_runs(tmp_path / "out")

    def test_within_the_budget_the_run_commits(
        self, plain_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self._dirty(data, 12)  # 1.0%: at the limit is allowed
        rc = score(
            data, tmp_path / "out", "--key_columns=id", "--max_error_rate=0.01", model=plain_model
        )
        err = capsys.readouterr().err
        assert rc == 0, err
        (run,) = list_committed_runs(tmp_path / "out")
        counts = run.manifest().to_json()["counts"]
        assert counts["rows_rejected"] == 12 and counts["max_error_rate"] == 0.01


def test_poison_rows_are_isolated_and_the_rest_of_the_batch_is_scored(
    plain_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data / "part-002.parquet"
    x = pq.read_table(path).column("x").to_pylist()
    x[5] = POISON_ABOVE * 2
    x[77] = -POISON_ABOVE
    _rewrite(path, x=pa.array(x, pa.float64()))
    rc = score(
        data,
        tmp_path / "out",
        "--key_columns=id",
        "--batch_size=64",
        "--max_error_rate=0.01",
        model=plain_model,
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    (run,) = list_committed_runs(tmp_path / "out")
    rejected = pq.read_table(run.run_dir / "rejected")
    assert sorted(rejected.column("id").to_pylist()) == [805, 877]
    assert set(rejected.column("reject_reason").to_pylist()) == {"model_error"}
    assert (
        "raised InvalidArgumentError: assertion failed: [x is out of range]"
        in rejected.column("reject_message")[0].as_py()
    )
    assert pq.read_table(run.run_dir / "predictions").num_rows == 1198
    shutil.rmtree(tmp_path / "out")
