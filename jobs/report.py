"""Write the report of a committed run as one self-contained HTML page.

    python -m jobs.report RUN_DIR [--baseline RUN_DIR] [--out PATH]

The page shows the run's model and status, its counts and whether they
reconcile, throughput over time and batch latencies, reject reasons with
example rows, the prediction distribution against the training baseline (and
against another run with --baseline), the drift table with the histograms of
the most drifted features, and the checks. Plots are embedded images and the
page loads nothing from anywhere, so it can be mailed or archived as it is.

Sections whose data the manifest lacks (runs written before metrics and drift
were recorded, models without a training baseline) say so in the page.
The run folder itself is never written to: it is immutable and checked by
python -m jobs.verify.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from batch.api import report, write_summary_file
from batch.report.render import DEFAULT_SAMPLE_ROWS
from jobs.cli import JobParser, add_summary_file, run_main

PROG = "python -m jobs.report"


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a committed run: OUTPUT/<model>/<version>/run=<run id> (the folder "
        "python -m jobs.score printed)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="RUN_DIR",
        help="another committed run to compare with (e.g. last week's): counts and "
        "throughput side by side, its predictions overlaid on this run's",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="where to write the page (default: ./report-<run id>.html); never inside "
        "the run folder",
    )
    parser.add_argument(
        "--sample_rows",
        type=int,
        default=DEFAULT_SAMPLE_ROWS,
        metavar="N",
        help="prediction values read per run for the distribution plots, evenly spread "
        "over the run (default: %(default)s); memory stays flat however large the run",
    )
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sample_rows < 1:
        parser.error(f"--sample_rows must be at least 1, got {args.sample_rows}")

    def render() -> int:
        outcome = report(args.run_dir, args.out, args.baseline, args.sample_rows)
        if args.summary_file:
            write_summary_file(args.summary_file, outcome.summary_json(), PROG)
        print(outcome.path)
        return 0

    return run_main(render, PROG, job="report", summary_file=args.summary_file)


if __name__ == "__main__":
    sys.exit(main())
