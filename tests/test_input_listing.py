"""Which files ``--input`` reads: each real file once, symlinked folders followed with loop
protection, and everything that looks like data but is not read listed (issue 22, point 1)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.engine.inputs import find_input_files, list_data_files, scan_inputs
from batch.output.commit import list_committed_runs
from jobs.score import main as score_main
from tests.plain_model import build_plain_model, write_plain_data


def _write(path: Path, rows: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"k": list(range(rows))}), path)
    return path


class TestEachRealFileOnce:
    def test_a_symlink_loop_under_a_recursive_glob_lists_each_file_once(
        self, tmp_path: Path
    ) -> None:
        a = _write(tmp_path / "a.parquet")
        b = _write(tmp_path / "dt=1" / "b.parquet")
        (tmp_path / "loop").symlink_to(".")
        assert find_input_files(str(tmp_path / "**" / "*.parquet")) == [a, b]
        assert find_input_files(str(tmp_path / "**")) == [a, b]

    def test_a_symlink_loop_in_a_folder_is_not_entered_again(self, tmp_path: Path) -> None:
        a = _write(tmp_path / "dt=1" / "a.parquet")
        (tmp_path / "dt=1" / "up").symlink_to("..")
        assert find_input_files(str(tmp_path)) == [a]

    def test_a_file_reachable_through_an_alias_is_read_once_by_its_real_path(
        self, tmp_path: Path
    ) -> None:
        real = _write(tmp_path / "data" / "part-0.parquet")
        (tmp_path / "alias").symlink_to(tmp_path / "data")
        (tmp_path / "data" / "again.parquet").symlink_to(real)
        assert find_input_files(str(tmp_path)) == [real]
        assert find_input_files(str(tmp_path / "*" / "*.parquet")) == [real]

    def test_a_symlinked_partition_folder_is_followed(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        a = _write(root / "dt=2026-01-01" / "part-0.parquet")
        _write(tmp_path / "elsewhere" / "part-0.parquet")
        (root / "dt=2026-01-02").symlink_to(tmp_path / "elsewhere")
        assert find_input_files(str(root)) == [a, root / "dt=2026-01-02" / "part-0.parquet"]


class TestWhatIsNotReadIsListed:
    def test_data_lookalikes_are_listed_with_a_reason(self, tmp_path: Path) -> None:
        a = _write(tmp_path / "a.parquet")
        _write(tmp_path / "B.PARQUET")
        _write(tmp_path / ".hidden.parquet")
        _write(tmp_path / "_temporary" / "0" / "part-0.parquet")
        _write(tmp_path / "_temporary" / "0" / "part-1.parquet")
        (tmp_path / "gone.parquet").symlink_to(tmp_path / "missing.parquet")
        (tmp_path / "_SUCCESS").touch()
        (tmp_path / "notes.txt").write_text("not data")
        listing = scan_inputs(str(tmp_path))
        assert listing.files == [a]
        reasons = {Path(i.path).name: i.reason for i in listing.ignored}
        assert sorted(reasons) == [".hidden.parquet", "B.PARQUET", "_temporary", "gone.parquet"]
        assert "extension .PARQUET is not one of .parquet" in reasons["B.PARQUET"]
        assert reasons["_temporary"].startswith("2 Parquet file(s) in a folder whose name")
        assert "starts with '_' or '.'" in reasons[".hidden.parquet"]
        assert "does not exist" in reasons["gone.parquet"]

    def test_list_data_files_is_the_one_place_train_finds_files(self, tmp_path: Path) -> None:
        from training.trainer import parquet_files

        _write(tmp_path / "dt=1" / "a.parquet")
        (tmp_path / "loop").symlink_to(".")
        assert parquet_files(tmp_path) == list_data_files(tmp_path).files


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plain_model(tmp_path_factory.mktemp("listing") / "model")


def test_a_run_reads_each_row_once_and_records_what_it_did_not_read(
    plain_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "in"
    write_plain_data(root / "dt=2026-01-01", files=2, rows_per_file=100, row_group_rows=50)
    write_plain_data(tmp_path / "elsewhere", files=1, rows_per_file=100, row_group_rows=50)
    (root / "dt=2026-01-02").symlink_to(tmp_path / "elsewhere")
    (root / "loop").symlink_to(".")
    (root / "alias").symlink_to(root / "dt=2026-01-01")
    os.rename(root / "dt=2026-01-01" / "part-001.parquet", root / "dt=2026-01-01" / "P.PARQUET")
    out = tmp_path / "out"
    rc = score_main(
        [f"--input={root}", f"--model={plain_model}", f"--output={out}", "--key_columns=id"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (run,) = list_committed_runs(out)
    manifest = run.manifest().to_json()
    assert manifest["counts"]["rows_in"] == manifest["counts"]["rows_scored"] == 200
    assert [f["path"] for f in manifest["input"]["files"]] == [
        str(root / "dt=2026-01-01" / "part-000.parquet"),
        str(root / "dt=2026-01-02" / "part-000.parquet"),
    ]
    (ignored,) = manifest["input"]["ignored"]
    assert ignored["path"] == str(root / "dt=2026-01-01" / "P.PARQUET")
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "1 path(s) under --input=" in warning and "look like data but are not read" in warning
    assert "P.PARQUET: its extension .PARQUET is not one of" in warning
