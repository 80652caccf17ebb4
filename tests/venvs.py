"""A real Apache Airflow 3.3 install for tests, in its own virtualenv.

Airflow never goes into the project venv (its pins clash with Beam's and
TensorFlow's); the DAG shells out to the project's interpreter instead. The
venv is made once under ``.ci-cache/`` (git-ignored) and reused by later test
sessions; a file lock keeps concurrent sessions from building it twice.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
AIRFLOW_REQUIREMENT = "apache-airflow==3.3.*"
CACHE = PROJECT / ".ci-cache"
VENV = CACHE / "airflow-3.3"
READY = VENV / ".batchscore-ready"
INSTALL_TIMEOUT_S = 900


def ensure_airflow_venv() -> tuple[Path, float]:
    """The Airflow venv's folder, created if missing; and the seconds creation took
    (0 when it was already there)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "airflow-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if READY.is_file() and (VENV / "bin" / "airflow").is_file():
            return VENV, 0.0
        started = time.perf_counter()
        shutil.rmtree(VENV, ignore_errors=True)  # a half-made venv from a killed session
        # `python -m venv` from inside a venv bases the new one on the base interpreter.
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        python = str(VENV / "bin" / "python")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        for command in (
            [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [python, "-m", "pip", "install", "--quiet", AIRFLOW_REQUIREMENT],
        ):
            result = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"installing {AIRFLOW_REQUIREMENT} failed ({' '.join(command)}):\n"
                    + result.stderr[-3000:]
                )
        READY.write_text(f"{AIRFLOW_REQUIREMENT}\n")
        return VENV, time.perf_counter() - started
