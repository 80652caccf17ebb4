"""spark-submit as the README documents it for a cluster: batchscore's dependencies packed
by deploy/spark/pack-env.sh and shipped to the executors with --archives ...#environment,
its code with --py-files batchscore.zip, on the real standalone test cluster
(tests/spark_cluster.py), scoring a registered, signed model that carries a contract.

The fast tests import batchscore from the same zip with plain Python: package data (the
contracts) is read from inside it, and no demo default applies there."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.output.commit import list_committed_runs
from runners.pyspark import explain_slow_start
from tests.conftest import TrainedModel
from tests.signing_keys import KeyPair
from tests.spark_cluster import SparkCluster, spark_submit_command
from tests.venvs import packed_dependencies, zip_batchscore

PROJECT = Path(__file__).resolve().parent.parent
DAY = "dt=2026-01-01"
# What would let the demo's defaults or keys stand in for an option the job must be given.
DEMO_ENV = ("BATCHSCORE_DEMO_DIR", "BATCHSCORE_PUBLIC_KEY", "BATCHSCORE_SIGNING_KEY")


def _env_without_demo() -> dict[str, str]:
    # Nothing of the test's own Python or demo setting may leak into the job.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYSPARK") and k not in DEMO_ENV and k != "PYTHONPATH"
    }


@pytest.fixture(scope="module")
def code_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zip_batchscore(tmp_path_factory.mktemp("code") / "batchscore.zip")


def _from_zip(code: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` importing batchscore from ``code`` only (as --py-files makes it)."""
    env = {**_env_without_demo(), "PYTHONPATH": str(code)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_contracts_are_read_as_package_data_from_the_zip(code_zip: Path, tmp_path: Path) -> None:
    result = _from_zip(
        code_zip,
        tmp_path,
        "-c",
        "import batch.contract.contract as c; print(c.__file__); "
        "print(c.schema_names()); print(sorted(c.load_contract('loans').columns))",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    where, names, columns = result.stdout.splitlines()
    assert where.startswith(str(code_zip)), "the test must import the zip, not the checkout"
    assert names == "['deliveries', 'loans']"
    assert "'loan_id'" in columns


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--output=out",), "--input"),
        (("--input=data",), "--output"),
        (("--input=data", "--output=out"), "--model"),
        (("--input=data", "--output=out", "--model=loan_default@production"), "--model_repo"),
    ],
)
def test_no_demo_default_applies_to_code_from_a_zip(
    code_zip: Path, tmp_path: Path, args: Sequence[str], option: str
) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"loan_id": [1, 2]}), tmp_path / "data" / "a.parquet")
    result = _from_zip(code_zip, tmp_path, "-m", "jobs.score", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"python -m jobs.score: error: {option} is required"), line
    assert f"imported from an archive ({code_zip})" in line
    assert not (tmp_path / ".demo").exists(), "nothing of the demo was made beside the zip"


def test_a_signed_model_needs_a_named_key_outside_the_checkout(
    code_zip: Path, trained_model: TrainedModel, tmp_path: Path
) -> None:
    day = trained_model.data_dir / DAY
    result = _from_zip(
        code_zip,
        tmp_path,
        "-m",
        "jobs.score",
        f"--input={day}",
        f"--model={trained_model.spec}",
        f"--model_repo={trained_model.repo}",
        f"--output={tmp_path / 'out'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "no public key is configured (no --public_key given" in line, line
    assert "pass --public_key=" in line


@pytest.mark.slow
def test_spark_submit_scores_a_registered_model_with_a_packed_venv(
    spark_cluster: SparkCluster,
    trained_model: TrainedModel,
    signing_keys: KeyPair,
    code_zip: Path,
    tmp_path: Path,
) -> None:
    archive, built = packed_dependencies()
    if built:
        print(f"packed batchscore's dependencies in {built:.0f}s")
    day = trained_model.data_dir / DAY
    output = tmp_path / "out"
    submit = (
        "--deploy-mode",
        "client",
        "--archives",
        f"{archive}#environment",
        "--py-files",
        str(code_zip),
        "--conf",
        "spark.pyspark.python=./environment/bin/python",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
    )
    job = (
        f"--input={day}",
        f"--model={trained_model.spec}",
        f"--model_repo={trained_model.repo}",
        f"--public_key={signing_keys.public}",
        f"--output={output}",
        "--max_error_rate=0.01",  # the day's dirty rows: about 0.5%
        "--contract=loans",  # looked up inside the zip, as package data
    )
    result = _spark_submit(spark_cluster, submit, job, tmp_path)
    # spark-submit runs the Python driver with its stderr merged into its stdout.
    errors = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "Error" in line or "error:" in line or line.startswith("python -m jobs.score")
    ]
    assert result.returncode == 0, "\n".join(errors[-30:]) + spark_cluster.logs()[-2000:]

    (run,) = list_committed_runs(output)
    manifest = run.manifest().to_json()
    assert manifest["runner"]["options"]["master"] == spark_cluster.master_url
    assert manifest["model"]["signature"]["verified"] is True
    rows = sum(pq.read_metadata(path).num_rows for path in day.glob("*.parquet"))
    counts = manifest["counts"]
    assert counts["rows_in"] == rows == counts["rows_scored"] + counts["rows_rejected"]
    assert counts["rows_rejected"] > 0, "the contract's row checks ran (the day has dirty rows)"
    keys = pq.read_table(run.run_dir / "predictions", columns=["loan_id"]).column("loan_id")
    assert len(keys) == len(set(keys.to_pylist())) == counts["rows_scored"]

    # The executors ran the shipped interpreter: Spark unpacked the archive into each
    # executor's working folder as ./environment.
    app = manifest["runner"]["options"].get("app_id") or _last_app(spark_cluster)
    unpacked = list(spark_cluster.folder.glob(f"worker-*/{app}/*/environment/bin/python"))
    assert unpacked, f"no unpacked environment for {app}"

    # A refused job says why in one line on the terminal, as under python -m.
    refused = _spark_submit(spark_cluster, submit, (*job[:-1], "--model=loan_default@99"), tmp_path)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    said = [line for line in refused.stdout.splitlines() if line.startswith("python -m")]
    assert len(said) == 1 and said[0].startswith("python -m jobs.score: error: "), said
    assert "loan_default@99" in said[0]
    assert "Traceback" not in refused.stdout + refused.stderr

    # The workers' cleanup (spark.worker.cleanup.*, as the README sets it) removes a
    # finished application's folder, unpacked environment included.
    deadline = time.monotonic() + spark_cluster.cleanup_s * 3 + 30
    while any(spark_cluster.folder.glob(f"worker-*/{app}")) and time.monotonic() < deadline:
        time.sleep(2)
    assert not any(spark_cluster.folder.glob(f"worker-*/{app}")), (
        f"{app}'s work folders are still there {spark_cluster.cleanup_s * 3 + 30:.0f}s later"
    )


def _spark_submit(
    cluster: SparkCluster, submit: Sequence[str], job: Sequence[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        spark_submit_command(cluster.master_url, submit, job),
        cwd=cwd,
        env=_env_without_demo(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _last_app(cluster: SparkCluster) -> str:
    apps = cluster.status()["completedapps"]
    assert apps, "the application did not reach the master"
    return str(apps[-1]["id"])


class _Context:
    """The two calls explain_slow_start makes of a SparkContext (a unit test of its logic;
    the spark-submit test above runs it on the real cluster)."""

    def __init__(self, archives: str, completed: int) -> None:
        self.archives, self.completed = archives, completed

    def getConf(self) -> dict[str, str]:
        return {"spark.archives": self.archives}

    def statusTracker(self) -> Any:
        stage = type("Stage", (), {"numCompletedTasks": self.completed})()
        return type(
            "Tracker", (), {"getActiveStageIds": lambda _: [0], "getStageInfo": lambda _, i: stage}
        )()


@pytest.mark.parametrize("completed", [0, 1])
def test_a_slow_first_part_is_explained_by_the_archive(
    completed: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "deps.tar.gz"
    archive.write_bytes(b"\0" * 2**20)
    caplog.set_level(logging.WARNING, logger="runners.pyspark")
    with explain_slow_start(_Context(f"file://{archive}#environment", completed), after_s=0.01):
        time.sleep(0.3)
    noted = [r.getMessage() for r in caplog.records if "unpacks" in r.getMessage()]
    if completed:
        assert not noted, "a part finished: nothing to explain"
    else:
        (message,) = noted
        assert f"{archive} (0.0 GiB)" in message
    assert not [t for t in threading.enumerate() if t.name == "batchscore-slow-start"]
