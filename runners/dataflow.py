"""A Dataflow job built offline: what ``--runner=DataflowRunner --dry_run=True`` would submit.

Beam's DataflowRunner, in a dry run, builds the job (the portable pipeline,
the worker environment with its dependencies) and returns without touching
Google Cloud; it does not write ``--template_location`` then (that happens
only on the submitting path, which stages files to GCS first). batchscore
writes it itself, locally, so a dry run can be inspected and tested offline:

    TEMPLATE                     the Dataflow job description (the JSON a classic
                                 template file holds): environment, worker pool,
                                 packages, pipeline options
    <TEMPLATE dir>/staging/      the files Dataflow would stage: pipeline.pb (the
                                 portable pipeline), and with --setup_file the sdist
                                 of batchscore (workflow.tar.gz) and the submission
                                 environment's package list

With ``--setup_file``, batchscore's sdist is built from a copy of the project in a
temporary folder (:func:`setup_package_built_outside_checkout`): nothing is written into
the source checkout (no ``*.egg-info``) and the build tools' warnings stay out of the
job's output.

A classic template (:func:`build_classic_template`) is a job of one step whose input,
model and output are runtime parameters (Beam ValueProviders): at launch, one worker
runs the whole scoring job with them (plans the splits, scores on the worker's own
threads, commits the run), so no launcher or driver has to wait for it. A job built for
one input (``--input`` given) cannot be a template: its driver plans the splits from
the input's footers and commits the run after the job, so replayed later it would
commit nothing. The Flex Template (deploy/dataflow/) runs the whole ``jobs.score`` at
each launch and spreads the splits over the workers; its metadata, spec and launcher
arguments are made here from the job's parser (:func:`flex_template_metadata`,
:func:`write_flex_template_spec`, :func:`flex_template_argv`), which the caller passes.

Only used with the DataflowRunner; uses Beam's Dataflow client classes
(pinned Beam version, covered by tests/test_dataflow.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    TestOptions,
)
from apache_beam.options.value_provider import RuntimeValueProvider, ValueProvider
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from batch.core.errors import UsageError

STAGED_PIPELINE = "pipeline.pb"
GENERIC_COMPOSITE = "beam:transform:generic_composite:v1"


@dataclass(frozen=True)
class DryRunJob:
    """What a dry run built."""

    job_name: str
    project: str
    region: str
    steps: tuple[str, ...]
    template: Path | None = None
    staged: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        lines = [
            f"dry run: built Dataflow job '{self.job_name}' (project {self.project}, region "
            f"{self.region}) without submitting it; nothing was scored or committed",
            f"  steps        {' -> '.join(self.steps)}",
        ]
        if self.template is not None:
            lines.append(f"  job          {self.template}")
            lines.append(
                f"  staged files {self.template.parent / 'staging'} ({', '.join(self.staged)})"
            )
        return "\n".join(lines)


# Beam's own check of a GCS path (bucket: 3 to 63 characters of a-z 0-9 - _ .).
GCS_PATH = re.compile(r"^gs://[a-z0-9][-_a-z0-9.]{1,61}[a-z0-9]/.+")


def check_dataflow_options(options: PipelineOptions, classic_template: bool = False) -> None:
    """What a Dataflow job from batchscore needs: a --template_location only in a dry run
    or for a ``classic_template``, and a local one in a dry run; in a dry run, a valid
    --temp_location (or --staging_location) bucket, without which Beam tries to create a
    default bucket over the network (and waits minutes for it without one)."""
    cloud = options.view_as(GoogleCloudOptions)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    locations = [loc for loc in (cloud.temp_location, cloud.staging_location) if loc]
    if dry_run and not any(GCS_PATH.match(loc) for loc in locations):
        raise UsageError(
            f"--temp_location={cloud.temp_location}: a Dataflow job needs a GCS path with a "
            "valid bucket name (3 to 63 characters: a-z, 0-9, -, _ and .), or Beam tries to "
            "create a default bucket over the network; e.g. --temp_location=gs://my-bucket/tmp "
            "(a dry run never touches it)"
        )
    location = cloud.template_location
    if not location:
        return
    if not dry_run and not classic_template:
        raise UsageError(
            f"--template_location={location} with --input, --model or --output: this job is "
            "built for that input and model (this process plans the splits from the input's "
            "footers and commits the run once the job has finished), so as a template "
            "launched later it would score the same files again and commit nothing. For a "
            "classic template whose input, model and output are given at launch, leave out "
            "all three; or launch the Flex Template (deploy/dataflow/, README: Dataflow); "
            "drop --template_location to submit this run now, or add --dry_run=True to write "
            "the job description locally"
        )
    if "://" in location:
        # Dropping --dry_run makes the template in GCS only where it is a classic template.
        instead = (
            ", or drop --dry_run to make the classic template in GCS"
            if classic_template
            else "; to launch batchscore from a template, leave out --input, --model and "
            "--output (a classic template), or use the Flex Template spec the dry run writes "
            "beside it (README: Dataflow)"
        )
        raise UsageError(
            f"--template_location={location}: a dry run writes the job description locally "
            "and reaches no Google Cloud service; give a local path (e.g. "
            f"--template_location=./dataflow/template.json){instead}"
        )


# Not copied into the temporary source tree the sdist is built from: caches, virtual
# environments, VCS folders (any dot-name), earlier build outputs.
_NOT_SOURCE = ("__pycache__", "*.egg-info", "build", "dist")


def _not_source(folder: str, names: list[str]) -> set[str]:
    return {
        name
        for name in names
        if name.startswith(".") or any(Path(name).match(pattern) for pattern in _NOT_SOURCE)
    }


def build_setup_package(setup_file: str, dist_dir: str) -> str:
    """Build the sdist of the project whose ``setup.py`` is ``setup_file`` into
    ``dist_dir`` from a copy of the project in a temporary folder, the build's output
    captured: the checkout gets no ``*.egg-info`` and the terminal no setuptools warnings.
    Returns the sdist's path."""
    source = Path(setup_file).resolve().parent
    with tempfile.TemporaryDirectory(prefix="batchscore-sdist-") as scratch:
        tree = Path(scratch) / source.name
        shutil.copytree(source, tree, ignore=_not_source, symlinks=True)
        built = subprocess.run(
            [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", dist_dir],
            cwd=tree,
            capture_output=True,
            text=True,
        )
    if built.returncode != 0:
        last = (built.stderr or built.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UsageError(
            f"--setup_file={setup_file}: building the sdist workers install failed "
            f"(python setup.py sdist, exit {built.returncode}): {last[0]}; "
            "run that command in the file's folder to see the whole output"
        )
    found = sorted(Path(dist_dir).glob("*.tar.gz"))
    if not found:
        raise UsageError(
            f"--setup_file={setup_file}: python setup.py sdist made no "
            f"*.tar.gz in {dist_dir}; check the project's packaging configuration"
        )
    return str(found[0])


@contextlib.contextmanager
def setup_package_built_outside_checkout() -> Iterator[None]:
    """While a Dataflow pipeline is built, Beam's stager builds the ``--setup_file``
    sdist with :func:`build_setup_package`. Beam 2.77 runs ``python -m build`` (absent
    here: "No module named build" on stderr) then ``python setup.py sdist`` in the
    checkout itself, leaving ``*.egg-info`` there and setuptools' warnings on stderr; it
    has no option for either. A ``--setup_file=pyproject.toml`` (which needs ``build``)
    or a caller's own ``build_setup_args`` still goes to Beam."""
    from apache_beam.runners.portability.stager import Stager

    original = Stager.__dict__["_build_setup_package"]

    def build(setup_file: str, temp_dir: str, build_setup_args: list[str] | None = None) -> str:
        if build_setup_args is not None or Path(setup_file).name != "setup.py":
            return str(original.__func__(setup_file, temp_dir, build_setup_args))
        return build_setup_package(setup_file, temp_dir)

    Stager._build_setup_package = staticmethod(build)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Stager._build_setup_package = original  # type: ignore[method-assign]


def user_steps(pipeline: beam_runner_api_pb2.Pipeline) -> tuple[str, ...]:
    """The pipeline's steps as batchscore wrote them, in order: its own composite
    transforms are opened up, Beam's built-in ones (Create, Reshuffle) named whole."""
    transforms = pipeline.components.transforms
    names: list[str] = []

    def visit(transform_id: str) -> None:
        transform = transforms[transform_id]
        # The runner wraps the whole graph in one transform without a spec.
        if not transform.spec.urn or transform.spec.urn == GENERIC_COMPOSITE:
            for child in transform.subtransforms:
                visit(child)
        else:
            names.append(transform.unique_name)

    for root in pipeline.root_transform_ids:
        visit(root)
    return tuple(names)


def _artifacts(pipeline: beam_runner_api_pb2.Pipeline) -> list[tuple[str, str]]:
    """(local path, staged name) of every file the workers' environments depend on."""
    found: dict[str, str] = {}
    for environment in pipeline.components.environments.values():
        for dependency in environment.dependencies:
            if dependency.type_urn != common_urns.artifact_types.FILE.urn:
                continue
            payload = beam_runner_api_pb2.ArtifactFilePayload.FromString(dependency.type_payload)
            if dependency.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                    dependency.role_payload
                ).staged_name
            else:
                name = Path(payload.path).name
            found.setdefault(name, payload.path)
    return [(path, name) for name, path in sorted(found.items())]


def write_dry_run(result: Any, options: PipelineOptions) -> DryRunJob:
    """Describe (and, with a local --template_location, write) the job a dry run built.

    ``result`` is what ``Pipeline.run()`` returned under ``--dry_run=True``: Beam
    puts the built ``apiclient.Job`` on it.
    """
    from apache_beam.runners.dataflow.internal import apiclient

    job = result.job
    cloud = options.view_as(GoogleCloudOptions)
    proto_pipeline = job.proto_pipeline
    dry = DryRunJob(
        job_name=str(job.proto.name),
        project=str(cloud.project),
        region=str(cloud.region),
        steps=user_steps(proto_pipeline),
    )
    if not cloud.template_location:
        return dry
    template = Path(cloud.template_location).expanduser().resolve()
    staging = template.parent / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    staged = []
    for path, name in _artifacts(proto_pipeline):
        shutil.copyfile(path, staging / name)
        staged.append(name)
    serialized = proto_pipeline.SerializeToString()
    (staging / STAGED_PIPELINE).write_bytes(serialized)
    staged.append(STAGED_PIPELINE)
    # The environment Beam's create_job_description would attach after staging: the
    # package and pipeline locations are where Dataflow would find them (the job's
    # staging location), not these local copies.
    job.proto.environment = apiclient.Environment(
        packages=[name for _, name in _artifacts(proto_pipeline)],
        options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=FileSystems.join(
            job.google_cloud_options.staging_location, STAGED_PIPELINE
        ),
        proto_pipeline=proto_pipeline,
        pipeline_proto_hash=hashlib.sha256(serialized).hexdigest(),
    ).proto
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(job.json())
    return DryRunJob(
        job_name=dry.job_name,
        project=dry.project,
        region=dry.region,
        steps=dry.steps,
        template=template,
        staged=tuple(sorted(staged)),
    )


# What a classic template's launch gives its one step (runners.beam.BatchScoreOptions).
TEMPLATE_PARAMETERS = ("input", "model", "output")


class ScoreRunFn(beam.DoFn):
    """A classic template's step: the whole scoring job on one worker, with the input,
    model and output given at launch (Dataflow passes them to the worker as runtime
    pipeline options). ``job_main`` ("module:function") is the job's command line, run
    with ``fixed_argv`` (the options given when the template was made) and
    ``--runner=DirectRunner``: it plans, scores with the worker's threads and commits."""

    def __init__(self, job_main: str, fixed_argv: Sequence[str], options: PipelineOptions) -> None:
        from runners.beam import BatchScoreOptions

        self._job_main = job_main
        self._fixed = tuple(fixed_argv)
        view = options.view_as(BatchScoreOptions)
        self._parameters: dict[str, ValueProvider] = {
            name: getattr(view, name) for name in TEMPLATE_PARAMETERS
        }

    def display_data(self) -> dict[str, Any]:
        return {
            "job": f"{self._job_main} {' '.join(self._fixed)} with the launch's "
            f"{', '.join(TEMPLATE_PARAMETERS)}: plans, scores and commits the run on this worker"
        }

    def process(self, _: Any) -> Iterator[str]:
        values = {name: vp.get() for name, vp in self._parameters.items()}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise UsageError(
                f"template parameter(s) {', '.join(missing)}: missing; launch the template "
                "with --parameters=input=gs://...,model=NAME@ALIAS,output=gs://..."
            )
        module, _, function = self._job_main.partition(":")
        job_main = getattr(importlib.import_module(module), function)
        argv = [*self._fixed, *(f"--{n}={v}" for n, v in values.items()), "--runner=DirectRunner"]
        # The job's own (in-process) Beam runner clears the runtime options; a retry of
        # this step in the same worker needs them back.
        saved = RuntimeValueProvider.runtime_options
        try:
            code = job_main(argv)
        finally:
            RuntimeValueProvider.runtime_options = saved
        if code != 0:
            raise UsageError(
                f"the scoring job failed (exit {code}; its one-line error is in the worker's "
                f"log above): {self._job_main} {' '.join(argv)}"
            )
        yield str(values["output"])


def build_classic_template(
    pipeline_args: Sequence[str], job_main: str, fixed_argv: Sequence[str]
) -> str:
    """Make the classic template (``--template_location``; Beam stages it to GCS), or in a
    dry run write its job description locally. Returns what to tell the user."""
    options = PipelineOptions(list(pipeline_args))
    check_dataflow_options(options, classic_template=True)
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Launch" >> beam.Create([None])
        | "ScoreRun" >> beam.ParDo(ScoreRunFn(job_main, fixed_argv, options))
    )
    with setup_package_built_outside_checkout():
        result = pipeline.run()  # Beam makes the template and returns; nothing runs
    location = options.view_as(GoogleCloudOptions).template_location
    how = (
        "classic template: input, model and output are its runtime parameters; at launch "
        "one worker plans, scores and commits the run"
    )
    if options.view_as(TestOptions).dry_run:
        return f"{write_dry_run(result, options).describe()}\n  {how}"
    return (
        f"made the classic template {location} ({how}); launch it with: gcloud dataflow jobs "
        f"run NAME --gcs-location={location} --region=REGION "
        "--parameters=input=gs://...,model=NAME@ALIAS,output=gs://..."
    )


def is_classic_template(args: argparse.Namespace, pipeline_args: Sequence[str]) -> bool:
    """A Dataflow job with --template_location and none of --input, --model and --output:
    a classic template that takes them at launch (:func:`build_classic_template`).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--template_location")
    known, _ = parser.parse_known_args(list(pipeline_args))
    unset = all(value is None for value in (args.input, args.model, args.output))
    return args.runner == "DataflowRunner" and bool(known.template_location) and unset


def classic_template_fixed_argv(argv: Sequence[str], pipeline_args: Sequence[str]) -> list[str]:
    """What a classic template fixes: the options of the job given now (``argv``, the
    job's command line), less its Beam ``pipeline_args`` and --runner (the template's
    step runs the job on the worker with the DirectRunner)."""
    beam_args = list(pipeline_args)
    fixed: list[str] = []
    for arg in argv:
        if beam_args and arg == beam_args[0]:
            beam_args.pop(0)
        elif not arg.startswith("--runner="):
            fixed.append(arg)
    if "--runner" in fixed:
        at = fixed.index("--runner")
        del fixed[at : at + 2]
    return fixed


def dataflow_job_options(args: argparse.Namespace) -> list[str]:
    """On Dataflow, what the job scores as pipeline options too (runners.beam's
    BatchScoreOptions), so that the Dataflow UI and the job description show them."""
    if args.runner != "DataflowRunner":
        return []
    named = (("input", args.input), ("model", args.model), ("output", args.output))
    return [f"--{name}={value}" for name, value in named if value is not None]


# The Flex Template (deploy/dataflow/): its launcher runs jobs.score (deploy/dataflow/main.py)
# with the template's parameters, one for each option of its parser but these.
NOT_TEMPLATE_PARAMETERS = {
    "help": "not a job parameter",
    "runner": "the launcher always submits to Dataflow (--runner=DataflowRunner)",
    "spark_master": "PySparkRunner only",
    "spark_conf": "PySparkRunner only",
    "in_process_rows": "DirectRunner only",
}
# Parameters whose --help names the demo's local defaults, which do not apply on Dataflow:
# their text in the template, and whether they may be left out.
TEMPLATE_PARAMETER_TEXTS: dict[str, tuple[str, bool]] = {
    "input": (
        "A Parquet object or a prefix in GCS (searched recursively, dt= partitions included). "
        "Example: gs://my-bucket/loans/dt=2026-01-01",
        False,
    ),
    "model": (
        "NAME@VERSION or NAME@ALIAS registered in model_repo, or the gs:// URI of a registered "
        "version or SavedModel folder. Example: loan_default@production",
        False,
    ),
    "model_repo": ("The model repository in GCS. Example: gs://my-bucket/models", True),
    "output": (
        "Output root in GCS; the run is committed under OUTPUT/<model>/<version>/run=<id>/ "
        "without rename (docs/commit-protocol.md). Example: gs://my-bucket/scores",
        False,
    ),
    "public_key": (
        "PEM EC public key the model's signature must verify with (scoring refuses unsigned "
        "or changed models). Example: gs://my-bucket/keys/public_key.pem",
        True,
    ),
}
FLEX_TEMPLATE_DESCRIPTION = (
    "Scores Parquet data with a signed TensorFlow SavedModel (tf.Transform preprocessing "
    "included) on Dataflow and commits a versioned run: OUTPUT/<model>/<version>/run=<id>/ "
    "with predictions, dead-letter rows and a manifest. input, model_repo, public_key and "
    "output are gs:// URIs (no shared file system is needed; see README.md, Dataflow). "
    "Flags take true or false."
)
FLEX_TEMPLATE_METADATA = Path("deploy") / "dataflow" / "metadata.json"
FLEX_TEMPLATE_SPEC = "flex_template.json"


def _template_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest not in NOT_TEMPLATE_PARAMETERS]


def flex_template_metadata(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The Flex Template's metadata (``gcloud dataflow flex-template build
    --metadata-file``): a parameter for every option of the job's ``parser``
    (jobs.score's) the launcher takes, with its --help text. deploy/dataflow/metadata.json
    is this, as :func:`write_flex_template_metadata` writes it (tests/test_dataflow.py
    compares)."""
    parameters = []
    for action in _template_actions(parser):
        help_text, optional = TEMPLATE_PARAMETER_TEXTS.get(
            action.dest, (" ".join(parser._get_formatter()._expand_help(action).split()), True)
        )
        parameter: dict[str, Any] = {
            "name": action.dest,
            "label": action.dest.replace("_", " ").capitalize(),
            "helpText": help_text,
            "isOptional": optional,
        }
        if action.nargs == 0:  # a flag: true or false (flex_template_argv)
            parameter["regexes"] = ["^(true|false)$"]
        elif action.choices:
            parameter["regexes"] = [f"^({'|'.join(map(str, action.choices))})$"]
        parameters.append(parameter)
    return {
        "name": "batchscore",
        "description": FLEX_TEMPLATE_DESCRIPTION,
        "parameters": parameters,
    }


def write_flex_template_metadata(
    parser: argparse.ArgumentParser, path: Path = FLEX_TEMPLATE_METADATA
) -> None:
    """(Re)write deploy/dataflow/metadata.json from the job's ``parser`` after an option
    of jobs.score changed:
    ``python -c "from jobs.score import write_flex_template_metadata as w; w()"``."""
    path.write_text(json.dumps(flex_template_metadata(parser), indent=2) + "\n")


def flex_template_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The launcher's arguments as the job whose ``parser`` this is takes them
    (deploy/dataflow/main.py): Dataflow passes every parameter as ``--name=value``, so a
    flag's ``--FLAG=true`` becomes ``--FLAG`` and ``--FLAG=false`` is dropped; the runner
    is Dataflow."""
    flags = {
        option for a in _template_actions(parser) if a.nargs == 0 for option in a.option_strings
    }
    args: list[str] = []
    for arg in argv:
        option, _, value = arg.partition("=")
        if option in flags and value.lower() in ("true", "false"):
            args += [option] if value.lower() == "true" else []
        else:  # anything else is jobs.score's to accept or refuse (in one line)
            args.append(arg)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=DataflowRunner")
    return args


def write_flex_template_spec(parser: argparse.ArgumentParser, pipeline_args: Sequence[str]) -> str:
    """After a Dataflow dry run with --template_location: the Flex Template spec (what
    ``gcloud dataflow flex-template build`` writes: image, sdkInfo, metadata from the
    job's ``parser``) beside it, for the --sdk_container_image (deploy/dataflow/Dockerfile
    builds one image for the launcher and the workers). Returns the line that says what
    was written, if anything."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--template_location")
    options.add_argument("--sdk_container_image")
    known, _ = options.parse_known_args(list(pipeline_args))
    if not known.template_location:
        return ""
    spec = Path(known.template_location).expanduser().resolve().parent / FLEX_TEMPLATE_SPEC
    if not known.sdk_container_image:
        return (
            f"  flex template not written: give --sdk_container_image=IMAGE (built from "
            f"deploy/dataflow/Dockerfile; also the launcher's image) to get {spec}"
        )
    document = {
        "image": known.sdk_container_image,
        "sdkInfo": {"language": "PYTHON"},
        "metadata": flex_template_metadata(parser),
    }
    spec.write_text(json.dumps(document, indent=2) + "\n")
    return f"  flex template {spec} (image {known.sdk_container_image})"
