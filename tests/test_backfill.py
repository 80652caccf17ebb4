"""jobs.backfill for real: every dt= partition in one Beam pipeline, each committed as its own
run, resumable, per-partition failures, a summary table."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batch.output.commit import CommittedRun, list_committed_runs
from jobs.backfill import main as backfill_main

PROJECT = Path(__file__).resolve().parent.parent
DAYS = ("2026-01-01", "2026-01-02")


def _backfill(trained_model: Any, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.backfill",
        f"--input={data}",
        "--start=2026-01-01",
        "--end=2026-01-03",  # the fixture's data has no 2026-01-03
        f"--output={output}",
        f"--model={trained_model.model.name}@latest",
        f"--model_repo={trained_model.repo}",
        "--max_error_rate=0.01",
        "--batch_size=4000",
        *extra,
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)


def _rows(out: str, partition: str) -> list[str]:
    (line,) = [line for line in out.splitlines() if line.startswith(partition + " ")]
    return line.split()


def _only_run(output: Path, day: str) -> CommittedRun:
    (run,) = list_committed_runs(output / f"dt={day}")
    return run


def _input_rows(data: Path, day: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (data / f"dt={day}").glob("*.parquet"))


@pytest.mark.slow
def test_backfill_scores_each_day_skips_on_rerun_and_rescores_with_force(
    trained_model: Any, tmp_path: Path
) -> None:
    data, output = trained_model.data_dir, tmp_path / "out"

    first = _run(_backfill(trained_model, data, output))
    # Both days scored and committed; the missing day fails the backfill, listed.
    assert first.returncode == 2, first.stderr
    error = [line for line in first.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "0 partition(s) failed and 1 had no input: dt=2026-01-03" in error[0]
    runs = {day: _only_run(output, day) for day in DAYS}
    for day, run in runs.items():
        counts = run.manifest().to_json()["counts"]
        assert counts["rows_in"] == _input_rows(data, day) > 0
        assert counts["rows_rejected"] > 0, "the fixture's dirty rows"
        assert run.model_version == str(trained_model.model.version)
        row = _rows(first.stdout, f"dt={day}")
        assert row[1] == "scored" and row[2] == f"{counts['rows_in']:,}"
        assert row[-1] == str(run.run_dir)
        assert run.manifest().to_json()["input"]["spec"] == str(data / f"dt={day}")
    missing = _rows(first.stdout, "dt=2026-01-03")
    assert missing[1:3] == ["missing", "input"]
    assert "3 partition(s): 2 scored, 0 skipped, 1 missing input, 0 failed" in first.stdout

    # Rerun: both days are up to date (no progress line: nothing is scored for them).
    again = _run(_backfill(trained_model, data, output, "--allow_missing"))
    assert again.returncode == 0, again.stderr
    for day, run in runs.items():
        row = _rows(again.stdout, f"dt={day}")
        assert row[1] == "skipped" and str(run.run_dir) in row and "(up to date)" in " ".join(row)
    assert "0 scored, 2 skipped, 1 missing input, 0 failed" in again.stdout
    assert f"dt={DAYS[0]}: " not in again.stdout, "nothing was scored for a skipped day"
    assert all(len(list_committed_runs(output / f"dt={d}")) == 1 for d in DAYS)

    # --force scores both again (two worker processes), next to the first runs.
    forced = _run(
        _backfill(trained_model, data, output, "--allow_missing", "--force", "--parallelism=2")
    )
    assert forced.returncode == 0, forced.stderr
    assert "2 scored, 0 skipped, 1 missing input, 0 failed" in forced.stdout
    for day, run in runs.items():
        later = list_committed_runs(output / f"dt={day}")
        assert later[0].run_id == run.run_id and len(later) == 2
        assert (
            later[1].manifest().to_json()["counts"]["rows_in"]
            == run.manifest().to_json()["counts"]["rows_in"]
        )


@pytest.mark.slow
def test_a_corrupt_file_fails_only_its_partition(trained_model: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(trained_model.data_dir, data)
    corrupt = data / "dt=2026-01-02" / "part-corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet PAR1")
    output = tmp_path / "out"

    result = _run(_backfill(trained_model, data, output, "--allow_missing"))

    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "1 partition(s) failed and 0 had no input: dt=2026-01-02" in error[0]
    good = _only_run(output, "2026-01-01")
    assert good.manifest().to_json()["counts"]["rows_in"] == _input_rows(data, "2026-01-01")
    assert list_committed_runs(output / "dt=2026-01-02") == []
    row = " ".join(_rows(result.stdout, "dt=2026-01-02"))
    assert "failed" in row and str(corrupt) in row, row

    # Fixed, the same command finishes the job: day 1 is skipped, day 2 scored.
    corrupt.unlink()
    resumed = _run(_backfill(trained_model, data, output, "--allow_missing"))
    assert resumed.returncode == 0, resumed.stderr
    assert "1 scored, 1 skipped, 1 missing input, 0 failed" in resumed.stdout
    assert _only_run(output, "2026-01-01").run_id == good.run_id
    _only_run(output, "2026-01-02")


def test_bad_arguments_fail_in_one_line(
    trained_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        f"--output={tmp_path / 'out'}",
        f"--model={trained_model.model.name}@{trained_model.model.version}",
        f"--model_repo={trained_model.repo}",
    ]
    cases = {
        "--end=2026-01-03 is before --start=2026-01-05": [
            f"--input={trained_model.data_dir}",
            "--start=2026-01-05",
            "--end=2026-01-03",
        ],
        "expected the folder holding the dt=YYYY-MM-DD partitions": [
            f"--input={tmp_path / 'nowhere'}",
            "--start=2026-01-01",
            "--end=2026-01-02",
        ],
        "a backfill does not run gray releases": [
            f"--input={trained_model.data_dir}",
            "--start=2026-01-01",
            "--end=2026-01-02",
            f"--canary={trained_model.model.name}@1",
            "--canary_fraction=0.1",
        ],
    }
    for expected, args in cases.items():
        assert backfill_main([*args, *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


def _copy_day(data: Path, source: str, day: str, change: Any = None) -> Path:
    """dt=``day`` as a copy of dt=``source``, each file's table passed through ``change``."""
    folder = data / f"dt={day}"
    folder.mkdir()
    for path in sorted((data / f"dt={source}").glob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(change(table) if change else table, folder / path.name)
    return folder


@pytest.mark.slow
def test_days_are_one_job_and_a_day_failing_its_checks_fails_alone(
    trained_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    import runners.beam
    from batch.model import loading

    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(trained_model.data_dir / "dt=2026-01-01", data / "dt=2026-01-01")
    _copy_day(data, "2026-01-01", "2026-01-02")
    # A data page damaged inside (the footer is intact): found only while scoring.
    damaged = sorted(_copy_day(data, "2026-01-01", "2026-01-03").glob("*.parquet"))[0]
    page = bytearray(damaged.read_bytes())
    page[4:40] = b"\xff" * 36
    damaged.write_bytes(bytes(page))

    def nulls(table: pa.Table) -> pa.Table:  # every 25th income missing: 4% rejected
        income = table["annual_income"]
        mask = pa.array([i % 25 == 0 for i in range(len(table))])
        return table.set_column(
            table.schema.get_field_index("annual_income"),
            "annual_income",
            pc.if_else(mask, pa.scalar(None, income.type), income),
        )

    def one_state(table: pa.Table) -> pa.Table:  # drifted far from training
        index = table.schema.get_field_index("state")
        return table.set_column(index, "state", pa.array(["CA"] * len(table)))

    _copy_day(data, "2026-01-01", "2026-01-04", nulls)
    _copy_day(data, "2026-01-01", "2026-01-05", one_state)

    loads: list[Any] = []
    load = loading._load
    monkeypatch.setattr(loading, "_LOADED", {})  # loaded by this backfill, not earlier tests

    def counted_load(*args: Any, **kwargs: Any) -> Any:
        loads.append(args)
        return load(*args, **kwargs)

    monkeypatch.setattr(loading, "_load", counted_load)
    pipelines: list[Any] = []
    create = runners.beam.create_pipeline

    def counted_pipeline(options: Any) -> Any:
        pipelines.append(options)
        return create(options)

    monkeypatch.setattr(runners.beam, "create_pipeline", counted_pipeline)
    output = tmp_path / "out"
    common = [
        f"--input={data}",
        f"--output={output}",
        f"--model={trained_model.model.name}@latest",
        f"--model_repo={trained_model.repo}",
        "--start=2026-01-01",
        "--end=2026-01-05",
        "--max_error_rate=0.02",
        "--on_drift=fail",
    ]

    assert backfill_main(common) == 2
    out, err = capsys.readouterr()
    assert len(loads) == 1, "one model load for every day"
    assert len(pipelines) == 1, "one pipeline for every day"
    assert (
        "3 partition(s) failed and 0 had no input: dt=2026-01-03, dt=2026-01-04, dt=2026-01-05"
        in err
    )
    for day in ("2026-01-01", "2026-01-02"):
        counts = _only_run(output, day).manifest().to_json()["counts"]
        assert counts["rows_in"] == _input_rows(data, day) > 0
        assert " ".join(_rows(out, f"dt={day}"))[:30].split()[1] == "scored"
    failures = {
        "2026-01-03": f"{damaged}: row groups",
        "2026-01-04": "above --max_error_rate=0.02",
        "2026-01-05": "drifted beyond --max_drift",
    }
    for day, reason in failures.items():
        assert list_committed_runs(output / f"dt={day}") == []
        row = " ".join(_rows(out, f"dt={day}"))
        assert row.split()[1] == "failed" and reason in row, row

    # Fixed, the same command scores only the failed days, again as one job.
    damaged.unlink()
    for day in ("2026-01-04", "2026-01-05"):
        shutil.rmtree(data / f"dt={day}")
        _copy_day(data, "2026-01-01", day)
    pipelines.clear()
    assert backfill_main(common) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "5 partition(s): 3 scored, 2 skipped, 0 missing input, 0 failed" in out
    assert len(pipelines) == 1
    assert len(loads) == 1, "the model stays loaded in this process"
