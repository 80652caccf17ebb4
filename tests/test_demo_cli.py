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


@pytest.mark.parametrize(
    "command", ["score", "compare", "backfill", "models", "report", "verify", "train", "make_demo"]
)
def test_help_documents_every_option(command: str) -> None:
    """Every option a command accepts is in its --help with a sentence of its own, the
    defaults of jobs.score's options are stated, and the jobs schedulers run take
    --summary_file."""
    import argparse
    import importlib

    module = importlib.import_module(f"jobs.{command}")
    parser: argparse.ArgumentParser = module.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert any(option in text for option in action.option_strings), action.option_strings
        assert action.help and len(action.help.split()) >= 3, action.option_strings
        if command == "score" and action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in action.help.lower() or "%(default)" in action.help, (
                action.option_strings
            )
    if command != "models":  # its subcommands' help: tests/test_models_cli.py
        assert "--summary_file" in text
    result = subprocess.run(
        [sys.executable, "-m", f"jobs.{command}", "--help"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: "), result.stdout[:500]


def test_the_model_is_loaded_once_per_process(
    trained_model: TrainedModel, signing_keys: KeyPair
) -> None:
    trust = TrustPolicy.from_key_file(signing_keys.public)
    assert load_model(trained_model.model, trust) is load_model(trained_model.model, trust)
