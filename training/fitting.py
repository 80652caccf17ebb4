"""Building and fitting the Keras model: one process, or data-parallel across worker
processes (:mod:`training.distributed`); the float32 or mixed-precision policy.

Everything here is TensorFlow and tf-keras (no Beam), so that a training worker process
imports only what fitting needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from batch.core.errors import BatchScoreError, UsageError
from training.lineage import FunctionRef

FLOAT32 = "float32"
# Mixed precision: bfloat16 on CPUs (AVX-512/AMX compute it, and it needs no loss
# scaling), float16 on a GPU; the variables stay float32 either way.
MIXED_CPU = "mixed_bfloat16"
MIXED_GPU = "mixed_float16"


class TrainingError(BatchScoreError):
    """Fitting failed: a training worker died or did not finish in time."""


def mixed_policy() -> str:
    """The mixed-precision policy for this machine: float16 on a GPU, bfloat16 on CPU."""
    return MIXED_GPU if tf.config.list_physical_devices("GPU") else MIXED_CPU


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy ``name`` while models are built inside; float32 after."""
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(FLOAT32)


def build_model(
    model_fn: FunctionRef,
    tft_output: tft.TFTransformOutput,
    hyperparameters: Mapping[str, Any],
    features: Sequence[str],
) -> tf_keras.Model:
    """``model_fn(tft_output, hyperparameters)``, checked: a tf_keras.Model whose inputs
    are among ``features`` (the dense transformed features) and whose outputs are float32
    (under mixed precision the output layer must keep ``dtype="float32"``)."""
    model = model_fn.function(tft_output, dict(hyperparameters))
    if not isinstance(model, tf_keras.Model):
        raise UsageError(
            f"--model_fn={model_fn.spec}: expected a tf_keras.Model (Keras 2, "
            f"as tf.Transform 1.21 needs); it returned {type(model).__name__}"
        )
    missing = [name for name in model.input_names if name not in features]
    if missing:
        raise UsageError(
            f"--model_fn={model_fn.spec}: the model's inputs {', '.join(missing)} "
            "are not dense transformed features (one value per row) of the preprocessing_fn "
            f"(it outputs: {', '.join(sorted(features))}); name inputs like them"
        )
    policy = tf_keras.mixed_precision.global_policy().name
    if policy != FLOAT32:
        half = [t.name for t in model.outputs if t.dtype != tf.float32]
        if half:
            raise UsageError(
                f"--model_fn={model_fn.spec}: under --mixed_precision ({policy}) the output "
                f"layer must compute in float32; found {', '.join(half)} in lower precision. "
                'Build the last layer with dtype="float32"'
            )
    return model


def fit(
    model: tf_keras.Model,
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    batch_size: int,
    epochs: int,
    validation: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
    callbacks: Sequence[tf_keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Fit in this process; return Keras's history (one value per epoch and metric).

    Arrays, not an element-wise tf.data pipeline: Keras shuffles indices and gathers whole
    batches, several times faster on 2 cores."""
    history = model.fit(
        {name: features[name] for name in model.input_names},
        labels,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        validation_data=(
            ({name: validation[0][name] for name in model.input_names}, validation[1])
            if validation is not None
            else None
        ),
        callbacks=list(callbacks),
    )
    return {name: [float(v) for v in values] for name, values in history.history.items()}
