"""spark-submit as the README documents it for a cluster: batchscore's dependencies shipped
to the executors as a packed virtualenv (venv-pack, --archives ...#environment) and its code
with --py-files, on the real standalone test cluster (tests/spark_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.output.commit import list_committed_runs
from tests.plain_model import plain_model_expected, write_plain_data
from tests.spark_cluster import SparkCluster, spark_submit_command
from tests.venvs import packed_dependencies, zip_batchscore

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_spark_submit_ships_a_packed_venv_to_the_cluster(
    spark_cluster: SparkCluster, plain_model: Path, tmp_path: Path
) -> None:
    archive, built = packed_dependencies()
    if built:
        print(f"packed batchscore's dependencies in {built:.0f}s")
    code = zip_batchscore(tmp_path / "batchscore.zip")
    model = plain_model
    data = tmp_path / "data"
    table = write_plain_data(data, files=2, rows_per_file=3000, row_group_rows=1000)
    output = tmp_path / "out"
    # Nothing of the test's own Python setting may leak into Spark's choice of interpreter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    result = subprocess.run(
        spark_submit_command(
            spark_cluster.master_url,
            (
                "--deploy-mode",
                "client",
                "--archives",
                f"{archive}#environment",
                "--py-files",
                str(code),
                "--conf",
                "spark.pyspark.python=./environment/bin/python",
                "--conf",
                f"spark.pyspark.driver.python={sys.executable}",
            ),
            (f"--input={data}", f"--model={model}", f"--output={output}", "--key_columns=id"),
        ),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [
        line
        for line in result.stderr.splitlines()
        if "ERROR" in line or "Exception" in line or "error:" in line
    ]
    assert result.returncode == 0, "\n".join(errors[-30:]) + spark_cluster.logs()[-3000:]

    (run,) = list_committed_runs(output)
    manifest = run.manifest().to_json()
    assert manifest["runner"]["options"]["master"] == spark_cluster.master_url
    assert manifest["counts"]["rows_in"] == table.num_rows == manifest["counts"]["rows_scored"]
    scores = pq.read_table(run.run_dir / "predictions", columns=["id", "score"]).sort_by("id")
    assert scores.column("id").to_pylist() == list(range(table.num_rows))
    expected = plain_model_expected(table.sort_by("id"))
    assert (
        pa.compute.max(
            pa.compute.abs(pa.compute.subtract(scores.column("score"), pa.array(expected)))
        ).as_py()
        < 1e-6
    )

    # The executors ran the shipped interpreter: Spark unpacked the archive into each
    # executor's working folder as ./environment, and this application's executors
    # started from there (their launch command names spark.pyspark.python).
    app = manifest["runner"]["options"].get("app_id") or _last_app(spark_cluster)
    unpacked = list(spark_cluster.folder.glob(f"worker-*/{app}/*/environment/bin/python"))
    assert unpacked, f"no unpacked environment for {app}"


def _last_app(cluster: SparkCluster) -> str:
    apps = cluster.status()["completedapps"]
    assert apps, "the application did not reach the master"
    return str(apps[-1]["id"])
