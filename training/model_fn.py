"""The model side of training: the task, hyperparameters and the default model_fn.

A ``model_fn`` is ``model_fn(tft_output, hyperparameters) -> tf_keras.Model``, as in TFX's
Trainer: it reads the transformed features from ``tft_output.transformed_feature_spec()``
and returns a compiled Keras 2 (tf-keras) model whose inputs are named like the
transformed features it consumes. ``hyperparameters`` always holds the job's ``label``,
``key_columns``, ``task`` (``binary``, ``multiclass`` or ``regression``), ``num_classes``,
``output_name`` and ``seed`` (for a regression also ``label_mean`` and ``label_std`` of the
training labels), plus whatever ``--hyperparameters`` adds.

:func:`default_model_fn` is a small MLP for tabular data: every float feature is a number,
every int feature with a known bucket count (vocabularies, ``tft.bucketize``; read from
the transformed schema's int domain) is embedded, any other int is a number; ``dropout``
after each hidden layer when above 0. Its output layer computes in float32 whatever the
dtype policy (``--mixed_precision``), as every model_fn's must.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from batch.core.errors import UsageError

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = ("auto", "binary", "multiclass", "regression")
DEFAULT_OUTPUT_NAMES: dict[str, str] = {
    "binary": "probability",
    "multiclass": "probabilities",
    "regression": "prediction",
}
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "hidden_units": [64, 32],
    "learning_rate": 2e-3,
    "max_embedding_dim": 16,
    "dropout": 0.0,
}
# What `python -m jobs.tune` searches for the default model_fn (training/tuning.py).
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "hidden_units": {"type": "choice", "values": [[32], [64, 32], [128, 64]]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "batch_size": {"type": "choice", "values": [256, 512, 1024]},
}


@dataclass(frozen=True)
class TaskInfo:
    task: Task
    num_classes: int  # 1 for binary and regression

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "num_classes": self.num_classes}


def resolve_task(tft_output: tft.TFTransformOutput, label: str, requested: str) -> TaskInfo:
    """The task from the transformed label: float is regression; an int with a known
    bucket count k > 2 (a vocabulary of classes with OOV buckets, whose range tf.Transform
    records as [0, k-1]) is multiclass; any other int is binary (0/1). ``requested``
    (``--task``) overrides ``auto``."""
    feature = tft_output.transformed_feature_spec()[label]
    buckets = int_buckets(tft_output, label)
    if requested == "auto":
        if feature.dtype == tf.float32:
            requested = "regression"
        else:
            requested = "multiclass" if buckets is not None and buckets > 2 else "binary"
    if requested == "multiclass":
        if buckets is None:
            raise UsageError(
                f"--task=multiclass: the transformed label '{label}' has no known number of "
                "classes; map it with tft.compute_and_apply_vocabulary(..., num_oov_buckets=1) "
                "in the preprocessing_fn (without OOV buckets its range starts at -1)"
            )
        return TaskInfo("multiclass", buckets)
    if requested in ("binary", "regression"):
        return TaskInfo(requested, 1)  # type: ignore[arg-type]
    raise UsageError(f"--task={requested}: expected one of {', '.join(TASKS)}")


def int_buckets(tft_output: tft.TFTransformOutput, name: str) -> int | None:
    """The bucket count of an int transformed feature, or None when no analyzer recorded it."""
    try:
        return int(tft_output.num_buckets_for_transformed_feature(name))
    except ValueError:
        return None


def model_feature_names(
    tft_output: tft.TFTransformOutput, hyperparameters: Mapping[str, Any]
) -> list[str]:
    """The transformed features a default model consumes: all of them but the label and the
    keys (or ``hyperparameters["features"]``), each a scalar per row."""
    spec = tft_output.transformed_feature_spec()
    skip = {hyperparameters["label"], *hyperparameters.get("key_columns", ())}
    names = list(hyperparameters.get("features") or [n for n in spec if n not in skip])
    for name in names:
        feature = spec.get(name)
        if not isinstance(feature, tf.io.FixedLenFeature) or list(feature.shape) != []:
            raise UsageError(
                f"transformed feature '{name}' is {feature}; the default model_fn takes dense "
                "scalars (one value per row): densify it in the preprocessing_fn (e.g. "
                "tft.sparse_tensor_to_dense_with_shape), or pass your own --model_fn"
            )
    return names


def default_model_fn(
    tft_output: tft.TFTransformOutput, hyperparameters: Mapping[str, Any]
) -> tf_keras.Model:
    """An MLP over the transformed features (see the module docstring)."""
    hp = {**DEFAULT_HYPERPARAMETERS, **hyperparameters}
    tf_keras.utils.set_random_seed(int(hp.get("seed", 0)))
    spec = tft_output.transformed_feature_spec()
    inputs: dict[str, Any] = {}
    numbers = []
    embedded = []
    for name in model_feature_names(tft_output, hp):
        dtype = spec[name].dtype
        inputs[name] = tf_keras.Input(shape=(), name=name, dtype=dtype)
        buckets = int_buckets(tft_output, name) if dtype == tf.int64 else None
        if buckets is None:
            value = inputs[name] if dtype == tf.float32 else tf.cast(inputs[name], tf.float32)
            numbers.append(tf_keras.layers.Reshape((1,))(value))
        else:
            dim = max(2, min(int(hp["max_embedding_dim"]), round(1.6 * buckets**0.25)))
            layer = tf_keras.layers.Embedding(buckets, dim, name=f"{name}_embedding")
            embedded.append(layer(inputs[name]))
    if not inputs:
        raise UsageError("the preprocessing_fn outputs no feature besides the label and keys")
    parts = []
    if numbers:
        parts.append(
            tf_keras.layers.Concatenate(name="numbers")(numbers) if len(numbers) > 1 else numbers[0]
        )
    parts.extend(embedded)
    x = tf_keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    for units in hp["hidden_units"]:
        x = tf_keras.layers.Dense(int(units), activation="relu")(x)
        if float(hp["dropout"]) > 0:
            x = tf_keras.layers.Dropout(float(hp["dropout"]), seed=int(hp.get("seed", 0)))(x)
    task, classes, output_name = hp["task"], int(hp["num_classes"]), hp["output_name"]
    optimizer = tf_keras.optimizers.Adam(learning_rate=float(hp["learning_rate"]))
    if task == "binary":
        head = tf_keras.layers.Dense(1, activation="sigmoid", name=output_name, dtype="float32")
        output = head(x)
        loss, metrics = "binary_crossentropy", [tf_keras.metrics.AUC(name="auc")]
    elif task == "multiclass":
        head = tf_keras.layers.Dense(
            classes, activation="softmax", name=output_name, dtype="float32"
        )
        output = head(x)
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        # Learn the label standardized and scale back: converges in a few epochs whatever
        # the label's unit (label_mean / label_std: the training labels', from the job).
        standardized = tf_keras.layers.Dense(1, dtype="float32")(x)
        output = tf_keras.layers.Rescaling(
            scale=float(hp.get("label_std", 1.0)) or 1.0,
            offset=float(hp.get("label_mean", 0.0)),
            name=output_name,
            dtype="float32",
        )(standardized)
        loss, metrics = "mse", [tf_keras.metrics.RootMeanSquaredError(name="rmse")]
    model = tf_keras.Model(inputs=inputs, outputs=output)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


default_model_fn.search_space = DEFAULT_SEARCH_SPACE  # type: ignore[attr-defined]
