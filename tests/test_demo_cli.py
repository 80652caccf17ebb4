"""The README's first command: `python -m jobs.score --runner=DirectRunner` from nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch.model.loading import load_model
from batch.model.signing import TrustPolicy
from batch.output.commit import list_committed_runs
from tests.conftest import TrainedModel
from tests.signing_keys import KeyPair

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_score_with_no_arguments_makes_data_trains_and_scores_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "BATCHSCORE_DEMO_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.score", "--runner=DirectRunner"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list_committed_runs(tmp_path / "output")
    assert run.model_name == "loan_default" and run.model_version == "1"
    counts = run.manifest().to_json()["counts"]
    assert counts["rows_in"] == 1_000_000
    assert counts["rows_scored"] + counts["rows_rejected"] == 1_000_000
    assert f"output       {run.run_dir}" in result.stdout
    assert "predictions/s" in result.stdout


def test_help_explains_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.score", "--help"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for option in (
        "--input",
        "--model",
        "--model_repo",
        "--output",
        "--runner",
        "--key_columns",
        "--batch_size",
        "--split_rows",
        "--public_key",
        "--allow_unsigned",
    ):
        assert option in result.stdout


def test_the_model_is_loaded_once_per_process(
    trained_model: TrainedModel, signing_keys: KeyPair
) -> None:
    trust = TrustPolicy.from_key_file(signing_keys.public)
    assert load_model(trained_model.model, trust) is load_model(trained_model.model, trust)
