"""What every committed run holds, whatever its rows: rejected/ even when nothing was
rejected, and a manifest whose paths mean the same files wherever it is read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.output.commit import CommittedRun, list_committed_runs
from tests.conftest import score
from tests.plain_model import write_plain_data


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


def test_a_run_without_rejects_has_an_empty_rejected_part(
    plain_model: Path, tmp_path: Path
) -> None:
    write_plain_data(tmp_path / "in", files=2, rows_per_file=300, row_group_rows=100)
    assert score(tmp_path / "in", tmp_path / "out", "--key_columns=id", model=plain_model) == 0
    run = _only_run(tmp_path / "out")
    (part,) = sorted((run.run_dir / "rejected").glob("*.parquet"))
    table = pq.read_table(part)
    assert table.num_rows == 0
    assert table.schema.names[-2:] == [REASON_COLUMN, MESSAGE_COLUMN]
    assert {"id", "x", "n", "s"} <= set(table.schema.names)
    outputs = run.manifest().to_json()["outputs"]
    assert [p["rows"] for p in outputs["rejected"]] == [0]


def test_manifest_paths_are_absolute_when_the_job_was_given_relative_ones(
    plain_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plain_data(tmp_path / "in", files=2, rows_per_file=300, row_group_rows=100)
    shutil.copytree(plain_model, tmp_path / "model")
    shutil.copy(f"{plain_model}.sig", tmp_path / "model.sig")
    monkeypatch.chdir(tmp_path)
    assert score(Path("in"), Path("out"), "--key_columns=id", model="model") == 0
    run = _only_run(tmp_path / "out")
    manifest = json.loads((run.run_dir / "_MANIFEST.json").read_text())
    paths = [f["path"] for f in manifest["input"]["files"]]
    paths += [manifest["model"]["path"], manifest["summary"]["run_dir"]]
    assert all(os.path.isabs(p) for p in paths), paths
    assert manifest["input"]["files"][0]["path"] == str(tmp_path / "in" / "part-000.parquet")
    # Outputs are named relative to the run folder, which moves with them.
    assert all(not os.path.isabs(p["path"]) for p in manifest["outputs"]["predictions"])
    # The same input, from another folder, is still up to date.
    monkeypatch.chdir(tmp_path / "in")
    assert score(Path("."), Path("../out"), "--key_columns=id", model="../model") == 0
    assert len(list_committed_runs(tmp_path / "out")) == 1
