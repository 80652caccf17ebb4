"""Incremental reruns: unchanged input + same model version = a fast no-op naming the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batch.ops.incremental import RunIdentity
from batch.output.commit import list_committed_runs
from jobs.score import is_dry_run
from jobs.score import main as score_main
from tests.conftest import score_args
from tests.plain_model import write_plain_data

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plain_data(tmp_path: Path) -> tuple[Path, pa.Table]:
    folder = tmp_path / "data"
    return folder, write_plain_data(folder, files=2, rows_per_file=3000, row_group_rows=1000)


def _args(data: Path, model: Path, output: Path, *extra: str) -> list[str]:
    return score_args(
        data, output, "--runner=DirectRunner", "--key_columns=id", *extra, model=model
    )


def _last_line_starting(text: str, prefix: str) -> str:
    return [line for line in text.splitlines() if line.startswith(prefix)][-1]


def test_rerun_on_unchanged_input_names_the_committed_run_without_scoring(
    plain_model: Path,
    plain_data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = plain_data
    output = tmp_path / "out"
    assert score_main(_args(data, plain_model, output)) == 0
    (run,) = list_committed_runs(output)
    capsys.readouterr()
    # A fresh process: the no-op answers before TensorFlow or Beam is imported.
    probe = (
        "import sys; from jobs.score import main; rc = main(sys.argv[1:]); "
        "print('imported', 'tensorflow' in sys.modules, 'apache_beam' in sys.modules); "
        "sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *_args(data, plain_model, output)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _last_line_starting(result.stdout, "up to date: ") == f"up to date: {run.run_dir}"
    assert "imported False False" in result.stdout
    assert [r.run_id for r in list_committed_runs(output)] == [run.run_id]


def test_force_scores_again(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data, _ = plain_data
    output = tmp_path / "out"
    assert score_main(_args(data, plain_model, output)) == 0
    assert score_main(_args(data, plain_model, output, "--force")) == 0
    assert len(list_committed_runs(output)) == 2


@pytest.mark.parametrize(
    "change",
    ["rewritten file", "added file", "other key columns", "tighter budget"],
)
def test_a_change_that_can_change_the_rows_scores_again(
    change: str,
    plain_model: Path,
    plain_data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = plain_data
    output = tmp_path / "out"
    # Budget 1 lets the first run commit with its one rejected row.
    extra = ["--max_error_rate=1"]
    _write_one_null_row(data / "part-900.parquet")
    assert score_main(_args(data, plain_model, output, *extra)) == 0
    if change == "rewritten file":
        # Same bytes, new mtime: the fingerprint is path, size, mtime and rows.
        first = data / "part-000.parquet"
        stat = first.stat()
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    elif change == "added file":
        shutil.copy(data / "part-000.parquet", data / "part-002.parquet")
        # Same ids twice is fine for scoring; what matters is that the input changed.
    elif change == "other key columns":
        extra.append("--key_columns=id,n")
    elif change == "tighter budget":
        extra = ["--max_error_rate=0"]
    capsys.readouterr()
    rc = score_main(_args(data, plain_model, output, *extra))
    out = capsys.readouterr()
    assert "up to date" not in out.out
    if change == "tighter budget":
        # It scored (not reused the run above the new budget) and refused to commit.
        assert rc == 2 and "above --max_error_rate=0" in out.err
        assert len(list_committed_runs(output)) == 1
    else:
        assert rc == 0
        assert len(list_committed_runs(output)) == 2


def _write_one_null_row(path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([10_000_000], pa.int64()),
            "x": pa.array([None], pa.float64()),
            "n": pa.array([1], pa.int32()),
            "s": pa.array(["a"]),
            "extra": pa.array([0.0]),
        }
    )
    pq.write_table(table, path)


def test_a_changed_contract_scores_again(
    trained_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contract = tmp_path / "contract"
    shutil.copytree(PROJECT / "schemas" / "loans", contract)
    args = [
        "--runner=DirectRunner",
        f"--input={trained_model.data_dir}/dt=2026-01-01",
        f"--model={trained_model.model.name}@{trained_model.model.version}",
        f"--model_repo={trained_model.repo}",
        f"--output={tmp_path / 'out'}",
        f"--contract={contract}",
        "--max_error_rate=0.05",
    ]
    assert score_main(args) == 0
    capsys.readouterr()
    assert score_main(args) == 0
    assert capsys.readouterr().out.startswith("up to date: ")
    rules = contract / "rules.toml"
    rules.write_text(rules.read_text() + "\n# reviewed\n")
    assert score_main(args) == 0
    assert "up to date" not in capsys.readouterr().out
    runs = list_committed_runs(tmp_path / "out")
    assert len(runs) == 2
    shas = {r.manifest().to_json()["contract"]["sha256"] for r in runs}
    assert len(shas) == 2


def test_a_manifest_without_the_identity_fields_is_never_reused() -> None:
    manifest = {
        "model": {"name": "m", "version": "1", "content_hash": "abc"},
        "input": {"fingerprint": "f", "skipped_files": []},
        "contract": {"name": "loans", "source": "/x"},  # no sha256: an older batchscore
        "key_columns": ["id"],
    }
    assert RunIdentity.from_manifest(manifest) is None
    manifest["contract"] = None
    identity = RunIdentity.from_manifest(manifest)
    assert identity is not None and identity.contract_sha256 is None


def test_dry_run_is_read_like_beam_reads_it() -> None:
    assert is_dry_run(["--dry_run=True"])
    assert is_dry_run(["--project=p", "--dry_run", "true"])
    assert not is_dry_run(["--project=p"])
    assert not is_dry_run(["--dry_run="])
