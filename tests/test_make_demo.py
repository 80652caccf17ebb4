"""jobs.make_demo: deterministic, schema-conform, partitioned demo data with exact dirt."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batch.contract.contract import feature_columns, load_schema
from batch.core.errors import UsageError
from batch.core.fsutil import read_json
from batch.demo import data as demo_data
from batch.demo.data import MARKER_FILE, arrow_schema, ensure_demo_data, generate
from jobs import make_demo

SMALL: dict[str, Any] = {
    "rows": 6_000,
    "days": 3,
    "files_per_day": 2,
    "seed": 11,
    "dirty_fraction": 0.01,
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def _dirty_mask(table: pa.Table) -> pa.Array:
    """Rows that break the schema: null, out of domain, or bad characters."""
    bad = pa.array([False] * table.num_rows)
    for feature in load_schema("loans").feature:
        column = table.column(feature.name)
        ok = pc.is_valid(column)
        if feature.HasField("int_domain"):
            d = feature.int_domain
            ok = pc.and_kleene(
                ok, pc.and_(pc.greater_equal(column, d.min), pc.less_equal(column, d.max))
            )
        elif feature.HasField("float_domain"):
            f = feature.float_domain
            ok = pc.and_kleene(
                ok, pc.and_(pc.greater_equal(column, f.min), pc.less_equal(column, f.max))
            )
        elif feature.HasField("string_domain"):
            ok = pc.and_kleene(ok, pc.is_in(column, pa.array(list(feature.string_domain.value))))
        elif pa.types.is_string(column.type):
            ok = pc.and_kleene(ok, pc.match_substring_regex(column, r"^[\w\-\s]+$"))
        bad = pc.or_(bad, pc.invert(pc.fill_null(ok, False)))
    return bad


def test_generate_is_deterministic() -> None:
    a = generate(2_000, seed=3, dirty_fraction=0.01, start_row=500)
    b = generate(2_000, seed=3, dirty_fraction=0.01, start_row=500)
    assert a.equals(b)
    assert not a.equals(generate(2_000, seed=4, dirty_fraction=0.01, start_row=500))
    assert a.column("loan_id")[0].as_py() == "L0000000501"


def test_columns_match_the_schema() -> None:
    table = generate(100, seed=1)
    columns = feature_columns("loans")
    assert table.column_names == list(columns)
    assert len(columns) == 20  # 18 raw features + label + key
    expected = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
    for name, kind in columns.items():
        assert table.schema.field(name).type == expected[kind], name
    assert table.schema == arrow_schema()
    assert columns["defaulted"] == "int" and columns["loan_id"] == "string"


def test_clean_rows_fit_the_schema_domains() -> None:
    table = generate(20_000, seed=5, dirty_fraction=0.0)
    assert pc.sum(_dirty_mask(table)).as_py() in (0, None)
    assert table.column("employer_id").null_count == 0
    assert pc.count_distinct(table.column("employer_id")).as_py() > 5_000
    assert 0.08 < pc.mean(table.column("defaulted")).as_py() < 0.18


@pytest.mark.parametrize(("rows", "fraction"), [(20_000, 0.0005), (7_001, 0.013), (500, 0.0)])
def test_dirty_share_is_exact(rows: int, fraction: float) -> None:
    table = generate(rows, seed=9, dirty_fraction=fraction)
    dirty = pc.sum(_dirty_mask(table)).as_py() or 0
    assert dirty == math.floor(rows * fraction + 1e-9)
    assert table.column("loan_id").null_count == 0
    assert table.column("defaulted").null_count == 0


def test_chunks_add_up_to_the_exact_dirty_count() -> None:
    total = sum(
        demo_data.dirty_count(count, 0.0007, start)
        for _, start, count in demo_data.partition_files(
            demo_data.DemoArgs(rows=100_003, days=3, files_per_day=3, dirty_fraction=0.0007)
        )
    )
    assert total == math.floor(100_003 * 0.0007)


def test_dirty_rows_include_every_kind_of_defect() -> None:
    table = generate(40_000, seed=2, dirty_fraction=0.02)
    dirty = table.filter(_dirty_mask(table))
    assert sum(dirty.column(name).null_count for name in dirty.column_names) > 0
    assert (
        pc.min(dirty.column("applicant_age")).as_py() < 18
        or pc.max(dirty.column("credit_score")).as_py() > 850
    )
    strings = set(dirty.column("home_ownership").to_pylist()) | set(
        dirty.column("product_code").to_pylist()
    )
    assert strings & {"RENT;DROP", "OWN'--", "PL-GOLD 07€", "AUTO-STD 12;rm -rf"}


def test_partition_layout_and_unique_keys(tmp_path: Path) -> None:
    out = ensure_demo_data(tmp_path / "data", log=None, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER_FILE,
        "dt=2026-01-01",
        "dt=2026-01-02",
        "dt=2026-01-03",
    ]
    for day in ("dt=2026-01-01", "dt=2026-01-02", "dt=2026-01-03"):
        assert sorted(p.name for p in (out / day).iterdir()) == [
            "part-00000.parquet",
            "part-00001.parquet",
        ]
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == SMALL["rows"]
    assert pc.count_distinct(table.column("loan_id")).as_py() == SMALL["rows"]
    assert set(table.column("dt").to_pylist()) == {"2026-01-01", "2026-01-02", "2026-01-03"}
    assert pq.read_schema(out / "dt=2026-01-02" / "part-00001.parquet").remove_metadata() == (
        arrow_schema()
    )
    marker = read_json(out / MARKER_FILE)
    assert marker["rows"] == SMALL["rows"]
    assert marker["dirty_rows"] == 60
    dirty = pc.sum(_dirty_mask(table.drop_columns(["dt"]))).as_py()
    assert dirty == 60


def test_row_groups_are_about_64k_rows(tmp_path: Path) -> None:
    out = ensure_demo_data(tmp_path, rows=140_000, days=1, files_per_day=1, log=None)
    meta = pq.ParquetFile(out / "dt=2026-01-01" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        65_536,
        65_536,
        8_928,
    ]


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    a = ensure_demo_data(tmp_path / "a", log=None, **SMALL)
    b = ensure_demo_data(tmp_path / "b", log=None, **SMALL)
    assert _files(a) == _files(b)
    assert len(_files(a)) == 6


def test_second_run_is_skipped_unless_forced_or_changed(tmp_path: Path) -> None:
    messages: list[str] = []
    out = ensure_demo_data(tmp_path / "d", log=messages.append, **SMALL)
    first = out / "dt=2026-01-01" / "part-00000.parquet"
    os.utime(first, ns=(1, 1))
    ensure_demo_data(out, log=messages.append, **SMALL)
    assert "left as is" in messages[-1]
    assert first.stat().st_mtime_ns == 1

    ensure_demo_data(out, log=messages.append, force=True, **SMALL)
    assert "wrote" in messages[-1]
    assert first.stat().st_mtime_ns != 1

    changed = {**SMALL, "days": 2}
    ensure_demo_data(out, log=messages.append, **changed)
    assert "wrote" in messages[-1]
    assert not (out / "dt=2026-01-03").exists()
    assert read_json(out / MARKER_FILE)["args"]["days"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp folders left


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="--force"):
        ensure_demo_data(tmp_path, log=None, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_failed_run_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = pq.write_table

    def failing(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(*args, **kwargs)

    monkeypatch.setattr(demo_data.pq, "write_table", failing)
    with pytest.raises(UsageError, match=r"cannot write the demo data there \(disk full\)"):
        ensure_demo_data(tmp_path / "data", log=None, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--rows=3"):
        ensure_demo_data(tmp_path, rows=3, days=2, files_per_day=2, log=None)
    with pytest.raises(UsageError, match="--dirty_fraction"):
        ensure_demo_data(tmp_path, rows=10, days=1, dirty_fraction=1.5, log=None)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_demo.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in (
        "--rows",
        "--days",
        "--files_per_day",
        "--output",
        "--seed",
        "--dirty_fraction",
        "--force",
    ):
        assert option in help_text
    code = make_demo.main(
        [f"--output={tmp_path / 'x'}", "--rows=400", "--days=2", "--files_per_day=1"]
    )
    assert code == 0
    assert capsys.readouterr().out.count("\n") == 1  # a one-line summary
    assert make_demo.main([f"--output={tmp_path / 'x'}", "--rows=1", "--days=2"]) == 2
    assert "expected at least" in capsys.readouterr().err


def test_summary_file_names_the_folder_and_a_failure(tmp_path: Path) -> None:
    from jobs.make_demo import main as make_demo_main

    summary = tmp_path / "summary.json"
    out = tmp_path / "data"
    assert make_demo_main([f"--output={out}", "--rows=1000", f"--summary_file={summary}"]) == 0
    done = json.loads(summary.read_text())
    assert (done["job"], done["status"], done["output"]) == ("make_demo", "ok", str(out))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = make_demo_main([f"--output={blocker / 'x'}", "--rows=1000", f"--summary_file={summary}"])
    failed = json.loads(summary.read_text())
    assert code == 2 and failed["status"] == "fail" and str(blocker) in failed["reason"]
