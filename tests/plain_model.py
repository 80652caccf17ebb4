"""A SavedModel that batchscore did not train: plain ``tf.Module``, three raw inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

POISON_ABOVE = 1000.0


def build_plain_model(path: Path, sign: bool = True, weight: float = 0.75) -> Path:
    """Save a model with inputs x (float32), n (int64), s (string); outputs score and pair.

    score = sigmoid(weight * x + 0.1 * n - 0.05 * len(s)); two models built with the same
    ``weight`` agree on every row, with different weights they disagree.

    Signed (``<path>.sig``) with the default signing key unless ``sign`` is False; under
    pytest that is the session's test key (tests/signing_keys.py), which scoring's
    default --public_key matches.
    """
    import tensorflow as tf

    class Plain(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weight)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="n"),
                tf.TensorSpec([None], tf.string, name="s"),
            ]
        )
        def serve(self, x: tf.Tensor, n: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
            # A model that raises on some rows: |x| >= 1000 is a poison row.
            tf.debugging.assert_less(tf.abs(x), POISON_ABOVE, message="x is out of range")
            length = tf.cast(tf.strings.length(s), tf.float32)
            score = tf.sigmoid(self.w * x + 0.1 * tf.cast(n, tf.float32) - 0.05 * length)
            pair = tf.stack([score, 1.0 - score], axis=1)
            return {"score": score, "pair": pair}

    module = Plain()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    if sign:
        from batch.demo.paths import ensure_signing_key
        from batch.model.signing import sign_model

        sign_model(path, ensure_signing_key())
    return path


def plain_model_expected(table: pa.Table, weight: float = 0.75) -> np.ndarray:
    """What ``score`` must be, computed independently with numpy."""
    x = table.column("x").to_numpy().astype(np.float32)
    n = table.column("n").to_numpy().astype(np.float32)
    length = np.array([len(s) for s in table.column("s").to_pylist()], dtype=np.float32)
    z = np.float32(weight) * x + np.float32(0.1) * n - np.float32(0.05) * length
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def write_plain_data(folder: Path, files: int, rows_per_file: int, row_group_rows: int) -> pa.Table:
    """Parquet files with columns id, x (float64), n (int32), s (string), extra; returns all rows."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    tables = []
    for index in range(files):
        start = index * rows_per_file
        ids = np.arange(start, start + rows_per_file)
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "x": pa.array(rng.normal(size=rows_per_file), pa.float64()),
                "n": pa.array(rng.integers(0, 10, size=rows_per_file), pa.int32()),
                "s": pa.array([f"code-{i % 97}" for i in ids], pa.string()),
                "extra": pa.array(rng.normal(size=rows_per_file)),
            }
        )
        pq.write_table(table, folder / f"part-{index:03d}.parquet", row_group_size=row_group_rows)
        tables.append(table)
    return pa.concat_tables(tables)
