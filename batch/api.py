"""batchscore's library API: one entry per job, importable without a command line.

    from batch.api import ScoreRequest, score
    from runners import make_runner

    outcome = score(ScoreRequest(
        input="data/2026-01-01", model="loan_default@production", model_repo="models",
        output="predictions", runner=lambda: make_runner("DirectRunner", []),
    ))
    print(outcome.status, outcome.run_dir)

Each ``jobs/*.py`` command parses its arguments into a request, calls the entry
here and renders the result; schedulers and tests may call the entries directly.
The engines are passed in (``runner``: a factory of a :class:`Runner`, e.g.
``runners.make_runner``), so this layer imports neither Beam nor Spark.

Entries: :func:`score`, :func:`compare`, :func:`verify`, :func:`report`
(and :func:`batch.ops.backfill.backfill` for backfills). Every outcome can be
written as JSON for a scheduler (:func:`write_summary_file`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batch.core import storage
from batch.core.errors import UsageError
from batch.core.fsutil import write_json_atomic, write_text_atomic
from batch.demo.paths import model_repo_or_demo
from batch.engine.inputs import (
    DEFAULT_BATCH_SIZE,
    check_input_output_disjoint,
)
from batch.engine.job import (
    DEFAULT_DRIFT_THRESHOLDS,
    DEFAULT_MAX_ERROR_RATE,
    DryRunComplete,
    Runner,
    RunSummary,
    ScoringRun,
    model_signature,
    run_scoring,
)
from batch.engine.local import InProcessRunner
from batch.engine.prepare import (
    OnBadFile,
    check_local_path,
    check_output_writable,
    job_contract,
    job_key_columns,
    resolve_inputs,
    trust_policy,
)
from batch.engine.sizing import DEFAULT_BATCH_BYTES
from batch.model.loading import plan_model_rows
from batch.model.repository import ModelRepository, resolve_model, who
from batch.model.resolved import ResolvedModel
from batch.model.signature import DEFAULT_CHOICE, SignatureChoice
from batch.model.signing import TrustPolicy, verify_once
from batch.observe.checks import FAIL, OK, RunOutcome, job_summary, run_summary
from batch.observe.drift import DriftThresholds
from batch.observe.progress import LOG_EVERY_S, ProgressMode
from batch.ops.backfill import DayResult, ScoreDay
from batch.ops.incremental import find_up_to_date_run
from batch.output.commit import CommittedRun, new_run_id, verify_run
from batch.release.canary import Canary, check_canary_signature
from batch.release.compare import (
    DEFAULT_TOP_N,
    Comparison,
    ComparisonRequest,
    blessing,
    compare_models,
    write_comparison,
)
from batch.release.evaluation import Thresholds
from batch.report.render import DEFAULT_SAMPLE_ROWS, ReportError, load_run, render_report


def write_summary_file(path: str | Path, summary: dict[str, Any], prog: str) -> None:
    """A job's outcome as JSON for schedulers; a path that cannot be written is a loud
    warning, never a different outcome."""
    try:
        write_json_atomic(Path(path), summary)
    except OSError as exc:
        print(
            f"{prog}: warning: --summary_file={path}: cannot write it "
            f"({exc.strerror or exc}); choose a writable path",
            file=sys.stderr,
        )


# -- score -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScoreRequest:
    """One scoring job: what ``python -m jobs.score`` is asked, as values.

    ``runner`` builds the engine when it is needed (not for an up-to-date input), e.g.
    ``lambda: runners.make_runner("DirectRunner", [])``. ``dry_run``: the runner only
    builds its job (Beam's ``--dry_run``); nothing is checked against the output.
    """

    input: str
    output: str | Path
    runner: Callable[[], Runner]
    model: str | ResolvedModel
    # None: the demo's repository, where the demo's defaults apply (batch.demo.paths).
    model_repo: str | Path | None = None
    public_key: str | Path | None = None
    allow_unsigned: bool = False
    contract: str | None = None
    key_columns: str | Sequence[str] | None = None
    canary: str | None = None
    canary_fraction: float | None = None
    force: bool = False
    dry_run: bool = False
    on_bad_file: OnBadFile = "fail"
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    # NaN/infinite predictions: written (True) or rejected as non_finite_prediction.
    keep_non_finite: bool = False
    # Rows per batch; None: chosen per split from the footers, batch_bytes of input a batch.
    batch_size: int | None = None
    batch_bytes: int = DEFAULT_BATCH_BYTES
    # Bytes each worker may use; None: its cgroup's or machine's memory less headroom.
    worker_memory: int | None = None
    # Rows per split; None: chosen for the engine (batch.engine.inputs.engine_split_rows).
    split_rows: int | None = None
    drift: bool = True
    drift_thresholds: DriftThresholds = DEFAULT_DRIFT_THRESHOLDS
    progress: ProgressMode = "off"
    progress_every_s: float = LOG_EVERY_S
    # When the job started (time.perf_counter()), so wall time includes start-up.
    started: float | None = None
    # The signature (and MetaGraph tags) to score with, and how its input is fed.
    signature: SignatureChoice = DEFAULT_CHOICE
    # Input columns copied into the prediction rows beside the keys.
    passthrough_columns: Sequence[str] = ()
    # Told the run's outcome (summary, metrics, drift) once committed or refused by a
    # check, e.g. to export metrics (batch.observe.prometheus).
    on_outcome: Callable[[RunOutcome], None] | None = None
    # Told the model once it is resolved (before anything can fail because of it).
    on_model: Callable[[ResolvedModel], None] | None = None
    # An input of at most this many rows is scored in this process, without ``runner``
    # (batch.engine.local: an engine's start is most of a small job's time); 0: never.
    in_process_rows: int = 0
    # Told the model once the run will score (not up to date, checks passed so far), and
    # whether it scores in this process (in_process_rows) rather than on ``runner``: the
    # caller may start the imports and the model load the run needs (jobs.score does,
    # in the background), so that a no-op rerun imports neither TensorFlow nor Beam. The
    # model's signature is verified next, while those imports run.
    on_scoring: Callable[[ResolvedModel, bool], None] | None = None


@dataclass(frozen=True)
class ScoreOutcome:
    """What a scoring job did: ``committed`` a new run, found the input ``up_to_date``
    (an earlier committed run holds its predictions), or built a ``dry_run`` job."""

    status: Literal["committed", "up_to_date", "dry_run"]
    model: ResolvedModel
    canary: Canary | None = None
    run: CommittedRun | None = None
    summary: RunSummary | None = None
    message: str = ""
    # The scheduler-facing summary (batch.observe.checks.run_summary); None for a dry run.
    summary_json: dict[str, Any] = field(default_factory=dict)


def resolve_canary(
    canary: str | None,
    fraction: float | None,
    repo: ModelRepository,
    model: ResolvedModel,
    trust: TrustPolicy,
    choice: SignatureChoice = DEFAULT_CHOICE,
) -> Canary | None:
    """A canary model and its share, resolved and checked before any engine starts (both
    models' ``choice`` of signature)."""
    if canary is None:
        if fraction is not None:
            raise UsageError(
                f"--canary_fraction={fraction} needs --canary=MODEL (e.g. "
                f"--canary={model.name}@canary): the model that scores that share of keys"
            )
        return None
    if fraction is None:
        raise UsageError(
            f"--canary={canary} needs --canary_fraction: the share of keys it scores, "
            "strictly between 0 and 1 (e.g. --canary_fraction=0.1)"
        )
    check_local_path("--canary", canary)
    resolved = Canary(resolve_model(canary, repo), fraction)
    verify_once(resolved.model, trust)
    if (
        choice.is_default
        and model.metadata.get("signature")
        and resolved.model.metadata.get("signature")
    ):
        # Both recorded: check now, without TensorFlow (run_scoring checks every case).
        check_canary_signature(
            model, model_signature(model, trust), resolved, model_signature(resolved.model, trust)
        )
    return resolved


def score(request: ScoreRequest) -> ScoreOutcome:
    """Check the request, then score and commit one run (or find the input up to date).

    Raises a :class:`batch.core.errors.BatchScoreError` whose message is one line that
    names what is wrong and how to fix it.
    """
    started = time.perf_counter() if request.started is None else request.started
    for option, value in (
        ("--input", request.input),
        ("--output", str(request.output)),
        ("--model", request.model if isinstance(request.model, str) else None),
        ("--model_repo", None if request.model_repo is None else str(request.model_repo)),
    ):
        check_local_path(option, value)
    output = request.output if storage.is_uri(str(request.output)) else Path(request.output)
    # Before the input is listed: an output inside it would be read as input.
    check_input_output_disjoint(request.input, output)
    inputs = resolve_inputs(request.input, request.on_bad_file)
    files, bad_files = inputs.files, inputs.bad
    if not request.dry_run:  # a dry run writes nothing there
        check_output_writable(output)
    repo = ModelRepository(model_repo_or_demo(request.model_repo, request.model))
    model = (
        request.model
        if isinstance(request.model, ResolvedModel)
        else resolve_model(request.model, repo)
    )
    if request.on_model is not None:
        request.on_model(model)
    trust = trust_policy(request.public_key, request.allow_unsigned)
    # The model's signature (about a second: its files hashed) is verified once the run
    # is known to score, while the imports on_scoring starts run; an untrusted model is
    # still refused before anything else fails, before Beam or Spark start, and on an
    # up-to-date rerun.
    current = None
    try:
        canary = resolve_canary(
            request.canary, request.canary_fraction, repo, model, trust, request.signature
        )
        contract = job_contract(request.contract, model)
        key_columns = job_key_columns(request.key_columns, model, contract)
        if not request.force and not request.dry_run:
            current = find_up_to_date_run(
                output,
                model=model,
                files=files,
                skipped_files=bad_files,
                contract=contract,
                key_columns=key_columns,
                max_error_rate=request.max_error_rate,
                canary=canary,
                signature=request.signature,
                passthrough_columns=request.passthrough_columns,
            )
    except Exception:
        verify_once(model, trust)  # an untrusted model is the error, whatever else is
        raise
    if current is not None:
        verify_once(model, trust)
        return ScoreOutcome(
            "up_to_date",
            model,
            canary,
            run=current,
            summary_json=run_summary(
                run_id=current.run_id,
                run_dir=str(current.run_dir),
                reason="up to date: a committed run already holds this input's predictions",
                model=model.label,
            ),
        )
    input_rows = sum(f.num_rows for f in files)
    limit = request.in_process_rows
    in_process = not request.dry_run and limit > 0 and input_rows <= limit
    # The rows a model loaded in this process would score (where this process is the
    # worker: in process, Beam's in-memory DirectRunner), for what pays at its load.
    plan_model_rows(input_rows)
    if request.on_scoring is not None:
        request.on_scoring(model, in_process)
    verify_once(model, trust)
    try:
        summary = run_scoring(
            ScoringRun(
                input_spec=request.input,
                files=files,
                model=model,
                output_root=output,
                key_columns=key_columns,
                run_id=new_run_id(),
                contract=contract,
                max_error_rate=request.max_error_rate,
                keep_non_finite=request.keep_non_finite,
                signature=request.signature,
                passthrough_columns=request.passthrough_columns,
                skip_bad_files=request.on_bad_file == "skip",
                skipped_files=bad_files,
                ignored_files=inputs.ignored,
                batch_size=request.batch_size,
                batch_bytes=request.batch_bytes,
                worker_memory=request.worker_memory,
                split_rows=request.split_rows,
                started=started,
                trust=trust,
                variant=canary,
                drift=request.drift,
                drift_thresholds=request.drift_thresholds,
                progress=request.progress,
                progress_every_s=request.progress_every_s,
            ),
            InProcessRunner(input_rows, limit) if in_process else request.runner(),
            on_outcome=request.on_outcome,
        )
    except DryRunComplete as done:
        return ScoreOutcome("dry_run", model, canary, message=str(done))
    return ScoreOutcome(
        "committed",
        model,
        canary,
        run=summary.run,
        summary=summary,
        summary_json=dict(summary.summary),
    )


def backfill_day_scorer(template: ScoreRequest) -> ScoreDay:
    """How a backfill (:func:`batch.ops.backfill.backfill`) scores each day: :func:`score`
    with ``template``'s options on the day's input and output, with the backfill's pinned
    model and the runner of its combined job."""

    def score_day(
        input_dir: Path | str, output: Path | str, model: ResolvedModel, runner: Runner
    ) -> DayResult:
        outcome = score(
            dataclasses.replace(
                template, input=str(input_dir), output=output, model=model, runner=lambda: runner
            )
        )
        if outcome.run is None:
            raise UsageError(
                f"{input_dir}: a backfill commits runs; it cannot do a {outcome.status}"
            )
        return DayResult(outcome.run, outcome.status == "up_to_date")

    return score_day


class OutcomeExporter:
    """Tells the scheduling side a scoring job's outcome: the summary file (JSON, for
    Airflow and backfills) and the Prometheus metrics (textfile, Pushgateway).

    The run's outcome stands whatever happens here: an export that fails is a loud
    warning line, not a different exit code.
    """

    def __init__(
        self,
        prog: str,
        summary_file: str | None,
        metrics_textfile: str | None = None,
        pushgateway: str | None = None,
        input_spec: str | None = None,
    ) -> None:
        self.prog = prog
        # The input scored: the metrics' dataset and partition labels.
        self.input_spec = input_spec
        self.summary_file = summary_file
        self.metrics_textfile = metrics_textfile
        self.pushgateway = pushgateway
        self.reported = False
        self.last_error = "the job failed before scoring; see the error above"
        # The model being scored, once resolved (failure summaries name it).
        self.model: ResolvedModel | None = None

    def set_model(self, model: ResolvedModel) -> None:
        self.model = model

    def report(self, outcome: RunOutcome) -> None:
        """A run committed or refused by a check (``ScoreRequest.on_outcome``)."""
        self._export(
            outcome.summary,
            outcome.metrics,
            outcome.drift,
            outcome.model_name,
            outcome.model_version,
        )

    def report_up_to_date(self, summary: dict[str, Any]) -> None:
        """Nothing was scored: an earlier committed run already holds this input's predictions."""
        self._export(summary, None, None, *self._model_name_version(), up_to_date=True)

    def report_failure(self, reason: str) -> None:
        model = self.model
        summary = run_summary(
            run_id=None,
            run_dir=None,
            reason=reason,
            model=model.label if model is not None else None,
        )
        self._export(summary, None, None, *self._model_name_version())

    def _model_name_version(self) -> tuple[str, str]:
        if self.model is None:
            return "unknown", "unknown"
        return self.model.name, self.model.version

    def _export(
        self,
        summary: dict[str, Any],
        metrics: dict[str, Any] | None,
        drift: dict[str, Any] | None,
        model_name: str,
        model_version: str,
        up_to_date: bool = False,
    ) -> None:
        self.reported = True
        if self.summary_file:
            write_summary_file(self.summary_file, summary, self.prog)
        if not (self.metrics_textfile or self.pushgateway):
            return
        from batch.observe.prometheus import RunCollector, push, run_labels, write_textfile

        labels = run_labels(model_name, model_version, self.input_spec)
        collector = (
            RunCollector(labels, summary, None, None, "up_to_date")
            if up_to_date
            else RunCollector.for_run(labels, summary, metrics, drift)
        )
        for enabled, export in (
            (self.metrics_textfile, lambda: write_textfile(str(self.metrics_textfile), collector)),
            (self.pushgateway, lambda: push(str(self.pushgateway), collector)),
        ):
            if enabled:
                try:
                    export()
                except UsageError as exc:
                    print(f"{self.prog}: warning: {exc}", file=sys.stderr)


# -- compare ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CompareRequest:
    """Compare a candidate model with a baseline on a sample of keys, and bless it if it
    passes (what ``python -m jobs.compare`` is asked)."""

    input: str
    baseline: str
    candidate: str
    output_root: str | Path
    # None: the demo's repository, where the demo's defaults apply (batch.demo.paths).
    model_repo: str | Path | None = None
    public_key: str | Path | None = None
    allow_unsigned: bool = False
    contract: str | None = None
    key_columns: str | Sequence[str] | None = None
    sample: float = 0.1
    thresholds: Thresholds = field(default_factory=Thresholds)
    on_bad_file: OnBadFile = "fail"
    score_output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    top_n: int = DEFAULT_TOP_N
    bless: bool = True


@dataclass(frozen=True)
class CompareOutcome:
    comparison: Comparison
    folder: Path
    # What happened to the blessing, in words ("blessed: ...", "not blessed (...)").
    blessed: str

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def summary_json(self) -> dict[str, Any]:
        """The outcome for schedulers (``--summary_file``)."""
        return job_summary(
            "compare",
            OK if self.passed else FAIL,
            verdict=self.comparison.report["verdict"],
            folder=str(self.folder),
            blessed=self.blessed,
            checks=self.comparison.report["checks"],
        )


def compare(request: CompareRequest) -> CompareOutcome:
    """Score the sample with both models, measure them against the thresholds, write the
    comparison folder, and bless a passing registered candidate (unless ``bless=False``)."""
    for option, value in (
        ("--input", request.input),
        ("--output", str(request.output_root)),
        ("--baseline", request.baseline),
        ("--candidate", request.candidate),
    ):
        check_local_path(option, value)
    output_root = Path(request.output_root)
    inputs = resolve_inputs(request.input, request.on_bad_file)
    files, bad_files = inputs.files, inputs.bad
    repo = ModelRepository(model_repo_or_demo(request.model_repo, request.baseline))
    baseline = resolve_model(request.baseline, repo)
    candidate = resolve_model(request.candidate, repo)
    trust = trust_policy(request.public_key, request.allow_unsigned)
    for model in (baseline, candidate):
        verify_once(model, trust)  # refuse an untrusted model before TensorFlow starts
    contract = job_contract(request.contract, baseline)
    key_columns = tuple(job_key_columns(request.key_columns, baseline, contract))
    folder = output_root / f"compare={new_run_id()}"
    try:
        output_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--output={output_root}: cannot create it ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc
    comparison = compare_models(
        ComparisonRequest(
            input_spec=request.input,
            files=files,
            skipped_files=bad_files,
            baseline=baseline,
            candidate=candidate,
            key_columns=key_columns,
            sample=request.sample,
            trust=trust,
            contract=contract,
            score_output=request.score_output,
            batch_size=request.batch_size,
            top_n=request.top_n,
            thresholds=request.thresholds,
        )
    )
    write_comparison(comparison, folder)
    if not comparison.passed:
        blessed = "not blessed (the candidate failed)"
    elif not request.bless:
        blessed = "not blessed (--no_bless)"
    elif not candidate.registered:
        blessed = "not blessed (the candidate is a SavedModel path, not a registered version)"
    else:
        record = blessing(comparison.report, folder, who())
        blessed = f"blessed: {repo.add_blessing(candidate, record)}"
    return CompareOutcome(comparison, folder, blessed)


# -- verify and report -----------------------------------------------------------------


@dataclass(frozen=True)
class VerifyOutcome:
    run_dir: Path | str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_json(self) -> dict[str, Any]:
        return job_summary(
            "verify",
            OK if self.ok else FAIL,
            run_dir=str(self.run_dir),
            problems=self.problems,
        )


def verify(run_dir: str | Path) -> VerifyOutcome:
    """Check a committed run (a folder, or a gs:// / s3:// URI) against its manifest
    (files, sizes, hashes, counts)."""
    path = run_dir if storage.is_uri(str(run_dir)) else Path(run_dir)
    return VerifyOutcome(path, verify_run(path))


@dataclass(frozen=True)
class ReportOutcome:
    path: Path
    run_id: str

    def summary_json(self) -> dict[str, Any]:
        return job_summary(
            "report",
            OK,
            run_id=self.run_id,
            report=str(self.path),
        )


def report(
    run_dir: str | Path,
    out: str | Path | None = None,
    baseline: str | Path | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
) -> ReportOutcome:
    """Write the HTML run report of a committed run (``out``, default
    ``report-<run id>.html``), compared with ``baseline`` (another run) if given."""
    run_path = Path(run_dir)
    run = load_run(run_path, sample_rows=sample_rows)
    base = load_run(Path(baseline), sample_rows=sample_rows) if baseline else None
    target = Path(out) if out else Path(f"report-{run.run_id}.html")
    if target.resolve().is_relative_to(run_path.resolve()):
        raise ReportError(
            f"--out {target} is inside the run folder {run_path}, which is immutable "
            "(python -m jobs.verify would flag it); write the report elsewhere"
        )
    try:
        write_text_atomic(target, render_report(run, base))
    except OSError as exc:
        raise ReportError(
            f"{target}: cannot write the report ({exc.strerror}); pass a writable --out PATH"
        ) from exc
    return ReportOutcome(target, run.run_id)
