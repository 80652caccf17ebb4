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

Only used with the DataflowRunner; uses Beam's Dataflow client classes
(pinned Beam version, covered by tests/test_dataflow.py).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
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


def check_dry_run_options(options: PipelineOptions) -> None:
    """What a dry run needs to stay offline: a local --template_location, and a valid
    --temp_location (or --staging_location) bucket, without which Beam tries to create a
    default bucket over the network (and waits minutes for it without one)."""
    cloud = options.view_as(GoogleCloudOptions)
    locations = [loc for loc in (cloud.temp_location, cloud.staging_location) if loc]
    if not any(GCS_PATH.match(loc) for loc in locations):
        raise UsageError(
            f"--temp_location={cloud.temp_location}: a Dataflow job needs a GCS path with a "
            "valid bucket name (3 to 63 characters: a-z, 0-9, -, _ and .), or Beam tries to "
            "create a default bucket over the network; e.g. --temp_location=gs://my-bucket/tmp "
            "(a dry run never touches it)"
        )
    location = cloud.template_location
    if location and "://" in location:
        raise UsageError(
            f"--template_location={location}: a dry run writes the job description locally "
            "and reaches no Google Cloud service; give a local path (e.g. "
            "--template_location=./dataflow/template.json), or drop --dry_run to create a "
            "template in GCS"
        )


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
