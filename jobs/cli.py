"""What the batchscore command lines share: argument types, logging set-up, error
reporting (one line, exit 2), ``--summary_file``, and the options of ``jobs.score``
(which ``jobs.backfill`` forwards). Not a command line itself."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from batch.api import ScoreRequest, write_summary_file
from batch.core import storage
from batch.core.errors import BatchScoreError
from batch.demo import paths as demo_paths
from batch.engine.inputs import DEFAULT_SPLIT_ROWS, MAX_BATCH_ROWS, SPLITS_PER_SLOT
from batch.engine.job import DEFAULT_MAX_ERROR_RATE, Runner
from batch.engine.sizing import (
    DEFAULT_BATCH_BYTES,
    MAX_AUTO_BATCH_ROWS,
    MIN_BATCH_ROWS,
    parse_bytes,
)
from batch.model.native import release_stderr
from batch.model.resolved import ResolvedModel
from batch.model.signature import DEFAULT_SIGNATURE, DEFAULT_TAGS, INPUT_FORMATS, SignatureChoice
from batch.observe.checks import FAIL, job_summary
from batch.observe.drift import DEFAULT_MAX_PSI, DEFAULT_MAX_UNSEEN_SHARE, DriftThresholds
from batch.observe.progress import LOG_EVERY_S

EXIT_ERROR = 2


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Rows as a plain-text table (rich, no borders, no colour, never wrapped): columns
    two spaces apart, the columns numbered in ``right`` aligned right, the last one
    free-width."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=100_000, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


# Argument types shared by the command lines: the message says what was expected and found.
def _integer_from(text: str, lowest: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, found '{text}'") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected {expected}, found {value}")
    return value


def positive_int(text: str) -> int:
    return _integer_from(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _integer_from(text, 0, "an integer >= 0")


def row_count(text: str) -> int:
    """A positive number of rows, at most MAX_BATCH_ROWS."""
    value = positive_int(text)
    if value > MAX_BATCH_ROWS:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_BATCH_ROWS:,} rows, found {value:,}"
        )
    return value


def byte_size(text: str) -> int:
    """A positive size: ``4G``, ``512M``, ``1.5GiB`` or bytes (K, M, G, T are powers of 1024)."""
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def column_names(text: str) -> tuple[str, ...]:
    """``a,b``: column names, in order, each once."""
    return tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))


def signature_tags(text: str) -> tuple[str, ...]:
    """``serve`` or ``serve,gpu``: the tags of a SavedModel's MetaGraph."""
    tags = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    if not tags:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated tags such as serve, found '{text}'"
        )
    return tags


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found '{text}'") from None
    if not value >= 0.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {value}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, found 0")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found {value}")
    return value


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), found '{text}'") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a share strictly between 0 and 1 (e.g. 0.1), found {value}"
        )
    return value


class JobParser(argparse.ArgumentParser):
    """The argument parser of every batchscore command: a usage error is one line
    (``PROG: error: ...``, exit 2) and, when ``--summary_file`` was given, also written
    there as the job's failure, like any other error."""

    _argv: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        summary_file = _option_value(self._argv, "--summary_file")
        if summary_file:
            failed = job_summary(self.prog, FAIL, reason=message)
            write_summary_file(summary_file, failed, self.prog)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _option_value(argv: Sequence[str], option: str) -> str | None:
    """The value of ``--option=VALUE`` or ``--option VALUE`` in ``argv`` (the last one)."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        elif arg == option and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def add_summary_file(parser: argparse.ArgumentParser) -> None:
    """``--summary_file``: every job can write its outcome as JSON for a scheduler."""
    parser.add_argument(
        "--summary_file",
        default=None,
        metavar="PATH",
        help="also write the job's outcome as JSON to PATH (status ok/warn/fail, what was "
        "done, why it failed), for schedulers such as Airflow; written on failure too",
    )


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_main(
    main: Callable[[], int],
    prog: str,
    *,
    job: str | None = None,
    summary_file: str | None = None,
) -> int:
    """Run ``main``; a :class:`BatchScoreError` becomes one line on stderr and exit code 2.

    With ``summary_file``, that failure is also written there as the ``job``'s summary
    (status fail, the same line as ``reason``); ``main`` writes its own summary when it
    succeeds.
    """

    def failed(reason: str) -> None:
        if summary_file:
            write_summary_file(summary_file, job_summary(job or prog, FAIL, reason=reason), prog)

    try:
        return main()
    except BatchScoreError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        failed(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was committed by the interrupted run", file=sys.stderr)
        failed("interrupted")
        return 130


def exit_process(code: int) -> NoReturn:
    """End a command-line process without the interpreter's teardown.

    Tearing down TensorFlow and Beam takes over a second after the work is
    done; everything a job writes is closed and renamed into place before its
    main() returns, so there is nothing left for the teardown to do.
    """
    logging.shutdown()
    sys.stdout.flush()
    release_stderr()  # a job that ends while TensorFlow still imports keeps its last words
    sys.stderr.flush()
    os._exit(code)


def build_score_parser(prog: str = "python -m jobs.score") -> argparse.ArgumentParser:
    """The options of ``jobs.score``; ``jobs.backfill`` forwards them to each day's run
    and reads the same ones to check which days are up to date."""
    parser = JobParser(
        prog=prog,
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
            "On Dataflow, --dry_run=True --template_location=DIR/template.json builds the job "
            "offline and writes its description there, and with --sdk_container_image=IMAGE "
            "the Flex Template spec (DIR/flex_template.json). Without --input, --model and "
            "--output, --template_location makes a classic template that takes them at launch. "
            "See README.md for Dataflow and Spark."
        ),
    )
    parser.add_argument(
        "--input",
        help="Parquet file, directory (searched recursively, hive partitions such as "
        "dt=2026-01-01/ included) or glob. Default: the demo data in "
        f"{demo_paths.demo_data_dir()} (generated if missing; from a source checkout only, "
        "like every demo default).",
    )
    parser.add_argument(
        "--model",
        help="NAME, NAME@VERSION, NAME@latest or NAME@ALIAS (e.g. NAME@production, see "
        "`python -m jobs.models promote`) registered in --model_repo, or the path of "
        "any SavedModel directory (inputs of shape [None], [None, 1] or [None, k], or "
        "serialized tf.Examples; README: What models batchscore scores). "
        f"Default: {demo_paths.DEMO_MODEL_NAME} (trained first if missing).",
    )
    parser.add_argument(
        "--signature",
        default=DEFAULT_SIGNATURE,
        metavar="NAME",
        help="The model's signature to score with (default: %(default)s). A model without it "
        "fails before anything is scored, listing the signatures it has (e.g. predict).",
    )
    parser.add_argument(
        "--tag",
        type=signature_tags,
        default=DEFAULT_TAGS,
        metavar="TAGS",
        help="Tags of the SavedModel's MetaGraph to load, comma-separated (default: serve).",
    )
    parser.add_argument(
        "--input_format",
        choices=INPUT_FORMATS,
        default="auto",
        help="How the signature's input is fed. auto (default): a signature whose one input "
        "is a string tensor that the model parses as serialized tf.Examples (TFX's "
        "serve_tf_examples_fn) gets tf.Examples built from the columns named like the "
        "features it parses; any other signature gets one column per input tensor. columns: "
        "always one column per input. tf_example: insist on tf.Examples (an error if the "
        "graph parses none).",
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
        help="Model repository (a folder, gs:// or s3:// URI) for registered names. Default "
        f"(from a source checkout only): the demo's, {demo_paths.demo_model_repo()}.",
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
        "--passthrough_columns",
        type=column_names,
        default=(),
        metavar="A,B",
        help="Comma-separated input columns copied into every prediction row beside the key "
        "columns (e.g. features to keep next to the predictions). Default: none.",
    )
    parser.add_argument(
        "--batch_size",
        type=row_count,
        help="Rows per model call, forced for every split. Default: chosen per split from the "
        "Parquet footers, --batch_bytes of input a batch (uncompressed bytes per row of the "
        f"columns read), from {MIN_BATCH_ROWS} to {MAX_AUTO_BATCH_ROWS:,} rows; the manifest's "
        "batching section records the estimate and the sizes chosen.",
    )
    parser.add_argument(
        "--batch_bytes",
        type=byte_size,
        default=DEFAULT_BATCH_BYTES,
        metavar="SIZE",
        help="Without --batch_size: the input bytes a batch holds (e.g. 32M, the default; "
        "K, M, G are powers of 1024). Wide rows (long texts, embeddings) get fewer rows a "
        "batch, narrow rows up to the row limit.",
    )
    parser.add_argument(
        "--worker_memory",
        type=byte_size,
        metavar="SIZE",
        help="Memory each worker process may use (e.g. 4G). It bounds the batch bytes, "
        "read-ahead, concurrent model calls and the write queue so that the estimated peak "
        "stays under it, and a worker whose RSS nears it waits before reading more. "
        "Default: the worker's cgroup limit (memory.max) or the machine's memory, less 10%% "
        "(at least 256 MiB) headroom, shared by the worker processes a local runner starts "
        "on this machine. Splits one process scores at once (worker threads) share its "
        "budget. The manifest's batching.memory records the plan.",
    )
    parser.add_argument(
        "--split_rows",
        type=row_count,
        default=None,
        help="About this many rows (whole row groups) per unit of parallel work. Default: "
        f"{DEFAULT_SPLIT_ROWS:,}, or larger splits on an engine known to score few at once "
        "(Beam's DirectRunner in this process: one; a local Spark master: its cores), about "
        f"{SPLITS_PER_SLOT} for each split it scores at once; the manifest's batching.splits "
        "records the choice.",
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
        "--keep_non_finite_predictions",
        action="store_true",
        help="Write rows whose prediction is NaN or infinite to predictions/ (default: they "
        "go to rejected/ with reason non_finite_prediction and count against "
        "--max_error_rate).",
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
        f"{demo_paths.PUBLIC_KEY_ENV}, else (from a source checkout) the demo's key "
        f"{demo_paths.demo_public_key()}. "
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
    add_storage_options(parser)
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
        "node_exporter's textfile collector; end the name in .prom), or, for a folder "
        "(ending in /), to a file in it named by model, dataset and partition. An up-to-date "
        "or failed run keeps the last run's numbers and updates only its status.",
    )
    observe.add_argument(
        "--pushgateway",
        metavar="URL",
        help="Push the run's metrics to this Prometheus Pushgateway URL (job batchscore, "
        "grouped by model, dataset and dt= partition; a committed run replaces its group, an "
        "up-to-date or failed one updates only its status), e.g. http://pushgateway:9091.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress at INFO level.")
    return parser


def preload_module(name: str) -> None:
    """Import module ``name`` in a background thread (a later import of it waits for that
    one), so that a slow import (an engine) overlaps a job's first checks."""

    def load() -> None:
        with contextlib.suppress(Exception):  # the job's own import raises it again
            importlib.import_module(name)

    threading.Thread(target=load, name=f"import-{name}", daemon=True).start()


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """--s3_endpoint_url and --gcs_endpoint_url (apply_storage_options sets them)."""
    group = parser.add_argument_group(
        "object storage",
        "gs:// and s3:// paths use the libraries' standard credentials (application default "
        "credentials, the AWS environment or profile); these override the endpoints, as the "
        "environment variables AWS_ENDPOINT_URL_S3 / STORAGE_EMULATOR_HOST do",
    )
    group.add_argument(
        "--s3_endpoint_url",
        metavar="URL",
        help="An S3-compatible store or emulator for s3:// paths, e.g. http://127.0.0.1:9000.",
    )
    group.add_argument(
        "--gcs_endpoint_url",
        metavar="URL",
        help="A GCS emulator for gs:// paths, e.g. http://127.0.0.1:4443.",
    )


def apply_storage_options(args: argparse.Namespace) -> None:
    """Set the endpoints --s3_endpoint_url / --gcs_endpoint_url name, if given."""
    storage.set_endpoints(
        getattr(args, "s3_endpoint_url", None), getattr(args, "gcs_endpoint_url", None)
    )


def score_request(
    args: argparse.Namespace,
    *,
    input: str,
    output: str | Path,
    runner: Callable[[], Runner],
    model: str | ResolvedModel,
    **overrides: Any,
) -> ScoreRequest:
    """The scoring request that ``args`` (parsed by :func:`build_score_parser`) ask for,
    with ``input``, ``output``, ``runner`` and ``model`` given (jobs.score, and each day
    of jobs.backfill); ``overrides`` set other fields (e.g. ``started``, ``on_outcome``)."""
    request = ScoreRequest(
        input=input,
        output=output,
        runner=runner,
        model=model,
        model_repo=args.model_repo,
        public_key=args.public_key,
        allow_unsigned=args.allow_unsigned,
        contract=args.contract,
        key_columns=args.key_columns,
        canary=args.canary,
        canary_fraction=args.canary_fraction,
        force=args.force,
        on_bad_file=args.on_bad_file,
        max_error_rate=args.max_error_rate,
        keep_non_finite=args.keep_non_finite_predictions,
        signature=SignatureChoice(args.signature, args.tag, args.input_format),
        passthrough_columns=args.passthrough_columns,
        batch_size=args.batch_size,
        batch_bytes=args.batch_bytes,
        worker_memory=args.worker_memory,
        split_rows=args.split_rows,
        drift=args.drift == "on",
        drift_thresholds=DriftThresholds(args.max_drift, args.max_unseen_share, args.on_drift),
        progress=args.progress,
        progress_every_s=args.progress_every,
    )
    return dataclasses.replace(request, **overrides)
