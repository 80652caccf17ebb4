"""A real Spark standalone cluster on 127.0.0.1: one master, two one-core workers.

Started from the pyspark install alone (``$SPARK_HOME/bin/spark-class``), with
every port chosen free on loopback and every web UI bound to 127.0.0.1.
:func:`standalone_cluster` stops exactly the processes it started, by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SparkCluster:
    master_url: str  # spark://127.0.0.1:PORT
    web_url: str  # the master's web UI (its /json/ says which workers are alive)
    folder: Path  # logs and the workers' work directories
    pids: tuple[int, ...]  # master first, then the workers
    # The workers' spark.worker.cleanup interval and TTL (seconds): a finished application's
    # folder goes within about twice this (the README sets hours for a real cluster).
    cleanup_s: int = 0

    def status(self) -> dict[str, Any]:
        return _master_status(self.web_url)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.folder.glob("*.log"))
        )


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_submit_command(
    master: str, submit_options: Sequence[str], job_args: Sequence[str]
) -> list[str]:
    """``spark-submit`` of ``jobs/score.py --runner=PySparkRunner`` with the driver on
    loopback and no UI; ``submit_options`` go before the script, ``job_args`` after it."""
    return [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        master,
        *submit_options,
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        str(Path(__file__).resolve().parent.parent / "jobs" / "score.py"),
        "--runner=PySparkRunner",
        *job_args,
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _master_status(web_url: str) -> dict[str, Any]:
    # No proxy: the request must go straight to loopback whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{web_url}/json/", timeout=5) as response:
        payload: dict[str, Any] = json.load(response)
        return payload


# Seconds: short, so that a test sees a finished application's folder removed.
CLEANUP_S = 15


def cluster_env(folder: Path) -> dict[str, str]:
    """Environment for the daemons: loopback only, no user Spark config, logs in ``folder``,
    and the workers' cleanup of finished applications' folders on (as the README sets it)."""
    conf_dir = folder / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_MASTER_HOST": LOOPBACK,
        "SPARK_PUBLIC_DNS": LOOPBACK,
        "SPARK_LOG_DIR": str(folder),
        "PYSPARK_PYTHON": sys.executable,
        # No REST submission server (it would take the fixed port 6066).
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        "SPARK_WORKER_OPTS": (
            f"-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval={CLEANUP_S} "
            f"-Dspark.worker.cleanup.appDataTtl={CLEANUP_S}"
        ),
    }


def _start(
    name: str, folder: Path, env: dict[str, str], main_class: str, *args: str
) -> subprocess.Popen[bytes]:
    log = (folder / f"{name}.log").open("wb")
    command = [str(spark_home() / "bin" / "spark-class"), main_class, *args]
    # spark-class execs java, so the PID is the daemon's own.
    return subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=folder,
        start_new_session=True,
    )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    # Workers first (their shutdown hooks stop the executors they launched), then the master.
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in reversed(processes):
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def standalone_cluster(
    folder: Path, workers: int = 2, memory: str = "2g", cores: int = 1
) -> Iterator[SparkCluster]:
    """Start a master and ``workers`` workers of ``cores`` cores each; yield once all are
    registered."""
    folder.mkdir(parents=True, exist_ok=True)
    env = cluster_env(folder)
    port, web_port = free_port(), free_port()
    master_url = f"spark://{LOOPBACK}:{port}"
    web_url = f"http://{LOOPBACK}:{web_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            _start(
                "master",
                folder,
                env,
                "org.apache.spark.deploy.master.Master",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--webui-port",
                str(web_port),
            )
        )
        for index in range(workers):
            work_dir = folder / f"worker-{index}"
            work_dir.mkdir(exist_ok=True)
            processes.append(
                _start(
                    f"worker-{index}",
                    folder,
                    env,
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    LOOPBACK,
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(work_dir),
                    master_url,
                )
            )
        cluster = SparkCluster(
            master_url, web_url, folder, tuple(p.pid for p in processes), CLEANUP_S
        )
        _wait_for_workers(cluster, processes, workers)
        yield cluster
    finally:
        _stop(processes)


def _wait_for_workers(
    cluster: SparkCluster, processes: list[subprocess.Popen[bytes]], expected: int
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    alive = 0
    while time.monotonic() < deadline:
        exited = [p.args for p in processes if p.poll() is not None]
        if exited:
            raise RuntimeError(f"a Spark daemon exited during start-up: {exited}\n{cluster.logs()}")
        with contextlib.suppress(OSError, ValueError):
            status = cluster.status()
            alive = sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")
            if alive >= expected and status.get("status") == "ALIVE":
                return
        time.sleep(0.5)
    raise RuntimeError(
        f"expected {expected} Spark workers registered with {cluster.master_url} within "
        f"{START_TIMEOUT_S:.0f}s, found {alive}\n{cluster.logs()}"
    )
