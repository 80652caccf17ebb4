"""Write the demo dataset: synthetic loan applications and whether each loan defaulted.

    python -m jobs.make_demo [--rows=1000000] [--days=7] [--files_per_day=2]
                             [--output=DIR] [--seed=7] [--dirty_fraction=0.0005] [--force]
    python -m jobs.make_demo --dataset=deliveries --output=DIR [--rows=N] [--seed=N]
                             [--missing_fraction=1.0]

``--dataset=deliveries`` writes the second example dataset instead (a regression with
optional features; :mod:`batch.demo.deliveries`).

What the data holds (schema, partitions, the exact share of dirty rows) and how it is
written (deterministic, idempotent, renamed into place) is described in
:mod:`batch.demo.data`, which does the work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from batch.api import write_summary_file
from batch.demo import deliveries
from batch.demo.data import (
    DEFAULT_DAYS,
    DEFAULT_DIRTY_FRACTION,
    DEFAULT_FILES_PER_DAY,
    DEFAULT_ROWS,
    DEFAULT_SEED,
    ensure_demo_data,
)
from batch.demo.paths import demo_data_dir, demo_dir
from batch.observe.checks import OK, job_summary
from jobs.cli import JobParser, add_summary_file, run_main

# -- command line --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog="python -m jobs.make_demo",
        description=(
            "Write a deterministic synthetic loan-default dataset (schemas/loans) as "
            "Parquet, hive-partitioned by day: DIR/dt=YYYY-MM-DD/part-NNNNN.parquet. "
            "Skips the work when DIR already holds the data for the same arguments."
        ),
    )
    parser.add_argument(
        "--dataset",
        choices=("loans", "deliveries"),
        default="loans",
        help="loans (default): the demo dataset; deliveries: the second example (a "
        "regression with optional features, schemas/deliveries), written as --files_per_day "
        "files into --output (default: "
        f"{demo_dir() / deliveries.SCHEMA_NAME}); it uses --rows, --seed, --dirty_fraction "
        "and --missing_fraction",
    )
    parser.add_argument(
        "--missing_fraction",
        type=float,
        default=deliveries.DEFAULT_MISSING_FRACTION,
        help="deliveries only: scale of the optional features' missing shares (1 = about "
        "8%%, 15%% and 10%%; 0 = no missing value) (default: %(default)s)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help="total rows over all files (default: %(default)s)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help="number of day partitions dt=..., from 2026-01-01 (default: %(default)s)",
    )
    parser.add_argument(
        "--files_per_day",
        type=int,
        default=DEFAULT_FILES_PER_DAY,
        help="Parquet files per day partition (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder to write; replaced as a whole (default: the demo data folder, "
        f"{demo_data_dir()}; BATCHSCORE_DEMO_DIR moves it)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="random seed; the same arguments give byte-identical files (default: %(default)s)",
    )
    parser.add_argument(
        "--dirty_fraction",
        type=float,
        default=DEFAULT_DIRTY_FRACTION,
        help="share of rows given one defect (null feature, out-of-range number or "
        "string with bad characters); exactly floor(rows * share) rows (default: %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rewrite even if the folder already holds data for the same arguments",
    )
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def make() -> int:
        if args.dataset == "deliveries":
            folder = deliveries.write_deliveries(
                args.output or demo_dir() / deliveries.SCHEMA_NAME,
                rows=args.rows,
                files=args.files_per_day,
                seed=args.seed,
                missing_fraction=args.missing_fraction,
                dirty_fraction=args.dirty_fraction,
            )
            print(f"make_demo: wrote {args.rows:,} deliveries rows to {folder}")
        else:
            folder = ensure_demo_data(
                args.output,
                rows=args.rows,
                days=args.days,
                files_per_day=args.files_per_day,
                seed=args.seed,
                dirty_fraction=args.dirty_fraction,
                force=args.force,
            )
        if args.summary_file:
            done = job_summary("make_demo", OK, output=str(folder), rows=args.rows)
            write_summary_file(args.summary_file, done, "make_demo")
        return 0

    return run_main(make, "make_demo", job="make_demo", summary_file=args.summary_file)


if __name__ == "__main__":
    sys.exit(main())
