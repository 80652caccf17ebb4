"""Airflow DAG ``score_daily``: score each day's input partition with batchscore.

Every day (``@daily``) the task runs, in batchscore's own virtualenv::

    PYTHON -m jobs.score --input=INPUT/dt={{ ds }} --output=OUTPUT/dt={{ ds }} \\
        --model=MODEL --model_repo=MODEL_REPO EXTRA_ARGS

so day D lands in ``OUTPUT/dt=D/<model>/<version>/run=<id>/``, the layout
``python -m jobs.backfill`` writes too. ``catchup=True``: unpaused, the
scheduler runs every day from the start date on, which is how a backfill is
done from Airflow (``airflow backfill create`` works as well). A rerun of a
day whose input and model did not change is a no-op that names the committed
run (batchscore's incremental reruns), so clearing tasks is cheap.

This file imports only Airflow and the standard library: batchscore and
TensorFlow stay in their own virtualenv, never in Airflow's.

Failures:

- the run breaks its error budget, or the input, model or arguments are wrong
  (``jobs.score`` exits 2 with a one-line error): the task fails at once,
  without retries, since a rerun would fail the same way;
- the day's input folder does not exist yet, or the job crashed or was killed:
  the task fails and is retried (``retries``, ``retry_delay``).

Settings, read when the task runs: an Airflow Variable, else the environment
variable in capitals, else the default.

=========================  ==================================================
batchscore_python          the project venv's interpreter
                           (default: <project>/.venv/bin/python)
batchscore_input           root of the dt=YYYY-MM-DD input partitions
                           (default: <project>/.demo/data)
batchscore_output          output root (default: <project>/.demo/output/daily)
batchscore_model           model to score with (default: loan_default@latest;
                           in production NAME@production, see jobs.models)
batchscore_model_repo      model repository (default: <project>/.demo/models)
batchscore_extra_args      any other jobs.score options, shell-quoted, e.g.
                           "--max_error_rate=0.01 --public_key=/keys/pub.pem"
=========================  ==================================================

Settings read when the DAG file is parsed (environment only, so parsing never
touches the metadata database): BATCHSCORE_START_DATE (first day, default
2026-01-01, the demo data's first day), BATCHSCORE_RETRIES (default 2),
BATCHSCORE_RETRY_DELAY_MINUTES (default 5), BATCHSCORE_MAX_ACTIVE_RUNS
(days scored at once during catch-up, default 1: each run loads its own model).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import Variable, dag, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

# jobs/airflow/score_daily.py -> the project root, for defaults when run from the repository.
PROJECT = Path(__file__).resolve().parents[2]
PARTITION_COLUMN = "dt"
# jobs.score's exit code for a one-line error (bad input, error budget, model, arguments).
EXIT_REFUSED = 2

DEFAULTS = {
    "batchscore_python": str(PROJECT / ".venv" / "bin" / "python"),
    "batchscore_input": str(PROJECT / ".demo" / "data"),
    "batchscore_output": str(PROJECT / ".demo" / "output" / "daily"),
    "batchscore_model": "loan_default@latest",
    "batchscore_model_repo": str(PROJECT / ".demo" / "models"),
    "batchscore_extra_args": "",
}


def setting(name: str) -> str:
    """Airflow Variable ``name``, else environment variable ``NAME``, else the default."""
    fallback = os.environ.get(name.upper(), DEFAULTS[name])
    value: Any = Variable.get(name, default=fallback)
    return str(value)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def score_command(day: str) -> list[str]:
    """The jobs.score command line for one day (``day`` = YYYY-MM-DD)."""
    partition = f"{PARTITION_COLUMN}={day}"
    return [
        setting("batchscore_python"),
        "-m",
        "jobs.score",
        f"--input={Path(setting('batchscore_input')) / partition}",
        f"--output={Path(setting('batchscore_output')) / partition}",
        f"--model={setting('batchscore_model')}",
        f"--model_repo={setting('batchscore_model_repo')}",
        *shlex.split(setting("batchscore_extra_args")),
    ]


@dag(
    dag_id="score_daily",
    schedule="@daily",
    start_date=dt.datetime.fromisoformat(
        os.environ.get("BATCHSCORE_START_DATE", "2026-01-01")
    ).replace(tzinfo=dt.UTC),
    catchup=True,
    max_active_runs=_env_int("BATCHSCORE_MAX_ACTIVE_RUNS", 1),
    default_args={
        "retries": _env_int("BATCHSCORE_RETRIES", 2),
        "retry_delay": dt.timedelta(
            minutes=float(os.environ.get("BATCHSCORE_RETRY_DELAY_MINUTES", 5))
        ),
    },
    tags=["batchscore"],
    doc_md=__doc__,
)
def score_daily() -> None:
    @task(task_id="score_partition")
    def score_partition(ds: str | None = None) -> str:
        """Score day ``ds``; returns the committed run folder (pushed to XCom)."""
        assert ds is not None, "Airflow passes the logical date as ds"
        command = score_command(ds)
        input_dir = Path(command[3].removeprefix("--input="))
        if not input_dir.is_dir():
            # The day's data may still be on its way: fail and let retries try again.
            raise AirflowException(f"{input_dir}: no input for {ds} yet")
        with tempfile.TemporaryDirectory(prefix="batchscore-airflow-") as scratch:
            summary_file = Path(scratch) / "summary.json"
            command.append(f"--summary_file={summary_file}")
            print("batchscore: running " + shlex.join(command), flush=True)
            # Stream jobs.score's output into the task log as it comes; the outcome is
            # read from its summary file, never from that output.
            with subprocess.Popen(
                command,
                cwd=PROJECT if (PROJECT / "jobs" / "score.py").is_file() else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
            ) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    print(line, end="", flush=True)
                returncode = process.wait()
            try:
                summary = json.loads(summary_file.read_text())
            except (OSError, ValueError):
                summary = {}
        reason = summary.get("reason") or "no summary written; see the log above"
        if returncode == EXIT_REFUSED:
            raise AirflowFailException(
                f"jobs.score refused the run for {ds} (not retried): {reason}"
            )
        if returncode != 0:
            raise AirflowException(f"jobs.score exited {returncode} for {ds}: {reason}")
        return str(summary.get("run_dir") or "")

    score_partition()


score_daily()
