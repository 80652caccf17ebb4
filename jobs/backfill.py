"""Score every date partition of a hive-partitioned input, resumably.

    python -m jobs.backfill --input=ROOT --start=2026-01-01 --end=2026-01-31 \\
        --model=loan_default@3 --output=OUT [--parallelism=2] [--force] [jobs.score options]

Partition ``ROOT/dt=YYYY-MM-DD/`` is scored into its own output root
``OUT/dt=YYYY-MM-DD/``, which holds the usual versioned runs
(``<model>/<version>/run=<run id>/``). Each partition is one ``python -m
jobs.score`` process, so a crash in one cannot take another down, and at most
``--parallelism`` of them run at once.

A partition that already has a committed run of the same model version on the
same input (the check :func:`batch.ops.incremental.find_up_to_date_run` makes for
``jobs.score``) is skipped, so a backfill that stopped half-way is finished by
running the same command again. ``--force`` scores every partition again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.core.errors import BatchScoreError, UsageError
from batch.model.repository import ModelRepository, resolve_model
from batch.model.resolved import ResolvedModel
from batch.model.signing import verify_once
from batch.ops.incremental import find_up_to_date_run
from batch.output.commit import CommittedRun, list_committed_runs
from jobs import score
from jobs.cli import (
    exit_process,
    positive_int,
    run_main,
    setup_logging,
)

PROG = "python -m jobs.backfill"

SCORED = "scored"
SKIPPED = "skipped"
FAILED = "failed"
MISSING = "missing input"


class BackfillFailed(BatchScoreError):
    """Some partitions failed or had no input; the others are committed."""


@dataclass
class Partition:
    day: dt.date
    column: str
    input_dir: Path
    output_root: Path
    status: str = ""
    run: CommittedRun | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.column}={self.day.isoformat()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Score each date partition ROOT/dt=YYYY-MM-DD/ from --start to --end (inclusive) "
            "into OUTPUT/dt=YYYY-MM-DD/<model>/<version>/run=<run id>/, one jobs.score process "
            "per partition. Partitions already committed for the same model version and "
            "unchanged input are skipped (rerun the same command to resume a backfill); a "
            "summary table ends the run, and the exit code is non-zero if any partition failed "
            "or had no input."
        ),
        epilog=(
            "Every other option is passed to each `python -m jobs.score` process, e.g. "
            "--model_repo, --max_error_rate, --public_key, --runner and Beam or Spark options."
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
        help="Partitions scored at once (default: %(default)s). Each is a separate process "
        "with its own model copy; mind memory and cores.",
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
    return parser


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, found '{text}'") from None


def plan_partitions(
    input_root: Path, output_root: Path, start: dt.date, end: dt.date, column: str
) -> list[Partition]:
    if end < start:
        raise UsageError(f"--end={end} is before --start={start}; give --start <= --end")
    days = (end - start).days + 1
    partitions = []
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        name = f"{column}={day.isoformat()}"
        partitions.append(Partition(day, column, input_root / name, output_root / name))
    return partitions


def pinned_model_spec(spec: str, model: ResolvedModel) -> str:
    """NAME@VERSION for a registered model, so that every partition gets the same version
    even if another one is registered or promoted during the backfill."""
    return f"{model.name}@{model.version}" if model.registered else spec


def _committed(partition: Partition, model: ResolvedModel) -> list[CommittedRun]:
    return [
        run
        for run in list_committed_runs(partition.output_root)
        if run.model_name == model.name and run.model_version == model.version
    ]


def _counts(run: CommittedRun) -> dict[str, Any]:
    try:
        counts: dict[str, Any] = run.manifest().get("counts", {})
    except (OSError, ValueError):
        return {}
    return counts


def check_up_to_date(
    partition: Partition,
    model: ResolvedModel,
    score_args: argparse.Namespace,
) -> CommittedRun | None:
    """The committed run that already holds this partition's predictions, if any. A
    partition whose input cannot even be read is not up to date: jobs.score will say why."""
    try:
        files, bad_files = score.resolve_inputs(str(partition.input_dir), score_args.on_bad_file)
        contract = score.job_contract(score_args.contract, model)
        key_columns = score.job_key_columns(score_args.key_columns, model, contract)
    except BatchScoreError:
        return None
    return find_up_to_date_run(
        partition.output_root,
        model=model,
        files=files,
        skipped_files=bad_files,
        contract=contract,
        key_columns=key_columns,
        max_error_rate=score_args.max_error_rate,
    )


def _error_line(stderr: str) -> str:
    """jobs.score's error message (which may list several problems) on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if f"{score.PROG}: error: " in lines[index]:
            message = lines[index].split(f"{score.PROG}: error: ", 1)[1]
            return " ".join([message, *lines[index + 1 :]])
    return lines[-1] if lines else "no error message"


def score_partition(
    partition: Partition, command: list[str], model: ResolvedModel, lock: threading.Lock
) -> None:
    started = time.perf_counter()
    before = {run.run_id for run in _committed(partition, model)}
    result = subprocess.run(
        [
            *command,
            f"--input={partition.input_dir}",
            f"--output={partition.output_root}",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    partition.seconds = time.perf_counter() - started
    if result.returncode == 0:
        new = [run for run in _committed(partition, model) if run.run_id not in before]
        up_to_date = [line for line in result.stdout.splitlines() if line.startswith("up to date:")]
        if new:
            partition.status, partition.run = SCORED, new[-1]
        elif up_to_date:
            partition.status = SKIPPED
            partition.detail = "up to date"
            run_dir = Path(up_to_date[0].removeprefix("up to date:").strip())
            partition.run = next(
                (r for r in _committed(partition, model) if r.run_dir == run_dir), None
            )
        else:
            partition.status = FAILED
            partition.detail = "jobs.score exited 0 but no committed run appeared"
    else:
        partition.status = FAILED
        partition.detail = _error_line(result.stderr)
        if result.returncode not in (2, 130):  # not a one-line error: show the crash
            tail = "\n".join(result.stderr.splitlines()[-20:])
            with lock:
                print(
                    f"{partition.name}: jobs.score exited {result.returncode}:\n{tail}",
                    file=sys.stderr,
                )
    if partition.run is not None:
        partition.counts = _counts(partition.run)
    with lock:
        print(f"{partition.name}: {partition.status} ({partition.seconds:.1f}s)", flush=True)


def format_table(partitions: Sequence[Partition]) -> str:
    header = ("partition", "status", "rows in", "scored", "rejected", "run / error")
    rows = [header]
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [
            row[i].rjust(widths[i]) if 2 <= i <= 4 else row[i].ljust(widths[i])
            for i in range(len(widths))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args, forwarded = build_parser().parse_known_args(argv)
    setup_logging(args.verbose)

    def backfill() -> int:
        # The options each jobs.score process gets, checked here once.
        score_args, _ = score.build_parser().parse_known_args(forwarded)
        for option in ("input", "output"):
            if getattr(score_args, option) is not None:
                raise UsageError(f"--{option} is set by the backfill for each partition")
        if score_args.canary is not None or score_args.canary_fraction is not None:
            raise UsageError(
                "--canary/--canary_fraction: a backfill does not run gray releases (it pins "
                "--model's version for every day, not the canary's); run a gray release with "
                "`python -m jobs.score --input=DAY --canary=... --canary_fraction=...` per day"
            )
        input_root = Path(args.input).expanduser()
        if not input_root.is_dir():
            raise UsageError(
                f"--input={args.input}: expected the folder holding the "
                f"{args.partition_column}=YYYY-MM-DD partitions; no such folder"
            )
        output_root = Path(args.output).expanduser()
        score.check_output_writable(output_root)
        model = resolve_model(args.model, ModelRepository(score_args.model_repo))
        verify_once(model, score.trust_policy(score_args.public_key, score_args.allow_unsigned))
        partitions = plan_partitions(
            input_root, output_root, args.start, args.end, args.partition_column
        )
        command = [
            sys.executable,
            "-m",
            "jobs.score",
            f"--model={pinned_model_spec(args.model, model)}",
            *forwarded,
            *(["--force"] if args.force else []),
        ]
        print(
            f"backfill {partitions[0].name}..{partitions[-1].name} ({len(partitions)} day(s)) "
            f"with {model.label} into {output_root}, {args.parallelism} at a time",
            flush=True,
        )
        lock = threading.Lock()
        todo = []
        for partition in partitions:
            if not partition.input_dir.is_dir():
                partition.status, partition.detail = MISSING, f"no folder {partition.input_dir}"
                continue
            current = None if args.force else check_up_to_date(partition, model, score_args)
            if current is not None:
                partition.status, partition.run, partition.detail = SKIPPED, current, "up to date"
                partition.counts = _counts(current)
                continue
            todo.append(partition)
        with ThreadPoolExecutor(max_workers=args.parallelism) as pool:
            for future in [pool.submit(score_partition, p, command, model, lock) for p in todo]:
                future.result()
        print()
        print(format_table(partitions))
        tally = {
            status: sum(1 for p in partitions if p.status == status)
            for status in (SCORED, SKIPPED, MISSING, FAILED)
        }
        print(
            f"{len(partitions)} partition(s): "
            + ", ".join(f"{count} {status}" for status, count in tally.items())
            + f" ({time.perf_counter() - started:.1f}s)"
        )
        failed = [p for p in partitions if p.status == FAILED]
        missing = [] if args.allow_missing else [p for p in partitions if p.status == MISSING]
        if failed or missing:
            names = ", ".join(p.name for p in [*failed, *missing])
            raise BackfillFailed(
                f"{len(failed)} partition(s) failed and {len(missing)} had no input: {names}. "
                "The other partitions are committed. Fix the cause and run the same command "
                "again: committed partitions are skipped"
                + (
                    ""
                    if args.allow_missing or not missing
                    else " (--allow_missing accepts days without input)"
                )
            )
        return 0

    return run_main(backfill, PROG)


if __name__ == "__main__":
    exit_process(main())
