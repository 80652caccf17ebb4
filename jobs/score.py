"""Score Parquet data with a TensorFlow SavedModel and write a versioned, committed run.

    python -m jobs.score --runner=DirectRunner                 # the demo, end to end
    python -m jobs.score --input=DATA --model=NAME@VERSION --output=OUT [Beam options]

Arguments are checked first (input files and their footers, the model, the
output folder), so a mistake fails in seconds, before Beam or TensorFlow start.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.api import OutcomeExporter
from batch.api import score as api_score
from batch.core.errors import BatchScoreError
from batch.demo import paths as demo_paths
from batch.demo.data import input_or_demo
from batch.engine.job import RunSummary
from batch.engine.prepare import trust_policy
from batch.model.loading import preload_model, quiet_tensorflow
from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.signature import SignatureChoice
from batch.model.signing import short
from jobs.cli import (
    apply_storage_options,
    build_score_parser,
    exit_process,
    preload_module,
    run_main,
    score_request,
    setup_logging,
)
from runners import is_dry_run, make_runner

PROG = "python -m jobs.score"


def build_parser() -> argparse.ArgumentParser:
    return build_score_parser(PROG)


# The Flex Template (deploy/dataflow/): its launcher runs this job (deploy/dataflow/main.py)
# with the template's parameters, one for each option of build_parser() but these.
NOT_TEMPLATE_PARAMETERS = {
    "help": "not a job parameter",
    "runner": "the launcher always submits to Dataflow (--runner=DataflowRunner)",
    "spark_master": "PySparkRunner only",
    "spark_conf": "PySparkRunner only",
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


def _template_actions() -> list[argparse.Action]:
    return [a for a in build_parser()._actions if a.dest not in NOT_TEMPLATE_PARAMETERS]


def flex_template_metadata() -> dict[str, Any]:
    """The Flex Template's metadata (``gcloud dataflow flex-template build
    --metadata-file``): a parameter for every option of this job the launcher takes, with
    its --help text. deploy/dataflow/metadata.json is this, as
    :func:`write_flex_template_metadata` writes it (tests/test_dataflow.py compares)."""
    parser = build_parser()
    parameters = []
    for action in _template_actions():
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


def write_flex_template_metadata(path: Path = FLEX_TEMPLATE_METADATA) -> None:
    """(Re)write deploy/dataflow/metadata.json after an option of jobs.score changed:
    ``python -c "from jobs.score import write_flex_template_metadata as w; w()"``."""
    path.write_text(json.dumps(flex_template_metadata(), indent=2) + "\n")


def flex_template_argv(argv: Sequence[str]) -> list[str]:
    """The launcher's arguments as this job takes them (deploy/dataflow/main.py): Dataflow
    passes every parameter as ``--name=value``, so a flag's ``--FLAG=true`` becomes
    ``--FLAG`` and ``--FLAG=false`` is dropped; the runner is Dataflow."""
    flags = {option for a in _template_actions() if a.nargs == 0 for option in a.option_strings}
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


def write_flex_template_spec(pipeline_args: Sequence[str]) -> str:
    """After a Dataflow dry run with --template_location: the Flex Template spec (what
    ``gcloud dataflow flex-template build`` writes: image, sdkInfo, metadata) beside it,
    for the --sdk_container_image (deploy/dataflow/Dockerfile builds one image for the
    launcher and the workers). Returns the line that says what was written, if anything."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--template_location")
    parser.add_argument("--sdk_container_image")
    known, _ = parser.parse_known_args(list(pipeline_args))
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
        "metadata": flex_template_metadata(),
    }
    spec.write_text(json.dumps(document, indent=2) + "\n")
    return f"  flex template {spec} (image {known.sdk_container_image})"


def is_classic_template(args: argparse.Namespace, pipeline_args: Sequence[str]) -> bool:
    """A Dataflow job with --template_location and none of --input, --model and --output:
    a classic template that takes them at launch (runners.dataflow.build_classic_template).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--template_location")
    known, _ = parser.parse_known_args(list(pipeline_args))
    unset = all(value is None for value in (args.input, args.model, args.output))
    return args.runner == "DataflowRunner" and bool(known.template_location) and unset


def _make_classic_template(argv: Sequence[str] | None, pipeline_args: Sequence[str]) -> int:
    from runners.dataflow import build_classic_template

    # What the template fixes: the options of this job given now, less --runner (its step
    # runs the job on the worker with the DirectRunner).
    beam_args = list(pipeline_args)
    fixed: list[str] = []
    for arg in sys.argv[1:] if argv is None else argv:
        if beam_args and arg == beam_args[0]:
            beam_args.pop(0)
        elif not arg.startswith("--runner="):
            fixed.append(arg)
    if "--runner" in fixed:
        at = fixed.index("--runner")
        del fixed[at : at + 2]
    print(
        build_classic_template(
            ["--runner=DataflowRunner", *pipeline_args], "jobs.score:main", fixed
        )
    )
    flex = write_flex_template_spec(pipeline_args)
    if flex:
        print(flex)
    return 0


def dataflow_job_options(args: argparse.Namespace) -> list[str]:
    """On Dataflow, what the job scores as pipeline options too (runners.beam's
    BatchScoreOptions), so that the Dataflow UI and the job description show them."""
    if args.runner != "DataflowRunner":
        return []
    named = (("input", args.input), ("model", args.model), ("output", args.output))
    return [f"--{name}={value}" for name, value in named if value is not None]


def format_summary(summary: RunSummary) -> str:
    manifest = summary.manifest
    counts = manifest.counts
    reasons = ", ".join(f"{k}: {v:,}" for k, v in counts.rejected_by_reason.items()) or "none"
    skipped = manifest.input.get("skipped_files", [])
    lines = [
        f"run {summary.run.run_id} committed",
        f"  model        {summary.run.model_name}@{summary.run.model_version}"
        f"{_trust_note(manifest.model)}",
        *_canary_lines(manifest.extra),
        f"  rows in      {counts.rows_in:,}",
        f"  scored       {counts.rows_scored:,}",
        f"  rejected     {counts.rows_rejected:,} ({reasons})",
        f"  error rate   {counts.error_rate:.4%} (budget {counts.max_error_rate:.4%})",
        f"  wall time    {summary.wall_seconds:.1f}s (start-up included)",
        f"  throughput   {summary.predictions_per_second:,.0f} predictions/s",
        f"  output       {summary.run.run_dir}",
    ]
    oov = (manifest.contract or {}).get("passed_to_oov") or {}
    if oov:
        lines.append(
            f"  passed to OOV {sum(oov.values()):,} unseen categories ("
            + ", ".join(f"{k}: {v:,}" for k, v in oov.items())
            + "), counted in the manifest (contract.passed_to_oov)"
        )
    if skipped:
        lines.append(f"  skipped      {len(skipped)} bad file(s), listed in the manifest")
    ignored = manifest.input.get("ignored", [])
    if ignored:
        lines.append(
            f"  not read     {len(ignored)} path(s) that look like data, listed in the "
            "manifest (input.ignored)"
        )
    lines.append(f"  drift        {_drift_note(manifest.drift or {})}")
    status = summary.summary.get("status", "ok")
    problems = [c for c in manifest.checks if c["status"] != "ok"]
    lines.append(
        f"  status       {status}" + (f" ({len(problems)} check(s) not ok)" if problems else "")
    )
    lines += [f"    {c['status'].upper()}: {c['message']}" for c in problems[:10]]
    lines += [f"    WARN: {warning}" for warning in summary.run.warnings]
    return "\n".join(lines)


def _canary_lines(manifest: dict[str, Any]) -> list[str]:
    canary = manifest.get("canary")
    if not canary:
        return []
    model = canary["model"]
    by_model = ", ".join(f"{label}: {rows:,}" for label, rows in canary["rows_scored"].items())
    return [
        f"  canary       {model['name']}@{model['version']}{_trust_note(model)}",
        f"  split        {canary['fraction']:.1%} of keys to the canary; scored by {by_model or 'none'}",
    ]


def _drift_note(drift: dict[str, Any]) -> str:
    entries = [
        *drift.get("features", []),
        *([drift["prediction"]] if drift.get("prediction") else []),
    ]
    if not entries:
        return drift.get("note", "not computed")
    top = max(entries, key=lambda e: e["psi"])
    return (
        f"{drift['status']} ({len(entries)} compared with the training baseline; "
        f"largest PSI {top['psi']:.3f} on {top['name']})"
    )


def _trust_note(model: dict[str, Any]) -> str:
    signature = model.get("signature") or {}
    alias = f" (as @{model['alias']})" if model.get("alias") else ""
    if signature.get("verified"):
        return f"{alias}, signature verified (key {short(signature.get('key_fingerprint'))})"
    return f"{alias}, UNVERIFIED (--allow_unsigned)"


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args, pipeline_args = build_parser().parse_known_args(argv)
    setup_logging(args.verbose)
    apply_storage_options(args)
    if is_classic_template(args, pipeline_args):
        return run_main(lambda: _make_classic_template(argv, pipeline_args), PROG)
    quiet_tensorflow()
    exporter = OutcomeExporter(
        PROG,
        args.summary_file,
        args.metrics_textfile,
        args.pushgateway,
        input_spec=args.input,
    )

    def on_scoring(model: ResolvedModel) -> None:
        # The arguments, the input's footers, the output folder and the up-to-date check
        # are done (a no-op rerun imports neither TensorFlow nor Beam): the imports
        # (seconds) overlap what follows (the model's signature check, input checks,
        # planning).
        if args.runner != "PySparkRunner" and not is_dry_run(pipeline_args):
            preload_module("runners.beam")
        if scores_in_this_process(args.runner, pipeline_args):
            # TensorFlow imported and the model verified and loaded in the background:
            # the worker (this process) then finds it loaded.
            trust = trust_policy(args.public_key, args.allow_unsigned)
            preload_model(
                model, trust, SignatureChoice(args.signature, args.tag, args.input_format)
            )

    def score() -> int:
        request = score_request(
            args,
            input=input_or_demo(args.input),
            output=args.output or demo_paths.demo_default("--output", demo_paths.demo_output_dir),
            runner=lambda: make_runner(
                args.runner,
                [*pipeline_args, *dataflow_job_options(args)],
                args.spark_master,
                args.spark_conf or (),
            ),
            model=_demo_model(args.model_repo) if args.model is None else args.model,
            dry_run=is_dry_run(pipeline_args),
            started=started,
            on_outcome=exporter.report,
            on_model=exporter.set_model,
            on_scoring=on_scoring,
        )
        outcome = api_score(request)
        if outcome.status == "dry_run":
            print(outcome.message)
            flex = write_flex_template_spec(pipeline_args)
            if flex:
                print(flex)
        elif outcome.status == "up_to_date":
            assert outcome.run is not None
            print(f"up to date: {outcome.run.run_dir}")
            canary = outcome.canary
            scored_by = outcome.model.label + (
                f" with canary {canary.model.label} on {canary.fraction:.1%} of keys"
                if canary
                else ""
            )
            print(
                f"  {scored_by} already scored this input (unchanged files, model, "
                "contract and keys); nothing to do. --force scores it again"
            )
            exporter.report_up_to_date(outcome.summary_json)
        else:
            assert outcome.summary is not None
            print(format_summary(outcome.summary))
        return 0

    def guarded() -> int:
        try:
            return score()
        except BatchScoreError as exc:
            exporter.last_error = str(exc)
            raise

    code = run_main(guarded, PROG)
    if code != 0 and not exporter.reported:
        # Failed before any check ran (arguments, input, model): still tell the alerting side.
        exporter.report_failure(exporter.last_error)
    return code


def scores_in_this_process(runner: str, pipeline_args: Sequence[str]) -> bool:
    """Whether the job's worker is this process: Beam's DirectRunner unless it runs its
    workers as processes (--direct_running_mode=multi_processing or subprocesses)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--direct_running_mode", default="in_memory")
    known, _ = parser.parse_known_args(list(pipeline_args))
    return runner == "DirectRunner" and known.direct_running_mode == "in_memory"


def _demo_model(model_repo: str | None) -> ResolvedModel:
    """The demo model of ``--model_repo`` (default: the demo's), trained and registered
    first if it has none."""
    demo_paths.demo_default("--model", demo_paths.demo_model_repo)
    repo = ModelRepository(demo_paths.model_repo_or_demo(model_repo, demo_paths.DEMO_MODEL_NAME))
    if not repo.versions(demo_paths.DEMO_MODEL_NAME):
        print(f"{PROG}: no demo model in {repo.root} yet; training it first (about a minute)")
        from training.trainer import train_and_register

        train_and_register(model_repo=repo.root)
    return repo.resolve(demo_paths.DEMO_MODEL_NAME)


if __name__ == "__main__":
    exit_process(main())
