"""Shadow-compare two model versions on a deterministic sample; bless the candidate on a pass.

    python -m jobs.compare --input=DATA --baseline=loan_default@production \
        --candidate=loan_default@canary [--sample=0.1] [thresholds]

Exit status: 0 the candidate passed (and was blessed), 3 it failed a check,
2 an error (bad argument, unverifiable model, bad input).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.api import CompareRequest, compare, write_summary_file
from batch.demo import paths as demo_paths
from batch.demo.data import input_or_demo
from batch.engine.inputs import DEFAULT_BATCH_SIZE
from batch.model.loading import quiet_tensorflow
from batch.release.evaluation import Thresholds
from jobs.cli import (
    JobParser,
    add_summary_file,
    exit_process,
    fraction,
    non_negative_float,
    positive_int,
    row_count,
    run_main,
    setup_logging,
    text_table,
)

PROG = "python -m jobs.compare"
EXIT_FAILED = 3
DEFAULT_SAMPLE = 0.1


def build_parser() -> argparse.ArgumentParser:
    defaults = Thresholds()
    parser = JobParser(
        prog=PROG,
        description=(
            "Score a deterministic sample of the input with a baseline and a candidate model "
            "(both verified like scoring does) and judge the candidate: agreement of the two "
            "at --agreement_threshold, mean and max absolute difference of the scores, PSI "
            "between the two score distributions, and, when the input holds the contract's "
            "label column, AUC and log-loss of both. Writes OUTPUT/compare=<id>/comparison.json "
            "and divergent_rows.parquet (the --top_n rows where the scores differ most, with "
            "their keys). A pass writes a blessing into the candidate's metadata.json, which "
            "`python -m jobs.models promote NAME@VERSION --to production` requires."
        ),
        epilog=(
            f"Exit status: 0 pass (candidate blessed), {EXIT_FAILED} fail (a check is outside "
            "its threshold; nothing blessed), 2 error. The sample is the rows whose key hash "
            "is below --sample * 2^64 (README: Model versions), the same rows a canary run "
            "with --canary_fraction of the same value routes to the candidate."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--input",
        help="Parquet file, directory (recursive, hive partitions) or glob. Default: the demo data.",
    )
    parser.add_argument(
        "--baseline",
        required=True,
        help="The model now in use: NAME@production, NAME@VERSION, NAME, or a SavedModel path "
        "(every form jobs.score --model takes).",
    )
    parser.add_argument(
        "--candidate",
        required=True,
        help="The model that would replace it: NAME@canary, NAME@VERSION, ... Only a "
        "registered version can be blessed.",
    )
    parser.add_argument(
        "--model_repo",
        default=str(demo_paths.demo_model_repo()),
        help="Model repository folder for registered names.",
    )
    parser.add_argument(
        "--sample",
        type=_sample,
        default=DEFAULT_SAMPLE,
        help="Share of keys to compare, in (0, 1]; chosen by a stable hash of --key_columns, "
        "so the same keys are compared on every run and runner.",
    )
    parser.add_argument(
        "--key_columns",
        help="Comma-separated columns that identify a row; they decide the sample and are "
        "written with the divergent rows. Default: the baseline's registered key columns.",
    )
    parser.add_argument(
        "--contract",
        help="Data contract rows must meet (rejected rows are counted, not compared); its "
        "label column, when present in the input, enables AUC and log-loss. Default: the "
        "baseline's contract.",
    )
    parser.add_argument(
        "--score_output",
        help="The model output to compare (one number per row, e.g. a probability). "
        "Default: the only such output both models have.",
    )
    parser.add_argument(
        "--output",
        help="Folder under which the comparison is written as compare=<id>/. Default: "
        f"{demo_paths.demo_dir() / 'comparisons'}.",
    )
    thresholds = parser.add_argument_group("thresholds (a candidate must meet every one)")
    thresholds.add_argument(
        "--agreement_threshold",
        type=fraction,
        default=defaults.agreement_threshold,
        help="Score at or above which a row counts as positive, for --min_agreement.",
    )
    thresholds.add_argument(
        "--min_agreement",
        type=fraction,
        default=defaults.min_agreement,
        help="Least share of rows both models put on the same side of --agreement_threshold.",
    )
    thresholds.add_argument(
        "--max_mean_abs_diff",
        type=non_negative_float,
        default=defaults.max_mean_abs_diff,
        help="Largest mean |candidate - baseline| score.",
    )
    thresholds.add_argument(
        "--max_psi",
        type=non_negative_float,
        default=defaults.max_psi,
        help="Largest population stability index of the candidate's scores against the "
        "baseline's deciles (0.1: no real shift; 0.25: large).",
    )
    thresholds.add_argument(
        "--max_auc_drop",
        type=float,
        default=defaults.max_auc_drop,
        help="Largest baseline AUC - candidate AUC, checked when the input has labels.",
    )
    thresholds.add_argument(
        "--min_rows",
        type=positive_int,
        default=defaults.min_rows,
        help="Fewest compared rows for a verdict; fewer fail the comparison.",
    )
    parser.add_argument(
        "--top_n",
        type=positive_int,
        default=100,
        help="How many of the most divergent rows to keep in divergent_rows.parquet.",
    )
    parser.add_argument(
        "--batch_size",
        type=row_count,
        default=DEFAULT_BATCH_SIZE,
        help="Rows per read and model call.",
    )
    parser.add_argument(
        "--on_bad_file",
        choices=("fail", "skip"),
        default="fail",
        help="An unreadable input file fails the comparison, or is skipped and recorded.",
    )
    parser.add_argument(
        "--public_key",
        help="PEM EC public key both models' signatures must verify with. Default: "
        f"${demo_paths.PUBLIC_KEY_ENV}, else the demo's key.",
    )
    parser.add_argument(
        "--allow_unsigned",
        action="store_true",
        help="Load models without a signature file (loud WARNING); a signature that does "
        "not verify is refused even so.",
    )
    parser.add_argument(
        "--no_bless",
        action="store_true",
        help="Report the verdict only; do not write a blessing even on a pass.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress at INFO level.")
    add_summary_file(parser)
    return parser


def _sample(text: str) -> float:
    value = fraction(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], found {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    quiet_tensorflow()

    def run() -> int:
        outcome = compare(
            CompareRequest(
                input=input_or_demo(args.input),
                baseline=args.baseline,
                candidate=args.candidate,
                output_root=args.output or demo_paths.demo_dir() / "comparisons",
                model_repo=args.model_repo,
                public_key=args.public_key,
                allow_unsigned=args.allow_unsigned,
                contract=args.contract,
                key_columns=args.key_columns,
                sample=args.sample,
                on_bad_file=args.on_bad_file,
                score_output=args.score_output,
                batch_size=args.batch_size,
                top_n=args.top_n,
                bless=not args.no_bless,
                thresholds=Thresholds(
                    agreement_threshold=args.agreement_threshold,
                    min_agreement=args.min_agreement,
                    max_mean_abs_diff=args.max_mean_abs_diff,
                    max_psi=args.max_psi,
                    max_auc_drop=args.max_auc_drop,
                    min_rows=args.min_rows,
                ),
            )
        )
        if args.summary_file:
            write_summary_file(args.summary_file, outcome.summary_json(), PROG)
        seconds = time.perf_counter() - started
        print(format_report(outcome.comparison.report, outcome.folder, outcome.blessed, seconds))
        return 0 if outcome.passed else EXIT_FAILED

    return run_main(run, PROG, job="compare", summary_file=args.summary_file)


def format_report(report: dict[str, Any], folder: Path, blessed: str, seconds: float) -> str:
    """The verdict as a table a person can read at a glance."""
    base, cand = report["baseline"], report["candidate"]
    counts, metrics, sample = report["counts"], report["metrics"], report["sample"]

    def label(model: dict[str, Any]) -> str:
        alias = f" (@{model['alias']})" if model.get("alias") else ""
        return f"{model['name']}@{model['version']}{alias}"

    verdict = str(report["verdict"]).upper()
    reasons = ", ".join(f"{k}: {v:,}" for k, v in counts["rejected_by_reason"].items())
    lines = [
        f"comparison {verdict}: candidate {label(cand)} vs baseline {label(base)}",
        f"  sample     {sample['fraction']:.1%} of keys: {counts['rows_sampled']:,} of "
        f"{counts['rows_read']:,} rows; {counts['rows_rejected']:,} rejected"
        f"{f' ({reasons})' if reasons else ''}; {counts['rows_compared']:,} compared",
    ]
    check_rows = []
    for check in report["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.4f}"
        if check["name"] == "rows_compared" and check["value"] is not None:
            value = f"{int(check['value']):,}"
        bound = ">=" if check["bound"] == "min" else "<="
        result = "ok" if check["passed"] else "FAIL"
        note = f" ({check['note']})" if check.get("note") else ""
        check_rows.append((check["name"], value, f"{bound} {check['limit']:g}", result + note))
    table = text_table(("check", "value", "limit", "result"), check_rows, right={1})
    lines.extend(f"  {line}" for line in table.splitlines())
    if "baseline_auc" in metrics:
        lines.append(
            f"  labels     {metrics['labelled_rows']:,} rows: AUC {_num(metrics['baseline_auc'])} -> "
            f"{_num(metrics['candidate_auc'])}, log-loss {_num(metrics['baseline_log_loss'])} -> "
            f"{_num(metrics['candidate_log_loss'])} (baseline -> candidate)"
        )
    if "max_abs_diff" in metrics:
        lines.append(
            f"  scores     mean {metrics['baseline_mean']:.4f} -> {metrics['candidate_mean']:.4f}, "
            f"max |diff| {metrics['max_abs_diff']:.4f}"
        )
    lines += [f"  output     {folder}", f"  {blessed}", f"  wall time  {seconds:.1f}s"]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    exit_process(main())
