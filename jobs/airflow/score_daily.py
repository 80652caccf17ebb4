"""Airflow DAGs that score each day's input partition with batchscore, built on
:class:`batchscore_operator.BatchScoreOperator` (in this folder).

``score_daily`` runs every day (``@daily``, ``catchup=True``: unpaused, the scheduler
runs every day from the start date, which is how a backfill is done from Airflow) and
scores ``INPUT/dt={{ ds }}`` into ``OUTPUT/dt={{ ds }}/<model>/<version>/run=<id>/``,
the layout ``python -m jobs.backfill`` writes too. A rerun of a day whose input and
model did not change is a no-op that names the committed run.

Settings of ``score_daily``, Airflow Variables read when the task runs (templates):

=========================  ==================================================
batchscore_python          the interpreter of batchscore's venv
batchscore_input           root of the dt=YYYY-MM-DD input partitions
batchscore_output          output root
batchscore_model           model to score with, e.g. NAME@production
batchscore_model_repo      model repository (optional)
batchscore_extra_args      any other jobs.score options, shell-quoted, e.g.
                           "--max_error_rate=0.01 --public_key=/keys/pub.pem"
batchscore_recalibrate_on_drift
                           "true": when the day's run reports drift, the task
                           recalibrate_on_drift runs jobs.recalibrate on the
                           day's labeled rows (a new unpromoted version,
                           compared with production); else it is skipped
batchscore_labels          root of the labeled dt= partitions (default: the
                           input root)
batchscore_recalibrate_args  other jobs.recalibrate options
=========================  ==================================================

A setting left unset fails the task at once naming it: nothing falls back to the
demo's folders.

Per run, without touching the Variables: trigger with a conf (or edit the params in
the trigger form)::

    airflow dags trigger score_daily --conf '{"force": true}'           # rescore
    airflow dags trigger score_daily --conf '{"model": "loans@7"}'      # another model
    airflow dags trigger score_daily --conf '{"canary": "loans@canary", "canary_fraction": 0.1}'

Several dataset/model pairs on one Airflow: point ``BATCHSCORE_PIPELINES`` at a JSON
file ``{"NAME": {"python": ..., "input_root": ..., "output_root": ..., "model": ...,
"model_repo": ..., "extra_args": ...}, ...}``; each entry becomes a DAG
``score_daily__NAME`` with those values.

Read when the file is parsed (environment only, so parsing never touches the metadata
database): BATCHSCORE_START_DATE (first day, default 2026-01-01),
BATCHSCORE_RETRIES (default 2), BATCHSCORE_RETRY_DELAY_MINUTES (default 5),
BATCHSCORE_MAX_ACTIVE_RUNS (days scored at once during catch-up, default 1: each run
loads its own model), BATCHSCORE_INPUT_WAIT_SECONDS (how long a task waits for its
day's input before it fails and is retried, default 3600), BATCHSCORE_POKE_SECONDS
(how often it looks, default 60), BATCHSCORE_PIPELINES.

This file imports only Airflow and the standard library: batchscore and TensorFlow
stay in their own virtualenv, never in Airflow's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param
from batchscore_operator import BatchScoreOperator, RecalibrateOnDriftOperator

SETTINGS = ("python", "input_root", "output_root", "model", "model_repo", "extra_args")
# The optional recalibration task's settings (RecalibrateOnDriftOperator).
RECALIBRATION = ("recalibrate_on_drift", "labels_root", "recalibrate_args")
# score_daily's settings: the Airflow Variable each comes from (empty when unset).
VARIABLES = {
    "python": "batchscore_python",
    "input_root": "batchscore_input",
    "output_root": "batchscore_output",
    "model": "batchscore_model",
    "model_repo": "batchscore_model_repo",
    "extra_args": "batchscore_extra_args",
    "recalibrate_on_drift": "batchscore_recalibrate_on_drift",
    "labels_root": "batchscore_labels",
    "recalibrate_args": "batchscore_recalibrate_args",
}


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def score_dag(dag_id: str, settings: dict[str, str]) -> DAG:
    """A daily scoring DAG whose one task runs BatchScoreOperator with ``settings``."""
    with DAG(
        dag_id=dag_id,
        schedule="@daily",
        start_date=dt.datetime.fromisoformat(
            os.environ.get("BATCHSCORE_START_DATE", "2026-01-01")
        ).replace(tzinfo=dt.UTC),
        catchup=True,
        max_active_runs=int(_env_number("BATCHSCORE_MAX_ACTIVE_RUNS", 1)),
        default_args={
            "retries": int(_env_number("BATCHSCORE_RETRIES", 2)),
            "retry_delay": dt.timedelta(minutes=_env_number("BATCHSCORE_RETRY_DELAY_MINUTES", 5)),
        },
        params={
            "model": Param("", type="string", description="another model for this run"),
            "canary": Param("", type="string", description="a canary model for this run"),
            "canary_fraction": Param(0.1, type="number", minimum=0, maximum=1),
            "force": Param(False, type="boolean", description="rescore an up-to-date day"),
            "extra_args": Param("", type="string", description="more jobs.score options"),
        },
        tags=["batchscore"],
        doc_md=__doc__,
    ) as dag:
        scoring = {k: v for k, v in settings.items() if k not in RECALIBRATION}
        score = BatchScoreOperator(
            task_id="score_partition",
            input_timeout=_env_number("BATCHSCORE_INPUT_WAIT_SECONDS", 3600),
            poke_interval=_env_number("BATCHSCORE_POKE_SECONDS", 60),
            **scoring,
        )
        recalibrate = RecalibrateOnDriftOperator(
            task_id="recalibrate_on_drift",
            score_task_id="score_partition",
            python=settings["python"],
            model_repo=settings.get("model_repo", ""),
            # The day's labeled rows: labels_root/dt=DAY, else the scored input itself.
            labels_root=settings.get("labels_root") or settings["input_root"],
            extra_args=settings.get("recalibrate_args", ""),
            enabled=settings.get("recalibrate_on_drift", ""),
            retries=0,
        )
        score >> recalibrate
    return dag


def _variable(name: str) -> str:
    return "{{ var.value.get('" + name + "', '') }}"


def _labels_variable() -> str:
    # The labeled rows default to the scored input's root.
    return "{{ var.value.get('batchscore_labels', '') or var.value.get('batchscore_input', '') }}"


def _pipelines() -> dict[str, dict[str, Any]]:
    path = os.environ.get("BATCHSCORE_PIPELINES")
    if not path:
        return {}
    pipelines: dict[str, dict[str, Any]] = json.loads(Path(path).read_text())
    return pipelines


score_daily = score_dag(
    "score_daily",
    {k: _variable(v) for k, v in VARIABLES.items()} | {"labels_root": _labels_variable()},
)

for _name, _settings in _pipelines().items():
    unknown = sorted(set(_settings) - set(SETTINGS) - set(RECALIBRATION))
    if unknown:
        raise ValueError(
            f"BATCHSCORE_PIPELINES entry '{_name}': unknown keys {unknown}; expected "
            f"{', '.join(SETTINGS + RECALIBRATION)}"
        )
    globals()[f"score_daily__{_name}"] = score_dag(
        f"score_daily__{_name}", {k: str(v) for k, v in _settings.items()}
    )
