"""The exported SavedModel: the transform graph and the Keras model behind three signatures.

- ``serving_default``: one 1-D tensor per raw feature, named like its Parquet column (what
  batchscore scores fastest). A missing value of an optional feature is NaN (float) or ""
  (string) and reaches the transform as absent, as in a tf.Example.
- ``serving_tf_example``: serialized ``tf.Example`` protos (input ``examples``), parsed with
  the raw feature spec, as TFX's ``serve_tf_examples_fn``.
- ``transform_features``: the raw columns in, the transformed features the model
  consumes out (what tf.Transform computed at training time).

The first two return the same outputs: the model's outputs by name, ``[batch]`` for one
value per row, ``[batch, k]`` for k (class probabilities).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from batch.model.loading import SERVING_SIGNATURE
from batch.model.signature import SignatureInfo, TensorInfo
from training.dataset import Feature, is_optional

TRANSFORM_SIGNATURE = "transform_features"
TF_EXAMPLE_SIGNATURE = "serving_tf_example"
TF_EXAMPLE_INPUT = "examples"


def tft_raw_form(columns: Mapping[str, tf.Tensor], spec: Mapping[str, Feature]) -> dict[str, Any]:
    """Raw 1-D columns as tf.Transform's raw feature spec has them: a required feature as
    is, an optional one as a ``[batch, 1]`` SparseTensor without the rows whose value is
    missing (NaN for a float, "" for a string), as ``VarLenFeature`` parsing gives."""
    raw: dict[str, Any] = {}
    for name, feature in spec.items():
        values = columns[name]
        if not is_optional(feature):
            raw[name] = values
            continue
        if values.dtype == tf.string:
            present = tf.not_equal(values, "")
        else:
            present = tf.logical_not(tf.math.is_nan(values))
        rows = tf.where(present)
        raw[name] = tf.SparseTensor(
            indices=tf.concat([rows, tf.zeros_like(rows)], axis=1),
            values=tf.boolean_mask(values, present),
            dense_shape=tf.stack([tf.shape(values, out_type=tf.int64)[0], 1]),
        )
    return raw


class ServingModule(tf.Module):
    """What the SavedModel holds: the transform layer, the Keras model, three signatures."""

    def __init__(
        self,
        model: tf_keras.Model,
        tft_output: tft.TFTransformOutput,
        raw_spec: Mapping[str, Feature],
        output_name: str,
    ) -> None:
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        self._raw_spec = dict(raw_spec)
        self._features = list(model.input_names)
        self._input_ranks = {
            name: len(tensor.shape)
            for name, tensor in zip(model.input_names, model.inputs, strict=False)
        }
        self._output_names = [output_name] if len(model.outputs) == 1 else list(model.output_names)
        columns = [
            {
                name: tf.TensorSpec([None], feature.dtype, name=name)
                for name, feature in self._raw_spec.items()
            }
        ]
        examples = [tf.TensorSpec([None], tf.string, name=TF_EXAMPLE_INPUT)]
        self.serve = tf.function(self._serve_columns, input_signature=columns)
        self.transform = tf.function(self._transform_columns, input_signature=columns)
        self.serve_examples = tf.function(self._serve_examples, input_signature=examples)

    @property
    def raw_spec(self) -> dict[str, Feature]:
        return dict(self._raw_spec)

    @property
    def model_features(self) -> list[str]:
        """The transformed features the Keras model consumes, in its input order."""
        return list(self._features)

    def predict_transformed(self, transformed: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The served outputs for transformed features: ``serving_default`` after its
        transform (what training.compress converts to TFLite)."""
        return self._predict(transformed)

    def _transformed(self, raw: Mapping[str, Any]) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer(dict(raw))
        return {name: transformed[name] for name in self._features}

    def _predict(self, transformed: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        feeds = {
            name: tf.reshape(value, [-1, 1])
            if self._input_ranks[name] == 2 and len(value.shape) == 1
            else value
            for name, value in transformed.items()
        }
        result = self.model(feeds, training=False)
        if isinstance(result, Mapping):
            outputs = list(result.values())
            names = list(result)
        else:
            outputs = list(result) if isinstance(result, list | tuple) else [result]
            names = self._output_names
        served = {}
        for name, output in zip(names, outputs, strict=False):
            if output.dtype.is_floating:
                output = tf.cast(output, tf.float32)
            if len(output.shape) == 2 and output.shape[1] == 1:
                output = tf.reshape(output, [-1])
            served[name] = output
        return served

    # -- the signatures ------------------------------------------------------------
    def _transform_columns(self, columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self._transformed(tft_raw_form(columns, self._raw_spec))

    def _serve_columns(self, columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self._predict(self._transformed(tft_raw_form(columns, self._raw_spec)))

    def _serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(examples, self._raw_spec)
        return self._predict(self._transformed(raw))

    def save(self, path: Path) -> None:
        tf.saved_model.save(
            self,
            str(path),
            signatures={
                SERVING_SIGNATURE: self.serve.get_concrete_function(),
                TF_EXAMPLE_SIGNATURE: self.serve_examples.get_concrete_function(),
                TRANSFORM_SIGNATURE: self.transform.get_concrete_function(),
            },
        )

    def signature_metadata(self) -> dict[str, Any]:
        """The serving signature in ``batch.model.signature.SignatureInfo`` JSON form (plus
        the names of the other signatures)."""
        outputs = self.serve.get_concrete_function().structured_outputs
        info = SignatureInfo(
            inputs={
                name: TensorInfo(feature.dtype.name, (None,))
                for name, feature in self._raw_spec.items()
            },
            outputs={
                name: TensorInfo(tensor.dtype.name, tuple(tensor.shape.as_list()))
                for name, tensor in outputs.items()
            },
        )
        return {
            **info.to_json(),
            "name": SERVING_SIGNATURE,
            "transform_signature": TRANSFORM_SIGNATURE,
            "tf_example_signature": TF_EXAMPLE_SIGNATURE,
        }
