"""jobs.backfill for real: one jobs.score process per dt= partition, resumable, per-partition
failures, a summary table."""

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

    # Rerun: both days are up to date (no jobs.score process is started for them).
    again = _run(_backfill(trained_model, data, output, "--allow_missing"))
    assert again.returncode == 0, again.stderr
    for day, run in runs.items():
        row = _rows(again.stdout, f"dt={day}")
        assert row[1] == "skipped" and str(run.run_dir) in row and "(up to date)" in " ".join(row)
    assert "0 scored, 2 skipped, 1 missing input, 0 failed" in again.stdout
    assert f"dt={DAYS[0]}: " not in again.stdout, "no process ran for a skipped day"
    assert all(len(list_committed_runs(output / f"dt={d}")) == 1 for d in DAYS)

    # --force scores both again (two at a time), next to the first runs.
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
