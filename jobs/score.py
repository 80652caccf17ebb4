"""Score Parquet data with a TensorFlow SavedModel and write a versioned, committed run.

    python -m jobs.score --runner=DirectRunner                 # the demo, end to end
    python -m jobs.score --input=DATA --model=NAME@VERSION --output=OUT [Beam options]

Arguments are checked first (input files and their footers, the model, the
output folder), so a mistake fails in seconds, before Beam or TensorFlow start.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batch.contract.contract import Contract, load_contract
from batch.core.errors import BatchScoreError, InputDataError, UsageError
from batch.core.fsutil import write_json_atomic
from batch.engine.inputs import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SPLIT_ROWS,
    BadFile,
    InputFile,
    find_input_files,
    inspect_inputs,
)
from batch.engine.job import (
    DEFAULT_MAX_ERROR_RATE,
    DryRunComplete,
    Runner,
    RunSummary,
    check_canary_signature,
    model_signature,
    run_scoring,
)
from batch.model.repository import ModelRepository, resolve_model
from batch.model.resolved import ResolvedModel
from batch.model.signing import TrustPolicy, short, verify_once
from batch.observe.checks import RunOutcome, run_summary
from batch.observe.drift import DEFAULT_MAX_PSI, DEFAULT_MAX_UNSEEN_SHARE, DriftThresholds
from batch.observe.progress import LOG_EVERY_S
from batch.ops.incremental import find_up_to_date_run
from batch.output.commit import new_run_id
from batch.release.routing import Canary
from jobs import demo_paths
from jobs.cli import (
    exit_process,
    fraction,
    non_negative_float,
    open_fraction,
    positive_float,
    positive_int,
    run_main,
    setup_logging,
)

PROG = "python -m jobs.score"
log = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Score Parquet data with a TensorFlow SavedModel (its tf.Transform preprocessing "
            "included) and write the predictions as a new, committed, versioned run: "
            "OUTPUT/<model>/<version>/run=<run id>/ with predictions/, rejected/ (dead-letter "
            "rows with a reason), _MANIFEST.json and _SUCCESS. With no arguments it scores the "
            "demo data with the demo model, creating both if they are missing."
        ),
        epilog=(
            "Any other --option is passed to Apache Beam as a pipeline option, e.g. "
            "--direct_num_workers=2 --direct_running_mode=multi_processing, or "
            "--runner=DataflowRunner --project=P --region=R --temp_location=gs://... "
            "See README.md for Dataflow and Spark."
        ),
    )
    parser.add_argument(
        "--input",
        help="Parquet file, directory (searched recursively, hive partitions such as "
        "dt=2026-01-01/ included) or glob. Default: the demo data in "
        f"{demo_paths.demo_data_dir()} (generated if missing).",
    )
    parser.add_argument(
        "--model",
        help="NAME, NAME@VERSION, NAME@latest or NAME@ALIAS (e.g. NAME@production, see "
        "`python -m jobs.models promote`) registered in --model_repo, or the path of "
        "any SavedModel directory whose serving_default signature takes one 1-D tensor per "
        f"input column. Default: {demo_paths.DEMO_MODEL_NAME} (trained first if missing).",
    )
    parser.add_argument(
        "--canary",
        help="Gray release: a second model (any form --model takes, e.g. NAME@canary) that "
        "scores --canary_fraction of the keys in the same run; --model scores the rest. Each "
        "prediction row's model_name and model_version say which scored it; the manifest "
        "records both models, the fraction and the rows each scored. The canary must have "
        "the same serving signature as --model and is verified the same way. Which keys go "
        "to it is a stable hash of --key_columns (README: Model versions), the same on every "
        "runner and rerun. Output goes under --model's name and version.",
    )
    parser.add_argument(
        "--canary_fraction",
        type=open_fraction,
        help="With --canary: the share of keys it scores, strictly between 0 and 1 (e.g. 0.1).",
    )
    parser.add_argument(
        "--model_repo",
        default=str(demo_paths.demo_model_repo()),
        help="Model repository folder for registered names (default: %(default)s).",
    )
    parser.add_argument(
        "--output",
        help="Output root; each run goes to OUTPUT/<model>/<version>/run=<run id>/. "
        f"Default: {demo_paths.demo_output_dir()}.",
    )
    parser.add_argument(
        "--runner",
        default="DirectRunner",
        help="PySparkRunner (batchscore's native Spark runner) or a Beam runner: DirectRunner "
        "(default), DataflowRunner, FlinkRunner, SparkRunner (Beam's portable runner) ...",
    )
    parser.add_argument(
        "--spark_master",
        help="With --runner=PySparkRunner: local[*], local[N] or spark://HOST:PORT. Default: "
        "the master spark-submit gives, else local[*].",
    )
    parser.add_argument(
        "--spark_conf",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="With --runner=PySparkRunner: Spark settings for the session, e.g. "
        "--spark_conf spark.executor.memory=4g (repeatable).",
    )
    parser.add_argument(
        "--key_columns",
        help="Comma-separated input columns copied to every output row to identify it. "
        "Default: the registered model's key columns; required for other models.",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="Rows per model call (default: %(default)s). Larger batches amortise the call "
        "overhead; smaller ones use less memory.",
    )
    parser.add_argument(
        "--split_rows",
        type=positive_int,
        default=DEFAULT_SPLIT_ROWS,
        help="About this many rows (whole row groups) per unit of parallel work "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--contract",
        help="Data contract the input must meet: a name under schemas/ (e.g. loans) or a "
        "folder holding schema.pbtxt and rules.toml. Rows that break it go to the "
        "dead-letter output. Default: the contract the registered model was trained with; "
        "none for other models (then only nulls and NaN/inf in model inputs are rejected).",
    )
    parser.add_argument(
        "--max_error_rate",
        type=fraction,
        default=DEFAULT_MAX_ERROR_RATE,
        help="Largest share of rejected rows a run may have and still commit (default: "
        "%(default)s, i.e. 0.1%%). Above it the run fails, commits nothing and shows counts "
        "by reason with example keys.",
    )
    parser.add_argument(
        "--on_bad_file",
        choices=("fail", "skip"),
        default="fail",
        help="What to do with an input file that is not readable Parquet (empty, truncated, "
        "another format) or whose schema differs from its siblings: fail the job naming it "
        "(default), or skip it and record it and the reason in the manifest.",
    )
    parser.add_argument(
        "--public_key",
        help="PEM EC public key the model's signature must verify with, on the driver and on "
        "every worker before TensorFlow loads the model. Default: $"
        f"{demo_paths.PUBLIC_KEY_ENV}, else the demo's key {demo_paths.demo_public_key()}. "
        "A registered model's signature is <version>/saved_model.sig; a SavedModel directory "
        "DIR's is DIR.sig beside it.",
    )
    parser.add_argument(
        "--allow_unsigned",
        action="store_true",
        help="Load a model that has no signature file (or check none when no public key is "
        "available), with a loud WARNING; recorded in the manifest as model.signature."
        "allow_unsigned. A model whose signature does not verify (changed, added or removed "
        "files, another key) is refused even so. A SavedModel can run arbitrary code: use "
        "only with models you trust.",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Score even if a committed run of the same model version already holds this "
        "input's predictions. Without it, a job whose input files (paths, sizes, mtimes, "
        "rows), model content, contract and key columns match a committed run under --output "
        "(whose error rate is within --max_error_rate) prints 'up to date: RUN_DIR' and exits "
        "0 without scoring.",
    )
    observe = parser.add_argument_group(
        "observability", "progress, drift, run-level checks and metrics (README: Observability)"
    )
    observe.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "off"),
        default="auto",
        help="Progress while scoring: a live bar (rows of the total, rate, ETA) on a terminal, "
        "else a log line on stderr every --progress_every seconds (auto, the default); or "
        "force bar, log, off.",
    )
    observe.add_argument(
        "--progress_every",
        type=positive_float,
        default=LOG_EVERY_S,
        metavar="SECONDS",
        help="Seconds between progress log lines when not on a terminal (default: %(default)s).",
    )
    observe.add_argument(
        "--drift",
        choices=("on", "off"),
        default="on",
        help="Compare every raw feature and the predictions with the model's training baseline "
        "(PSI; unseen-category share) and report it in the manifest (default: on; models "
        "without a baseline are reported as such).",
    )
    observe.add_argument(
        "--max_drift",
        metavar="PSI",
        type=non_negative_float,
        default=DEFAULT_MAX_PSI,
        help="Largest PSI a feature (or the predictions) may have (default: %(default)s).",
    )
    observe.add_argument(
        "--max_unseen_share",
        metavar="SHARE",
        type=fraction,
        default=DEFAULT_MAX_UNSEEN_SHARE,
        help="Largest share of a categorical's values unseen in training (default: %(default)s).",
    )
    observe.add_argument(
        "--on_drift",
        choices=("warn", "fail"),
        default="warn",
        help="Beyond --max_drift or --max_unseen_share: warn (commit, status warn; default) or "
        "fail (commit nothing, exit 2, like the error budget).",
    )
    observe.add_argument(
        "--summary_file",
        metavar="PATH",
        help="Also write the run summary as JSON here (status ok|warn|fail, run_dir, checks, "
        "counts, error_rate, drift_status, reason), whether the run committed or failed.",
    )
    observe.add_argument(
        "--metrics_textfile",
        metavar="PATH",
        help="Write the run's metrics in Prometheus text format to this file (for "
        "node_exporter's textfile collector; end the name in .prom).",
    )
    observe.add_argument(
        "--pushgateway",
        metavar="URL",
        help="Push the run's metrics to this Prometheus Pushgateway URL (job batchscore, "
        "grouped by model), e.g. http://pushgateway:9091.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress at INFO level.")
    return parser


def trust_policy(public_key: str | None, allow_unsigned: bool) -> TrustPolicy:
    """--public_key / --allow_unsigned as a policy; the default key may be absent (then
    only --allow_unsigned lets a model load), a key that was named must exist."""
    if public_key is not None:
        return TrustPolicy.from_key_file(public_key, allow_unsigned)
    default = demo_paths.default_public_key()
    if default.is_file():
        return TrustPolicy.from_key_file(default, allow_unsigned)
    return TrustPolicy(None, allow_unsigned, key_source=f"the default {default} does not exist")


def _canary(
    args: argparse.Namespace, repo: ModelRepository, model: ResolvedModel, trust: TrustPolicy
) -> Canary | None:
    """--canary and --canary_fraction, resolved and checked before any engine starts."""
    if args.canary is None:
        if args.canary_fraction is not None:
            raise UsageError(
                f"--canary_fraction={args.canary_fraction} needs --canary=MODEL (e.g. "
                f"--canary={model.name}@canary): the model that scores that share of keys"
            )
        return None
    if args.canary_fraction is None:
        raise UsageError(
            f"--canary={args.canary} needs --canary_fraction: the share of keys it scores, "
            "strictly between 0 and 1 (e.g. --canary_fraction=0.1)"
        )
    check_local_path("--canary", args.canary)
    canary = Canary(resolve_model(args.canary, repo), args.canary_fraction)
    verify_once(canary.model, trust)
    if model.metadata.get("signature") and canary.model.metadata.get("signature"):
        # Both recorded: check now, without TensorFlow (run_scoring checks every case).
        check_canary_signature(
            model, model_signature(model, trust), canary, model_signature(canary.model, trust)
        )
    return canary


def input_or_demo(spec: str | None) -> str:
    """``--input``, or the demo data (written on first use) when it was not given."""
    if spec is not None:
        return spec
    from jobs.make_demo import ensure_demo_data

    return str(ensure_demo_data(log=None))


def resolve_inputs(spec: str, on_bad_file: str) -> tuple[list[InputFile], list[BadFile]]:
    """The readable Parquet files of ``--input`` and the bad ones, by ``--on_bad_file``."""
    files, bad = inspect_inputs(find_input_files(spec))
    if bad and on_bad_file == "fail":
        listing = "\n  ".join(f"{b.path}: {b.reason}" for b in bad)
        raise InputDataError(
            f"{len(bad)} bad input file(s); remove or replace them, or pass "
            f"--on_bad_file=skip to score the others and record these in the manifest:\n  "
            + listing
        )
    for b in bad:
        log.warning("skipping %s: %s", b.path, b.reason)
    if not files:
        raise InputDataError(f"--input={spec}: every input file is bad; nothing to score")
    return files, bad


def job_contract(option: str | None, model: ResolvedModel) -> Contract | None:
    """``--contract``, else the contract the model was trained with, else none."""
    name = option or model.metadata.get("contract")
    return load_contract(str(name)) if name else None


def check_local_path(option: str, value: str | None) -> None:
    """Inputs, models and outputs are POSIX paths: the commit protocol needs atomic rename
    and flock (docs/commit-protocol.md), which object stores do not give."""
    if value and "://" in value:
        raise UsageError(
            f"{option}={value}: batchscore reads and writes file system paths only, not URLs; "
            "its commit protocol needs atomic rename and file locks, which object stores such "
            "as GCS or S3 lack. Put the data on a file system that the driver and every worker "
            "mount at the same path (a local disk, or an NFS share such as Filestore) and "
            "pass that path"
        )


def check_output_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"--output={output}: cannot write there ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc


def _default_model(repo: ModelRepository) -> ResolvedModel:
    if not repo.versions(demo_paths.DEMO_MODEL_NAME):
        print(f"{PROG}: no demo model in {repo.root} yet; training it first (about a minute)")
        from jobs import train

        train.main([f"--model_repo={repo.root}"])
    return repo.resolve(demo_paths.DEMO_MODEL_NAME)


def job_key_columns(
    option: str | None, model: ResolvedModel, contract: Contract | None
) -> list[str]:
    """``--key_columns``, else the model's recorded keys, else the contract's."""
    if option is not None:
        return [c.strip() for c in option.split(",") if c.strip()]
    recorded = model.metadata.get("key_columns") or (contract.key_columns if contract else ())
    if recorded:
        return [str(c) for c in recorded]
    raise UsageError(
        f"--key_columns is required for model {model.label}: it records no key columns. "
        "Name the input columns that identify a row, e.g. --key_columns=customer_id,dt"
    )


def is_dry_run(pipeline_args: Sequence[str]) -> bool:
    """Whether Beam's ``--dry_run`` is set, read the way Beam reads it (any value but an
    empty one counts), without importing Beam."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dry_run", default="")
    known, _ = parser.parse_known_args(list(pipeline_args))
    return bool(known.dry_run)


def make_runner(
    runner: str,
    pipeline_args: Sequence[str],
    spark_master: str | None = None,
    spark_conf: Sequence[str] = (),
) -> Runner:
    if runner == "PySparkRunner":
        if pipeline_args:
            raise UsageError(
                f"--runner=PySparkRunner takes no Beam options, found {' '.join(pipeline_args)}; "
                "pass Spark settings as --spark_conf KEY=VALUE"
            )
        from runners.pyspark import PySparkRunner, parse_spark_confs

        spark = PySparkRunner(spark_master, parse_spark_confs(spark_conf))
        spark.start()  # the JVM boots while the input and the model are checked
        return spark
    if spark_master is not None or spark_conf:
        raise UsageError(
            f"--spark_master and --spark_conf apply to --runner=PySparkRunner, not --runner={runner}"
        )
    from runners.beam import BeamRunner

    return BeamRunner([f"--runner={runner}", *pipeline_args])


def format_summary(summary: RunSummary) -> str:
    counts = summary.manifest["counts"]
    reasons = ", ".join(f"{k}: {v:,}" for k, v in counts["rejected_by_reason"].items()) or "none"
    skipped = summary.manifest["input"]["skipped_files"]
    lines = [
        f"run {summary.run.run_id} committed",
        f"  model        {summary.run.model_name}@{summary.run.model_version}"
        f"{_trust_note(summary.manifest['model'])}",
        *_canary_lines(summary.manifest),
        f"  rows in      {counts['rows_in']:,}",
        f"  scored       {counts['rows_scored']:,}",
        f"  rejected     {counts['rows_rejected']:,} ({reasons})",
        f"  error rate   {counts['error_rate']:.4%} (budget {counts['max_error_rate']:.4%})",
        f"  wall time    {summary.wall_seconds:.1f}s (start-up included)",
        f"  throughput   {summary.predictions_per_second:,.0f} predictions/s",
        f"  output       {summary.run.run_dir}",
    ]
    if skipped:
        lines.append(f"  skipped      {len(skipped)} bad file(s), listed in the manifest")
    drift = summary.manifest.get("drift") or {}
    lines.append(f"  drift        {_drift_note(drift)}")
    status = (summary.manifest.get("summary") or {}).get("status", "ok")
    problems = [c for c in summary.manifest.get("checks", []) if c["status"] != "ok"]
    lines.append(
        f"  status       {status}" + (f" ({len(problems)} check(s) not ok)" if problems else "")
    )
    lines += [f"    {c['status'].upper()}: {c['message']}" for c in problems[:10]]
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
    from batch.model.loading import quiet_tensorflow

    quiet_tensorflow()

    def score() -> int:
        input_spec = input_or_demo(args.input)
        for option, value in (
            ("--input", input_spec),
            ("--output", args.output),
            ("--model", args.model),
            ("--model_repo", args.model_repo),
        ):
            check_local_path(option, value)
        files, bad_files = resolve_inputs(input_spec, args.on_bad_file)
        repo = ModelRepository(args.model_repo)
        model = _default_model(repo) if args.model is None else resolve_model(args.model, repo)
        observer.model = model
        trust = trust_policy(args.public_key, args.allow_unsigned)
        verify_once(model, trust)  # refuse an untrusted model before Beam or Spark start
        canary = _canary(args, repo, model, trust)
        contract = job_contract(args.contract, model)
        key_columns = job_key_columns(args.key_columns, model, contract)
        output = Path(args.output) if args.output else demo_paths.demo_output_dir()
        dry_run = is_dry_run(pipeline_args)
        if not dry_run:  # a dry run writes nothing there
            check_output_writable(output)
        if not args.force and not dry_run:
            current = find_up_to_date_run(
                output,
                model=model,
                files=files,
                skipped_files=bad_files,
                contract=contract,
                key_columns=key_columns,
                max_error_rate=args.max_error_rate,
                canary=canary,
            )
            if current is not None:
                print(f"up to date: {current.run_dir}")
                scored_by = model.label + (
                    f" with canary {canary.model.label} on {canary.fraction:.1%} of keys"
                    if canary
                    else ""
                )
                print(
                    f"  {scored_by} already scored this input (unchanged files, model, "
                    "contract and keys); nothing to do. --force scores it again"
                )
                observer.report_up_to_date(current.run_id, current.run_dir)
                return 0
        runner = make_runner(args.runner, pipeline_args, args.spark_master, args.spark_conf or ())
        summary = run_scoring(
            input_spec=input_spec,
            files=files,
            model=model,
            output_root=output,
            key_columns=key_columns,
            runner=runner,
            run_id=new_run_id(),
            contract=contract,
            max_error_rate=args.max_error_rate,
            skipped_files=bad_files,
            batch_size=args.batch_size,
            split_rows=args.split_rows,
            started=started,
            trust=trust,
            canary=canary,
            drift=args.drift == "on",
            drift_thresholds=DriftThresholds(args.max_drift, args.max_unseen_share, args.on_drift),
            progress=args.progress,
            progress_every_s=args.progress_every,
            on_outcome=observer.report,
        )
        print(format_summary(summary))
        return 0

    observer = OutcomeObserver(args.summary_file, args.metrics_textfile, args.pushgateway)

    def guarded() -> int:
        try:
            return _reporting_dry_runs(score)
        except BatchScoreError as exc:
            observer.last_error = str(exc)
            raise

    code = run_main(guarded, PROG)
    if code != 0 and not observer.reported:
        # Failed before any check ran (arguments, input, model): still tell the alerting side.
        observer.report_failure(observer.last_error)
    return code


class OutcomeObserver:
    """Writes the run summary file and exports the Prometheus metrics of a run's outcome."""

    def __init__(
        self, summary_file: str | None, metrics_textfile: str | None, pushgateway: str | None
    ) -> None:
        self.summary_file = summary_file
        self.metrics_textfile = metrics_textfile
        self.pushgateway = pushgateway
        self.reported = False
        self.last_error = "the job failed before scoring; see the error above"
        # The model being scored, once resolved (failure summaries name it).
        self.model: ResolvedModel | None = None

    def report(self, outcome: RunOutcome) -> None:
        self.reported = True
        self._export(
            outcome.summary,
            outcome.metrics,
            outcome.drift,
            outcome.model_name,
            outcome.model_version,
        )

    def report_up_to_date(self, run_id: str, run_dir: Path) -> None:
        """Nothing was scored: an earlier committed run already holds this input's predictions."""
        self.reported = True
        summary = run_summary(
            run_id=run_id,
            run_dir=str(run_dir),
            reason="up to date: a committed run already holds this input's predictions",
            model=self.model.label if self.model is not None else None,
        )
        name, version = (self.model.name, self.model.version) if self.model else ("unknown",) * 2
        self._export(summary, None, None, name, version)

    def report_failure(self, reason: str) -> None:
        model = self.model
        summary = run_summary(
            run_id=None,
            run_dir=None,
            reason=reason,
            model=model.label if model is not None else None,
        )
        name = model.name if model is not None else "unknown"
        version = model.version if model is not None else "unknown"
        self._export(summary, None, None, name, version)

    def _export(
        self,
        summary: dict[str, Any],
        metrics: dict[str, Any] | None,
        drift: dict[str, Any] | None,
        model_name: str,
        model_version: str,
    ) -> None:
        # The run's outcome stands whatever happens here: an export that fails is worth a
        # loud line on stderr, not a different exit code.
        if self.summary_file:
            try:
                write_json_atomic(Path(self.summary_file), summary)
            except OSError as exc:
                print(
                    f"{PROG}: warning: --summary_file={self.summary_file}: cannot write it "
                    f"({exc.strerror or exc}); choose a writable path",
                    file=sys.stderr,
                )
        if not (self.metrics_textfile or self.pushgateway):
            return
        from batch.observe.prometheus import RunCollector, push, write_textfile

        collector = RunCollector(model_name, model_version, summary, metrics, drift)
        for enabled, export in (
            (self.metrics_textfile, lambda: write_textfile(str(self.metrics_textfile), collector)),
            (self.pushgateway, lambda: push(str(self.pushgateway), collector)),
        ):
            if enabled:
                try:
                    export()
                except UsageError as exc:
                    print(f"{PROG}: warning: {exc}", file=sys.stderr)


def _reporting_dry_runs(score: Callable[[], int]) -> int:
    try:
        return score()
    except DryRunComplete as done:
        print(done)
        return 0


if __name__ == "__main__":
    exit_process(main())
