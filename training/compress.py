"""Compressed versions of a registered model: pruning, distillation, INT8 quantization.

``compress(CompressRequest)`` reads a registered version (verified first), rebuilds what
its training saw from its lineage (the training data snapshot, checked unchanged; the same
clean rows and held-out split; the version's own transform graph, run in process) and
registers a new version of the same name, signed, whose lineage names the parent, the
method and its options. The transform graph is the parent's, exact, in every method:

- ``prune``: the parent's weights, the smallest-magnitude share (``sparsity``) of every
  Dense kernel set to zero, then fine-tuned on the training labels with the mask held
  (re-applied after every step); exported as a normal SavedModel.
- ``distill``: a smaller student (the same model_fn with ``student_hidden_units``) trained
  on the teacher's scores for the training rows (soft labels); a normal SavedModel.
- ``int8``: the Keras part converted to TFLite with post-training quantization: full
  integer (weights and activations int8, calibrated on ``representative_rows`` training
  rows; float in and out) or dynamic range (int8 weights). The SavedModel keeps only the
  transform signature; the TFLite model lives inside it (batch.model.tflite), and
  batchscore scores it with LiteRT.

Each variant's held-out metrics are computed as the parent's were, and metadata.json
``compression`` records the parent's, the change and both sizes on disk.
"""

from __future__ import annotations

from batch.model.loading import import_tensorflow

import_tensorflow()  # first, so that TensorFlow's start-up chatter stays off the terminal

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from batch.contract.contract import load_contract
from batch.core.errors import UsageError
from batch.core.fsutil import write_json_atomic
from batch.demo.paths import demo_model_repo, ensure_signing_key
from batch.engine.prepare import trust_policy
from batch.model.repository import (
    METADATA_FILE,
    TRANSFORM_OUTPUT_DIR,
    ModelRepository,
    embed_contract,
)
from batch.model.resolved import ResolvedModel
from batch.model.signing import key_fingerprint, public_key_of, short, verify_model
from batch.model.tflite import (
    BACKEND_FILE,
    TENSORFLOW,
    TFLITE,
    TFLITE_FILE,
    TFLiteModel,
    model_backend,
)
from training import dataset
from training.dataset import clean_rows, feature_spec, raw_features, raw_inputs, split_heldout
from training.export import TRANSFORM_SIGNATURE, ServingModule, tft_raw_form
from training.fitting import build_model, fit
from training.lineage import load_function
from training.model_fn import TaskInfo
from training.trainer import (
    _labels_for,
    describe_metrics,
    evaluate,
    framework_versions,
    predict,
    write_drift_baseline,
)

METHODS = ("int8", "prune", "distill")
QUANTIZATIONS = ("full_integer", "dynamic_range")
TRANSFORM_BATCH_ROWS = 65536
log = logging.getLogger("batchscore.compress")


# Fine-tuning (prune) and student training (distill) defaults: a pruned model starts from
# the parent's weights and needs little; a student starts from scratch.
METHOD_EPOCHS = {"prune": 1, "distill": 5}
METHOD_LEARNING_RATE = {"prune": 1e-3, "distill": 2e-3}


@dataclass(frozen=True)
class CompressOptions:
    """The method's options (recorded in the variant's lineage as used)."""

    sparsity: float = 0.5  # prune: share of each Dense kernel set to zero
    epochs: int | None = None  # prune: fine-tuning epochs; distill: student epochs
    learning_rate: float | None = None  # prune fine-tuning and distill
    batch_size: int = 512
    student_hidden_units: tuple[int, ...] = (16,)  # distill
    quantization: str = "full_integer"  # int8: full_integer | dynamic_range
    representative_rows: int = 1000  # int8 full_integer: calibration rows (training data)

    def epochs_for(self, method: str) -> int:
        return self.epochs if self.epochs is not None else METHOD_EPOCHS[method]

    def learning_rate_for(self, method: str) -> float:
        rate = self.learning_rate
        return rate if rate is not None else METHOD_LEARNING_RATE[method]

    def for_method(self, method: str) -> dict[str, Any]:
        wanted = {
            "prune": ("sparsity", "epochs", "learning_rate", "batch_size"),
            "distill": ("student_hidden_units", "epochs", "learning_rate", "batch_size"),
            "int8": ("quantization", "representative_rows"),
        }[method]
        values = asdict(self)
        if method != "int8":
            values["epochs"] = self.epochs_for(method)
            values["learning_rate"] = self.learning_rate_for(method)
        return {
            name: list(values[name]) if isinstance(values[name], tuple) else values[name]
            for name in wanted
        }


@dataclass(frozen=True)
class CompressRequest:
    """One ``python -m jobs.compress`` job."""

    parent: str  # NAME@VERSION (or an alias) in model_repo
    method: str
    options: CompressOptions = field(default_factory=CompressOptions)
    model_repo: Path | None = None  # None: the demo repository
    input: Path | None = None  # where the training snapshot's files are (default: as recorded)
    signing_key: Path | None = None
    public_key: Path | None = None  # the parent must verify with it (default: the demo's)
    allow_unsigned: bool = False
    seed: int = 7


@dataclass
class _Parent:
    """A registered version and what its training saw, rebuilt from its lineage."""

    model: ResolvedModel
    tft_output: tft.TFTransformOutput
    spec: dict[str, dataset.Feature]
    raw_spec: dict[str, dataset.Feature]
    task: TaskInfo
    output_name: str
    hyperparameters: dict[str, Any]
    train: dict[str, np.ndarray]  # the transformed training features
    train_labels: np.ndarray
    heldout: pa.Table
    heldout_features: dict[str, np.ndarray]
    heldout_labels: np.ndarray
    raw: pa.Table
    source: Path


def check_request(request: CompressRequest) -> None:
    """Every check of the options that needs no model; each failure is one line."""
    options = request.options
    if request.method not in METHODS:
        raise UsageError(f"--method={request.method}: expected one of {', '.join(METHODS)}")
    if not 0.0 < options.sparsity < 1.0:
        raise UsageError(f"--sparsity={options.sparsity}: expected a share strictly in (0, 1)")
    if options.epochs is not None and options.epochs < 1:
        raise UsageError(f"--epochs={options.epochs}: expected at least 1")
    if options.quantization not in QUANTIZATIONS:
        raise UsageError(
            f"--quantization={options.quantization}: expected one of {', '.join(QUANTIZATIONS)}"
        )
    if options.representative_rows < 1:
        raise UsageError(f"--representative_rows={options.representative_rows}: expected >= 1")
    if not options.student_hidden_units or min(options.student_hidden_units) < 1:
        raise UsageError(
            f"--student_hidden_units={','.join(map(str, options.student_hidden_units))}: "
            "expected one or more positive layer widths, e.g. 16 or 16,8"
        )


def compress(
    request: CompressRequest, report: Callable[[str], None] | None = print
) -> ResolvedModel:
    """Make, evaluate, sign and register the variant (see the module docstring)."""
    say = report or (lambda _message: None)
    check_request(request)
    key = ensure_signing_key(request.signing_key)
    public_key_of(key)  # a bad key fails now, not after fitting
    repo = ModelRepository(request.model_repo or demo_model_repo())
    parent_model = repo.resolve(request.parent)
    verify_model(
        parent_model, trust_policy(request.public_key, request.allow_unsigned)
    )  # before a byte of it is loaded
    if model_backend(parent_model.saved_model_dir) != TENSORFLOW:
        raise UsageError(
            f"model {parent_model.label} is a {model_backend(parent_model.saved_model_dir)} "
            "version (it holds no Keras model to compress); compress its parent "
            f"{parent_model.name}@"
            f"{parent_model.metadata.get('compression', {}).get('parent', {}).get('version')} "
            "instead"
        )
    started = time.perf_counter()
    parent = _rebuild(parent_model, request)
    work_dir = Path(tempfile.mkdtemp(prefix="batchscore-compress-"))
    try:
        saved_model_dir = work_dir / "saved_model"
        teacher = _teacher(parent)
        if request.method == "int8":
            scores, details = _int8(parent, teacher, saved_model_dir, request.options)
        else:
            make = _prune if request.method == "prune" else _distill
            module, details = make(parent, teacher, request)
            module.save(saved_model_dir)
            scores = predict(module, parent.heldout)
        metrics = evaluate(parent.task, parent.heldout_labels, scores, {})
        baseline = write_drift_baseline(
            saved_model_dir,
            parent.raw,
            list(parent.raw_spec),
            scores if scores.ndim == 1 else None,
            parent.output_name,
            parent.source,
        )
        contract_dir = Path(parent_model.metadata["contract"])
        embed_contract(saved_model_dir, contract_dir)  # as registered, for a like-for-like size
        metadata = _metadata(parent, request, metrics, baseline, details, saved_model_dir)
        metadata["compression"]["seconds"] = round(time.perf_counter() - started, 2)
        resolved = repo.register(
            parent_model.name,
            saved_model_dir,
            metadata,
            parent_model.saved_model_dir.parent / TRANSFORM_OUTPUT_DIR,
            signing_key=key,
            contract_dir=contract_dir,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    change = metadata["compression"]["metric_change"]
    say(
        f"compress: registered {resolved.label} ({request.method} of {parent_model.label}; "
        f"{describe_metrics(metrics)}; change vs parent "
        + ", ".join(f"{k.removeprefix('heldout_')} {v:+.4f}" for k, v in change.items())
        + f"; {metadata['compression']['size_bytes']:,} bytes on disk vs "
        f"{metadata['compression']['parent_size_bytes']:,}); signed with {key} "
        f"(key {short(key_fingerprint(public_key_of(key)))})"
    )
    return resolved


# -- the parent, rebuilt -----------------------------------------------------------------


def _rebuild(model: ResolvedModel, request: CompressRequest) -> _Parent:
    meta = model.metadata
    lineage = meta.get("lineage") or {}
    training_data = lineage.get("training_data")
    if not isinstance(training_data, dict) or "files" not in training_data:
        raise UsageError(
            f"model {model.label}: its metadata.json has no lineage.training_data (files with "
            "their sha256); compress a version trained by python -m jobs.train"
        )
    files = dataset.snapshot_files(
        model.saved_model_dir.parent / METADATA_FILE, training_data, request.input
    )
    contract = load_contract(str(meta["contract"]))
    spec = feature_spec(contract)
    label, keys = str(meta["label"]), tuple(meta["key_columns"])
    raw = dataset.read_rows(files, spec, int(meta["training"]["rows_used"]))
    train_rows, heldout = split_heldout(clean_rows(raw, contract).table, keys)
    tft_output = tft.TFTransformOutput(str(model.saved_model_dir.parent / TRANSFORM_OUTPUT_DIR))
    task = TaskInfo(meta["task"]["task"], int(meta["task"]["num_classes"]))
    train = transformed_features(tft_output, train_rows, spec)
    heldout_features = transformed_features(tft_output, heldout, spec)
    hyperparameters = dict(lineage["hyperparameters"])
    return _Parent(
        model=model,
        tft_output=tft_output,
        spec=spec,
        raw_spec=raw_features(spec, (label, *keys)),
        task=task,
        output_name=str(hyperparameters["output_name"]),
        hyperparameters=hyperparameters,
        train=train,
        train_labels=_labels_for(task, train.pop(label)),
        heldout=heldout,
        heldout_features=heldout_features,
        heldout_labels=_labels_for(task, heldout_features.pop(label)),
        raw=raw,
        source=Path(training_data["path"]) if request.input is None else request.input,
    )


def transformed_features(
    tft_output: tft.TFTransformOutput, table: pa.Table, spec: Mapping[str, dataset.Feature]
) -> dict[str, np.ndarray]:
    """The dense transformed features of ``table``'s rows, through the exported transform
    graph in process (what scoring computes; tf.Transform on Beam computes the same)."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, table.num_rows, TRANSFORM_BATCH_ROWS):
        chunk = table.slice(start, TRANSFORM_BATCH_ROWS)
        out = tft_output.transform_raw_features(tft_raw_form(raw_inputs(chunk, spec), spec))
        for name, value in out.items():
            if isinstance(value, tf.Tensor):
                parts.setdefault(name, []).append(value.numpy().reshape(chunk.num_rows, -1))
    return {
        name: np.concatenate(values).reshape(table.num_rows, *values[0].shape[1:]).squeeze(-1)
        if values[0].shape[1:] == (1,)
        else np.concatenate(values)
        for name, values in parts.items()
    }


def _build(parent: _Parent, hyperparameters: Mapping[str, Any]) -> tf_keras.Model:
    model_fn = load_function(str(parent.model.metadata["training"]["model_fn"]), "--model_fn")
    return build_model(model_fn, parent.tft_output, hyperparameters, list(parent.train))


def _teacher(parent: _Parent) -> tf_keras.Model:
    """The parent's Keras model: built by its model_fn with its hyperparameters, holding the
    weights of its SavedModel (matched in order, shapes checked)."""
    model = _build(parent, parent.hyperparameters)
    restored = tf.saved_model.load(str(parent.model.saved_model_dir))
    saved = [variable.numpy() for variable in restored.model.variables]
    shapes = ([w.shape for w in saved], [tuple(w.shape) for w in model.weights])
    if [tuple(s) for s in shapes[0]] != shapes[1]:
        raise UsageError(
            f"model {parent.model.label}: its SavedModel's weights {shapes[0]} do not match "
            f"the model its model_fn builds now {shapes[1]}; has "
            f"{parent.model.metadata['training']['model_fn']} changed since it was trained?"
        )
    model.set_weights(saved)
    return model


def _module(parent: _Parent, model: tf_keras.Model) -> ServingModule:
    return ServingModule(model, parent.tft_output, parent.raw_spec, parent.output_name)


def _inputs(model: tf_keras.Model, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: features[name] for name in model.input_names}


# -- the methods --------------------------------------------------------------------------


class _HoldMasks(tf_keras.callbacks.Callback):
    """Re-applies the pruning masks after every training step (the pruned weights stay 0)."""

    def __init__(self, masks: Sequence[tuple[tf.Variable, np.ndarray]]) -> None:
        super().__init__()
        self.masks = masks

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        for variable, mask in self.masks:
            variable.assign(variable * mask)


def prunable_kernels(model: tf_keras.Model) -> list[tf.Variable]:
    """The Dense kernels (embeddings and biases are left whole)."""
    return [layer.kernel for layer in model.layers if isinstance(layer, tf_keras.layers.Dense)]


def _prune(
    parent: _Parent, teacher: tf_keras.Model, request: CompressRequest
) -> tuple[ServingModule, dict[str, Any]]:
    options = request.options
    tf_keras.utils.set_random_seed(request.seed)
    model = teacher  # pruned in place: the teacher is not needed afterwards
    masks = []
    for kernel in prunable_kernels(model):
        values = kernel.numpy()
        cut = np.quantile(np.abs(values), options.sparsity)
        mask = (np.abs(values) > cut).astype(values.dtype)
        kernel.assign(values * mask)
        masks.append((kernel, mask))
    tf_keras.backend.set_value(model.optimizer.learning_rate, options.learning_rate_for("prune"))
    history = fit(
        model,
        _inputs(model, parent.train),
        parent.train_labels,
        batch_size=options.batch_size,
        epochs=options.epochs_for("prune"),
        callbacks=[_HoldMasks(masks)],
    )
    zeros = sum(int((k.numpy() == 0).sum()) for k, _ in masks)
    total = sum(int(np.prod(k.shape)) for k, _ in masks)
    return _module(parent, model), {
        "pruned_kernels": len(masks),
        "kernel_sparsity": round(zeros / max(total, 1), 4),
        "fine_tune_loss": round(history["loss"][-1], 6),
    }


def _distill(
    parent: _Parent, teacher: tf_keras.Model, request: CompressRequest
) -> tuple[ServingModule, dict[str, Any]]:
    options = request.options
    if parent.task.task == "multiclass":
        raise UsageError(
            f"--method=distill: model {parent.model.label} is multiclass; distillation here "
            "fits one score per row (binary or regression). Use --method=prune or int8"
        )
    soft = teacher.predict(_inputs(teacher, parent.train), batch_size=8192, verbose=0)
    soft = np.asarray(soft, np.float32).reshape(-1)
    hyperparameters = {
        **parent.hyperparameters,
        "hidden_units": list(options.student_hidden_units),
        "learning_rate": options.learning_rate_for("distill"),
        "seed": request.seed,
    }
    student = _build(parent, hyperparameters)
    history = fit(
        student,
        _inputs(student, parent.train),
        soft,
        batch_size=options.batch_size,
        epochs=options.epochs_for("distill"),
    )
    return _module(parent, student), {
        "teacher_parameters": teacher.count_params(),
        "student_parameters": student.count_params(),
        "student_hidden_units": list(options.student_hidden_units),
        "distill_loss": round(history["loss"][-1], 6),
    }


def int8_tflite(
    predict: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
    train: Mapping[str, np.ndarray],
    options: CompressOptions,
    trackable: Any = None,
) -> tuple[bytes, dict[str, Any]]:
    """``predict`` (transformed features, one ``[None]`` tensor each, -> served outputs of
    any width: ``[None]`` for a score, ``[None, k]`` for a softmax's k classes) converted to
    TFLite with post-training int8 quantization, calibrated on rows of ``train`` (the
    transformed training features) for full_integer. Returns the model and the model part
    of its backend description (inputs, outputs, output_info, quantization)."""
    specs = {
        name: tf.TensorSpec([None], tf.as_dtype(values.dtype), name=name)
        for name, values in train.items()
    }
    concrete = tf.function(predict, input_signature=[specs]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if options.quantization == "full_integer":
        count = len(next(iter(train.values())))
        rows = min(options.representative_rows, count)
        chosen = np.random.default_rng(0).choice(count, rows, replace=False)

        def representative() -> Any:
            for start in range(0, rows, 100):
                picked = chosen[start : start + 100]
                yield {name: values[picked] for name, values in train.items()}

        converter.representative_dataset = representative
    with warnings.catch_warnings():
        # The converter calibrates with TensorFlow's own (deprecated) tf.lite.Interpreter;
        # scoring uses LiteRT's.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        content = converter.convert()
    outputs = concrete.structured_outputs
    return content, {
        "inputs": {name: name for name in train},
        "outputs": {name: name for name in outputs},
        "output_info": {
            name: {"dtype": tensor.dtype.name, "shape": tensor.shape.as_list()}
            for name, tensor in outputs.items()
        },
        "quantization": options.quantization,
    }


def _int8(
    parent: _Parent, teacher: tf_keras.Model, saved_model_dir: Path, options: CompressOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """The transform-only SavedModel with the TFLite model inside; held-out scores."""
    module = _module(parent, teacher)
    features = module.model_features
    train = {name: parent.train[name] for name in features}
    content, model_part = int8_tflite(module.predict_transformed, train, options, module)
    # The SavedModel keeps the transform layer and its signature only (no Keras weights).
    holder = tf.Module()
    holder.tft_layer = module.tft_layer
    tf.saved_model.save(
        holder,
        str(saved_model_dir),
        signatures={TRANSFORM_SIGNATURE: module.transform.get_concrete_function()},
    )
    (saved_model_dir / TFLITE_FILE).parent.mkdir(parents=True, exist_ok=True)
    (saved_model_dir / TFLITE_FILE).write_bytes(content)
    description = {
        "backend": TFLITE,
        "tflite_file": TFLITE_FILE,
        "transform_signature": TRANSFORM_SIGNATURE,
        **model_part,
    }
    write_json_atomic(saved_model_dir / BACKEND_FILE, description)
    tflite = TFLiteModel(content, description, str(saved_model_dir))
    scores = tflite({name: parent.heldout_features[name] for name in features})
    calibration_rows = (
        min(options.representative_rows, len(parent.train_labels))
        if options.quantization == "full_integer"
        else 0
    )
    return next(iter(scores.values())), {
        "backend": TFLITE,
        "quantization": options.quantization,
        "calibration_rows": calibration_rows,
        "tflite_bytes": len(content),
    }


# -- what the variant records -------------------------------------------------------------


def directory_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _metadata(
    parent: _Parent,
    request: CompressRequest,
    metrics: dict[str, Any],
    baseline: dict[str, Any],
    details: dict[str, Any],
    saved_model_dir: Path,
) -> dict[str, Any]:
    meta = parent.model.metadata
    parent_metrics = meta.get("metrics", {})
    change = {
        name: round(float(metrics[name]) - float(parent_metrics[name]), 6)
        for name in metrics
        if name.startswith("heldout_")
        and name != "heldout_rows"
        and isinstance(parent_metrics.get(name), int | float)
    }
    signature = dict(meta["signature"])
    if details.get("backend") == TFLITE:
        # Only the columns signature is served (with its transform signature).
        signature.pop("tf_example_signature", None)
        signature["backend"] = TFLITE
    origin = {
        "name": parent.model.name,
        "version": parent.model.version,
        "content_hash": parent.model.content_hash,
    }
    options = request.options.for_method(request.method)
    return {
        "signature": signature,
        "key_columns": meta["key_columns"],
        "contract": Path(str(meta["contract"])).name,
        "label": meta["label"],
        "task": meta["task"],
        "training": {
            **meta["training"],
            "timings_s": {},
            "compressed_from": parent.model.label,
        },
        "metrics": metrics,
        "drift_baseline": baseline,
        "framework": framework_versions(),
        "compression": {
            "method": request.method,
            "options": options,
            "parent": origin,
            "parent_metrics": {k: parent_metrics[k] for k in change},
            "metric_change": change,
            "size_bytes": directory_bytes(saved_model_dir),
            "parent_size_bytes": directory_bytes(parent.model.saved_model_dir),
            **details,
        },
        "lineage": {
            **meta.get("lineage", {}),
            "parent": origin,
            "compression": {"method": request.method, "options": options},
        },
    }
