"""End-to-end scoring on Beam's DirectRunner with a model batchscore did not train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.core.fsutil import file_sha256
from batch.engine.validate import NULL_VALUE
from batch.output.commit import LATEST, MANIFEST, SUCCESS, list_committed_runs
from tests.conftest import score, score_args
from tests.plain_model import plain_model_expected, write_plain_data

PROJECT = Path(__file__).resolve().parent.parent
DIRECT = "--runner=DirectRunner"


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    folder = tmp_path_factory.mktemp("data")
    # Row groups of 700 with splits of 2,000 rows: splits cut files by row groups.
    return folder, write_plain_data(folder, files=3, rows_per_file=5000, row_group_rows=700)


def _read_run(run_dir: Path, kind: str = "predictions") -> pa.Table:
    return pq.read_table(run_dir / kind)


def test_plain_savedmodel_scores_like_numpy(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data_dir, table = plain_data
    rc = score(
        data_dir,
        tmp_path,
        DIRECT,
        "--key_columns=id",
        "--batch_size=1000",
        "--split_rows=2000",
        model=plain_model,
    )
    assert rc == 0
    (run,) = list_committed_runs(tmp_path)
    out = _read_run(run.run_dir).sort_by("id")
    assert out.column_names == ["id", "pair", "score", "model_name", "model_version", "run_id"]
    ids = out.column("id").to_numpy()
    assert np.array_equal(ids, np.arange(table.num_rows)), "every key exactly once"
    expected = plain_model_expected(table.sort_by("id"))
    np.testing.assert_allclose(out.column("score").to_numpy(), expected, atol=1e-6)
    pair = np.stack(out.column("pair").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(pair[:, 0] + pair[:, 1], 1.0, atol=1e-6)
    assert set(out.column("model_name").to_pylist()) == {"model"}
    assert set(out.column("run_id").to_pylist()) == {run.run_id}
    assert run.model_version.startswith("sha256-")


def test_manifest_counts_match_the_files(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data_dir, table = plain_data
    # On Beam (this input is small enough to be scored without it: batch.engine.local).
    options = (DIRECT, "--in_process_rows=0", "--key_columns=id")
    assert score(data_dir, tmp_path, *options, model=plain_model) == 0
    (run,) = list_committed_runs(tmp_path)
    manifest = json.loads((run.run_dir / MANIFEST).read_text())
    assert manifest["counts"]["rows_in"] == table.num_rows
    assert manifest["counts"]["rows_scored"] + manifest["counts"]["rows_rejected"] == table.num_rows
    listed = manifest["outputs"]["predictions"] + manifest["outputs"]["rejected"]
    on_disk = sorted(p.relative_to(run.run_dir).as_posix() for p in run.run_dir.rglob("*.parquet"))
    assert sorted(p["path"] for p in listed) == on_disk
    for part in listed:
        path = run.run_dir / part["path"]
        assert pq.read_metadata(path).num_rows == part["rows"]
        assert file_sha256(path) == part["sha256"]
    assert sum(f["rows"] for f in manifest["input"]["files"]) == table.num_rows
    assert manifest["model"]["content_hash"].startswith(run.model_version.removeprefix("sha256-"))
    assert manifest["runner"]["name"] == "beam:DirectRunner"
    assert {"started", "finished", "batchscore_version"} <= manifest.keys()
    assert (run.run_dir / SUCCESS).is_file()
    assert not (run.run_dir.parent / "_staging").exists()


def test_rerun_creates_a_new_run_and_leaves_the_first_intact(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data_dir, _ = plain_data
    args = (data_dir, tmp_path, DIRECT, "--key_columns=id")
    assert score(*args, model=plain_model) == 0
    (first,) = list_committed_runs(tmp_path)
    before = {p: file_sha256(p) for p in first.run_dir.rglob("*") if p.is_file()}
    assert (
        score(*args, "--force", model=plain_model) == 0
    )  # without it, an up-to-date rerun is a no-op
    runs = list_committed_runs(tmp_path)
    assert len(runs) == 2 and runs[0].run_id == first.run_id
    assert {p: file_sha256(p) for p in first.run_dir.rglob("*") if p.is_file()} == before
    latest = json.loads((first.run_dir.parent / LATEST).read_text())
    assert latest["run_id"] == runs[1].run_id
    first_rows = _read_run(first.run_dir).select(["id", "score"]).sort_by("id")
    second_rows = _read_run(runs[1].run_dir).select(["id", "score"]).sort_by("id")
    assert first_rows.equals(second_rows)


def test_null_inputs_go_to_the_dead_letter_output(plain_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "x": pa.array([0.5, None, float("nan"), 1.0]),
            "n": pa.array([1, 2, 3, None], pa.int32()),
            "s": pa.array(["a", "b", "c", "d"]),
        }
    )
    pq.write_table(table, data / "rows.parquet")
    assert (
        score(
            data,
            tmp_path / "out",
            DIRECT,
            "--key_columns=id",
            "--max_error_rate=1",
            model=plain_model,
        )
        == 0
    )
    (run,) = list_committed_runs(tmp_path / "out")
    assert _read_run(run.run_dir).column("id").to_pylist() == [1]
    rejected = _read_run(run.run_dir, "rejected").sort_by("id")
    assert rejected.column("id").to_pylist() == [2, 3, 4]
    assert rejected.column(REASON_COLUMN).to_pylist() == [NULL_VALUE, "not_finite", NULL_VALUE]
    assert "column 'x' is null" in rejected.column(MESSAGE_COLUMN)[0].as_py()
    counts = run.manifest().to_json()["counts"]
    assert counts["rejected_by_reason"] == {NULL_VALUE: 2, "not_finite": 1}


def test_empty_input_file_commits_an_empty_run(plain_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    schema = pa.schema(
        [("id", pa.int64()), ("x", pa.float64()), ("n", pa.int64()), ("s", pa.string())]
    )
    pq.write_table(schema.empty_table(), data / "empty.parquet")
    assert score(data, tmp_path / "out", DIRECT, "--key_columns=id", model=plain_model) == 0
    (run,) = list_committed_runs(tmp_path / "out")
    assert run.manifest().to_json()["counts"]["rows_in"] == 0


@pytest.mark.parametrize("engine", [[], ["--in_process_rows=0"]], ids=["in-process", "beam"])
def test_a_run_prints_no_tensorflow_notices(
    engine: list[str], plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    """A whole job as a user runs it, in this process or on Beam: its stderr holds none of
    TensorFlow's start-up, CUDA or deprecation notices (the session loader logs one), nor
    a warning from a library's import (Beam's connectors), only the job's own lines."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.score",
            *score_args(
                plain_data[0],
                tmp_path / "out",
                DIRECT,
                "--key_columns=id",
                "--progress=off",
                *engine,
                model=plain_model,
            ),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "committed" in result.stdout
    for noise in ("deprecated", "Instructions for updating", "cuda", "I0000", "E0000", "WARNING"):
        assert noise.lower() not in result.stderr.lower(), result.stderr[-3000:]


class TestArgumentsFailFast:
    """Bad arguments: one line, exit code 2, before TensorFlow or Beam is imported."""

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        code = (
            "import sys\n"
            "from jobs.score import main\n"
            f"rc = main({list(args)!r})\n"
            "print('heavy:', 'tensorflow' in sys.modules or 'apache_beam' in sys.modules)\n"
            "sys.exit(rc)\n"
        )
        return subprocess.run(
            [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60
        )

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--input=/nonexistent/in"], "--input=/nonexistent/in: no such file or directory"),
            (["--model=/nonexistent/model"], "model '/nonexistent/model': no such directory"),
            (["--model=no_such_model"], "no registered model named 'no_such_model'"),
            (["--output=/etc/hostname/out"], "--output=/etc/hostname/out: cannot write there"),
        ],
    )
    def test_bad_argument(
        self,
        args: list[str],
        message: str,
        plain_model: Path,
        plain_data: tuple[Path, pa.Table],
        tmp_path: Path,
    ) -> None:
        defaults = {
            "--input": str(plain_data[0]),
            "--model": str(plain_model),
            "--output": str(tmp_path),
            "--model_repo": str(tmp_path / "repo"),
            "--key_columns": "id",
        }
        given = dict(a.split("=", 1) for a in args)
        result = self._run(*(f"{k}={given.get(k, v)}" for k, v in defaults.items()))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "heavy: False" in result.stdout
