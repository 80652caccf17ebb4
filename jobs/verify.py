"""Check a committed run against its manifest.

    python -m jobs.verify RUN_DIR [RUN_DIR ...]

For each run: ``_SUCCESS`` and ``_MANIFEST.json`` exist; every output file the
manifest lists exists with the recorded size, row count and sha256; no other
Parquet file is present; the counts reconcile (rows in = scored + rejected).
Prints every difference; exits 0 when all runs match, 1 when any differs, 2 on
a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from batch.api import verify, write_summary_file
from batch.observe.checks import FAIL, OK, job_summary
from jobs.cli import (
    JobParser,
    add_storage_options,
    add_summary_file,
    apply_storage_options,
    run_main,
)

PROG = "python -m jobs.verify"


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=str,
        metavar="RUN_DIR",
        help="OUTPUT/<model>/<version>/run=<run id>",
    )
    add_summary_file(parser)
    add_storage_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_storage_options(args)

    def check() -> int:
        outcomes = [verify(run_dir) for run_dir in args.run_dirs]
        for outcome in outcomes:
            if outcome.ok:
                print(f"{outcome.run_dir}: OK, matches its manifest")
            else:
                print(f"{outcome.run_dir}: {len(outcome.problems)} difference(s) from its manifest")
                for problem in outcome.problems:
                    print(f"  {problem}")
        if args.summary_file:
            runs = [o.summary_json() for o in outcomes]
            status = OK if all(o.ok for o in outcomes) else FAIL
            write_summary_file(args.summary_file, job_summary("verify", status, runs=runs), PROG)
        return 0 if all(o.ok for o in outcomes) else 1

    return run_main(check, PROG, job="verify", summary_file=args.summary_file)


if __name__ == "__main__":
    sys.exit(main())
