"""The score_daily DAG, run for real by Airflow 3.3 (`airflow dags test`, SQLite, no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batch.output.commit import list_committed_runs
from tests.venvs import PROJECT, ensure_airflow_venv

DAG_FOLDER = PROJECT / "jobs" / "airflow"
RUN_MARKER = "batchscore: running "


@dataclass(frozen=True)
class Airflow:
    venv: Path
    home: Path
    env: dict[str, str]

    def dags_test(self, day: str, **settings: str) -> subprocess.CompletedProcess[str]:
        """`airflow dags test score_daily DAY`; ``settings`` become AIRFLOW_VAR_* (Variables)
        or BATCHSCORE_* (parse-time) environment variables."""
        env = dict(self.env)
        for key, value in settings.items():
            name = (
                key.upper() if key.startswith("batchscore_retr") else f"AIRFLOW_VAR_{key.upper()}"
            )
            env[name] = value
        return subprocess.run(
            [str(self.venv / "bin" / "airflow"), "dags", "test", "score_daily", day],
            env=env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    venv, seconds = ensure_airflow_venv()
    if seconds:
        print(f"created the Airflow venv in {seconds:.0f}s")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        key: value
        for key, value in os.environ.items()
        # Airflow's venv must not see the project's packages.
        if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("AIRFLOW")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            # Anything Airflow would serve stays on loopback (dags test starts no server).
            "AIRFLOW__API__HOST": "127.0.0.1",
            "BATCHSCORE_RETRY_DELAY_MINUTES": "0",
        }
    )
    migrate = subprocess.run(
        [str(venv / "bin" / "airflow"), "db", "migrate"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    yield Airflow(venv, home, env)


def _settings(trained_model: Any, output: Path, extra_args: str) -> dict[str, str]:
    return {
        "batchscore_python": sys.executable,
        "batchscore_input": str(trained_model.data_dir),
        "batchscore_output": str(output),
        "batchscore_model": f"{trained_model.model.name}@{trained_model.model.version}",
        "batchscore_model_repo": str(trained_model.repo),
        "batchscore_extra_args": extra_args,
    }


def _log(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.slow
def test_the_dag_scores_the_days_partition(
    airflow: Airflow, trained_model: Any, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    result = airflow.dags_test(
        "2026-01-01", **_settings(trained_model, output, "--max_error_rate=0.01 --batch_size=4000")
    )
    log = _log(result)
    assert result.returncode == 0, log[-5000:]
    assert "DagRun Finished" in log and "state=success" in log
    assert log.count(RUN_MARKER) == 1
    (run,) = list_committed_runs(output / "dt=2026-01-01")
    assert (run.model_name, run.model_version) == (
        trained_model.model.name,
        str(trained_model.model.version),
    )
    counts = run.manifest().to_json()["counts"]
    day = trained_model.data_dir / "dt=2026-01-01"
    assert counts["rows_in"] == sum(pq.read_metadata(p).num_rows for p in day.glob("*.parquet"))
    assert counts["rows_scored"] + counts["rows_rejected"] == counts["rows_in"]
    assert run.manifest().to_json()["input"]["spec"] == str(day)
    # Nothing from the other day.
    assert not (output / "dt=2026-01-02").exists()


@pytest.mark.slow
def test_a_day_over_its_error_budget_fails_the_task_without_retries(
    airflow: Airflow, trained_model: Any, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    # The fixture's data is 0.5% dirty: the default budget (0.1%) refuses it.
    result = airflow.dags_test("2026-01-02", **_settings(trained_model, output, ""))
    log = _log(result)
    assert result.returncode != 0, log[-5000:]
    assert "state=failed" in log
    assert "above --max_error_rate=0.001; nothing was committed" in log
    assert "refused the run for 2026-01-02 (not retried)" in log
    assert log.count(RUN_MARKER) == 1, "an error-budget failure is not retried"
    assert list_committed_runs(output / "dt=2026-01-02") == []


@pytest.mark.slow
def test_a_day_without_input_is_retried_then_fails(
    airflow: Airflow, trained_model: Any, tmp_path: Path
) -> None:
    settings = _settings(trained_model, tmp_path / "out", "--max_error_rate=0.01")
    result = airflow.dags_test("2026-01-05", batchscore_retries="1", **settings)
    log = _log(result)
    assert result.returncode != 0, log[-5000:]
    missing = trained_model.data_dir / "dt=2026-01-05"
    assert log.count(f"{missing}: no input for 2026-01-05 yet") >= 2, "first try + one retry"
    assert "state=failed" in log
