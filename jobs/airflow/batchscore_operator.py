"""``BatchScoreOperator``: run one batchscore scoring job from Airflow.

Import it in a DAG (the DAG folder is on Airflow's ``sys.path``)::

    from batchscore_operator import BatchScoreOperator

    BatchScoreOperator(
        task_id="score",
        python="/opt/batchscore/.venv/bin/python",   # batchscore's own venv
        input_root="/data/loans", output_root="/scores/loans",
        model="loan_default@production", model_repo="/models",
    )

The operator runs ``PYTHON -m jobs.score --input=INPUT_ROOT/dt={{ ds }}
--output=OUTPUT_ROOT/dt={{ ds }} --model=... EXTRA_ARGS`` in batchscore's venv (this
module imports only Airflow and the standard library: TensorFlow never enters
Airflow's environment) and streams its output into the task log. Every argument
is a template field.

Per-run control, without editing Variables: the DAG run's ``conf`` (or the DAG's
``params``) may set ``model`` (another model for this run), ``canary`` and
``canary_fraction``, ``force`` (rescore a day that is up to date) and
``extra_args``::

    airflow dags trigger score_daily --conf '{"force": true, "model": "loans@7"}'

Failures:

- configuration errors fail at once, without retries (AirflowFailException): a
  setting left empty, a ``python`` that is not an executable, an input root or model
  repository that does not exist, and everything ``jobs.score`` refuses with its
  one-line error (exit 2: a bad model reference, an unsigned or tampered model, bad
  input, the error budget);
- only "the day's input is not there yet" is waited for: ``input_timeout`` seconds,
  polling every ``poke_interval``; then the task fails and Airflow's ``retries``
  apply. A job that crashed or was killed fails and is retried too.

``on_kill`` (a task marked failed, a timeout, a cleared running task) stops the job:
SIGTERM to its process group, SIGKILL after ``kill_grace`` seconds.

The committed run folder is the task's return value (XCom ``return_value``); the run
summary (``jobs.score --summary_file``) is pushed as XCom ``summary``. With
``--runner=DataflowRunner`` in ``extra_args`` the job is submitted and waited for
by ``jobs.score``; the Dataflow job id Beam logs ("Created job with id: [...]") is
pushed as XCom ``dataflow_job_id``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

PARTITION_COLUMN = "dt"
# jobs.score's exit code for a one-line error (bad input, model, arguments, error budget).
EXIT_REFUSED = 2
# jobs.recalibrate: registered, but the comparison with production failed.
EXIT_COMPARISON_FAILED = 3
RUN_MARKER = "batchscore: running "
# Per-run keys read from the DAG run's conf / the DAG's params.
RUN_OPTIONS = ("model", "canary", "canary_fraction", "force", "extra_args")
# Beam's DataflowRunner logs "Created job with id: [ID]" when it submits.
_DATAFLOW_JOB = re.compile(r"(?:Created job with id|Dataflow job id)[:= ]+\[?([\w-]+)\]?")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


class _JobOperator(BaseOperator):
    """Runs one batchscore command line in batchscore's venv, streaming its output into
    the task log; ``on_kill`` stops its process group."""

    python: str
    kill_grace: float
    _process: subprocess.Popen[str] | None

    def _run(self, command: list[str]) -> str | None:
        """Run the job, streaming its output into the task log; the Dataflow job id, if
        it printed one."""
        project = Path(self.python).resolve().parents[2]
        job_id = None
        self._process = subprocess.Popen(
            command,
            # From a checkout (python = <project>/.venv/bin/python) run in the project, so
            # that `-m jobs.<command>` finds it whether or not it is installed.
            cwd=project if (project / "jobs" / "score.py").is_file() else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: on_kill stops all of it
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            print(line, end="", flush=True)
            found = _DATAFLOW_JOB.search(line)
            if found:
                job_id = found.group(1)
        self._process.wait()
        return job_id

    def on_kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=self.kill_grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class BatchScoreOperator(_JobOperator):
    """Score one day's input partition with batchscore (see the module docstring)."""

    template_fields: Sequence[str] = (
        "python",
        "input_root",
        "output_root",
        "model",
        "model_repo",
        "day",
        "extra_args",
    )

    def __init__(
        self,
        *,
        python: str,
        input_root: str,
        output_root: str,
        model: str,
        model_repo: str = "",
        day: str = "{{ ds }}",
        extra_args: str = "",
        input_timeout: float = 0.0,
        poke_interval: float = 30.0,
        kill_grace: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.python = python
        self.input_root = input_root
        self.output_root = output_root
        self.model = model
        self.model_repo = model_repo
        self.day = day
        self.extra_args = extra_args
        self.input_timeout = input_timeout
        self.poke_interval = poke_interval
        self.kill_grace = kill_grace
        self._process: subprocess.Popen[str] | None = None

    # -- what to run ---------------------------------------------------------------------

    def run_options(self, context: Any) -> dict[str, Any]:
        """This run's overrides: the DAG's params, then the DAG run's conf (conf wins)."""
        options: dict[str, Any] = {}
        params = context.get("params") or {}
        dag_run = context.get("dag_run")
        conf = (getattr(dag_run, "conf", None) or {}) if dag_run is not None else {}
        for source in (params, conf):
            for key in RUN_OPTIONS:
                value = source.get(key)
                if value not in (None, ""):
                    options[key] = value
        return options

    def command(self, options: dict[str, Any], summary_file: Path) -> list[str]:
        """The jobs.score command line for this run."""
        partition = f"{PARTITION_COLUMN}={self.day}"
        command = [
            self.python,
            "-m",
            "jobs.score",
            f"--input={_join(self.input_root, partition)}",
            f"--output={_join(self.output_root, partition)}",
            f"--model={options.get('model') or self.model}",
        ]
        if self.model_repo:
            command.append(f"--model_repo={self.model_repo}")
        if options.get("canary"):
            command.append(f"--canary={options['canary']}")
            command.append(f"--canary_fraction={options.get('canary_fraction', 0.1)}")
        if _truthy(options.get("force")):
            command.append("--force")
        command += shlex.split(self.extra_args) + shlex.split(str(options.get("extra_args", "")))
        command.append(f"--summary_file={summary_file}")
        return command

    # -- checks ----------------------------------------------------------------------------

    def check_configuration(self) -> None:
        """Fail at once (no retries) on a deployment that cannot work."""
        for name in ("python", "input_root", "output_root", "model"):
            if not str(getattr(self, name) or "").strip():
                raise AirflowFailException(
                    f"BatchScoreOperator {self.task_id}: '{name}' is empty; set it (an Airflow "
                    "Variable or the operator argument). Nothing falls back to demo folders"
                )
        python = Path(self.python)
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise AirflowFailException(
                f"BatchScoreOperator {self.task_id}: python={self.python} is not an executable "
                "file; expected the interpreter of batchscore's venv (e.g. /opt/batchscore/"
                ".venv/bin/python)"
            )
        for name in ("input_root", "model_repo"):
            value = str(getattr(self, name) or "")
            if value and not _URI.match(value) and not Path(value).is_dir():
                raise AirflowFailException(
                    f"BatchScoreOperator {self.task_id}: {name}={value} does not exist; expected "
                    "a folder (a typo, or a mount missing on this worker)"
                )

    def wait_for_input(self) -> None:
        """Wait (bounded) for the day's partition; then fail so that retries apply."""
        path = _join(self.input_root, f"{PARTITION_COLUMN}={self.day}")
        if _URI.match(path):
            return  # a bucket: jobs.score says whether the prefix holds data
        deadline = time.monotonic() + max(0.0, self.input_timeout)
        while not Path(path).is_dir():
            if time.monotonic() >= deadline:
                raise AirflowException(
                    f"{path}: no input for {self.day} yet (waited {self.input_timeout:g}s); "
                    "the task is retried"
                )
            time.sleep(min(self.poke_interval, max(0.0, deadline - time.monotonic())))

    # -- Airflow hooks -----------------------------------------------------------------------

    def execute(self, context: Any) -> str:
        self.check_configuration()
        self.wait_for_input()
        options = self.run_options(context)
        with tempfile.TemporaryDirectory(prefix="batchscore-airflow-") as scratch:
            summary_file = Path(scratch) / "summary.json"
            command = self.command(options, summary_file)
            print(RUN_MARKER + shlex.join(command), flush=True)
            job_id = self._run(command)
            try:
                summary: dict[str, Any] = json.loads(summary_file.read_text())
            except (OSError, ValueError):
                summary = {}
        task_instance = context.get("ti") or context.get("task_instance")
        if task_instance is not None:
            task_instance.xcom_push(key="summary", value=summary)
            if job_id:
                task_instance.xcom_push(key="dataflow_job_id", value=job_id)
        assert self._process is not None
        returncode = self._process.returncode
        reason = summary.get("reason") or "no summary written; see the log above"
        if returncode == EXIT_REFUSED:
            raise AirflowFailException(
                f"jobs.score refused the run for {self.day} (not retried): {reason}"
            )
        if returncode != 0:
            raise AirflowException(f"jobs.score exited {returncode} for {self.day}: {reason}")
        return str(summary.get("run_dir") or "")


def _join(root: str, part: str) -> str:
    return f"{root.rstrip('/')}/{part}" if _URI.match(root) else str(Path(root) / part)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class RecalibrateOnDriftOperator(_JobOperator):
    """After a scoring task: when the day's run reported drift (its XCom ``summary``
    says ``drift_status`` warn), recalibrate the model it scored with on the
    day's labeled rows: ``python -m jobs.recalibrate NAME@VERSION --input=LABELS_ROOT/
    dt={{ ds }}``, a new signed version, registered unpromoted and compared with
    production. Skipped when ``enabled`` is false or there was no drift. It follows a
    committed run (drift ``warn``, the default ``--on_drift``): a run that failed fails
    the DAG run, and a downstream task must not turn that into a success.
    """

    template_fields: Sequence[str] = (
        "python",
        "labels_root",
        "model_repo",
        "day",
        "extra_args",
        "enabled",
    )

    def __init__(
        self,
        *,
        score_task_id: str,
        python: str,
        labels_root: str,
        model_repo: str = "",
        day: str = "{{ ds }}",
        extra_args: str = "",
        enabled: str | bool = True,
        kill_grace: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.score_task_id = score_task_id
        self.python = python
        self.labels_root = labels_root
        self.model_repo = model_repo
        self.day = day
        self.extra_args = extra_args
        self.enabled = enabled
        self.kill_grace = kill_grace
        self._process = None

    def execute(self, context: Any) -> str:
        if not _truthy(self.enabled):
            raise AirflowSkipException("recalibration on drift is off for this DAG")
        task_instance = context.get("ti") or context.get("task_instance")
        summary = task_instance.xcom_pull(task_ids=self.score_task_id, key="summary") or {}
        if summary.get("drift_status") != "warn" or not summary.get("model"):
            raise AirflowSkipException(
                f"the run for {self.day} reported no drift "
                f"(drift_status={summary.get('drift_status')}): nothing to recalibrate"
            )
        command = [
            self.python,
            "-m",
            "jobs.recalibrate",
            str(summary["model"]),
            f"--input={_join(self.labels_root, f'{PARTITION_COLUMN}={self.day}')}",
        ]
        if self.model_repo:
            command.append(f"--model_repo={self.model_repo}")
        command += shlex.split(self.extra_args)
        print(RUN_MARKER + shlex.join(command), flush=True)
        self._run(command)
        assert self._process is not None
        returncode = self._process.returncode
        if returncode == EXIT_REFUSED:
            raise AirflowFailException(f"jobs.recalibrate refused {summary['model']} (not retried)")
        if returncode not in (0, EXIT_COMPARISON_FAILED):
            raise AirflowException(f"jobs.recalibrate exited {returncode}")
        if returncode == EXIT_COMPARISON_FAILED:
            print(
                "batchscore: the recalibrated version is registered but its comparison with "
                "production failed; it is not blessed",
                flush=True,
            )
        return str(summary["model"])
