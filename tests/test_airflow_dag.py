"""BatchScoreOperator and the score_daily DAGs, run for real by Airflow 3.3 (`airflow dags
test`, SQLite, no server)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
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

    def dags_test(
        self,
        day: str,
        dag_id: str = "score_daily",
        conf: Any = None,
        **settings: str,
    ) -> subprocess.CompletedProcess[str]:
        """`airflow dags test DAG_ID DAY [--conf JSON]`; ``settings`` become AIRFLOW_VAR_*
        (Variables) or BATCHSCORE_* (parse-time) environment variables."""
        env = dict(self.env)
        for key, value in settings.items():
            name = (
                key.upper() if key.startswith("batchscore_retr") else f"AIRFLOW_VAR_{key.upper()}"
            )
            env[name] = value
        command = [str(self.venv / "bin" / "airflow"), "dags", "test", dag_id, day]
        if conf is not None:
            command += ["--conf", json.dumps(conf)]
        return subprocess.run(
            command, env=env, cwd=self.home, capture_output=True, text=True, timeout=600
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
            # A missing day is looked for twice, a second apart, before the task fails.
            "BATCHSCORE_INPUT_WAIT_SECONDS": "1",
            "BATCHSCORE_POKE_SECONDS": "1",
            "BATCHSCORE_PIPELINES": str(home / "pipelines.json"),
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
    (home / "pipelines.json").write_text("{}")
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


def _seconds_between(log: str, first: str, last: str) -> float:
    """Seconds between the timestamps of the first log line holding ``first`` and the
    first later line holding ``last``."""
    lines = log.splitlines()
    begin = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i in range(begin, len(lines)) if last in lines[i])

    def stamp(line: str) -> dt.datetime:
        return dt.datetime.fromisoformat(line.split()[0].rstrip("Z"))

    return (stamp(lines[end]) - stamp(lines[begin])).total_seconds()


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
    assert "new_state=up_for_retry" in log and "state=failed" in log


@pytest.mark.slow
def test_a_run_conf_forces_a_rescore_or_picks_another_model_for_that_run_only(
    airflow: Airflow, trained_model: Any, tmp_path: Path
) -> None:
    """A second dataset/model pair (BATCHSCORE_PIPELINES) is its own DAG; per-run conf
    rescores an up-to-date day (force) or names another model, without Variables."""
    settings = _settings(trained_model, tmp_path / "out", "--max_error_rate=0.01")
    pipeline = {
        "python": settings["batchscore_python"],
        "input_root": settings["batchscore_input"],
        "output_root": settings["batchscore_output"],
        "model": settings["batchscore_model"],
        "model_repo": settings["batchscore_model_repo"],
        "extra_args": settings["batchscore_extra_args"],
    }
    (airflow.home / "pipelines.json").write_text(json.dumps({"loans": pipeline}))
    try:
        day, dag_id = "2026-01-01", "score_daily__loans"
        first = airflow.dags_test(day, dag_id)
        assert first.returncode == 0, _log(first)[-5000:]
        forced = airflow.dags_test(day, dag_id, conf={"force": True})
        assert forced.returncode == 0, _log(forced)[-5000:]
        assert "--force" in _log(forced)
        assert len(list_committed_runs(tmp_path / "out" / f"dt={day}")) == 2
        other = airflow.dags_test(day, dag_id, conf={"model": "no_such_model@1"})
        log = _log(other)
        assert other.returncode != 0 and "state=failed" in log
        assert "--model=no_such_model@1" in log and "(not retried)" in log
        assert log.count(RUN_MARKER) == 1, "a bad model reference is not retried"
    finally:
        (airflow.home / "pipelines.json").write_text("{}")


@pytest.mark.slow
def test_drift_in_the_days_run_recalibrates_the_model_it_scored_with(
    airflow: Airflow, trained_model: Any, tmp_path: Path
) -> None:
    """The optional task: the day's run reports drift (a threshold no data meets), so
    jobs.recalibrate registers a new, unpromoted version from the day's labeled rows."""
    repo = tmp_path / "repo"
    shutil.copytree(trained_model.repo, repo)
    settings = _settings(trained_model, tmp_path / "out", "--max_error_rate=0.01 --max_drift=1e-9")
    pipeline = {
        "python": settings["batchscore_python"],
        "input_root": settings["batchscore_input"],
        "output_root": settings["batchscore_output"],
        "model": settings["batchscore_model"],
        "model_repo": str(repo),
        "extra_args": settings["batchscore_extra_args"],
        "recalibrate_on_drift": "true",
        "recalibrate_args": "--no_compare",
    }
    (airflow.home / "pipelines.json").write_text(json.dumps({"drifting": pipeline}))
    try:
        result = airflow.dags_test("2026-01-01", "score_daily__drifting")
    finally:
        (airflow.home / "pipelines.json").write_text("{}")
    log = _log(result)
    assert result.returncode == 0 and "state=success" in log, log[-5000:]
    assert f"jobs.recalibrate {settings['batchscore_model']}" in log
    name = trained_model.model.name
    versions = sorted(p.name for p in (repo / name).iterdir() if p.name.isdigit())
    scored = int(trained_model.model.version)
    assert versions == [str(scored), str(scored + 1)], "a new version, registered"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("batchscore_python", "/no/such/venv/bin/python", "is not an executable file"),
        ("batchscore_model", "", "'model' is empty; set it"),
        ("batchscore_input", "/no/such/input/root", "input_root=/no/such/input/root does not"),
    ],
    ids=["wrong python", "unset model", "missing input root"],
)
def test_a_misconfigured_deployment_fails_at_once_without_retries(
    airflow: Airflow, trained_model: Any, tmp_path: Path, setting: str, value: str, message: str
) -> None:
    settings = {**_settings(trained_model, tmp_path / "out", ""), setting: value}
    if not value:
        del settings[setting]  # unset: no silent fallback to the demo's folders
    result = airflow.dags_test("2026-01-01", batchscore_retries="2", **settings)
    log = _log(result)
    assert result.returncode != 0 and "state=failed" in log, log[-5000:]
    assert message in log
    assert "new_state=failed" in log and "new_state=up_for_retry" not in log, "not retried"
    assert log.count(RUN_MARKER) == 0, "no job started"
    # From the task's start to its failure (Airflow's own start-up on a loaded 2-core
    # machine is not the deployment's doing).
    seconds = _seconds_between(
        log, "[DAG TEST] starting task_id=score_partition", "new_state=failed"
    )
    assert seconds < 60, (
        f"the task failed {seconds:.0f}s after it started; expected within a minute"
    )
