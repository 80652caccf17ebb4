"""SavedModels exported the way their users export them, not written for batchscore.

* :func:`build_tfx_example_model`: tf.Transform (analysed on Beam) + a tf-keras model,
  exported with TFX's ``serve_tf_examples_fn`` (one string input of serialized
  tf.Examples, parsed with the raw feature spec: FixedLen, FixedLen with a default,
  VarLen scalars and a VarLen multi-valued feature), on :func:`write_reviews_data`.
* :func:`build_keras3_model`, :func:`build_tf_keras_model`: ``Input(shape=(1,))`` per
  feature (and a ``[None, 3]`` input), exported with ``model.export`` / ``model.save``.
* :func:`build_predict_only_model`: a ``tf.Module`` whose one signature is ``predict``.
* :func:`build_sparse_signature_model`: a ``SparseTensorSpec`` input in a raw signature
  (a sparse raw input).
* :func:`build_ragged_signature_model`: a ``RaggedTensorSpec`` input beside a dense one
  (``ragged_rank=2`` makes one batchscore refuses).

Each returns the SavedModel directory, signed with the default signing key (the test
session's key under pytest). :func:`signature_call` calls a signature directly, the
reference every scored prediction is compared with; :func:`tf_examples` builds
serialized tf.Examples from rows with ``tf.train.Example`` (a null left out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REVIEWS_LABEL = "label"
REVIEWS_KEY = "review_id"
CITIES = ("paris", "lyon", "nice", "lille", "brest")
TAGS = ("fast", "cheap", "clean", "quiet", "friendly", "late")


def _sign(path: Path) -> Path:
    from batch.demo.paths import ensure_signing_key
    from batch.model.signing import sign_model

    sign_model(path, ensure_signing_key())
    return path


def write_reviews_data(folder: Path, rows: int = 600, files: int = 2, seed: int = 11) -> pa.Table:
    """A made-up dataset of reviews with missing values in several columns.

    review_id int64 (key), income int32 (required; two nulls), age float64 (~15% null),
    city string (~20% null), rating float32 (~10% null; the model defaults it), tags
    list<string> (0-3 tags, ~10% null), label int64. Returns all rows.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def nulls(share: float) -> np.ndarray:
        return rng.random(rows) < share

    age = rng.normal(40, 12, rows)
    city = rng.choice(CITIES, rows)
    rating = rng.uniform(0, 5, rows).astype(np.float32)
    income = rng.integers(1_000, 9_000, rows)
    tag_lists: list[list[str] | None] = [
        list(rng.choice(TAGS, size=int(rng.integers(0, 4)), replace=False)) for _ in range(rows)
    ]
    income_missing = np.zeros(rows, dtype=bool)
    income_missing[[5, rows // 2]] = True
    for row in np.flatnonzero(nulls(0.1)):
        tag_lists[row] = None
    label = (age / 40 + rating / 5 + rng.normal(0, 0.3, rows) > 1.6).astype(np.int64)
    table = pa.table(
        {
            REVIEWS_KEY: pa.array(np.arange(rows), pa.int64()),
            "income": pa.array(income, pa.int32(), mask=income_missing),
            "age": pa.array(age, pa.float64(), mask=nulls(0.15)),
            "city": pa.array(city, pa.string(), mask=nulls(0.2)),
            "rating": pa.array(rating, pa.float32(), mask=nulls(0.1)),
            "tags": pa.array(tag_lists, pa.list_(pa.string())),
            REVIEWS_LABEL: pa.array(label, pa.int64()),
        }
    )
    per_file = -(-rows // files)
    for index in range(files):
        part = table.slice(index * per_file, per_file)
        pq.write_table(part, folder / f"part-{index}.parquet", row_group_size=128)
    return table


def reviews_raw_feature_spec() -> dict[str, Any]:
    """The raw feature spec, TFX-style: optional features are VarLen, ``income`` and
    ``rating`` are FixedLen (the serving function gives ``rating`` a default)."""
    import tensorflow as tf

    return {
        "income": tf.io.FixedLenFeature([], tf.int64),
        "age": tf.io.VarLenFeature(tf.float32),
        "city": tf.io.VarLenFeature(tf.string),
        "rating": tf.io.FixedLenFeature([], tf.float32),
        "tags": tf.io.VarLenFeature(tf.string),
        REVIEWS_LABEL: tf.io.FixedLenFeature([], tf.int64),
    }


def _reviews_preprocessing_fn(inputs: Mapping[str, Any]) -> dict[str, Any]:
    import tensorflow as tf
    import tensorflow_transform as tft

    age = tft.sparse_tensor_to_dense_with_shape(inputs["age"], [None, 1], default_value=40.0)
    city = tft.sparse_tensor_to_dense_with_shape(inputs["city"], [None, 1], default_value="")
    tags = inputs["tags"]
    tag_ones = tf.SparseTensor(
        tags.indices, tf.ones_like(tags.values, dtype=tf.float32), tags.dense_shape
    )
    outputs = {
        "age_z": tft.scale_to_z_score(tf.squeeze(age, axis=1)),
        "income_z": tft.scale_to_z_score(tf.cast(inputs["income"], tf.float32)),
        "rating": inputs["rating"],
        "tag_count": tf.reshape(tf.sparse.reduce_sum(tag_ones, axis=1), [-1]),
        "city_id": tft.compute_and_apply_vocabulary(
            tf.squeeze(city, axis=1), num_oov_buckets=1, vocab_filename="city"
        ),
    }
    if REVIEWS_LABEL in inputs:
        outputs[REVIEWS_LABEL] = inputs[REVIEWS_LABEL]
    return outputs


def tf_examples(table: pa.Table, columns: Sequence[str]) -> list[bytes]:
    """Each row of ``table`` as a serialized tf.Example built with tf.train.Example: ints
    as int64_list, floats as float_list, strings and binary as bytes_list, lists
    multi-valued, a null left out."""
    import tensorflow as tf

    def feature(arrow_type: pa.DataType, values: list[Any]) -> Any:
        if pa.types.is_integer(arrow_type):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        if pa.types.is_floating(arrow_type):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        encoded = [v.encode() if isinstance(v, str) else v for v in values]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))

    selected = table.select(list(columns))
    types = {
        f.name: f.type.value_type if pa.types.is_list(f.type) else f.type for f in selected.schema
    }
    examples = []
    for row in selected.to_pylist():
        features = {
            name: feature(types[name], value if isinstance(value, list) else [value])
            for name, value in row.items()
            if value is not None
        }
        examples.append(
            tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()
        )
    return examples


def signature_call(
    saved_model_dir: Path, inputs: Mapping[str, Any], signature: str = "serving_default"
) -> dict[str, np.ndarray]:
    """The signature called directly with ``inputs`` (tensors or numpy), as numpy."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    function = loaded.signatures[signature]
    outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def build_tfx_example_model(folder: Path, train: pa.Table) -> Path:
    """tf.Transform analysis on Beam (DirectRunner) of ``train``, a tf-keras model trained
    on the transformed rows, exported as TFX's Trainer does: ``serving_default`` is
    ``serve_tf_examples_fn`` (serialized tf.Examples -> parse with the raw feature spec
    without the label -> the tf.Transform layer -> the model). Returns ``folder/model``."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    import tf_keras
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    spec = reviews_raw_feature_spec()
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = []
    for row in train.select(list(spec)).to_pylist():
        if row["income"] is None:
            continue
        rows.append(
            {
                "income": row["income"],
                "age": [] if row["age"] is None else [row["age"]],
                "city": [] if row["city"] is None else [row["city"].encode()],
                "rating": 2.5 if row["rating"] is None else row["rating"],
                "tags": [t.encode() for t in row["tags"] or []],
                REVIEWS_LABEL: row[REVIEWS_LABEL],
            }
        )
    transform_dir = folder / "transform_output"
    with (
        beam.Pipeline(runner="DirectRunner") as pipeline,
        tft_beam.Context(temp_dir=str(folder / "tft_tmp"), force_tf_compat_v1=False),
    ):
        raw = pipeline | "Rows" >> beam.Create(rows)
        transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(_reviews_preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(str(transform_dir))
    tft_output = tft.TFTransformOutput(str(transform_dir))

    tf_keras.utils.set_random_seed(5)
    names = ("age_z", "income_z", "rating", "tag_count")
    numeric = {n: tf_keras.Input(shape=(), name=n, dtype=tf.float32) for n in names}
    city_id = tf_keras.Input(shape=(), name="city_id", dtype=tf.int64)
    vocabulary = tft_output.vocabulary_size_by_name("city") + 1
    embedded = tf_keras.layers.Embedding(vocabulary, 2)(city_id)
    stacked = tf_keras.layers.Concatenate()(
        [tf_keras.layers.Reshape((1,))(t) for t in numeric.values()] + [embedded]
    )
    hidden = tf_keras.layers.Dense(8, activation="relu")(stacked)
    output = tf_keras.layers.Dense(1, activation="sigmoid", name="outputs")(hidden)
    model = tf_keras.Model({**numeric, "city_id": city_id}, output)
    model.compile(optimizer="adam", loss="binary_crossentropy")

    model.tft_layer = tft_output.transform_features_layer()
    serving_spec = dict(spec)
    serving_spec.pop(REVIEWS_LABEL)
    # A missing rating is read as 2.5 (the model's users send reviews without one).
    serving_spec["rating"] = tf.io.FixedLenFeature([], tf.float32, default_value=2.5)

    examples = tf.constant(tf_examples(train, [*serving_spec, REVIEWS_LABEL]))
    training_spec = {**serving_spec, REVIEWS_LABEL: spec[REVIEWS_LABEL]}
    transformed = model.tft_layer(tf.io.parse_example(examples, training_spec))
    labels = transformed.pop(REVIEWS_LABEL)
    model.fit(dict(transformed), labels, epochs=2, batch_size=64, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_examples_fn(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, serving_spec)
        features = model.tft_layer(parsed)
        return {"outputs": model(features)}

    path = folder / "model"
    model.save(str(path), save_format="tf", signatures={"serving_default": serve_tf_examples_fn})
    return _sign(path)


def build_keras3_model(path: Path) -> Path:
    """Keras 3, the Keras that ``import keras`` gives with TF 2.21: inputs x and n of
    ``Input(shape=(1,))`` and v of ``Input(shape=(3,))`` (float32), one sigmoid output
    ``output_0`` of shape [None, 1]; ``model.export`` writes serving_default and serve."""
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input(shape=(1,), name="x", dtype="float32")
    n = keras.Input(shape=(1,), name="n", dtype="float32")
    v = keras.Input(shape=(3,), name="v", dtype="float32")
    joined = keras.layers.Concatenate()([x, n, v])
    output = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(4)(joined))
    model = keras.Model({"x": x, "n": n, "v": v}, output)
    model.export(str(path), format="tf_saved_model", verbose=False)
    return _sign(path)


def build_tf_keras_model(path: Path) -> Path:
    """tf-keras (Keras 2): x float32 and n int64, each ``Input(shape=(1,))``, a string
    input ``s`` of shape (1,), output ``probs`` of shape [None, 2]; saved with
    ``model.save(save_format="tf")``."""
    import tensorflow as tf
    import tf_keras

    class AsFloat(tf_keras.layers.Layer):
        def call(self, values: tf.Tensor) -> tf.Tensor:
            if values.dtype == tf.string:
                return tf.cast(tf.strings.length(values), tf.float32)
            return tf.cast(values, tf.float32)

    tf_keras.utils.set_random_seed(3)
    x = tf_keras.Input(shape=(1,), name="x")
    n = tf_keras.Input(shape=(1,), name="n", dtype="int64")
    s = tf_keras.Input(shape=(1,), name="s", dtype="string")
    joined = tf_keras.layers.Concatenate()([x, AsFloat()(n), AsFloat()(s)])
    output = tf_keras.layers.Dense(2, activation="softmax", name="probs")(joined)
    model = tf_keras.Model({"x": x, "n": n, "s": s}, output)
    model.save(str(path), save_format="tf")
    return _sign(path)


def build_predict_only_model(path: Path) -> Path:
    """A tf.Module exported with one signature, ``predict`` (no serving_default): input
    ``amount`` float32 [None], output ``doubled``."""
    import tensorflow as tf

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="amount")])
        def predict(self, amount: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"doubled": amount * 2.0 + 1.0}

    module = Doubler()
    tf.saved_model.save(module, str(path), signatures={"predict": module.predict})
    return _sign(path)


def build_sparse_signature_model(path: Path) -> Path:
    """A raw signature with a ``SparseTensorSpec`` input ``tags_ids`` (int64 [None, None]),
    which TensorFlow saves as three tensors; output ``total``, the sum of each row's
    values. The module's ``serve`` takes a tf.SparseTensor (the direct call)."""
    import tensorflow as tf

    class Sparse(tf.Module):
        @tf.function(input_signature=[tf.SparseTensorSpec([None, None], tf.int64)])
        def serve(self, tags_ids: tf.SparseTensor) -> dict[str, tf.Tensor]:
            return {"total": tf.sparse.reduce_sum(tags_ids, axis=1)}

    module = Sparse()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return _sign(path)


def build_ragged_signature_model(path: Path, ragged_rank: int = 1) -> Path:
    """A raw signature with a ``RaggedTensorSpec`` input ``words`` (float32, [None, None]
    or, with ``ragged_rank=2``, [None, None, None]), which TensorFlow saves as its flat
    values and row splits, beside a dense float32 input ``bias``; output ``total``, the
    sum of each row's values plus the bias. The module's ``serve`` takes a
    tf.RaggedTensor (the direct call)."""
    import tensorflow as tf

    shape = [None] * (ragged_rank + 1)

    class Ragged(tf.Module):
        @tf.function(
            input_signature=[
                tf.RaggedTensorSpec(shape, tf.float32, ragged_rank=ragged_rank),
                tf.TensorSpec([None], tf.float32, name="bias"),
            ]
        )
        def serve(self, words: tf.RaggedTensor, bias: tf.Tensor) -> dict[str, tf.Tensor]:
            total = words
            while isinstance(total, tf.RaggedTensor):
                total = tf.reduce_sum(total, axis=-1)
            return {"total": total + bias}

    module = Ragged()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return _sign(path)


def build_keras3_lookup_model(path: Path) -> Path:
    """Keras 3: a string input ``city`` of ``Input(shape=(1,))`` through ``StringLookup``
    (the vocabulary :data:`CITIES`, one OOV index) and an ``Embedding``, beside a float
    input ``x`` of ``Input(shape=(1,))``; one sigmoid output of shape [None, 1];
    ``model.export``."""
    import keras

    keras.utils.set_random_seed(4)
    city = keras.Input(shape=(1,), name="city", dtype="string")
    x = keras.Input(shape=(1,), name="x", dtype="float32")
    ids = keras.layers.StringLookup(vocabulary=list(CITIES), num_oov_indices=1)(city)
    embedded = keras.layers.Flatten()(keras.layers.Embedding(len(CITIES) + 1, 3)(ids))
    joined = keras.layers.Concatenate()([embedded, x])
    output = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(4)(joined))
    model = keras.Model({"city": city, "x": x}, output)
    model.export(str(path), format="tf_saved_model", verbose=False)
    return _sign(path)
