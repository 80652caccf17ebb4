"""The tf.Transform preprocessing of the deliveries example (a regression of
``delivery_minutes``; data: batch/demo/deliveries.py, contract: schemas/deliveries).

Trained with the generic job::

    python -m jobs.train --input=DATA --contract=deliveries \\
        --preprocessing_fn=transforms.deliveries:preprocessing_fn --name=delivery_minutes

Required features arrive as dense 1-D tensors; the optional ones (``weather``,
``courier_rating``, ``traffic_index``) as ``[batch, 1]`` SparseTensors whose missing
values are absent entries (their schema features are ``VarLenFeature``s). Each optional
number becomes a z-score (0 where missing) plus a 0/1 "missing" indicator; the optional
string gets its own ``(missing)`` token in its vocabulary. The label and the key are
passed through when they are fed (training), as TFX examples do.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

LABEL = "delivery_minutes"
KEY = "order_id"
MISSING_TOKEN = "(missing)"
DISTANCE_BUCKETS = 8
OPTIONAL_NUMBERS = ("courier_rating", "traffic_index")


def _dense(sparse: tf.SparseTensor, default: float | str) -> tf.Tensor:
    """A ``[batch, 1]`` SparseTensor as a ``[batch]`` tensor, ``default`` where absent."""
    dense = tft.sparse_tensor_to_dense_with_shape(sparse, [None, 1], default_value=default)
    return tf.squeeze(dense, axis=1)


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    outputs: dict[str, tf.Tensor] = {}
    distance = tf.clip_by_value(inputs["distance_km"], 0.0, 100.0)
    outputs["distance_log_z"] = tft.scale_to_z_score(tf.math.log1p(distance))
    outputs["distance_bucket"] = tft.bucketize(distance, DISTANCE_BUCKETS, name="distance")
    outputs["items_z"] = tft.scale_to_z_score(tf.cast(inputs["items"], tf.float32))
    outputs["prep_minutes_z"] = tft.scale_to_z_score(inputs["prep_minutes"])
    angle = tf.cast(inputs["hour"], tf.float32) * (2.0 * 3.141592653589793 / 24.0)
    outputs["hour_sin"] = tf.sin(angle)
    outputs["hour_cos"] = tf.cos(angle)
    outputs["city_id"] = tft.compute_and_apply_vocabulary(
        inputs["city"], num_oov_buckets=1, vocab_filename="city"
    )
    outputs["weather_id"] = tft.compute_and_apply_vocabulary(
        _dense(inputs["weather"], MISSING_TOKEN), num_oov_buckets=1, vocab_filename="weather"
    )
    for name in OPTIONAL_NUMBERS:
        # z-score over the present values only (the analyzer sees the sparse values).
        scaled = _dense(tft.scale_to_z_score(inputs[name]), float("nan"))
        missing = tf.math.is_nan(scaled)
        outputs[f"{name}_z"] = tf.where(missing, tf.zeros_like(scaled), scaled)
        outputs[f"{name}_missing"] = tf.cast(missing, tf.float32)
    for name in (LABEL, KEY):
        if name in inputs:
            outputs[name] = tf.identity(inputs[name])
    return outputs
