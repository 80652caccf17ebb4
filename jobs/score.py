"""Score Parquet data with a TensorFlow SavedModel and write a versioned, committed run.

    python -m jobs.score --runner=DirectRunner                 # the demo, end to end
    python -m jobs.score --input=DATA --model=NAME@VERSION --output=OUT [Beam options]

Arguments are checked first (input files and their footers, the model, the
output folder), so a mistake fails in seconds, before Beam or TensorFlow start.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.api import OutcomeExporter
from batch.api import score as api_score
from batch.core.errors import BatchScoreError
from batch.core.imports import pause_collection, settle_collection
from batch.demo import paths as demo_paths
from batch.demo.data import input_or_demo
from batch.engine.inputs import DEFAULT_SPLIT_ROWS
from batch.engine.job import Runner, RunSummary
from batch.engine.prepare import trust_policy
from batch.model.loading import preload_model, quiet_tensorflow, wait_for_tensorflow_import
from batch.model.native import load_tensorflow_libraries, release_stderr
from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.signature import SignatureChoice
from batch.model.signing import short
from jobs.cli import (
    apply_storage_options,
    build_score_parser,
    exit_process,
    non_negative_int,
    preload_module,
    run_main,
    score_request,
    setup_logging,
)
from runners import in_process_limit, is_dry_run, make_runner

PROG = "python -m jobs.score"


def build_parser() -> argparse.ArgumentParser:
    parser = build_score_parser(PROG)
    parser.add_argument(
        "--in_process_rows",
        type=non_negative_int,
        default=DEFAULT_SPLIT_ROWS,
        metavar="ROWS",
        help="With --runner=DirectRunner and no other Beam option: an input of at most this "
        "many rows is scored in this process without starting Beam, whose import and "
        "pipeline are most of a small job's time (about 1 s); the run, its checks and its "
        "outputs are the same, and the manifest's runner says in-process. 0: always start "
        "Beam. Default: %(default)s (one split's worth).",
    )
    return parser


def write_flex_template_metadata(path: Path | None = None) -> None:
    """(Re)write deploy/dataflow/metadata.json after an option of this job changed
    (runners.dataflow.write_flex_template_metadata with this job's parser):
    ``python -c "from jobs.score import write_flex_template_metadata as w; w()"``."""
    from runners.dataflow import FLEX_TEMPLATE_METADATA
    from runners.dataflow import write_flex_template_metadata as write

    write(build_parser(), path or FLEX_TEMPLATE_METADATA)


def _is_classic_template(args: argparse.Namespace, pipeline_args: Sequence[str]) -> bool:
    # runners.dataflow imports Beam: not this early for a job on another runner or with
    # --input, --model or --output (a no-op rerun or a refused argument imports no Beam).
    if args.runner != "DataflowRunner" or any(
        value is not None for value in (args.input, args.model, args.output)
    ):
        return False
    from runners.dataflow import is_classic_template

    return is_classic_template(args, pipeline_args)


def _dataflow_job_options(args: argparse.Namespace) -> list[str]:
    if args.runner != "DataflowRunner":  # no runners.dataflow (Beam) for other runners
        return []
    from runners.dataflow import dataflow_job_options

    return dataflow_job_options(args)


def _print_flex_template_spec(pipeline_args: Sequence[str]) -> None:
    from runners.dataflow import write_flex_template_spec

    flex = write_flex_template_spec(build_parser(), pipeline_args)
    if flex:
        print(flex)


def _make_classic_template(argv: Sequence[str] | None, pipeline_args: Sequence[str]) -> int:
    from runners.dataflow import build_classic_template, classic_template_fixed_argv

    fixed = classic_template_fixed_argv(sys.argv[1:] if argv is None else argv, pipeline_args)
    print(
        build_classic_template(
            ["--runner=DataflowRunner", *pipeline_args], "jobs.score:main", fixed
        )
    )
    _print_flex_template_spec(pipeline_args)
    return 0


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
    if _is_classic_template(args, pipeline_args):
        return run_main(lambda: _make_classic_template(argv, pipeline_args), PROG)
    quiet_tensorflow()
    # No cyclic garbage collection while TensorFlow (and Beam) import: it walks their
    # objects again and again (batch.core.imports). It is back on once the process has
    # loaded the model, or at once where the workers are other processes.
    pause_collection()
    if scores_in_this_process(args.runner, pipeline_args) and not is_dry_run(pipeline_args):
        # This process will import TensorFlow (unless the input turns out to be up to
        # date): its native libraries load on another core, without the GIL, while the
        # checks run; the import then finds them loaded (batch.model.native).
        load_tensorflow_libraries()
    exporter = OutcomeExporter(
        PROG,
        args.summary_file,
        args.metrics_textfile,
        args.pushgateway,
        input_spec=args.input,
    )

    def on_scoring(model: ResolvedModel, in_process: bool) -> None:
        # The arguments, the input's footers, the output folder and the up-to-date check
        # are done (a no-op rerun imports neither TensorFlow nor Beam): the imports
        # (seconds) overlap what follows (the model's signature check, input checks,
        # planning). A job scored in this process imports no Beam at all.
        if in_process or scores_in_this_process(args.runner, pipeline_args):
            # TensorFlow imported and the model verified, loaded and its first call
            # prepared in the background: the worker (this process) then finds it ready.
            # Beam's DirectRunner, if it runs here, is imported after TensorFlow (runner).
            trust = trust_policy(args.public_key, args.allow_unsigned)
            preload_model(
                model, trust, SignatureChoice(args.signature, args.tag, args.input_format)
            )
            return
        if args.runner != "PySparkRunner" and not is_dry_run(pipeline_args):
            preload_module("runners.beam")
        settle_collection()  # this process loads no model: its start-up ends here

    def runner() -> Runner:
        if scores_in_this_process(args.runner, pipeline_args):
            # Beam's import waits for TensorFlow's (preload_model started it): at once,
            # the two take turns on the GIL and wait on each other's module locks; one
            # after the other, Beam's overlaps the model's load and the preparation of its
            # first call, which run mostly without the GIL. A 10M-row job's first batch
            # is scored about 0.9 s sooner (docs/benchmarks.md, fifteenth look).
            wait_for_tensorflow_import()
        return make_runner(
            args.runner,
            [*pipeline_args, *_dataflow_job_options(args)],
            args.spark_master,
            args.spark_conf or (),
        )

    def score() -> int:
        request = score_request(
            args,
            input=input_or_demo(args.input),
            output=args.output or demo_paths.demo_default("--output", demo_paths.demo_output_dir),
            runner=runner,
            model=_demo_model(args.model_repo) if args.model is None else args.model,
            dry_run=is_dry_run(pipeline_args),
            started=started,
            on_outcome=exporter.report,
            on_model=exporter.set_model,
            on_scoring=on_scoring,
            in_process_rows=in_process_limit(
                args.runner,
                pipeline_args,
                args.in_process_rows,
                args.spark_master,
                args.spark_conf or (),
            ),
        )
        outcome = api_score(request)
        if outcome.status == "dry_run":
            print(outcome.message)
            _print_flex_template_spec(pipeline_args)
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
    settle_collection()  # a job that ended before loading its model (main called in-process)
    # A job that ended before TensorFlow's import (which gives it back) still holds
    # stderr for its libraries' load: its last words go out now, not at exit_process.
    release_stderr()
    if code != 0 and not exporter.reported:
        # Failed before any check ran (arguments, input, model): still tell the alerting side.
        exporter.report_failure(exporter.last_error)
    return code


# Beam's DirectRunner modes whose workers are threads of the process that runs the job.
THREAD_MODES = ("in_memory", "multi_threading")


def scores_in_this_process(runner: str, pipeline_args: Sequence[str]) -> bool:
    """Whether the job's workers are this process: Beam's DirectRunner in its default mode
    (in_memory) or with worker threads (multi_threading), not with worker processes
    (multi_processing)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--direct_running_mode", default="in_memory")
    known, _ = parser.parse_known_args(list(pipeline_args))
    return runner == "DirectRunner" and known.direct_running_mode in THREAD_MODES


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
