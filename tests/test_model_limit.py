"""bench.model_limit with --output (the benchmark's limit_io path) does a job's reading,
scoring and writing: the same predictions for the same rows, nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tests.conftest import TrainedModel, score

ROOT = Path(__file__).resolve().parent.parent


def _predictions(parts: list[Path]) -> dict[str, float]:
    table = ds.dataset(parts, format="parquet").to_table(columns=["loan_id", "default_probability"])
    return dict(
        zip(
            table.column("loan_id").to_pylist(),
            table.column("default_probability").to_pylist(),
            strict=True,
        )
    )


def test_the_limit_with_reading_and_writing_writes_a_jobs_predictions(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    limit_out = tmp_path / "limit_io"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.model_limit",
            f"--input={trained_model.data_dir}",
            f"--model={trained_model.spec}",
            f"--model_repo={trained_model.repo}",
            f"--output={limit_out}",
            "--key_column=loan_id",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "model_limit (read and write):" in done.stdout
    assert (
        score(
            trained_model.data_dir, tmp_path / "job", "--max_error_rate=0.01", model=trained_model
        )
        == 0
    )

    parts = sorted(limit_out.glob("part-*.parquet"))
    assert len(parts) > 1  # the input's splits, each its own part, as a job writes them
    schema = pq.read_schema(parts[0])
    job_parts = sorted((tmp_path / "job").rglob("predictions/part-*.parquet"))
    assert schema.names == pq.read_schema(job_parts[0]).names

    limit = _predictions(parts)
    job = _predictions(job_parts)
    # Every row the job scored is scored alike; the limit scores the rows the job's checks
    # reject for other reasons than a null (out of range, an unknown category) too.
    common = set(job) & set(limit)
    assert len(common) >= 0.99 * len(job)
    assert all(abs(job[key] - limit[key]) < 1e-6 for key in common)
    assert len(limit) <= ds.dataset(trained_model.data_dir, format="parquet").count_rows()
