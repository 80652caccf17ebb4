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
from pathlib import Path

from batch.output.commit import verify_run
from jobs.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="OUTPUT/<model>/<version>/run=<run id>",
    )
    args = parser.parse_args(argv)

    def verify() -> int:
        failed = 0
        for run_dir in args.run_dirs:
            problems = verify_run(run_dir)
            if problems:
                failed += 1
                print(f"{run_dir}: {len(problems)} difference(s) from its manifest")
                for problem in problems:
                    print(f"  {problem}")
            else:
                print(f"{run_dir}: OK, matches its manifest")
        return 1 if failed else 0

    return run_main(verify, "python -m jobs.verify")


if __name__ == "__main__":
    sys.exit(main())
