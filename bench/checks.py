"""The per-row checks alone: what validation and drift counting cost per 10M rows.

Reads one file of the bench's demo data (generated once, as ``bench.run`` does) as a
job reads a split (``read_split``: batches of batchscore's default size, the category
columns dictionary-encoded) and, in one thread, times each check of
``batch.engine.validate.RowValidator`` over them with the loans contract and the demo
model's inputs, then the split into valid and rejected rows, then drift counting
against the demo model's baseline. CPU seconds (the read's in every thread, the rest in
this one), scaled to 10M rows, median of --repeat passes. Whole-job figures on a noisy
machine cannot show a change of a CPU second or two; these can. ``--plain`` reads every
column decoded, as batchscore did before it read category columns encoded.

    python -m bench.checks [--rows=10000000] [--repeat=5] [--plain]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from batch.contract.contract import load_contract
from batch.demo import paths as demo_paths
from batch.demo.data import ensure_demo_data
from batch.engine.inputs import DEFAULT_BATCH_SIZE, Split, read_input_file
from batch.engine.job import encoded_columns, read_split
from batch.engine.validate import INVALID_UTF8, RowValidator, _invalid_utf8
from batch.model.repository import ModelRepository
from batch.observe.drift import Baseline, count_features

PER = 10_000_000


def _timed(seconds: dict[str, float], key: str, call: Callable[[], object]) -> None:
    began = time.thread_time()
    call()
    seconds[key] += time.thread_time() - began


READ = "read (Parquet to batches, as a job reads a split)"
TOTAL = "read + validation + drift counting"


def one_pass(
    read: Callable[[], list[pa.RecordBatch]], validator: RowValidator, baseline: Baseline | None
) -> dict[str, float]:
    """CPU seconds of the read (every thread's), then of each check over its batches (this
    thread's), by the reason it finds."""
    seconds: dict[str, float] = defaultdict(float)
    began = time.process_time()
    batches = read()
    seconds[READ] = time.process_time() - began
    for batch in batches:
        for column, name in zip(batch.columns, batch.schema.names, strict=True):
            _timed(seconds, INVALID_UTF8, lambda: _invalid_utf8(column, name))  # noqa: B023
        names, rules = validator.checked_columns(batch)
        for label, check in validator.column_checks().items():
            for name in names:
                column = batch.column(name)
                _timed(seconds, label, lambda: check(column, name, rules.get(name)))  # noqa: B023
        _timed(seconds, "whole validation (partition)", lambda: validator.partition(batch))  # noqa: B023
        if baseline is not None:
            _timed(seconds, "drift counting", lambda: count_features(baseline, batch))  # noqa: B023
    parts = (READ, "whole validation (partition)", "drift counting")
    seconds[TOTAL] = sum(seconds.get(key, 0.0) for key in parts)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checks", description=__doc__)
    parser.add_argument(
        "--rows", type=int, default=PER, help="The bench data set to read from (8 files)."
    )
    parser.add_argument("--repeat", type=int, default=5, help="Timed passes (median).")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="Read every column decoded (no column dictionary-encoded), for comparison.",
    )
    parser.add_argument(
        "--workdir", type=Path, default=demo_paths.demo_dir() / "bench", help="As bench.run's."
    )
    args = parser.parse_args(argv)
    repo = ModelRepository(demo_paths.demo_model_repo())
    if not repo.versions(demo_paths.DEMO_MODEL_NAME):
        subprocess.run([sys.executable, "-m", "jobs.train"], check=True)
    model = repo.resolve(demo_paths.DEMO_MODEL_NAME)
    data = ensure_demo_data(
        args.workdir / f"data-{args.rows}", rows=args.rows, days=8, files_per_day=1
    )
    first = sorted(data.rglob("*.parquet"))[0]
    inputs = list(model.metadata["signature"]["inputs"])
    contract = load_contract(str(model.metadata.get("contract", "loans")))
    baseline = Baseline.load(model.saved_model_dir, model.label)
    encoded = () if args.plain else encoded_columns(contract.columns.values(), baseline)
    file = read_input_file(first)
    split = Split(0, file.path, tuple(range(len(file.row_group_rows))), file.num_rows)
    columns = [*contract.key_columns, *inputs]

    def read() -> list[pa.RecordBatch]:
        return list(read_split(split, columns, DEFAULT_BATCH_SIZE, encoded)[1])

    validator = RowValidator(
        {name: file.schema.field(name).type for name in inputs},
        tuple(contract.columns.values()),
    )
    passes = [one_pass(read, validator, baseline) for _ in range(args.repeat + 1)][1:]
    scale = PER / file.num_rows
    print(
        f"{first} ({file.num_rows:,} rows, batches of {DEFAULT_BATCH_SIZE:,}), "
        f"{'every column decoded' if args.plain else f'encoded: {sorted(encoded)}'}, "
        f"median of {args.repeat}\n\n| check | CPU s per 10M rows |\n|---|---:|"
    )
    for key in passes[0]:
        print(f"| {key} | {statistics.median(p[key] for p in passes) * scale:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
