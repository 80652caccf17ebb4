"""The per-row checks alone: what validation and drift counting cost per 10M rows.

Reads one file of the bench's demo data (generated once, as ``bench.run`` does) in
batches of batchscore's default size and, in one thread, times each check of
``batch.engine.validate.RowValidator`` over them with the loans contract and the demo
model's inputs, then the split into valid and rejected rows, then drift counting
against the demo model's baseline. Thread CPU seconds, scaled to 10M rows, median of
--repeat passes. Whole-job figures on a noisy machine cannot show a change of a CPU
second or two; these can.

    python -m bench.checks [--rows=10000000] [--repeat=5]
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
from batch.engine.inputs import DEFAULT_BATCH_SIZE, open_parquet
from batch.engine.job import encoded_columns
from batch.engine.validate import INVALID_UTF8, RowValidator, _invalid_utf8
from batch.model.repository import ModelRepository
from batch.observe.drift import Baseline, count_features

PER = 10_000_000


def _timed(seconds: dict[str, float], key: str, call: Callable[[], object]) -> None:
    began = time.thread_time()
    call()
    seconds[key] += time.thread_time() - began


def one_pass(
    batches: Sequence[pa.RecordBatch], validator: RowValidator, baseline: Baseline | None
) -> dict[str, float]:
    """Thread CPU seconds of each check over ``batches``, by the reason it finds."""
    seconds: dict[str, float] = defaultdict(float)
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
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checks", description=__doc__)
    parser.add_argument(
        "--rows", type=int, default=PER, help="The bench data set to read from (8 files)."
    )
    parser.add_argument("--repeat", type=int, default=5, help="Timed passes (median).")
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
    # Read as a job reads it: category columns dictionary-encoded.
    encoded = encoded_columns(contract.columns.values(), baseline)
    table = open_parquet(first, encoded).read(columns=[*contract.key_columns, *inputs])
    batches = table.to_batches(max_chunksize=DEFAULT_BATCH_SIZE)
    validator = RowValidator(
        {name: table.schema.field(name).type for name in inputs},
        tuple(contract.columns.values()),
    )
    passes = [one_pass(batches, validator, baseline) for _ in range(args.repeat + 1)][1:]
    scale = PER / table.num_rows
    print(
        f"{first} ({table.num_rows:,} rows, {len(batches)} batches), one thread, "
        f"median of {args.repeat}\n\n| check | CPU s per 10M rows |\n|---|---:|"
    )
    for key in passes[0]:
        print(f"| {key} | {statistics.median(p[key] for p in passes) * scale:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
