"""Score every date partition of a hive-partitioned input as one job, resumably.

    python -m jobs.backfill --input=ROOT --start=2026-01-01 --end=2026-01-31 \\
        --model=loan_default@3 --output=OUT [--parallelism=2] [--force] [jobs.score options]

Partition ``ROOT/dt=YYYY-MM-DD/`` is scored into its own output root
``OUT/dt=YYYY-MM-DD/``, which holds the usual versioned runs
(``<model>/<version>/run=<run id>/``). All days are one engine job (one pipeline, one
model load per worker: batch.ops.backfill), and each day is committed as its own run:
a day whose input is bad or whose rows fail its checks fails alone.

A partition that already has a committed run of the same model version on the
same input (the check :func:`batch.ops.incremental.find_up_to_date_run` makes for
``jobs.score``) is skipped, so a backfill that stopped half-way is finished by
running the same command again. ``--force`` scores every partition again.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.api import backfill_day_scorer, write_summary_file
from batch.core import storage
from batch.core.errors import UsageError
from batch.model.loading import quiet_tensorflow
from batch.observe.checks import FAIL, job_summary
from batch.ops.backfill import (
    BackfillFailed,
    BackfillOutcome,
    BackfillRequest,
    Partition,
    backfill,
)
from jobs.cli import (
    JobParser,
    add_summary_file,
    apply_storage_options,
    build_score_parser,
    exit_process,
    positive_int,
    run_main,
    score_request,
    setup_logging,
    text_table,
)
from runners import make_runner

PROG = "python -m jobs.backfill"


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Score each date partition ROOT/dt=YYYY-MM-DD/ from --start to --end (inclusive) "
            "into OUTPUT/dt=YYYY-MM-DD/<model>/<version>/run=<run id>/. All partitions are one "
            "engine job (one pipeline, the model loaded once per worker), each committed as its "
            "own run: a partition whose input is bad, whose rejected rows exceed "
            "--max_error_rate or whose drift fails (--on_drift=fail) fails alone. Partitions "
            "already committed for the same model version and unchanged input are skipped "
            "(rerun the same command to resume a backfill); a summary table ends the run, and "
            "the exit code is non-zero if any partition failed or had no input."
        ),
        epilog=(
            "Every other option is a `python -m jobs.score` option that applies to each "
            "partition, e.g. --model_repo, --max_error_rate, --on_drift, --public_key, --runner "
            "and Beam or Spark options."
        ),
    )
    parser.add_argument("--input", required=True, help="Root of the hive-partitioned input.")
    parser.add_argument("--start", required=True, type=_date, help="First day, YYYY-MM-DD.")
    parser.add_argument("--end", required=True, type=_date, help="Last day (inclusive).")
    parser.add_argument("--output", required=True, help="Output root (one folder per day).")
    parser.add_argument(
        "--model",
        required=True,
        help="As for jobs.score. A registered NAME, NAME@latest or NAME@ALIAS is resolved "
        "once, so every partition is scored by the same version.",
    )
    parser.add_argument(
        "--parallelism",
        type=positive_int,
        default=1,
        help="Worker processes of the job, each with one model copy (default: %(default)s: "
        "the DirectRunner scores in this process). With the DirectRunner N workers are "
        "--direct_num_workers=N --direct_running_mode=multi_processing; with "
        "--runner=PySparkRunner and no --spark_master, local[N]. Other runners size "
        "their workers with their own options (e.g. Dataflow's --max_num_workers).",
    )
    parser.add_argument(
        "--force", action="store_true", help="Score every partition again, even up-to-date ones."
    )
    parser.add_argument(
        "--partition_column",
        default="dt",
        help="Name of the date partition folders (default: %(default)s, as in dt=2026-01-01).",
    )
    parser.add_argument(
        "--allow_missing",
        action="store_true",
        help="A day without an input partition is reported but does not fail the backfill.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress at INFO level.")
    add_summary_file(parser)
    return parser


def _root(text: str) -> Path | str:
    """A folder, or a gs:// / s3:// prefix kept as it is (``Path`` would fold ``gs://``)."""
    return text if storage.is_uri(text) else Path(text).expanduser()


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, found '{text}'") from None


def engine_workers(
    parallelism: int, runner: str, pipeline_args: Sequence[str], spark_master: str | None
) -> tuple[list[str], str | None]:
    """``--parallelism`` as the engine's own options: (Beam pipeline options, Spark master)."""
    args = list(pipeline_args)
    if parallelism == 1:
        return args, spark_master
    if runner == "DirectRunner":
        given = [a for a in args if a.startswith(("--direct_num_workers", "--direct_running_mode"))]
        if given:
            raise UsageError(
                f"--parallelism={parallelism} sets {' '.join(given)} itself; give one or the other"
            )
        return [
            *args,
            f"--direct_num_workers={parallelism}",
            "--direct_running_mode=multi_processing",
        ], spark_master
    if runner == "PySparkRunner":
        if spark_master is not None:
            raise UsageError(
                f"--parallelism={parallelism} with --spark_master={spark_master}: the master "
                "says how many workers score; drop --parallelism"
            )
        return args, f"local[{parallelism}]"
    raise UsageError(
        f"--parallelism={parallelism}: --runner={runner} sizes its workers with its own options "
        "(e.g. Dataflow's --max_num_workers); drop --parallelism"
    )


def format_table(partitions: Sequence[Partition]) -> str:
    header = ("partition", "status", "rows in", "scored", "rejected", "run / error")
    rows = []
    for p in partitions:
        counts = p.counts

        def number(key: str, counts: dict[str, Any] = counts) -> str:
            value = counts.get(key)
            return f"{value:,}" if isinstance(value, int) else "-"

        where = str(p.run.run_dir) if p.run is not None else p.detail
        if p.run is not None and p.detail:
            where = f"{where} ({p.detail})"
        rows.append(
            (
                p.name,
                p.status,
                number("rows_in"),
                number("rows_scored"),
                number("rows_rejected"),
                where,
            )
        )
    return text_table(header, rows, right={2, 3, 4})


def main(argv: Sequence[str] | None = None) -> int:
    args, forwarded = build_parser().parse_known_args(argv)
    setup_logging(args.verbose)
    quiet_tensorflow()
    outcome: BackfillOutcome | None = None

    def run() -> int:
        nonlocal outcome
        # The jobs.score options every day is scored with.
        score_args, pipeline_args = build_score_parser().parse_known_args(forwarded)
        apply_storage_options(score_args)
        for option in ("input", "output", "summary_file"):
            if getattr(score_args, option) is not None:
                raise UsageError(f"--{option} is set by the backfill for each partition")
        if score_args.canary is not None or score_args.canary_fraction is not None:
            raise UsageError(
                "--canary/--canary_fraction: a backfill does not run gray releases (it pins "
                "--model's version for every day, not the canary's); run a gray release with "
                "`python -m jobs.score --input=DAY --canary=... --canary_fraction=...` per day"
            )
        pipeline_args, spark_master = engine_workers(
            args.parallelism, score_args.runner, pipeline_args, score_args.spark_master
        )
        template = score_request(
            score_args,
            input="",
            output="",
            runner=lambda: make_runner(
                score_args.runner, pipeline_args, spark_master, score_args.spark_conf or ()
            ),
            model=args.model,
            force=args.force,
            progress="off",  # days finish together; the backfill reports each one
        )
        request = BackfillRequest(
            input_root=_root(args.input),
            output_root=_root(args.output),
            start=args.start,
            end=args.end,
            model=args.model,
            score_day=backfill_day_scorer(template),
            make_runner=template.runner,
            partition_column=args.partition_column,
            allow_missing=args.allow_missing,
            model_repo=score_args.model_repo,
            public_key=score_args.public_key,
            allow_unsigned=score_args.allow_unsigned,
        )
        try:
            outcome = backfill(request, report=lambda line: print(line, flush=True))
        except BackfillFailed as failed:
            outcome = failed.outcome
            if outcome is not None:
                _print_outcome(outcome)
            raise
        _print_outcome(outcome)
        return 0

    code = run_main(run, PROG)
    if args.summary_file:
        error = None if code == 0 else "the backfill failed; see its error line"
        if outcome is not None:
            write_summary_file(args.summary_file, outcome.summary_json(error), PROG)
        else:
            failed = job_summary("backfill", FAIL, reason=error, partitions=[])
            write_summary_file(args.summary_file, failed, PROG)
    return code


def _print_outcome(outcome: BackfillOutcome) -> None:
    print()
    print(format_table(outcome.partitions))
    print(
        f"{len(outcome.partitions)} partition(s): "
        + ", ".join(f"{count} {status}" for status, count in outcome.tally().items())
        + f" ({outcome.seconds:.1f}s)"
    )


if __name__ == "__main__":
    exit_process(main())
