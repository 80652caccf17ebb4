"""A dataset's contract from the command line: infer one from data, check data against one.

    python -m jobs.contract infer --input=DATA --out=schemas/NAME [--rows=N] [--force]
    python -m jobs.contract check --input=DATA --contract=NAME|DIR [--rows=N]

``infer`` writes a tensorflow_metadata schema.pbtxt and a commented rules.toml skeleton
(:mod:`batch.contract.infer`); ``check`` reports how the data breaks a contract without
scoring (:mod:`batch.ops.contract_check`): exit 0 when nothing breaks it, 1 when something
does. Neither imports TensorFlow.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from batch.api import write_summary_file
from batch.contract.contract import RULES_FILE, SCHEMA_FILE, load_contract
from batch.contract.infer import MAX_CATEGORIES, infer_contract
from batch.core.errors import UsageError
from batch.core.fsutil import write_text_atomic
from batch.engine.inputs import list_data_files
from batch.observe.checks import FAIL, OK, job_summary
from batch.ops.contract_check import check_contract
from jobs.cli import JobParser, add_summary_file, exit_process, run_main, text_table

PROG = "python -m jobs.contract"


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog=PROG,
        description="Infer a data contract (schemas/<name>/schema.pbtxt + rules.toml) from "
        "Parquet data, or check data against a contract without scoring.",
        epilog=f"Run `{PROG} COMMAND --help` for each command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = commands.add_parser(
        "infer",
        help="write schema.pbtxt and a rules.toml skeleton from data",
        description="Read the Parquet files of --input and write --out/schema.pbtxt (a "
        "tensorflow_metadata Schema, as TFDV's infer_schema would: types; presence from null "
        "counts, a column without nulls being a required scalar; int/float domains from "
        f"min/max; string_domain for string columns with at most {MAX_CATEGORIES} distinct "
        "values) and --out/rules.toml (commented: key columns, label, patterns, unseen "
        "categories). Review both before use; they load in TFT's schema_utils and in "
        "batchscore's contract loader.",
    )
    p.add_argument("--input", required=True, type=Path, help="Parquet file or folder")
    p.add_argument("--out", required=True, type=Path, help="folder to write the two files to")
    p.add_argument(
        "--rows", type=int, default=None, help="read only the first N rows (default: all)"
    )
    p.add_argument("--force", action="store_true", help="replace files already in --out")
    add_summary_file(p)
    p = commands.add_parser(
        "check",
        help="report how data breaks a contract, without scoring",
        description="Check every Parquet file of --input against --contract as scoring "
        "would: missing or mistyped columns, required columns entirely null, then every row "
        "(nulls, NaN, ranges, unseen categories, characters), counted by reason. Exit 0 "
        "when nothing breaks the contract, 1 otherwise.",
    )
    p.add_argument("--input", required=True, type=Path, help="Parquet file or folder")
    p.add_argument("--contract", required=True, help="contract name under schemas/ or a folder")
    p.add_argument(
        "--rows", type=int, default=None, help="row-check only the first N rows of each file"
    )
    add_summary_file(p)
    return parser


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--input={path}: no such file or folder")
    files = list_data_files(path).files
    if not files:
        raise UsageError(f"--input={path}: expected *.parquet files under it; found none")
    return files


def cmd_infer(args: argparse.Namespace) -> int:
    files = _files(args.input)
    targets = [args.out / SCHEMA_FILE, args.out / RULES_FILE]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise UsageError(f"--out={args.out}: {', '.join(existing)} exist; pass --force to replace")
    inferred = infer_contract(files, args.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(targets[0], inferred.schema_text(str(args.input)))
    write_text_atomic(targets[1], inferred.rules_text())
    contract = load_contract(str(args.out))  # what scoring and training will read
    required = sum(rule.required for rule in contract.columns.values())
    print(
        f"contract: wrote {targets[0]} and {targets[1]} from {inferred.rows:,} rows of "
        f"{len(files)} file(s): {len(contract.columns)} columns ({required} required)"
        + (f"; left out {', '.join(inferred.skipped)}" if inferred.skipped else "")
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    contract = load_contract(args.contract)
    results = check_contract(_files(args.input), contract, args.rows)
    rows = [
        (
            str(r.path),
            f"{r.rows:,}",
            "schema" if r.schema_problems else ("ok" if r.ok else "rows"),
            ", ".join(f"{k}: {v:,}" for k, v in r.rejected.items()) or "-",
        )
        for r in results
    ]
    print(text_table(("FILE", "ROWS", "STATUS", "REJECTED BY REASON"), rows, right={1}))
    for result in results:
        for line in (*result.schema_problems, *result.examples):
            print(f"  {line}")
    bad = [r for r in results if not r.ok]
    print(
        f"contract {contract.name}: {len(results) - len(bad)} of {len(results)} file(s) "
        f"conform{'' if not bad else '; see above'}"
    )
    args.outcome = {"files": len(results), "failing_files": len(bad)}
    return 1 if bad else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "infer": cmd_infer,
    "check": cmd_check,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job = f"contract {args.command}"

    def run() -> int:
        code = COMMANDS[args.command](args)
        if args.summary_file:
            done = job_summary(job, OK if code == 0 else FAIL, **getattr(args, "outcome", {}))
            write_summary_file(args.summary_file, done, f"{PROG} {args.command}")
        return code

    return run_main(run, f"{PROG} {args.command}", job=job, summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
