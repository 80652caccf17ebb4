"""The model's own limit: the SavedModel called on pre-built tensors, nothing else.

What no scoring path can beat on this machine: the fixed start-up (TensorFlow's import,
the model verified, loaded and its first call prepared, as batchscore does them: without
Keras, and without garbage collection until the model is loaded) plus the model calls a
dataset of the input's row count needs, fed tensors built once before the clock of the
calls starts, in batches of the rows batchscore's planner chooses for the input (its
footer bytes per row), fed as a job feeds them (string columns from their dictionary
where the file stores one), with as many calls at once as the machine has cores. No
reading, validation, checks or writing; it ends without the interpreter's teardown, as
jobs.score does. The benchmark reports every path as a share of it.

With ``--output``, the limit with reading and writing (the bench path ``limit_io``): the
input's splits, as a job plans them, read as a job reads them (``read_split``), each
batch's rows with a null input left out (one ``is_valid`` pass per input, no other
check), scored (``BatchScorer.score``) and written as a job writes its predictions
(``PartWriter``), two splits per core at once (each thread reads, scores and writes in
turn, which one thread a core does not keep the cores busy with; two a core took 5% off,
more no further: docs/benchmarks.md). No validation, drift, dead-letter, stats or
commit: what reading and writing Parquet add to the model's calls, which no job skips.

    python -m bench.model_limit --input=DIR --model=NAME@VERSION --model_repo=REPO
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from batch.core.columns import CONSTANT_COLUMNS
from batch.core.imports import pause_collection
from batch.engine.inputs import (
    InputFile,
    Split,
    engine_split_rows,
    find_input_files,
    inspect_inputs,
    open_parquet,
    plan_splits,
)
from batch.engine.job import read_split
from batch.engine.prepare import trust_policy
from batch.engine.scorer import BatchScorer
from batch.engine.sizing import BatchSizing, bytes_per_row
from batch.model.loading import load_model, plan_model_threads, quiet_tensorflow
from batch.model.repository import ModelRepository, resolve_model
from batch.output.commit import PartWriter
from jobs.cli import exit_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_limit", description=__doc__)
    parser.add_argument("--input", required=True, help="Folder of Parquet files (recursive).")
    parser.add_argument("--model", required=True, help="As for jobs.score (e.g. NAME@1).")
    parser.add_argument("--model_repo", required=True, help="Model repository folder.")
    parser.add_argument(
        "--calls",
        type=int,
        help="Model calls at once (default: the machine's cores; with --output, twice that).",
    )
    parser.add_argument(
        "--output",
        help="Read the input's splits and write predictions to this folder (limit_io).",
    )
    parser.add_argument("--key_column", default="loan_id", help="Key column (with --output).")
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = (os.cpu_count() or 1) * (2 if args.output else 1)
    started = time.perf_counter()
    quiet_tensorflow()
    pause_collection()  # as jobs.score does: no garbage collection until the model is loaded
    files, _ = inspect_inputs(find_input_files(args.input))
    rows = sum(f.num_rows for f in files)
    model = resolve_model(args.model, ModelRepository(args.model_repo))
    plan_model_threads(args.calls)  # each call's ops get their share of the cores, as in a job
    keys = (args.key_column,) if args.output else ()
    scorer = BatchScorer(load_model(model, trust_policy(None, False)), keys, "limit")
    inputs = list(scorer.input_types)
    if args.output:
        return _read_and_write(args, files, scorer, started)
    first = files[0]
    batch_rows = BatchSizing().rows_for(bytes_per_row(first, plan_splits([first])[0], inputs))
    # One batch of rows the model takes as they are (no nulls), built into feeds once; its
    # string inputs read as a job reads them (dictionary-encoded where the file stores them
    # so), so that the model is fed as in a job.
    read = open_parquet(first.path, scorer.takes_encoded, batch_rows).iter_batches(
        batch_size=2 * batch_rows, columns=inputs
    )
    batch = _without_nulls(next(read), inputs).slice(0, batch_rows)
    feeds = scorer.feeds(batch)
    calls = math.ceil(rows / batch.num_rows)
    ready = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.calls) as pool:
        for _ in pool.map(lambda _: scorer.loaded.function(feeds), range(calls)):
            pass
    done = time.perf_counter()
    print(
        f"model_limit: {calls} calls of {batch.num_rows} rows ({calls * batch.num_rows} rows), "
        f"{args.calls} at once: {done - ready:.1f}s of calls after {ready - started:.1f}s of "
        "start-up"
    )
    return 0


def _without_nulls(batch: pa.RecordBatch, inputs: Sequence[str]) -> pa.RecordBatch:
    """``batch`` less the rows with a null in any of ``inputs`` (the model takes none)."""
    valid = pc.is_valid(batch.column(inputs[0]))
    for name in inputs[1:]:
        valid = pc.and_(valid, pc.is_valid(batch.column(name)))
    return batch.filter(valid)


def _read_and_write(
    args: argparse.Namespace, files: Sequence[InputFile], scorer: BatchScorer, started: float
) -> int:
    """The limit with reading and writing: every split read, scored and written."""
    inputs = list(scorer.input_types)
    splits = plan_splits(files, engine_split_rows(sum(f.num_rows for f in files), args.calls))
    batch_rows = BatchSizing().rows_for(bytes_per_row(files[0], splits[0], inputs))
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)  # no parts of an earlier run with other splits
    out.mkdir(parents=True)
    columns = [args.key_column, *inputs]

    def run(split: Split) -> int:
        schema, batches = read_split(split, columns, batch_rows, scorer.takes_encoded)
        path = out / f"part-{split.index:05d}.parquet"
        with PartWriter(
            path,
            scorer.output_schema(schema),
            create_empty=True,
            dictionary_columns=CONSTANT_COLUMNS,
        ) as part:
            for batch in batches:
                part.write(scorer.score(_without_nulls(batch, inputs)))
        return part.rows

    ready = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.calls) as pool:
        rows = sum(pool.map(run, splits))
    done = time.perf_counter()
    print(
        f"model_limit (read and write): {rows} rows in {len(splits)} splits, "
        f"{args.calls} at once: {done - ready:.1f}s after {ready - started:.1f}s of start-up"
    )
    return 0


if __name__ == "__main__":
    # As jobs.score does (jobs.cli.exit_process): no interpreter teardown of TensorFlow
    # (about 0.6 s here), which would count against the limit and flatter every share.
    exit_process(main())
