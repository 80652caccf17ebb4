"""Finding input files and planning splits from Parquet footers."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.errors import InputDataError, UsageError
from batch.engine.inputs import find_input_files, fingerprint, plan_splits, read_input_file


def _write(path: Path, rows: int, row_group_rows: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"k": list(range(rows))}), path, row_group_size=row_group_rows)
    return path


class TestFindInputFiles:
    def test_directory_is_searched_recursively_skipping_metadata(self, tmp_path: Path) -> None:
        a = _write(tmp_path / "dt=2026-01-01" / "part-0.parquet", 3)
        b = _write(tmp_path / "dt=2026-01-02" / "part-0.parquet", 3)
        _write(tmp_path / "_staging" / "part-0.parquet", 3)
        _write(tmp_path / ".hidden.parquet", 3)
        (tmp_path / "_SUCCESS").touch()
        assert find_input_files(str(tmp_path)) == [a, b]

    def test_glob(self, tmp_path: Path) -> None:
        a = _write(tmp_path / "dt=2026-01-01" / "part-0.parquet", 3)
        _write(tmp_path / "dt=2026-02-01" / "part-0.parquet", 3)
        assert find_input_files(str(tmp_path / "dt=2026-01-*" / "*.parquet")) == [a]

    @pytest.mark.parametrize("spec", ["/nonexistent/x.parquet", "/nonexistent/*.parquet"])
    def test_nothing_matches(self, spec: str) -> None:
        with pytest.raises(UsageError, match=re.escape(f"--input={spec}: no such file")):
            find_input_files(spec)

    def test_empty_directory(self, tmp_path: Path) -> None:
        with pytest.raises(UsageError, match=re.escape("holds no *.parquet files")):
            find_input_files(str(tmp_path))


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet at all")
    with pytest.raises(InputDataError, match=re.escape(f"{bad}: expected a Parquet file")):
        read_input_file(bad)


class TestPlanSplits:
    def test_row_groups_are_grouped_up_to_the_split_size(self, tmp_path: Path) -> None:
        big = read_input_file(_write(tmp_path / "big.parquet", 10_500, row_group_rows=1000))
        small = read_input_file(_write(tmp_path / "small.parquet", 10))
        splits = plan_splits([big, small], split_rows=4000)
        assert [(s.path, s.row_groups, s.num_rows) for s in splits] == [
            (big.path, (0, 1, 2, 3), 4000),
            (big.path, (4, 5, 6, 7), 4000),
            (big.path, (8, 9, 10), 2500),
            (small.path, (0,), 10),
        ]
        assert [s.index for s in splits] == [0, 1, 2, 3]

    def test_a_row_group_larger_than_the_split_size_is_one_split(self, tmp_path: Path) -> None:
        file = read_input_file(_write(tmp_path / "f.parquet", 5000, row_group_rows=5000))
        assert [s.num_rows for s in plan_splits([file], split_rows=100)] == [5000]

    def test_empty_file_has_no_splits(self, tmp_path: Path) -> None:
        file = read_input_file(_write(tmp_path / "f.parquet", 0))
        assert plan_splits([file]) == []


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.parquet", 10)
    before = fingerprint([read_input_file(path)])
    assert fingerprint([read_input_file(path)]) == before
    _write(path, 11)
    assert fingerprint([read_input_file(path)]) != before


def test_fingerprint_value_is_path_size_mtime_and_rows_of_each_file_by_path(
    tmp_path: Path,
) -> None:
    # Committed runs record this value and incremental runs compare it: it must not change.
    files = [read_input_file(_write(tmp_path / name, 5)) for name in ("b.parquet", "a.parquet")]
    lines = "".join(
        f"{f.path}\0{f.size}\0{f.mtime_ns}\0{f.num_rows}\n"
        for f in sorted(files, key=lambda f: f.path)
    )
    assert fingerprint(files) == hashlib.sha256(lines.encode()).hexdigest()
