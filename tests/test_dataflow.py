"""--runner=DataflowRunner, built offline: the job description, its steps, what workers get
and the Flex Template that launches the job.

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
METADATA = PROJECT / "deploy" / "dataflow" / "metadata.json"
IMAGE = "us-central1-docker.pkg.dev/test-project/batchscore/batchscore:0.1.0"
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


def _not_source(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n.startswith(".") or n.endswith(".egg-info") or n == "__pycache__"}


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    }


@pytest.mark.slow
def test_dry_run_builds_the_dataflow_job_offline(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    data, _ = plain_data
    template = tmp_path / "dataflow" / "template.json"
    output = tmp_path / "out"
    # A checkout of its own (the working tree, without caches, venv or egg-info), to see
    # that building the job writes nothing into it.
    checkout = tmp_path / "checkout"
    shutil.copytree(PROJECT, checkout, ignore=_not_source)
    before = _files(checkout)
    env = {
        **os.environ,
        # Belt and braces: google-auth must not probe a metadata server.
        "NO_GCE_CHECK": "True",
        # The image pip-installs batchscore; here the copied checkout is the package.
        "PYTHONPATH": str(checkout),
    }
    # Through the Flex Template's entry point, with parameters as its launcher passes them
    # (flags as true/false, no --runner: it is Dataflow): the same jobs.score main.
    result = subprocess.run(
        [
            *_offline_prefix(),
            sys.executable,
            "deploy/dataflow/main.py",
            f"--input={data}",
            f"--model={plain_model}",
            "--key_columns=id",
            f"--output={output}",
            "--force=false",
            *(o for o in DATAFLOW_OPTIONS if not o.startswith("--runner=")),
            "--job_name=batchscore-dry-run",
            "--setup_file=./setup.py",
            f"--sdk_container_image={IMAGE}",
            "--dry_run=True",
            f"--template_location={template}",
        ],
        cwd=checkout,
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
    # The sdist was built from a copy: no egg-info, build/ or dist/ in the checkout, and
    # none of the build tools' chatter ("No module named build", setuptools warnings).
    assert _files(checkout) == before, _files(checkout) - before
    for chatter in ("No module named build", "setuptools", "bdist_wheel", "warn("):
        assert chatter not in result.stderr, result.stderr[-3000:]

    # The Flex Template spec beside it, as `gcloud dataflow flex-template build` writes it.
    spec_path = template.parent / "flex_template.json"
    assert f"flex template {spec_path} (image {IMAGE})" in result.stdout
    spec = json.loads(spec_path.read_text())
    assert spec["image"] == IMAGE and spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"] == json.loads(METADATA.read_text())

    # The job description: a Dataflow batch job with the standard options.
    job = json.loads(template.read_text())
    assert job["name"] == "batchscore-dry-run"
    assert job["type"] == "JOB_TYPE_BATCH"
    environment = job["environment"]
    options = environment["sdkPipelineOptions"]["options"]
    assert options["project"] == "test-project"
    assert options["region"] == "us-central1"
    assert options["setup_file"] == "./setup.py"
    # What the job scores, in its pipeline options (the Dataflow UI shows them).
    assert options["input"] == str(data)
    assert options["model"] == str(plain_model)
    assert options["output"] == str(output)
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
    assert display["write"].endswith(f"/run={options['run_id']}"), display["write"]
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
            # Not "drop --dry_run": with --input, --model and --output that is refused (below).
            [*DATAFLOW_OPTIONS, "--dry_run=True", "--template_location=gs://b/t.json"],
            "--template_location=gs://b/t.json: a dry run writes the job description locally "
            "and reaches no Google Cloud service; give a local path (e.g. "
            "--template_location=./dataflow/template.json); to launch batchscore from a "
            "template, leave out --input, --model and --output (a classic template), or use "
            "the Flex Template spec",
        ),
        (
            [*DATAFLOW_OPTIONS, "--template_location=gs://test-bucket/t.json"],
            "--template_location=gs://test-bucket/t.json with --input, --model or --output: "
            "this job is built for that input and model",
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


def test_a_classic_template_dry_run_to_gcs_suggests_dropping_dry_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = score_main([*DATAFLOW_OPTIONS, "--dry_run=True", "--template_location=gs://b/t.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].endswith(
        "give a local path (e.g. --template_location=./dataflow/template.json), or drop "
        "--dry_run to make the classic template in GCS"
    ), err


def test_the_flex_template_declares_every_option_of_the_job() -> None:
    from jobs.score import build_parser
    from runners.dataflow import NOT_TEMPLATE_PARAMETERS, flex_template_metadata

    metadata = json.loads(METADATA.read_text())
    assert metadata == flex_template_metadata(build_parser()), (
        "deploy/dataflow/metadata.json is generated from jobs.score's options: rewrite it with "
        'python -c "from jobs.score import write_flex_template_metadata as w; w()"'
    )
    options = [a.dest for a in build_parser()._actions if a.dest not in NOT_TEMPLATE_PARAMETERS]
    parameters = {p["name"]: p for p in metadata["parameters"]}
    assert list(parameters) == options
    assert {"input", "model", "output", "model_repo", "public_key", "pushgateway"} <= set(options)
    assert [n for n, p in parameters.items() if not p["isOptional"]] == ["input", "model", "output"]
    assert parameters["force"]["regexes"] == ["^(true|false)$"]
    assert parameters["on_drift"]["regexes"] == ["^(warn|fail)$"]
    # Demo defaults are local paths: none may leak into the template's texts.
    assert str(PROJECT) not in json.dumps(metadata)
    dockerfile = (PROJECT / "deploy" / "dataflow" / "Dockerfile").read_text()
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (PROJECT / source).exists(), source


def test_the_launcher_passes_flags_as_true_or_false_and_runs_on_dataflow() -> None:
    from jobs.score import build_parser
    from runners.dataflow import flex_template_argv

    parser = build_parser()
    assert flex_template_argv(
        parser, ["--input=gs://b/in", "--force=true", "--allow_unsigned=false", "--verbose=TRUE"]
    ) == ["--input=gs://b/in", "--force", "--verbose", "--runner=DataflowRunner"]
    # A flag with another value is left for jobs.score to refuse in one line.
    assert flex_template_argv(parser, ["--force=maybe", "--runner=DirectRunner"]) == [
        "--force=maybe",
        "--runner=DirectRunner",
    ]


def test_no_flex_template_spec_without_an_image(tmp_path: Path) -> None:
    from jobs.score import build_parser
    from runners.dataflow import write_flex_template_spec

    template = tmp_path / "template.json"
    line = write_flex_template_spec(build_parser(), [f"--template_location={template}"])
    assert "flex template not written: give --sdk_container_image=IMAGE" in line
    assert not (tmp_path / "flex_template.json").exists()
    assert write_flex_template_spec(build_parser(), ["--dry_run=True"]) == ""


def test_a_failed_sdist_build_is_one_line_and_leaves_the_project_alone(tmp_path: Path) -> None:
    """(A real build from a copy: test_dry_run_builds_the_dataflow_job_offline.)"""
    from batch.core.errors import UsageError
    from runners.dataflow import build_setup_package

    project = tmp_path / "project"
    project.mkdir()
    (project / "setup.py").write_text("raise SystemExit('no such dependency: nope')\n")
    with pytest.raises(UsageError) as failed:
        build_setup_package(str(project / "setup.py"), str(tmp_path))
    assert str(failed.value).startswith(
        f"--setup_file={project / 'setup.py'}: building the sdist workers install failed "
        "(python setup.py sdist, exit 1): no such dependency: nope; run that command"
    ), failed.value
    assert _files(project) == {"setup.py"}


@pytest.mark.slow
def test_a_classic_template_takes_input_model_and_output_at_launch_and_commits_on_its_worker(
    plain_model: Path, plain_data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    """The template is made (offline, as a dry run) without --input/--model/--output; its
    step, unpickled from pipeline.pb and given them as Dataflow gives a worker a launch's
    parameters (runtime pipeline options), plans, scores and commits the run."""
    from apache_beam.internal import pickler
    from apache_beam.options.value_provider import RuntimeValueProvider
    from apache_beam.portability.api import beam_runner_api_pb2

    data, table = plain_data
    template = tmp_path / "classic" / "template.json"
    result = subprocess.run(
        [
            *_offline_prefix(),
            sys.executable,
            "-m",
            "jobs.score",
            "--key_columns=id",
            *DATAFLOW_OPTIONS,
            "--job_name=batchscore-template",
            "--dry_run=True",
            f"--template_location={template}",
        ],
        cwd=PROJECT,
        env={**os.environ, "NO_GCE_CHECK": "True"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "steps        Launch -> ScoreRun" in result.stdout
    assert "classic template: input, model and output are its runtime parameters" in (result.stdout)
    options = json.loads(template.read_text())["environment"]["sdkPipelineOptions"]["options"]
    # Declared, without a value: Dataflow fills them in at launch.
    assert {name: options[name] for name in ("input", "model", "output")} == dict.fromkeys(
        ("input", "model", "output")
    )
    assert "run_id" not in options, "the run id is made at launch, on the worker"

    pipeline = beam_runner_api_pb2.Pipeline.FromString(
        (template.parent / "staging" / "pipeline.pb").read_bytes()
    )
    (step,) = [t for t in pipeline.components.transforms.values() if t.unique_name == "ScoreRun"]
    payload = beam_runner_api_pb2.ParDoPayload.FromString(step.spec.payload)
    score_run = pickler.loads(payload.do_fn.payload)[0]
    output = tmp_path / "out"
    launch = {"input": str(data), "model": str(plain_model), "output": str(output)}
    RuntimeValueProvider.set_runtime_options(launch)
    try:
        assert list(score_run.process(None)) == [str(output)]
        # Restored after the job's own Beam runner cleared them: a retry still has them.
        assert RuntimeValueProvider.runtime_options == launch
    finally:
        RuntimeValueProvider.set_runtime_options(None)
    (run,) = list_committed_runs(output)
    assert run.manifest().counts.rows_scored == table.num_rows
