"""Spark's stock path: spark.read.parquet -> predict_batch_udf(SavedModel) -> write.parquet.

The way the Spark documentation scores a DataFrame with a TensorFlow model:
``pyspark.ml.functions.predict_batch_udf`` with a ``make_predict_fn`` that loads
the SavedModel's serving signature once per Python worker, one input column
per raw feature (scalar columns: ``input_tensor_shapes`` of ``None`` each), and
a float return type. Rows with a null model input are dropped first (the
predict function cannot take them). No validation, dead-letter output or
manifest; batchscore's native Spark runner is measured against it.

    python -m bench.spark_udf --input=DIR --model=SAVED_MODEL_DIR --output=DIR \\
        --key_column=loan_id --inputs=col1,col2,... [--master=local[2]]
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def make_predict_fn_for(
    model_dir: str, inputs: Sequence[str], output: str
) -> Callable[[], Callable[..., np.ndarray]]:
    """``make_predict_fn`` for predict_batch_udf: runs once per Python worker."""

    def make_predict_fn() -> Callable[..., np.ndarray]:
        import tensorflow as tf

        signature = tf.saved_model.load(model_dir).signatures["serving_default"]
        _, specs = signature.structured_input_signature

        def predict(*columns: np.ndarray) -> np.ndarray:
            feeds = {
                name: tf.constant(column, dtype=specs[name].dtype)
                for name, column in zip(inputs, columns, strict=True)
            }
            result: np.ndarray = signature(**feeds)[output].numpy().reshape(-1)
            return result

        # predict_batch_udf passes one numpy array per column and counts the predict
        # function's parameters to know how many columns it takes.
        predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY) for name in inputs]
        )
        return predict

    return make_predict_fn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spark_udf", description=__doc__)
    parser.add_argument("--input", required=True, help="Folder of Parquet files.")
    parser.add_argument("--model", required=True, help="SavedModel directory.")
    parser.add_argument("--output", required=True, help="Output folder (overwritten).")
    parser.add_argument("--key_column", required=True, help="Column copied to the output.")
    parser.add_argument("--inputs", required=True, help="Comma-separated model input columns.")
    parser.add_argument("--output_name", default="default_probability", help="Model output.")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: local[2]).")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=16384,
        help="Rows per model call (default: %(default)s, the faster of the sizes measured for "
        "this path here; 65536 was slower).",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.types import FloatType

    spark: Any = (
        SparkSession.builder.master(args.master)
        .appName("predict_batch_udf")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    inputs = [c.strip() for c in args.inputs.split(",") if c.strip()]
    predict = predict_batch_udf(
        make_predict_fn_for(os.path.abspath(args.model), inputs, args.output_name),
        return_type=FloatType(),
        batch_size=args.batch_size,
        input_tensor_shapes=[None] * len(inputs),
    )
    frame = spark.read.parquet(os.path.abspath(args.input)).dropna(subset=inputs)
    scored = frame.select(args.key_column, predict(*inputs).alias(args.output_name))
    scored.write.mode("overwrite").parquet(os.path.abspath(args.output))
    spark.stop()
    print(f"spark_udf: scored in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
