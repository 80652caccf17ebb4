"""Train the loan default model and register it: tf.Transform on Beam, then tf-keras.

The library behind

    python -m jobs.train [--input=DIR] [--model_repo=DIR] [--name=loan_default] [--key=PEM]
                         [--train_rows=200000] [--epochs=3] [--seed=7]
                         [Beam pipeline options, e.g. --direct_num_workers=2]

Steps:

1. read the first ``--train_rows`` rows of the input Parquet (all ``*.parquet``
   files under DIR, in sorted path order; day partitions ``dt=...`` included);
2. drop the rows that are dirty for training: a null, a number outside the
   schema's domain, a categorical outside its ``string_domain``, or a string with
   characters outside ``^[\\w\\-\\s]+$`` (``schemas/loans/schema.pbtxt``);
3. split train / held-out (90/10) by a hash of ``loan_id``;
4. analyze and transform the training rows with ``transforms.loans.preprocessing_fn``
   on Apache Beam (tf.Transform), and write the transform output;
5. train a small tf-keras MLP on the transformed features to predict ``defaulted``;
6. export ONE SavedModel whose ``serving_default`` signature takes the raw 1-D
   columns (named like the Parquet columns), applies the transform graph and the
   model, and returns ``default_probability`` (float32, shape [batch]); a second
   signature ``transform_features`` returns the transformed features;
7. evaluate that serving function on the held-out rows (AUC, log loss);
8. describe every raw feature of the rows read and the held-out predictions as
   the drift baseline (batch/observe/drift.py), saved inside the SavedModel as
   ``assets.extra/batchscore_baseline.json`` so that the signature covers it;
9. register the SavedModel with its transform output and metadata (the
   baseline's sha256 included) in the model repository as the next version of
   ``--name``, signed with ``--key`` (the demo's own key pair by default; see
   batch/model/signing.py).

Keras: tf.Transform 1.21 needs Keras 2. This module uses the ``tf_keras``
package explicitly (never ``tf.keras``, which is Keras 3 on TF 2.21) and sets
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported so tf.Transform agrees.
"""

from __future__ import annotations

import os

# Before TensorFlow is imported: quiet C++ logs, and Keras 2 for tf.Transform.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from batch.model.loading import import_tensorflow

import_tensorflow()  # first, so that TensorFlow's start-up chatter stays off the terminal

import dataclasses
import glob
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
import tf_keras
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.tfxio import tensor_adapter

from batch.contract.contract import ARROW_TYPE_FOR_DTYPE, load_contract
from batch.core.errors import InputDataError, UsageError
from batch.core.fsutil import file_sha256, records_sha256, write_json_atomic
from batch.demo.data import ensure_demo_data
from batch.demo.paths import (
    DEMO_MODEL_NAME,
    demo_model_repo,
    ensure_signing_key,
)
from batch.engine.validate import RowValidator
from batch.model.loading import SERVING_SIGNATURE
from batch.model.repository import SAVED_MODEL_DIR, ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.signature import SignatureInfo, TensorInfo
from batch.model.signing import key_fingerprint, public_key_of, short
from batch.observe.drift import baseline_path, compute_baseline
from batch.output.commit import count_reasons
from batch.release.evaluation import auc, log_loss
from runners.beam import create_pipeline
from transforms import loans

TRANSFORM_SIGNATURE = "transform_features"
OUTPUT_KEY = "default_probability"
HELDOUT_BUCKETS = 10  # 1 of 10 hash buckets of loan_id is held out
RECORD_BATCH_ROWS = 8192

DEFAULT_TRAIN_ROWS = 200_000
DEFAULT_EPOCHS = 3
DEFAULT_SEED = 7
DEFAULT_BATCH_SIZE = 512

TRAINING_STEPS = [
    "read_clean_split",
    "tft_analyze_transform_beam",
    "keras_fit",
    "export",
    "evaluate",
    "drift_baseline",
]

log = logging.getLogger("batchscore.train")


@dataclass(frozen=True)
class CleanResult:
    table: pa.Table
    dropped: int
    reasons: dict[str, int] = field(default_factory=dict)


# -- reading and cleaning ------------------------------------------------------------


def parquet_files(input_dir: Path) -> list[Path]:
    """The Parquet files under ``input_dir``, found as scoring finds them
    (batch.engine.inputs.list_data_files: each real file once, symlinked folders followed)."""
    from batch.engine.inputs import list_data_files

    if not input_dir.is_dir():
        raise UsageError(
            f"--input={input_dir}: expected a folder of Parquet files; it does not exist. "
            "Run `python -m jobs.make_demo` or pass --input=DIR"
        )
    files = list_data_files(input_dir).files
    if not files:
        raise UsageError(
            f"--input={input_dir}: expected *.parquet files under it; found none. "
            "Run `python -m jobs.make_demo` or pass the folder that holds the data"
        )
    return files


def data_fingerprint(input_dir: Path, files: Sequence[Path]) -> str:
    """sha256 over the sorted (relative path, size, content sha256) of the input files."""
    return records_sha256(
        (path.relative_to(input_dir).as_posix(), path.stat().st_size, file_sha256(path))
        for path in sorted(files)
    )


def read_rows(input_dir: Path, limit: int | None = None) -> pa.Table:
    """The first ``limit`` rows of the input (files in sorted order), the schema's columns.

    Columns are cast to the schema's types (float64 -> float32); a missing column
    or one of an incompatible type is an :class:`InputDataError` naming the file.
    """
    spec = loans.training_feature_spec()
    tables: list[pa.Table] = []
    rows = 0
    for path in parquet_files(input_dir):
        if limit is not None and rows >= limit:
            break
        parquet = pq.ParquetFile(path)
        _check_columns(path, parquet.schema_arrow, spec)
        table = parquet.read(columns=list(spec))
        if limit is not None:
            table = table.slice(0, limit - rows)
        tables.append(_cast_to_spec(path, table, spec))
        rows += table.num_rows
    return pa.concat_tables(tables)


def _check_columns(path: Path, schema: pa.Schema, spec: dict[str, tf.io.FixedLenFeature]) -> None:
    missing = [name for name in spec if schema.get_field_index(name) < 0]
    if missing:
        raise InputDataError(
            f"{path}: expected the columns of schemas/loans/schema.pbtxt; missing "
            f"{', '.join(missing)} (found: {', '.join(schema.names)}). Pass an --input "
            "written for this schema"
        )


def _cast_to_spec(path: Path, table: pa.Table, spec: dict[str, tf.io.FixedLenFeature]) -> pa.Table:
    columns = []
    for name, feature in spec.items():
        column = table.column(name)
        target = ARROW_TYPE_FOR_DTYPE[feature.dtype.name]
        found = column.type
        ok = (
            (pa.types.is_integer(found) and feature.dtype == tf.int64)
            or (
                (pa.types.is_floating(found) or pa.types.is_integer(found))
                and feature.dtype == tf.float32
            )
            or (
                (pa.types.is_string(found) or pa.types.is_large_string(found))
                and feature.dtype == tf.string
            )
        )
        if not ok:
            raise InputDataError(
                f"{path}: column '{name}' expected {feature.dtype.name} "
                f"(schemas/loans/schema.pbtxt); found {found}. Fix the data or the schema"
            )
        # float64 -> float32 may round; that is the model's input type.
        columns.append(column.cast(target, safe=feature.dtype != tf.float32))
    return pa.table(columns, names=list(spec))


def clean_training_rows(table: pa.Table) -> CleanResult:
    """Drop rows that are dirty for training: the contract's row checks, the same code
    scoring uses (batch.engine.validate), except that an unseen category is always dirty here.
    ``reasons`` counts the dropped rows by reason code."""
    contract = load_contract(loans.SCHEMA_NAME)
    validator = RowValidator(
        {}, tuple(dataclasses.replace(rule, unseen="reject") for rule in contract.columns.values())
    )
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None:
        return CleanResult(table, 0, {})
    part = validator.partition(batch)
    reasons = count_reasons([part.rejected])
    clean = pa.Table.from_batches([part.valid])
    return CleanResult(clean, part.rejected.num_rows, dict(sorted(reasons.items())))


def split_heldout(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(train, held-out): a row is held out when its key hashes to bucket 0 of 10."""
    keys = tf.constant(table.column(loans.KEY).to_numpy(zero_copy_only=False).astype(object))
    buckets = tf.strings.to_hash_bucket_fast(keys, HELDOUT_BUCKETS).numpy()
    heldout = pa.array(buckets == 0)
    return table.filter(pc.invert(heldout)), table.filter(heldout)


# -- tf.Transform on Beam ------------------------------------------------------------


def _tensor_adapter_config() -> tensor_adapter.TensorAdapterConfig:
    spec = loans.training_feature_spec()
    arrow_schema = pa.schema(
        [pa.field(name, pa.list_(ARROW_TYPE_FOR_DTYPE[f.dtype.name])) for name, f in spec.items()]
    )
    representations = {
        name: schema_pb2.TensorRepresentation(
            dense_tensor=schema_pb2.TensorRepresentation.DenseTensor(
                column_name=name, shape=schema_pb2.FixedShape()
            )
        )
        for name in spec
    }
    return tensor_adapter.TensorAdapterConfig(arrow_schema, representations)


def to_record_batches(table: pa.Table, rows: int = RECORD_BATCH_ROWS) -> list[pa.RecordBatch]:
    """The TFXIO form of ``table``: every column a list<value> with one value per row."""
    spec = loans.training_feature_spec()
    batches = []
    for batch in table.select(list(spec)).to_batches(max_chunksize=rows):
        offsets = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32))
        arrays = [pa.ListArray.from_arrays(offsets, batch.column(name)) for name in spec]
        batches.append(pa.RecordBatch.from_arrays(arrays, names=list(spec)))
    return batches


def _record_batch_source(
    pipeline: beam.Pipeline, table: pa.Table, folder: Path, label: str
) -> beam.PCollection:
    """A PCollection of TFXIO record batches of ``table``.

    The rows travel through a temporary Parquet file, not ``beam.Create``: Create
    pickles (and bz2-compresses) its values into the pipeline description, which
    costs far more than the analysis itself.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rows.parquet"
    pq.write_table(table, path, row_group_size=RECORD_BATCH_ROWS, compression="none")
    groups = pq.ParquetFile(path).num_row_groups
    return (
        pipeline
        | f"{label}RowGroups" >> beam.Create([(str(path), g) for g in range(groups)])
        | f"{label}Read" >> beam.FlatMap(_read_row_group)
    )


def _read_row_group(source: tuple[str, int]) -> list[pa.RecordBatch]:
    path, group = source
    table = pq.ParquetFile(path).read_row_group(group)
    return to_record_batches(table, max(table.num_rows, 1))


def _serialize_batch(element: Any) -> bytes:
    batch = element[0] if isinstance(element, tuple) else element
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _read_batches(prefix: str) -> dict[str, np.ndarray]:
    """Read back what :func:`_serialize_batch` wrote, as flat numpy columns."""
    files = sorted(glob.glob(prefix + "*"))
    batches: list[pa.RecordBatch] = []
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        with pa.ipc.open_stream(pa.py_buffer(record)) as reader:
            batches.extend(reader)
    if not batches:
        return {}
    table = pa.Table.from_batches(batches)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = column.flatten()
        out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _pipeline_options(beam_args: Sequence[str] | None) -> PipelineOptions:
    args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=DirectRunner")
    return PipelineOptions(args)


def analyze_and_transform(
    train: pa.Table,
    transform_output_dir: Path,
    work_dir: Path,
    beam_args: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Analyze ``train`` with tf.Transform on Beam; write the transform output; return
    the transformed training rows (the label and key columns included)."""
    prefix = str(work_dir / "transformed_train" / "part")
    with (
        create_pipeline(_pipeline_options(beam_args)) as pipeline,
        tft_beam.Context(temp_dir=str(work_dir / "tft_tmp")),
    ):
        raw = _record_batch_source(pipeline, train, work_dir / "train_rows", "Train")
        (transformed, _metadata), transform_fn = (
            raw,
            _tensor_adapter_config(),
        ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
            loans.preprocessing_fn, output_record_batches=True
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
            str(transform_output_dir)
        )
        _ = (
            transformed
            | "Serialize" >> beam.Map(_serialize_batch)
            | "Write" >> beam.io.WriteToTFRecord(prefix)
        )
    return _in_order(_read_batches(prefix), train.column(loans.KEY))


def tft_transform_rows(
    table: pa.Table, transform_output_dir: Path, beam_args: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """tf.Transform's training-time output (``TransformDataset`` on Beam) for ``table``.

    ``table`` needs every schema column (label and key too). The result is in the
    row order of ``table`` (rows are matched back by ``loan_id``).
    """
    work_dir = Path(tempfile.mkdtemp(prefix="batchscore-tft-"))
    try:
        prefix = str(work_dir / "transformed" / "part")
        with (
            create_pipeline(_pipeline_options(beam_args)) as pipeline,
            tft_beam.Context(temp_dir=str(work_dir / "tft_tmp")),
        ):
            transform_fn = pipeline | "ReadTransformFn" >> tft_beam.ReadTransformFn(
                str(transform_output_dir)
            )
            raw = _record_batch_source(pipeline, table, work_dir / "rows", "Rows")
            transformed, _metadata = (
                (raw, _tensor_adapter_config()),
                transform_fn,
            ) | "Transform" >> tft_beam.TransformDataset(output_record_batches=True)
            _ = (
                transformed
                | "Serialize" >> beam.Map(_serialize_batch)
                | "Write" >> beam.io.WriteToTFRecord(prefix)
            )
        out = _read_batches(prefix)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return _in_order(out, table.column(loans.KEY))


def _in_order(columns: dict[str, np.ndarray], keys: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """``columns`` (which carry the key column) reordered to the order of ``keys``."""
    got = pa.array(columns[loans.KEY].astype(object), pa.binary()).cast(pa.string())
    positions = pc.index_in(keys, value_set=got)
    if positions.null_count:
        raise InputDataError(
            f"tf.Transform output: expected one transformed row per input {loans.KEY}; "
            f"{positions.null_count} of {len(keys)} keys are missing from it. Are the "
            f"{loans.KEY} values unique?"
        )
    order = positions.to_numpy()
    return {name: values[order] for name, values in columns.items()}


# -- the model -----------------------------------------------------------------------


def build_model(tft_output: tft.TFTransformOutput, seed: int) -> tf_keras.Model:
    """A small MLP over z-scored numbers and embedded categorical ids."""
    tf_keras.utils.set_random_seed(seed)
    inputs: dict[str, Any] = {}
    parts = []
    numbers = []
    for name in loans.dense_float_features():
        inputs[name] = tf_keras.Input(shape=(), name=name, dtype=tf.float32)
        numbers.append(tf_keras.layers.Reshape((1,))(inputs[name]))
    parts.append(tf_keras.layers.Concatenate(name="numbers")(numbers))
    hashed = loans.hashed_feature_buckets()
    for name in loans.categorical_id_features():
        inputs[name] = tf_keras.Input(shape=(), name=name, dtype=tf.int64)
        buckets = hashed.get(name) or tft_output.num_buckets_for_transformed_feature(name)
        dim = max(2, min(16, round(1.6 * buckets**0.25)))
        embedded = tf_keras.layers.Embedding(buckets, dim, name=f"{name}_embedding")(inputs[name])
        parts.append(embedded)
    x = tf_keras.layers.Concatenate(name="features")(parts)
    x = tf_keras.layers.Dense(64, activation="relu")(x)
    x = tf_keras.layers.Dense(32, activation="relu")(x)
    output = tf_keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_KEY)(x)
    model = tf_keras.Model(inputs=inputs, outputs=output)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=2e-3),
        loss="binary_crossentropy",
        metrics=[tf_keras.metrics.AUC(name="auc")],
    )
    return model


def model_features(model: tf_keras.Model) -> list[str]:
    return list(model.input_names)


def serving_input_signature() -> dict[str, tf.TensorSpec]:
    """One 1-D tensor per raw feature, named like its Parquet column."""
    return {
        name: tf.TensorSpec([None], feature.dtype, name=name)
        for name, feature in loans.raw_feature_spec().items()
    }


class ServingModule(tf.Module):
    """What the SavedModel holds: the transform layer, the Keras model, two signatures."""

    def __init__(self, model: tf_keras.Model, tft_output: tft.TFTransformOutput) -> None:
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        self._features = model_features(model)
        signature = [serving_input_signature()]
        self.serve = tf.function(self._serve, input_signature=signature)
        self.transform = tf.function(self._transform, input_signature=signature)

    def _transform(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw)
        return {name: transformed[name] for name in self._features}

    def _serve(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = self._transform(raw)
        probability = self.model(transformed, training=False)
        return {OUTPUT_KEY: tf.reshape(tf.cast(probability, tf.float32), [-1])}

    def save(self, path: Path) -> None:
        tf.saved_model.save(
            self,
            str(path),
            signatures={
                SERVING_SIGNATURE: self.serve.get_concrete_function(),
                TRANSFORM_SIGNATURE: self.transform.get_concrete_function(),
            },
        )


def raw_inputs(table: pa.Table) -> dict[str, tf.Tensor]:
    """The serving signature's inputs for the rows of ``table``."""
    out = {}
    for name, feature in loans.raw_feature_spec().items():
        column = table.column(name).cast(ARROW_TYPE_FOR_DTYPE[feature.dtype.name]).combine_chunks()
        values = column.to_numpy(zero_copy_only=False)
        if feature.dtype == tf.string:
            values = values.astype(object)
        out[name] = tf.constant(values, dtype=feature.dtype)
    return out


def predict(module: ServingModule, table: pa.Table, batch_rows: int = 65536) -> np.ndarray:
    scores = [
        module.serve(raw_inputs(table.slice(start, batch_rows)))[OUTPUT_KEY].numpy()
        for start in range(0, table.num_rows, batch_rows)
    ]
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


# -- the whole job -------------------------------------------------------------------


def train_and_register(
    input_dir: Path | str | None = None,
    model_repo: Path | str | None = None,
    name: str = DEMO_MODEL_NAME,
    train_rows: int = DEFAULT_TRAIN_ROWS,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    beam_args: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report: Callable[[str], None] | None = print,
    signing_key: Path | str | None = None,
) -> ResolvedModel:
    """Run the whole job (see the module docstring); return the registered model.

    The registered SavedModel is signed with ``signing_key`` (PEM EC private key;
    default: $BATCHSCORE_SIGNING_KEY, else the demo's key pair, made if missing).

    Its metadata holds the signature, the training facts (``training.timings_s``
    among them) and the held-out metrics.
    """
    say = report or (lambda _message: None)
    if train_rows < 10:
        raise UsageError(f"--train_rows={train_rows}: expected at least 10 rows")
    if epochs < 1:
        raise UsageError(f"--epochs={epochs}: expected at least 1")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        assert step in TRAINING_STEPS, step
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 2)
        clock = now

    key = ensure_signing_key(Path(signing_key) if signing_key is not None else None)
    public_key_of(key)  # a bad key fails now, not after training
    source = Path(input_dir) if input_dir is not None else ensure_demo_data(log=report)
    repo = ModelRepository(Path(model_repo) if model_repo is not None else demo_model_repo())
    files = parquet_files(source)
    raw = read_rows(source, train_rows)
    cleaned = clean_training_rows(raw)
    train, heldout = split_heldout(cleaned.table)
    if train.num_rows == 0 or heldout.num_rows == 0:
        raise InputDataError(
            f"--input={source}: expected clean rows for both training and held-out "
            f"evaluation; found {train.num_rows} train and {heldout.num_rows} held-out rows "
            f"of {raw.num_rows} read ({cleaned.dropped} dirty). Raise --train_rows"
        )
    fingerprint = data_fingerprint(source, files)
    lap("read_clean_split")

    work_dir = Path(tempfile.mkdtemp(prefix="batchscore-train-"))
    try:
        transform_output_dir = work_dir / "transform_output"
        transformed = analyze_and_transform(train, transform_output_dir, work_dir, beam_args)
        lap("tft_analyze_transform_beam")

        tft_output = tft.TFTransformOutput(str(transform_output_dir))
        model = build_model(tft_output, seed)
        features = {name: transformed[name] for name in model_features(model)}
        labels = transformed[loans.LABEL].astype(np.float32)
        # Arrays, not an element-wise tf.data pipeline: Keras shuffles indices and
        # gathers whole batches, several times faster on 2 cores.
        history = model.fit(
            features, labels, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0
        )
        lap("keras_fit")

        module = ServingModule(model, tft_output)
        saved_model_dir = work_dir / "saved_model"
        module.save(saved_model_dir)
        lap("export")

        scores = predict(module, heldout)
        heldout_labels = heldout.column(loans.LABEL).to_numpy()
        metrics = {
            "heldout_auc": round(auc(heldout_labels, scores), 6),
            "heldout_log_loss": round(log_loss(heldout_labels, scores), 6),
            "heldout_rows": heldout.num_rows,
            "heldout_positive_rate": round(float(heldout_labels.mean()), 6),
            "heldout_mean_prediction": round(float(scores.mean()), 6),
            "train_loss": round(float(history.history["loss"][-1]), 6),
            "train_auc": round(float(history.history["auc"][-1]), 6),
        }
        lap("evaluate")

        baseline = write_drift_baseline(saved_model_dir, raw, scores, source)
        lap("drift_baseline")

        metadata = {
            "signature": signature_metadata(),
            "key_columns": [loans.KEY],
            "contract": loans.SCHEMA_NAME,
            "label": loans.LABEL,
            "training": {
                "data_fingerprint": fingerprint,
                "input": str(source),
                "input_files": len(files),
                "rows_used": raw.num_rows,
                "rows_dropped_dirty": cleaned.dropped,
                "dirty_by_reason": cleaned.reasons,
                "train_rows": train.num_rows,
                "heldout_rows": heldout.num_rows,
                "epochs": epochs,
                "batch_size": batch_size,
                "seed": seed,
                "schema": f"schemas/{loans.SCHEMA_NAME}/schema.pbtxt",
                "preprocessing_fn": "transforms.loans.preprocessing_fn",
                "timings_s": timings,
            },
            "metrics": metrics,
            "drift_baseline": baseline,
            "framework": framework_versions(),
        }
        resolved = repo.register(
            name, saved_model_dir, metadata, transform_output_dir, signing_key=key
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    say(
        f"train: registered {resolved.label} at {resolved.saved_model_dir.parent} "
        f"(train {train.num_rows:,} rows, held-out {heldout.num_rows:,}, dropped "
        f"{cleaned.dropped:,} dirty; held-out AUC {metrics['heldout_auc']:.4f}, "
        f"log loss {metrics['heldout_log_loss']:.4f}); signed with {key} (key "
        f"{short(key_fingerprint(public_key_of(key)))})"
    )
    return resolved


def write_drift_baseline(
    saved_model_dir: Path, raw: pa.Table, heldout_scores: np.ndarray, source: Path
) -> dict[str, Any]:
    """Statistics of every raw feature (all rows read, dirty ones included, as scoring sees
    them) and of the held-out predictions, saved inside the SavedModel before it is signed:
    the signature covers the baseline, and metadata.json records its sha256."""
    baseline = compute_baseline(
        raw,
        list(loans.raw_feature_spec()),
        source=f"{source} (first {raw.num_rows:,} rows; predictions on the held-out rows)",
        predictions=heldout_scores,
        prediction_name=OUTPUT_KEY,
    )
    path = baseline_path(saved_model_dir)
    write_json_atomic(path, baseline.to_json())
    return {
        "path": f"{SAVED_MODEL_DIR}/{path.relative_to(saved_model_dir).as_posix()}",
        "sha256": file_sha256(path),
        "rows": baseline.rows,
        "prediction_rows": baseline.prediction_rows,
        "features": len(baseline.features),
    }


def signature_metadata() -> dict[str, Any]:
    """The serving signature in ``batch.model.signature.SignatureInfo`` JSON form (plus names).

    ``{"inputs": {column: {"dtype": "int64", "shape": [None]}, ...},
    "outputs": {"default_probability": {"dtype": "float32", "shape": [None]}}}``
    """
    info = SignatureInfo(
        inputs={
            name: TensorInfo(feature.dtype.name, (None,))
            for name, feature in loans.raw_feature_spec().items()
        },
        outputs={OUTPUT_KEY: TensorInfo("float32", (None,))},
    )
    return {
        **info.to_json(),
        "name": SERVING_SIGNATURE,
        "transform_signature": TRANSFORM_SIGNATURE,
    }


def framework_versions() -> dict[str, str]:
    import apache_beam
    import tfx_bsl

    return {
        "tensorflow": tf.__version__,
        "tensorflow_transform": tft.__version__,
        "tf_keras": tf_keras.__version__,
        "tfx_bsl": tfx_bsl.__version__,
        "apache_beam": apache_beam.__version__,
        "pyarrow": pa.__version__,
    }
