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

    python -m bench.model_limit --input=DIR --model=NAME@VERSION --model_repo=REPO
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow.compute as pc

from batch.core.imports import pause_collection
from batch.engine.inputs import find_input_files, inspect_inputs, open_parquet, plan_splits
from batch.engine.prepare import trust_policy
from batch.engine.scorer import BatchScorer
from batch.engine.sizing import BatchSizing, bytes_per_row
from batch.model.loading import load_model, plan_model_threads, quiet_tensorflow
from batch.model.repository import ModelRepository, resolve_model
from jobs.cli import exit_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_limit", description=__doc__)
    parser.add_argument("--input", required=True, help="Folder of Parquet files (recursive).")
    parser.add_argument("--model", required=True, help="As for jobs.score (e.g. NAME@1).")
    parser.add_argument("--model_repo", required=True, help="Model repository folder.")
    parser.add_argument(
        "--calls",
        type=int,
        default=os.cpu_count() or 1,
        help="Model calls at once (default: the machine's cores, %(default)s).",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    quiet_tensorflow()
    pause_collection()  # as jobs.score does: no garbage collection until the model is loaded
    files, _ = inspect_inputs(find_input_files(args.input))
    rows = sum(f.num_rows for f in files)
    model = resolve_model(args.model, ModelRepository(args.model_repo))
    plan_model_threads(args.calls)  # each call's ops get their share of the cores, as in a job
    scorer = BatchScorer(load_model(model, trust_policy(None, False)), (), "limit")
    inputs = list(scorer.input_types)
    first = files[0]
    batch_rows = BatchSizing().rows_for(bytes_per_row(first, plan_splits([first])[0], inputs))
    # One batch of rows the model takes as they are (no nulls), built into feeds once; its
    # string inputs read as a job reads them (dictionary-encoded where the file stores them
    # so), so that the model is fed as in a job.
    read = open_parquet(first.path, scorer.takes_encoded, batch_rows).iter_batches(
        batch_size=2 * batch_rows, columns=inputs
    )
    batch = next(read)
    valid = pc.is_valid(batch.column(inputs[0]))
    for name in inputs[1:]:
        valid = pc.and_(valid, pc.is_valid(batch.column(name)))
    batch = batch.filter(valid).slice(0, batch_rows)
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


if __name__ == "__main__":
    # As jobs.score does (jobs.cli.exit_process): no interpreter teardown of TensorFlow
    # (about 0.6 s here), which would count against the limit and flatter every share.
    exit_process(main())
