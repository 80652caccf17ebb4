"""Train a model on any dataset with a contract and register it: tf.Transform on Beam,
then a tf-keras model, one signed SavedModel.

The library behind

    python -m jobs.train --input=DATA --contract=schemas/NAME|DIR
                         --preprocessing_fn=MODULE:FUNCTION [--model_fn=MODULE:FUNCTION]
                         [--label=COLUMN] [--key_columns=A,B] --name=MODEL [training options]
                         [--workers=N] [--mixed_precision] [--input_manifest=FILE]
                         [Beam pipeline options, e.g. --direct_num_workers=2]

(with no ``--contract``, the loans demo: :data:`DEMO`). Steps:

1. before anything heavy: import the preprocessing_fn and the model_fn, read the contract
   and its raw feature spec (:mod:`training.dataset`), check every input file against it
   (the label included), and trace the preprocessing_fn once to see that it outputs the
   label;
2. read the first ``train_rows`` rows of the input Parquet, drop the rows that break the
   contract (the row checks scoring uses), split train / held-out (90/10) by a hash of
   the key;
3. analyze and transform the training rows with the preprocessing_fn on Apache Beam
   (tf.Transform), and write the transform output;
4. ``model_fn(tft_output, hyperparameters)`` builds the Keras model
   (:mod:`training.model_fn`); fit it on the transformed features and label, in this
   process or on ``workers`` local processes (:mod:`training.distributed`), in float32 or
   mixed precision (:mod:`training.fitting`; then a float32 reference fit too);
5. export ONE SavedModel (:mod:`training.export`): ``serving_default`` takes the raw 1-D
   columns, ``serving_tf_example`` serialized tf.Examples, ``transform_features`` returns
   the transformed features;
6. evaluate ``serving_default`` on the held-out rows (per task: AUC and log loss;
   accuracy; RMSE, MAE and R^2);
7. describe every raw feature of the rows read and the held-out predictions as the drift
   baseline, and copy the contract's files, both inside the SavedModel, so that the
   signature covers them and the model scores from any folder;
8. register the SavedModel with its transform output and metadata (lineage included:
   the input snapshot (every file, its size and sha256; ``input_manifest`` retrains on
   exactly it), data fingerprint, contract sha256, the functions and the sha256 of their source,
   hyperparameters, library versions, git revision) as the next version of ``name``,
   signed with ``signing_key``.

Keras: tf.Transform 1.21 needs Keras 2. This package uses ``tf_keras`` explicitly (never
``tf.keras``, which is Keras 3 on TF 2.21) and sets ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is imported so tf.Transform agrees.
"""

from __future__ import annotations

import os

# Before TensorFlow is imported: quiet C++ logs, and Keras 2 for tf.Transform.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from batch.model.loading import import_tensorflow

import_tensorflow()  # first, so that TensorFlow's start-up chatter stays off the terminal

import contextlib
import glob
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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

from batch.contract.contract import Contract, contract_sha256, load_contract
from batch.core.errors import InputDataError, UsageError
from batch.core.fsutil import file_sha256, write_json_atomic
from batch.demo.data import ensure_demo_data
from batch.demo.paths import DEMO_MODEL_NAME, demo_model_repo, ensure_signing_key
from batch.model.repository import SAVED_MODEL_DIR, ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.signing import key_fingerprint, public_key_of, short
from batch.observe.drift import baseline_path, compute_baseline
from batch.release.evaluation import auc, log_loss
from runners.beam import create_pipeline
from training import dataset
from training.dataset import (
    RECORD_BATCH_ROWS,
    CleanResult,
    Feature,
    clean_rows,
    data_fingerprint,
    feature_spec,
    parquet_files,
    raw_inputs,
    split_heldout,
    tensor_adapter_config,
    to_record_batches,
)
from training.distributed import (
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    WorkerSpec,
    fit_on_workers,
    threads_per_worker,
)
from training.export import ServingModule
from training.fitting import FLOAT32, build_model, fit, mixed_policy, precision_policy
from training.lineage import FunctionRef, lineage, load_function
from training.model_fn import DEFAULT_OUTPUT_NAMES, TaskInfo, resolve_task

__all__ = [
    "DEMO",
    "TRAINING_STEPS",
    "CleanResult",
    "TrainingRequest",
    "TransformedRows",
    "auc",
    "data_fingerprint",
    "fit_and_register",
    "parquet_files",
    "raw_inputs",
    "train",
    "train_and_register",
    "transformed_rows",
]

DEFAULT_MODEL_FN = "training.model_fn:default_model_fn"
DEFAULT_TRAIN_ROWS = 200_000
DEFAULT_EPOCHS = 3
DEFAULT_SEED = 7
DEFAULT_BATCH_SIZE = 512
DEFAULT_WORKER_TIMEOUT_S = DEFAULT_TIMEOUT_S

TRAINING_STEPS = [
    "read_clean_split",
    "tft_analyze_transform_beam",
    "keras_fit",
    "export",
    "evaluate",
    "float32_reference",
    "drift_baseline",
]

log = logging.getLogger("batchscore.train")


@dataclass(frozen=True)
class TrainingRequest:
    """One training job (the options of ``python -m jobs.train``)."""

    contract: str
    preprocessing_fn: str
    name: str
    input: Path | None = None  # None: the demo data (written if missing)
    model_fn: str = DEFAULT_MODEL_FN
    label: str | None = None  # None: the contract's rules.toml `label`
    key_columns: tuple[str, ...] = ()  # (): the contract's rules.toml `key_columns`
    task: str = "auto"
    output_name: str | None = None  # None: probability / probabilities / prediction
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    model_repo: Path | None = None  # None: the demo repository
    train_rows: int = DEFAULT_TRAIN_ROWS
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = DEFAULT_SEED
    beam_args: tuple[str, ...] = ()
    signing_key: Path | None = None
    workers: int = 1  # > 1: MultiWorkerMirroredStrategy on local worker processes
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S
    mixed_precision: bool = False
    input_manifest: Path | None = None  # retrain on exactly this data snapshot


# The loans demo: what `python -m jobs.train` trains with no --contract.
DEMO = TrainingRequest(
    contract="loans",
    preprocessing_fn="transforms.loans:preprocessing_fn",
    name=DEMO_MODEL_NAME,
    output_name="default_probability",
)


@dataclass(frozen=True)
class _Prepared:
    """What the checks before Beam established."""

    source: Path
    files: list[Path]
    contract: Contract
    spec: dict[str, Feature]  # every contract column
    raw_spec: dict[str, Feature]  # what serving takes: no label, no keys
    label: str
    key_columns: tuple[str, ...]
    preprocessing: FunctionRef
    model_fn: FunctionRef
    training_data: dict[str, Any]  # the snapshot: every input file, its size and sha256


# -- checks before Beam ----------------------------------------------------------------


def prepare(request: TrainingRequest, report: Callable[[str], None] | None = None) -> _Prepared:
    """Every check that needs no Beam and no training; each failure is one line."""
    if request.train_rows < 10:
        raise UsageError(f"--train_rows={request.train_rows}: expected at least 10 rows")
    if request.epochs < 1:
        raise UsageError(f"--epochs={request.epochs}: expected at least 1")
    if request.workers < 1:
        raise UsageError(f"--workers={request.workers}: expected at least 1")
    preprocessing = load_function(request.preprocessing_fn, "--preprocessing_fn")
    model_fn = load_function(request.model_fn, "--model_fn")
    contract = load_contract(request.contract)
    spec = feature_spec(contract)
    label = request.label or contract.label
    if not label:
        raise UsageError(
            f'no label: pass --label=COLUMN, or set `label = "COLUMN"` in '
            f"{contract.source}/rules.toml"
        )
    keys = tuple(request.key_columns) or contract.key_columns
    if not keys:
        raise UsageError(
            f"no key columns: pass --key_columns=A[,B], or set `key_columns = [...]` in "
            f"{contract.source}/rules.toml (the held-out split hashes the key)"
        )
    for option, names in (("--label", (label,)), ("--key_columns", keys)):
        for name in names:
            if name not in spec:
                raise UsageError(
                    f"{option}: column '{name}' is not declared in {contract.source}/"
                    f"schema.pbtxt (declared: {', '.join(spec)}); declare it there or pass "
                    "another column"
                )
    if request.input_manifest is not None:
        pinned = dataset.read_snapshot(request.input_manifest)
        files = dataset.snapshot_files(request.input_manifest, pinned, request.input)
        source = request.input if request.input is not None else Path(pinned["path"])
    else:
        source = request.input if request.input is not None else ensure_demo_data(log=report)
        files = parquet_files(Path(source))
    dataset.check_files(files, contract, spec, label)
    _check_outputs_label(preprocessing, spec, label)
    training_data = (
        {**pinned, "path": str(Path(source).resolve())}  # its files were just checked
        if request.input_manifest is not None
        else dataset.snapshot(Path(source), files)
    )
    return _Prepared(
        source=Path(source),
        files=files,
        contract=contract,
        spec=spec,
        raw_spec=dataset.raw_features(spec, (label, *keys)),
        label=label,
        key_columns=keys,
        preprocessing=preprocessing,
        model_fn=model_fn,
        training_data=training_data,
    )


def _check_outputs_label(
    preprocessing: FunctionRef, spec: Mapping[str, Feature], label: str
) -> None:
    """Trace the preprocessing_fn (no Beam, no data) to see that it runs on the contract's
    features and outputs the label."""
    from tensorflow_transform import impl_helper
    from tensorflow_transform.tf_metadata import schema_utils

    specs = schema_utils.schema_as_feature_spec(
        schema_utils.schema_from_feature_spec(dict(spec))
    ).feature_spec
    type_specs = impl_helper.get_type_specs_from_feature_specs(specs)
    temp = tempfile.mkdtemp(prefix="batchscore-trace-")
    try:
        _graph, _inputs, outputs = impl_helper.trace_preprocessing_function(
            preprocessing.function, type_specs, use_tf_compat_v1=False, base_temp_dir=temp
        )
    except Exception as exc:  # the user's code: any error is theirs to fix
        raise UsageError(
            f"--preprocessing_fn={preprocessing.spec}: failed on the contract's features "
            f"({type(exc).__name__}: {_first_line(str(exc))}); it receives "
            f"{', '.join(spec)} (optional ones as SparseTensors)"
        ) from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if label not in outputs:
        raise UsageError(
            f"--preprocessing_fn={preprocessing.spec}: expected the label '{label}' among its "
            f"outputs (found: {', '.join(sorted(outputs))}); pass it through, e.g. "
            f"outputs['{label}'] = inputs['{label}']"
        )


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- tf.Transform on Beam --------------------------------------------------------------


def _record_batch_source(
    pipeline: beam.Pipeline,
    table: pa.Table,
    spec: Mapping[str, Feature],
    folder: Path,
    label: str,
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
    features = dict(spec)
    return (
        pipeline
        | f"{label}RowGroups" >> beam.Create([(str(path), g) for g in range(groups)])
        | f"{label}Read" >> beam.FlatMap(_read_row_group, features)
    )


def _read_row_group(source: tuple[str, int], spec: Mapping[str, Feature]) -> list[pa.RecordBatch]:
    path, group = source
    table = pq.ParquetFile(path).read_row_group(group)
    return to_record_batches(table, spec, max(table.num_rows, 1))


def _serialize_batch(element: Any) -> bytes:
    batch = element[0] if isinstance(element, tuple) else element
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _read_batches(prefix: str) -> dict[str, np.ndarray]:
    """Read back what :func:`_serialize_batch` wrote: the dense columns (one value per row)
    as flat numpy arrays; a sparse output (several or no values in a row) is left out."""
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
            lengths = pc.list_value_length(column)
            if column.null_count or pc.min_max(lengths).as_py() != {"min": 1, "max": 1}:
                continue
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
    spec: Mapping[str, Feature],
    preprocessing_fn: Callable[..., Any],
    transform_output_dir: Path,
    work_dir: Path,
    beam_args: Sequence[str] | None = None,
) -> str:
    """Analyze ``train`` with tf.Transform on Beam; write the transform output; return
    the prefix of the transformed training rows' files (read with :func:`_read_batches`)."""
    prefix = str(work_dir / "transformed_train" / "part")
    with (
        create_pipeline(_pipeline_options(beam_args)) as pipeline,
        tft_beam.Context(temp_dir=str(work_dir / "tft_tmp")),
    ):
        raw = _record_batch_source(pipeline, train, spec, work_dir / "train_rows", "Train")
        (transformed, _metadata), transform_fn = (
            raw,
            tensor_adapter_config(spec),
        ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn, output_record_batches=True
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
            str(transform_output_dir)
        )
        _ = (
            transformed
            | "Serialize" >> beam.Map(_serialize_batch)
            | "Write" >> beam.io.WriteToTFRecord(prefix)
        )
    return prefix


def tft_transform_rows(
    table: pa.Table,
    transform_output_dir: Path,
    spec: Mapping[str, Feature],
    key: str,
    beam_args: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """tf.Transform's training-time output (``TransformDataset`` on Beam) for ``table``.

    ``table`` needs every column of ``spec``; the preprocessing_fn must pass ``key``
    through. The result (its dense columns) is in the row order of ``table``.
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
            raw = _record_batch_source(pipeline, table, spec, work_dir / "rows", "Rows")
            transformed, _metadata = (
                (raw, tensor_adapter_config(spec)),
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
    return _in_order(out, table.column(key), key)


def _in_order(
    columns: dict[str, np.ndarray], keys: pa.ChunkedArray, key: str
) -> dict[str, np.ndarray]:
    """``columns`` (which carry the key column) reordered to the order of ``keys``."""
    got = columns[key]
    if got.dtype.kind in "OSU":  # strings come back as bytes
        values = pa.array(got.astype(object), pa.binary()).cast(pa.string())
    else:
        values = pa.array(got)
    positions = pc.index_in(keys.cast(values.type), value_set=values)
    if positions.null_count:
        raise InputDataError(
            f"tf.Transform output: expected one transformed row per input {key}; "
            f"{positions.null_count} of {len(keys)} keys are missing from it. Are the "
            f"{key} values unique?"
        )
    order = positions.to_numpy()
    return {name: values_[order] for name, values_ in columns.items()}


# -- fit and evaluate ------------------------------------------------------------------


def job_hyperparameters(
    request: TrainingRequest, prepared: _Prepared, task: TaskInfo, labels: np.ndarray
) -> dict[str, Any]:
    stats = {}
    if task.task == "regression" and labels.size:
        stats = {
            "label_mean": round(float(labels.mean()), 6),
            "label_std": round(float(labels.std()), 6),
        }
    return {
        **stats,
        **request.hyperparameters,
        "label": prepared.label,
        "key_columns": list(prepared.key_columns),
        "task": task.task,
        "num_classes": task.num_classes,
        "output_name": request.output_name or DEFAULT_OUTPUT_NAMES[task.task],
        "seed": request.seed,
    }


def _labels_for(task: TaskInfo, values: np.ndarray) -> np.ndarray:
    if task.task == "multiclass":
        return values.astype(np.int64)
    return values.astype(np.float32)


def transformed_labels(
    tft_output: tft.TFTransformOutput, table: pa.Table, spec: Mapping[str, Feature], label: str
) -> np.ndarray:
    """The label of ``table``'s rows as the preprocessing_fn outputs it (in process, through
    the exported transform graph; no Beam)."""
    from training.export import tft_raw_form

    transformed = tft_output.transform_raw_features(tft_raw_form(raw_inputs(table, spec), spec))
    return np.asarray(transformed[label]).reshape(-1)


def evaluate(
    task: TaskInfo, labels: np.ndarray, predictions: np.ndarray, history: Mapping[str, Any]
) -> dict[str, Any]:
    """Held-out metrics of the task (and the last epoch's training loss)."""
    metrics: dict[str, Any] = {"heldout_rows": int(labels.size)}
    if task.task == "binary":
        metrics |= {
            "heldout_auc": round(auc(labels, predictions), 6),
            "heldout_log_loss": round(log_loss(labels, predictions), 6),
            "heldout_positive_rate": round(float(labels.mean()), 6),
            "heldout_mean_prediction": round(float(predictions.mean()), 6),
        }
    elif task.task == "multiclass":
        chosen = predictions.argmax(axis=1)
        picked = predictions[np.arange(labels.size), labels.astype(np.int64)]
        metrics |= {
            "heldout_accuracy": round(float((chosen == labels).mean()), 6),
            "heldout_log_loss": round(float(-np.mean(np.log(np.clip(picked, 1e-7, 1)))), 6),
            "classes": task.num_classes,
        }
    else:
        error = predictions.astype(np.float64) - labels.astype(np.float64)
        variance = float(np.var(labels.astype(np.float64)))
        metrics |= {
            "heldout_rmse": round(float(np.sqrt(np.mean(error**2))), 6),
            "heldout_mae": round(float(np.mean(np.abs(error))), 6),
            "heldout_r2": round(1 - float(np.mean(error**2)) / variance, 6) if variance else None,
            "heldout_mean_label": round(float(labels.mean()), 6),
            "heldout_mean_prediction": round(float(predictions.mean()), 6),
        }
    for name, values in history.items():
        metrics[f"train_{name}"] = round(float(values[-1]), 6)
    return metrics


def predict(module: ServingModule, table: pa.Table, batch_rows: int = 65536) -> np.ndarray:
    """The first output of ``serving_default`` for the rows of ``table``."""
    spec = module.raw_spec
    scores = [
        next(iter(module.serve(raw_inputs(table.slice(start, batch_rows), spec)).values())).numpy()
        for start in range(0, table.num_rows, batch_rows)
    ]
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


# -- the whole job ---------------------------------------------------------------------


@dataclass
class TransformedRows:
    """What the steps up to tf.Transform made: the input of fitting (a training run, or
    each trial of a hyperparameter search). Valid inside :func:`transformed_rows`."""

    prepared: _Prepared
    raw: pa.Table
    cleaned: CleanResult
    train_rows: pa.Table
    heldout: pa.Table
    work_dir: Path
    transform_output_dir: Path
    tft_output: tft.TFTransformOutput
    task: TaskInfo
    features: dict[str, np.ndarray]  # the dense transformed training features
    labels: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    clock: float = field(default_factory=time.perf_counter)

    def start_steps(self) -> None:
        """The next :meth:`lap` counts from now."""
        self.clock = time.perf_counter()

    def lap(self, step: str) -> None:
        assert step in TRAINING_STEPS, step
        now = time.perf_counter()
        self.timings[step] = round(now - self.clock, 2)
        self.clock = now


@contextlib.contextmanager
def transformed_rows(
    request: TrainingRequest, report: Callable[[str], None] | None = None
) -> Iterator[TransformedRows]:
    """Steps 1-3: check, read, clean, split, analyze and transform (its work folder is
    removed on exit)."""
    clock = time.perf_counter()
    prepared = prepare(request, report)
    raw = dataset.read_rows(prepared.files, prepared.spec, request.train_rows)
    cleaned = clean_rows(raw, prepared.contract)
    train_rows, heldout = split_heldout(cleaned.table, prepared.key_columns)
    if train_rows.num_rows == 0 or heldout.num_rows == 0:
        raise InputDataError(
            f"--input={prepared.source}: expected clean rows for both training and held-out "
            f"evaluation; found {train_rows.num_rows} train and {heldout.num_rows} held-out "
            f"rows of {raw.num_rows} read ({cleaned.dropped} dirty). Raise --train_rows"
        )
    timings = {"read_clean_split": round(time.perf_counter() - clock, 2)}
    clock = time.perf_counter()
    work_dir = Path(tempfile.mkdtemp(prefix="batchscore-train-"))
    try:
        transform_output_dir = work_dir / "transform_output"
        prefix = analyze_and_transform(
            train_rows,
            prepared.spec,
            prepared.preprocessing.function,
            transform_output_dir,
            work_dir,
            request.beam_args,
        )
        tft_output = tft.TFTransformOutput(str(transform_output_dir))
        task = resolve_task(tft_output, prepared.label, request.task)
        transformed = _read_batches(prefix)
        if prepared.label not in transformed:
            raise UsageError(
                f"--preprocessing_fn={prepared.preprocessing.spec}: its output '{prepared.label}' "
                "(the label) is not one value per row; output it dense"
            )
        labels = _labels_for(task, transformed.pop(prepared.label))
        timings["tft_analyze_transform_beam"] = round(time.perf_counter() - clock, 2)
        yield TransformedRows(
            prepared=prepared,
            raw=raw,
            cleaned=cleaned,
            train_rows=train_rows,
            heldout=heldout,
            work_dir=work_dir,
            transform_output_dir=transform_output_dir,
            tft_output=tft_output,
            task=task,
            features=transformed,
            labels=labels,
            timings=timings,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@dataclass(frozen=True)
class Fitted:
    model: tf_keras.Model
    history: dict[str, list[float]]
    seconds: float  # the whole fit step (with workers: their start-up too)
    model_fit_s: float  # Keras's model.fit alone (with workers: the chief's)


def fit_model(
    rows: TransformedRows,
    request: TrainingRequest,
    hyperparameters: Mapping[str, Any],
    policy: str = FLOAT32,
    work_name: str = "workers",
) -> Fitted:
    """Build the model with the model_fn and fit it on the transformed training rows: in
    this process (``request.workers == 1``, no strategy) or on ``request.workers`` local
    processes (:mod:`training.distributed`), under the dtype ``policy``."""
    started = time.perf_counter()
    model_fit_s: float
    if request.workers == 1:
        with precision_policy(policy):
            model = build_model(
                rows.prepared.model_fn, rows.tft_output, hyperparameters, list(rows.features)
            )
            history = fit(
                model,
                rows.features,
                rows.labels,
                batch_size=request.batch_size,
                epochs=request.epochs,
            )
        model_fit_s = round(time.perf_counter() - started, 2)
    else:
        spec = WorkerSpec(
            tft_output=str(rows.transform_output_dir),
            model_fn=rows.prepared.model_fn.spec,
            hyperparameters=dict(hyperparameters),
            batch_size=request.batch_size,
            epochs=request.epochs,
            seed=request.seed,
            policy=policy,
            collective_timeout_s=min(DEFAULT_COLLECTIVE_TIMEOUT_S, request.worker_timeout_s),
            threads=threads_per_worker(request.workers),
        )
        done = fit_on_workers(
            spec,
            rows.features,
            rows.labels,
            workers=request.workers,
            work_dir=rows.work_dir / work_name,
            timeout_s=request.worker_timeout_s,
            say=lambda message: log.info(message),
        )
        with precision_policy(policy):
            model = build_model(
                rows.prepared.model_fn, rows.tft_output, hyperparameters, list(rows.features)
            )
        model.set_weights(done.weights)
        history = done.history
        model_fit_s = done.worker_fit_s
    return Fitted(model, history, round(time.perf_counter() - started, 2), model_fit_s)


def train(request: TrainingRequest, report: Callable[[str], None] | None = print) -> ResolvedModel:
    """Run the whole job (see the module docstring); return the registered model.

    The registered SavedModel is signed with ``request.signing_key`` (PEM EC private key;
    default: $BATCHSCORE_SIGNING_KEY, else the demo's key pair, made if missing). Its
    metadata holds the signature, the training facts (``training.timings_s`` among them),
    the held-out metrics and the lineage.
    """
    key = ensure_signing_key(request.signing_key)
    public_key_of(key)  # a bad key fails now, not after training
    with transformed_rows(request, report) as rows:
        return fit_and_register(rows, request, report, key)


def fit_and_register(
    rows: TransformedRows,
    request: TrainingRequest,
    report: Callable[[str], None] | None,
    key: Path,
    extra_metadata: Mapping[str, Any] | None = None,
    extra_lineage: Mapping[str, Any] | None = None,
) -> ResolvedModel:
    """Steps 4-8 on transformed rows: fit, export, evaluate, baseline, register."""
    say = report or (lambda _message: None)
    prepared = rows.prepared
    repo = ModelRepository(request.model_repo or demo_model_repo())
    rows.start_steps()
    hyperparameters = job_hyperparameters(request, prepared, rows.task, rows.labels)
    policy = mixed_policy() if request.mixed_precision else FLOAT32
    fitted = fit_model(rows, request, hyperparameters, policy)
    rows.lap("keras_fit")

    module = ServingModule(
        fitted.model, rows.tft_output, prepared.raw_spec, hyperparameters["output_name"]
    )
    saved_model_dir = rows.work_dir / "saved_model"
    module.save(saved_model_dir)
    rows.lap("export")

    scores = predict(module, rows.heldout)
    heldout_labels = _labels_for(
        rows.task, transformed_labels(rows.tft_output, rows.heldout, prepared.spec, prepared.label)
    )
    metrics = evaluate(rows.task, heldout_labels, scores, fitted.history)
    rows.lap("evaluate")

    precision: dict[str, Any] = {"policy": policy}
    if policy != FLOAT32:
        reference = fit_model(rows, request, hyperparameters, FLOAT32, "workers_float32")
        reference_module = ServingModule(
            reference.model, rows.tft_output, prepared.raw_spec, hyperparameters["output_name"]
        )
        reference_metrics = evaluate(
            rows.task, heldout_labels, predict(reference_module, rows.heldout), reference.history
        )
        precision |= precision_change(metrics, reference_metrics, fitted.seconds, reference.seconds)
        rows.lap("float32_reference")

    baseline = write_drift_baseline(
        saved_model_dir,
        rows.raw,
        list(prepared.raw_spec),
        scores if scores.ndim == 1 else None,
        hyperparameters["output_name"],
        prepared.source,
    )
    rows.lap("drift_baseline")

    training_data = prepared.training_data
    metadata = {
        "signature": module.signature_metadata(),
        "key_columns": list(prepared.key_columns),
        "contract": prepared.contract.name,
        "label": prepared.label,
        "task": rows.task.to_json(),
        "training": {
            "data_fingerprint": training_data["fingerprint"],
            "input": str(prepared.source.resolve()),
            "input_files": len(prepared.files),
            "input_manifest": str(request.input_manifest) if request.input_manifest else None,
            "rows_used": rows.raw.num_rows,
            "rows_dropped_dirty": rows.cleaned.dropped,
            "dirty_by_reason": rows.cleaned.reasons,
            "train_rows": rows.train_rows.num_rows,
            "heldout_rows": rows.heldout.num_rows,
            "epochs": request.epochs,
            "batch_size": request.batch_size,
            "seed": request.seed,
            "workers": request.workers,
            "strategy": "MultiWorkerMirroredStrategy" if request.workers > 1 else None,
            "fit_s": fitted.seconds,
            "model_fit_s": fitted.model_fit_s,
            "fit_examples_per_s": round(
                rows.labels.size * request.epochs / max(fitted.seconds, 1e-9), 1
            ),
            "precision": precision,
            "schema": f"{prepared.contract.source}/schema.pbtxt",
            "preprocessing_fn": prepared.preprocessing.spec,
            "model_fn": prepared.model_fn.spec,
            "timings_s": rows.timings,
        },
        "metrics": metrics,
        "drift_baseline": baseline,
        "framework": framework_versions(),
        "lineage": lineage(
            training_data=training_data,
            contract_name=prepared.contract.name,
            contract_sha256=contract_sha256(prepared.contract),
            preprocessing=prepared.preprocessing,
            model_fn=prepared.model_fn,
            hyperparameters=hyperparameters,
            frameworks=framework_versions(),
        )
        | dict(extra_lineage or {}),
        **(extra_metadata or {}),
    }
    resolved = repo.register(
        request.name,
        saved_model_dir,
        metadata,
        rows.transform_output_dir,
        signing_key=key,
        contract_dir=Path(prepared.contract.source),
    )
    say(
        f"train: registered {resolved.label} at {resolved.saved_model_dir.parent} "
        f"(train {rows.train_rows.num_rows:,} rows, held-out {rows.heldout.num_rows:,}, dropped "
        f"{rows.cleaned.dropped:,} dirty; {describe_metrics(metrics)}"
        + (f"; {request.workers} workers" if request.workers > 1 else "")
        + (f"; {describe_precision(precision)}" if policy != FLOAT32 else "")
        + f"); signed with {key} (key {short(key_fingerprint(public_key_of(key)))})"
    )
    return resolved


def precision_change(
    mixed: Mapping[str, Any],
    float32: Mapping[str, Any],
    mixed_fit_s: float,
    float32_fit_s: float,
) -> dict[str, Any]:
    """The held-out metrics of the float32 reference and the mixed-precision model's change
    against them (mixed minus float32), and both fit times."""
    names = [
        k
        for k in float32
        if k.startswith("heldout_")
        and isinstance(float32[k], float)
        and k not in ("heldout_positive_rate", "heldout_mean_label")  # the data's, not the model's
    ]
    return {
        "float32_metrics": {name: float32[name] for name in names},
        "change_vs_float32": {
            name: round(float(mixed[name]) - float(float32[name]), 6)
            for name in names
            if isinstance(mixed.get(name), float)
        },
        "fit_s": mixed_fit_s,
        "float32_fit_s": float32_fit_s,
    }


def describe_precision(precision: Mapping[str, Any]) -> str:
    change = precision.get("change_vs_float32", {})
    parts = [
        f"{name.removeprefix('heldout_')} {value:+.4f}"
        for name, value in change.items()
        if name in ("heldout_auc", "heldout_log_loss", "heldout_rmse", "heldout_accuracy")
    ]
    return f"{precision['policy']}: vs float32 " + ", ".join(parts)


def describe_metrics(metrics: Mapping[str, Any]) -> str:
    """The held-out metrics in words: 'held-out AUC 0.8123, log loss 0.3012'."""
    names = {
        "heldout_auc": "AUC",
        "heldout_accuracy": "accuracy",
        "heldout_log_loss": "log loss",
        "heldout_rmse": "RMSE",
        "heldout_mae": "MAE",
        "heldout_r2": "R^2",
    }
    parts = [
        f"{label} {metrics[key]:.4f}"
        for key, label in names.items()
        if metrics.get(key) is not None
    ]
    return "held-out " + ", ".join(parts)


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
    """The loans demo model (:data:`DEMO`) trained on ``input_dir`` and registered."""
    request = TrainingRequest(
        contract=DEMO.contract,
        preprocessing_fn=DEMO.preprocessing_fn,
        name=name,
        output_name=DEMO.output_name,
        input=Path(input_dir) if input_dir is not None else None,
        model_repo=Path(model_repo) if model_repo is not None else None,
        train_rows=train_rows,
        epochs=epochs,
        seed=seed,
        beam_args=tuple(beam_args or ()),
        batch_size=batch_size,
        signing_key=Path(signing_key) if signing_key is not None else None,
    )
    return train(request, report)


def write_drift_baseline(
    saved_model_dir: Path,
    raw: pa.Table,
    features: Sequence[str],
    heldout_scores: np.ndarray | None,
    prediction_name: str,
    source: Path,
) -> dict[str, Any]:
    """Statistics of every raw feature (all rows read, dirty ones included, as scoring sees
    them) and of the held-out predictions, saved inside the SavedModel before it is signed:
    the signature covers the baseline, and metadata.json records its sha256."""
    baseline = compute_baseline(
        raw,
        list(features),
        source=f"{source} (first {raw.num_rows:,} rows; predictions on the held-out rows)",
        predictions=heldout_scores,
        prediction_name=prediction_name,
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
