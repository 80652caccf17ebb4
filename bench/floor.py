"""The floor of overhead: one Python process, pyarrow batches -> signature -> ParquetWriter.

No validation, no dead-letter, no manifest: the least work that scores a
dataset. batchscore's runners are measured against it.

    python -m bench.floor --input=DIR --model=SAVED_MODEL_DIR --output=FILE --key_column=loan_id
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from batch.engine.inputs import DEFAULT_BATCH_SIZE, find_input_files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--input", required=True, help="Folder of Parquet files (recursive).")
    parser.add_argument("--model", required=True, help="SavedModel directory.")
    parser.add_argument("--output", required=True, help="Output Parquet file.")
    parser.add_argument("--key_column", required=True, help="Column copied to the output.")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="Rows per model call (default: batchscore's, %(default)s).",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    function = tf.saved_model.load(args.model).signatures["serving_default"]
    _, specs = function.structured_input_signature
    casts = {name: spec.dtype.name for name, spec in specs.items()}
    arrow_types = {"float32": pa.float32(), "int64": pa.int64(), "string": pa.string()}
    writer: pq.ParquetWriter | None = None
    rows = 0
    for path in find_input_files(args.input):
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(
            batch_size=args.batch_size, columns=[args.key_column, *casts]
        ):
            batch = batch.drop_null()
            feeds = {
                name: tf.constant(
                    batch.column(name).cast(arrow_types[dtype]).to_numpy(zero_copy_only=False)
                )
                for name, dtype in casts.items()
            }
            outputs = function(**feeds)
            columns = {args.key_column: batch.column(args.key_column)}
            columns.update(
                {
                    k: pa.array(v.numpy().reshape(batch.num_rows, -1)[:, 0])
                    for k, v in outputs.items()
                }
            )
            out = pa.RecordBatch.from_pydict(columns)
            if writer is None:
                writer = pq.ParquetWriter(args.output, out.schema)
            writer.write_batch(out)
            rows += out.num_rows
    if writer is not None:
        writer.close()
    print(f"floor: {rows} rows in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
