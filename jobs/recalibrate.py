"""Recalibrate a registered binary model on recent labeled data, register the result
unpromoted and compare it with production: the one-command answer to a failed drift check.

    python -m jobs.recalibrate NAME@VERSION --input=RECENT_LABELED_DATA [--method=platt]
        [--model_repo=DIR] [--public_key=PEM] [--key=PEM] [--baseline=NAME@production]
        [--sample=1.0] [--output=DIR] [--no_compare]

Exit status: 0 registered (and, when compared, the comparison passed and blessed it);
3 registered but the comparison failed (not blessed); 2 an error (nothing registered).
The work is :mod:`training.recalibration`; the comparison is ``batch.api.compare``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from batch.api import CompareRequest, compare, write_summary_file
from batch.demo import paths as demo_paths
from batch.model.repository import ModelRepository
from batch.observe.checks import FAIL, OK, job_summary
from batch.release.evaluation import Thresholds
from jobs.cli import (
    JobParser,
    add_summary_file,
    exit_process,
    fraction,
    positive_int,
    run_main,
    setup_logging,
)
from training.recalibration import METHODS, RecalibrationRequest, recalibrate

PROG = "python -m jobs.recalibrate"
# A recalibration moves every score on purpose: agreement, score difference and PSI
# against the uncalibrated baseline are reported, not required; the labels decide.
RECALIBRATION_THRESHOLDS = Thresholds(min_agreement=0.0, max_mean_abs_diff=1.0, max_psi=1e9)
EXIT_COMPARE_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Fit a calibration (Platt or isotonic) of a registered binary model's probability "
            "on recent labeled data, export it as a new version whose serving signatures "
            "apply it inside the graph, register it (signed, not promoted), and compare it "
            "with --baseline (production) on the same data as `jobs.compare` does (agreement, "
            "score difference and PSI are reported, not required, unless --strict_compare); "
            "a pass blesses it, so `python -m jobs.models promote NAME@VERSION --to "
            "production` may follow. Half of the recent rows (by key hash) fit the "
            "calibration; ECE and log loss before and after are measured on the other half."
        ),
        epilog=(
            f"Exit status: 0 registered (comparison passed or skipped), {EXIT_COMPARE_FAILED} "
            "registered but the comparison failed, 2 error (nothing registered)."
        ),
    )
    parser.add_argument("model", metavar="NAME@VERSION", help="the version to recalibrate")
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="folder of recent Parquet files with the label (the model's contract's columns)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="platt",
        help="platt (default): sigmoid(a*logit(p)+b), robust on few rows; isotonic: a "
        "monotone step function, more flexible, wants thousands of rows",
    )
    parser.add_argument("--rows", type=positive_int, default=None, help="read at most N rows")
    parser.add_argument(
        "--model_repo",
        type=Path,
        default=None,
        help=f"model repository (default: {demo_paths.demo_model_repo()})",
    )
    parser.add_argument(
        "--public_key", type=Path, default=None, help="PEM key the version is verified with"
    )
    parser.add_argument(
        "--allow_unsigned", action="store_true", help="accept a version without a signature"
    )
    parser.add_argument(
        "--key", type=Path, default=None, help="PEM EC private key the new version is signed with"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="what the new version is compared with (default: NAME@production; when that "
        "alias does not exist, the recalibrated version)",
    )
    parser.add_argument(
        "--sample",
        type=fraction,
        default=1.0,
        help="share of the recent rows the comparison scores (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder the comparison is written under (default: "
        f"{demo_paths.demo_dir() / 'comparisons'})",
    )
    parser.add_argument(
        "--no_compare", action="store_true", help="register only; do not run the comparison"
    )
    parser.add_argument(
        "--strict_compare",
        action="store_true",
        help="judge the comparison with jobs.compare's default thresholds. Without it, the "
        "checks that a recalibration fails on purpose (it moves every score: agreement, "
        "mean score difference, PSI) are reported but not required; the AUC drop and the "
        "row count are",
    )
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    setup_logging(False)

    def run() -> int:
        done = recalibrate(
            RecalibrationRequest(
                model=args.model,
                input=args.input,
                method=args.method,
                model_repo=args.model_repo,
                public_key=args.public_key,
                allow_unsigned=args.allow_unsigned,
                signing_key=args.key,
                rows=args.rows,
            )
        )
        status, code, compared = OK, 0, "comparison skipped (--no_compare)"
        if not args.no_compare:
            repo = ModelRepository(args.model_repo or demo_paths.demo_model_repo())
            baseline = args.baseline or (
                f"{done.base.name}@production"
                if "production" in repo.aliases(done.base.name)
                else done.base.label
            )
            outcome = compare(
                CompareRequest(
                    input=str(args.input),
                    baseline=baseline,
                    candidate=done.model.label,
                    output_root=args.output or demo_paths.demo_dir() / "comparisons",
                    model_repo=repo.root,
                    public_key=args.public_key,
                    allow_unsigned=args.allow_unsigned,
                    sample=args.sample,
                    thresholds=Thresholds() if args.strict_compare else RECALIBRATION_THRESHOLDS,
                )
            )
            failed = [check.name for check in outcome.comparison.checks if not check.passed]
            compared = (
                f"compared with {baseline}: "
                + ("passed" if outcome.passed else f"FAILED ({', '.join(failed)})")
                + f"; {outcome.blessed}; {outcome.folder}"
            )
            if not outcome.passed:
                status, code = FAIL, EXIT_COMPARE_FAILED
        seconds = time.perf_counter() - started
        print(f"recalibrate: {done.model.label}: {compared} ({seconds:.1f}s)")
        if args.summary_file:
            summary = job_summary(
                "recalibrate",
                status,
                model=done.model.label,
                base=done.base.label,
                recalibration=done.summary,
                comparison=compared,
                seconds=seconds,
            )
            write_summary_file(args.summary_file, summary, PROG)
        return code

    return run_main(run, PROG, job="recalibrate", summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
