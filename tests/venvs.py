"""Virtualenvs that tests build and keep between sessions.

- Apache Airflow 3.3 (:func:`ensure_airflow_venv`). Airflow never goes into the
  project venv (its pins clash with Beam's and TensorFlow's); the DAG shells
  out to the project's interpreter instead.
- batchscore's dependencies packed for Spark executors by the README's script,
  deploy/spark/pack-env.sh (:func:`packed_dependencies`), shipped with --archives as
  the README's spark-submit section does it.

Both live in the test cache folder (:func:`cache_dir`, outside the clone, so
later sessions and CI runs on the same machine reuse them); a file lock keeps
concurrent sessions from building one twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
AIRFLOW_REQUIREMENT = "apache-airflow==3.3.*"
INSTALL_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where tests keep virtualenvs between sessions: $BATCHSCORE_TEST_CACHE, else
    $XDG_CACHE_HOME/batchscore-tests (~/.cache/batchscore-tests)."""
    configured = os.environ.get("BATCHSCORE_TEST_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "batchscore-tests"


def make_venv(venv: Path, *requirements: str) -> None:
    """A fresh venv at ``venv`` with ``requirements`` pip-installed (quietly; the end of
    pip's output in the error if it fails)."""
    shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from a killed session
    # `python -m venv` from inside a venv bases the new one on the base interpreter.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for command in (
        [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [python, "-m", "pip", "install", "--quiet", *requirements],
    ):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )


def ensure_airflow_venv() -> tuple[Path, float]:
    """The Airflow venv's folder, created if missing; and the seconds creation took
    (0 when it was already there)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / "airflow-3.3"
    ready = venv / ".batchscore-ready"
    with (cache / "airflow-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file() and (venv / "bin" / "airflow").is_file():
            return venv, 0.0
        started = time.perf_counter()
        make_venv(venv, AIRFLOW_REQUIREMENT)
        ready.write_text(f"{AIRFLOW_REQUIREMENT}\n")
        return venv, time.perf_counter() - started


PACK_SCRIPT = PROJECT / "deploy" / "spark" / "pack-env.sh"


def _pack_key() -> str:
    digest = hashlib.sha256()
    for path in (PROJECT / "pyproject.toml", PACK_SCRIPT):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def packed_dependencies() -> tuple[Path, float]:
    """batchscore's dependencies packed by the README's script (deploy/spark/pack-env.sh:
    venv-pack, .tar.gz, slimmed), made once per pyproject.toml and script version and
    cached; returns the archive and the seconds spent making it (0 when reused).

    batchscore itself is not inside: tests ship this checkout's code next to it with
    --py-files (:func:`zip_batchscore`), as the README's spark-submit recipe does.
    """
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"spark-deps-{_pack_key()}.tar.gz"
    with (cache / "spark-deps.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.is_file():
            return archive, 0.0
        started = time.perf_counter()
        for stale in [*cache.glob("spark-deps-*"), *cache.glob("spark-env-*")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        # The base interpreter: the packed venv must be made from the same Python 3.11 as
        # the executors run (here, this machine's).
        base = getattr(sys, "_base_executable", sys.executable)
        command = ["bash", str(PACK_SCRIPT), str(archive), base]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, cwd=cache
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        return archive, time.perf_counter() - started


PACKAGES = ("batch", "jobs", "runners", "schemas", "transforms")


def zip_batchscore(path: Path) -> Path:
    """This checkout's batchscore packages (contract files included) as a zip for
    --py-files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for file in sorted((PROJECT / package).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, file.relative_to(PROJECT).as_posix())
    return path
