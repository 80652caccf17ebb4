"""Test models that need more memory than a machine has: they really run out of it.

``build_oom_model`` is the plain model (tests/plain_model.py: inputs x, n, s; the same
``score``) whose activations grow with the batch: a call of more than ``max_rows`` rows,
or of any row with |x| >= POISON_ABOVE, allocates a scratch tensor of petabytes, and
TensorFlow's allocator raises ResourceExhaustedError ("OOM when allocating tensor"), as
it does when a real batch does not fit.
"""

from __future__ import annotations

from pathlib import Path

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
