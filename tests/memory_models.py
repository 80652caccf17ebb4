"""Test models that need more memory than a machine has (they really run out of it), and
wide-row data.

``build_oom_model`` is the plain model (tests/plain_model.py: inputs x, n, s; the same
``score``) whose activations grow with the batch: a call of more than ``max_rows`` rows,
or of any row with |x| >= POISON_ABOVE, allocates a scratch tensor of petabytes, and
TensorFlow's allocator raises ResourceExhaustedError ("OOM when allocating tensor"), as
it does when a real batch does not fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.plain_model import POISON_ABOVE

# Bytes of scratch per row above the limit: no machine has them (2^50 floats a row).
_HUGE = 1 << 50


def build_oom_model(path: Path, max_rows: int, sign: bool = True) -> Path:
    import tensorflow as tf

    class OutOfMemoryAbove(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="n"),
                tf.TensorSpec([None], tf.string, name="s"),
            ]
        )
        def serve(self, x: tf.Tensor, n: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
            rows = tf.shape(x, out_type=tf.int64)[0]
            too_big = tf.logical_or(rows > max_rows, tf.reduce_any(tf.abs(x) >= POISON_ABOVE))
            scratch = tf.zeros(tf.reshape(tf.where(too_big, rows * _HUGE, rows), [1]))
            length = tf.cast(tf.strings.length(s), tf.float32)
            z = 0.75 * x + 0.1 * tf.cast(n, tf.float32) - 0.05 * length
            return {"score": tf.sigmoid(z) + 0.0 * tf.reduce_sum(scratch)}

    module = OutOfMemoryAbove()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    if sign:
        from batch.demo.paths import ensure_signing_key
        from batch.model.signing import sign_model

        sign_model(path, ensure_signing_key())
    return path


def write_wide_data(folder: Path, files: int, rows: int, text_bytes: int) -> pa.Table:
    """The plain model's columns with an ``s`` of ``text_bytes`` random letters a row."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    tables = []
    for index in range(files):
        ids = np.arange(index * rows, (index + 1) * rows)
        letters = rng.integers(97, 123, size=rows * text_bytes, dtype=np.uint8).tobytes()
        offsets = np.arange(rows + 1, dtype=np.int32) * text_bytes
        texts = pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(letters))
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "x": pa.array(rng.normal(size=rows)),
                "n": pa.array(rng.integers(0, 10, size=rows), pa.int32()),
                "s": texts,
            }
        )
        pq.write_table(table, folder / f"part-{index:03d}.parquet", row_group_size=rows // 2)
        tables.append(table)
    return pa.concat_tables(tables)
