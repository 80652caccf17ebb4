"""--runner=DataflowRunner, built offline: the job description, its steps and what workers get.

The dry run runs in a network namespace of its own where that is possible
(`unshare -n`: no network at all), which proves it reaches no Google service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from batch.output.commit import list_committed_runs
from jobs.score import main as score_main
from tests.plain_model import write_plain_data

PROJECT = Path(__file__).resolve().parent.parent
STEPS = ("ListSplits", "ScoreSplits/Redistribute", "ScoreSplits/ReadValidateScoreWrite")
DATAFLOW_OPTIONS = (
    "--runner=DataflowRunner",
    "--project=test-project",
    "--region=us-central1",
    "--temp_location=gs://test-bucket/tmp",
)


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    folder = tmp_path_factory.mktemp("data")
    return folder, write_plain_data(folder, files=2, rows_per_file=2000, row_group_rows=500)


def _offline_prefix() -> list[str]:
    """`unshare -n` where this machine lets us make a network namespace, else nothing."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.mark.slow
def test_dry_run_builds_the_dataflow_job_offline(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data, _ = plain_data
    template = tmp_path / "dataflow" / "template.json"
    output = tmp_path / "out"
    env = {
        **os.environ,
        # Belt and braces: google-auth must not probe a metadata server.
        "NO_GCE_CHECK": "True",
    }
    result = subprocess.run(
        [
            *_offline_prefix(),
            sys.executable,
            "-m",
            "jobs.score",
            f"--input={data}",
            f"--model={plain_model}",
            "--key_columns=id",
            f"--output={output}",
            *DATAFLOW_OPTIONS,
            "--job_name=batchscore-dry-run",
            "--setup_file=./setup.py",
            "--dry_run=True",
            f"--template_location={template}",
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "dry run: built Dataflow job 'batchscore-dry-run'" in result.stdout
    assert f"steps        {' -> '.join(STEPS)}" in result.stdout
    # Nothing was scored, staged or committed; the output was not even created.
    assert not output.exists()

    # The job description: a Dataflow batch job with the standard options.
    job = json.loads(template.read_text())
    assert job["name"] == "batchscore-dry-run"
    assert job["type"] == "JOB_TYPE_BATCH"
    environment = job["environment"]
    options = environment["sdkPipelineOptions"]["options"]
    assert options["project"] == "test-project"
    assert options["region"] == "us-central1"
    assert options["setup_file"] == "./setup.py"
    assert environment["tempStoragePrefix"].startswith("storage.googleapis.com/test-bucket/tmp")
    packages = {p["name"] for p in environment["workerPools"][0]["packages"]}
    assert {"workflow.tar.gz", "pipeline.pb"} - packages == {"pipeline.pb"}
    assert options["pipelineUrl"].startswith("gs://test-bucket/tmp/") and options[
        "pipelineUrl"
    ].endswith("/pipeline.pb")

    # The portable pipeline Dataflow would run: the steps, by name, with what each does.
    from apache_beam.portability.api import beam_runner_api_pb2

    staging = template.parent / "staging"
    pipeline = beam_runner_api_pb2.Pipeline.FromString((staging / "pipeline.pb").read_bytes())
    names = {t.unique_name: t for t in pipeline.components.transforms.values()}
    assert set(STEPS) <= names.keys()
    score_step = names["ScoreSplits/ReadValidateScoreWrite"]
    display = {}
    for item in score_step.display_data:
        payload = beam_runner_api_pb2.LabelledPayload.FromString(item.payload)
        display[payload.label] = payload.string_value
    assert {"read", "validate", "score", "write"} <= display.keys(), display
    assert str(plain_model) in display["score"]
    assert "Parquet row groups" in display["read"]

    # What workers install: batchscore's sdist, contract files included.
    with tarfile.open(staging / "workflow.tar.gz") as sdist:
        members = {Path(m).relative_to(Path(m).parts[0]).as_posix() for m in sdist.getnames()}
    for needed in (
        "pyproject.toml",
        "setup.py",
        "batch/engine/job.py",
        "runners/beam.py",
        "jobs/score.py",
        "schemas/loans/schema.pbtxt",
        "schemas/loans/rules.toml",
    ):
        assert needed in members, needed


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            # gs:// and s3:// are read and written (tests/test_objstore.py); other URLs are
            # refused before anything is made (no folder named 'hdfs:' in the working folder).
            ["--output=hdfs://namenode/scores"],
            "--output=hdfs://namenode/scores: batchscore reads and writes local paths, gs:// "
            "and s3:// URIs; hdfs:// is not one of them",
        ),
        (
            ["--runner=DirectRunner", "--dry_run=True"],
            "--dry_run builds a Dataflow job without submitting it; it applies to "
            "--runner=DataflowRunner, not --runner=DirectRunner",
        ),
        (
            [*DATAFLOW_OPTIONS, "--dry_run=True", "--template_location=gs://b/t.json"],
            "--template_location=gs://b/t.json: a dry run writes the job description locally",
        ),
        (
            [
                "--runner=DataflowRunner",
                "--project=p",
                "--region=us-central1",
                "--temp_location=gs://b/tmp",
                "--dry_run=True",
            ],
            "--temp_location=gs://b/tmp: a Dataflow job needs a GCS path with a valid bucket",
        ),
        (
            [*DATAFLOW_OPTIONS, "--no_wait_until_finish"],
            "--no_wait_until_finish: batchscore commits the run when the pipeline has finished",
        ),
    ],
)
def test_unsupported_dataflow_setups_fail_in_one_line(
    args: list[str],
    expected: str,
    plain_model: Path,
    plain_data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, _ = plain_data
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    output = [] if any(a.startswith("--output") for a in args) else [f"--output={tmp_path}"]
    rc = score_main(
        [f"--input={data}", f"--model={plain_model}", "--key_columns=id", *output, *args]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expected in err[0], err
    assert list_committed_runs(tmp_path) == []
    assert list(cwd.iterdir()) == [], "nothing is made in the working folder"


def test_the_flex_template_spec_names_real_options() -> None:
    from jobs.score import build_parser

    metadata = json.loads((PROJECT / "deploy" / "dataflow" / "metadata.json").read_text())
    assert metadata["name"] and metadata["description"]
    known = {a.dest for a in build_parser()._actions}
    names = [p["name"] for p in metadata["parameters"]]
    assert {"input", "model", "output"} <= set(names)
    assert set(names) <= known, set(names) - known
    dockerfile = (PROJECT / "deploy" / "dataflow" / "Dockerfile").read_text()
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (PROJECT / source).exists(), source
