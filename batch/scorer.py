"""Loading a SavedModel once per process and scoring Arrow record batches with it.

TensorFlow is imported lazily, on first load, so that command lines can check
their arguments before paying for it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.errors import InputDataError, ModelError
from batch.model_repo import ResolvedModel
from batch.routing import in_share
from batch.signature import ARROW_TYPE_FOR_DTYPE, SignatureInfo, TensorInfo
from batch.signing import TrustPolicy, VerificationResult, verify_once
from batch.validate import MODEL_ERROR, with_reasons

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
MODEL_NAME_COLUMN = "model_name"
MODEL_VERSION_COLUMN = "model_version"
RUN_ID_COLUMN = "run_id"
CONSTANT_COLUMNS = (MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, RUN_ID_COLUMN)


_STARTUP_CHATTER = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "E0000 ")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ logging to warnings and above."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow() -> Any:
    """Import TensorFlow without its start-up chatter on the terminal.

    TensorFlow 2.21 prints CUDA and oneDNN notices through absl before
    TF_CPP_MIN_LOG_LEVEL is read, straight to file descriptor 2. They are caught
    here; anything else it prints is passed on.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines():
            if line and not line.startswith(_STARTUP_CHATTER):
                print(line, file=sys.stderr)
    return tf


Feed = np.ndarray | tuple[bytes, np.ndarray]
"""One input column: a numpy array, or a string column as (its bytes, int32 offsets)."""


class ServingFunction:
    """A SavedModel's serving signature, run in a session as TensorFlow Serving runs it.

    The SavedModel's MetaGraph is imported into a graph of its own (the loader
    TF Serving uses, about 3x quicker to load than ``tf.saved_model.load``,
    which rebuilds every saved Python object). Each string input is fed as
    Arrow lays it out: the column's bytes as one scalar and its offsets, cut
    into values by ``tf.strings.substr`` inside the graph. Handing TensorFlow a
    string column as numpy builds a Python object per value with the GIL held
    (about 50 ns a value, once the largest cost of feeding a batch); the cut
    runs in TensorFlow's kernels without the GIL (about 15 ns a value).

    Calls are thread-safe; the graph is finalized once loaded.
    """

    def __init__(self, tf: Any, saved_model_dir: Path, label: str) -> None:
        meta_graph = _serving_meta_graph(tf, saved_model_dir, label)
        if SERVING_SIGNATURE not in meta_graph.signature_def:
            raise ModelError(
                f"model {label} ({saved_model_dir}): expected a '{SERVING_SIGNATURE}' "
                f"signature, found {_public(meta_graph.signature_def) or 'none'}. Export the "
                "model with tf.saved_model.save(obj, path, signatures={'serving_default': fn})"
            )
        signature_def = meta_graph.signature_def[SERVING_SIGNATURE]
        self.signature = _signature_info(tf, signature_def, label)
        self.graph = tf.Graph()
        with self.graph.as_default():
            placeholders: list[Any] = []
            input_map: dict[str, Any] = {}
            string_inputs: list[str] = []
            with tf.name_scope("batchscore_feed"):
                for name, info in self.signature.inputs.items():
                    if info.dtype != "string":
                        continue
                    data = tf.compat.v1.placeholder(tf.string, [], name=f"{name}_bytes")
                    offsets = tf.compat.v1.placeholder(tf.int32, [None], name=f"{name}_offsets")
                    cut = tf.strings.substr(data, offsets[:-1], offsets[1:] - offsets[:-1])
                    input_map[signature_def.inputs[name].name] = cut
                    placeholders += [data, offsets]
                    string_inputs.append(name)
            self.session = tf.compat.v1.Session(graph=self.graph)
            # The loader logs that TF2 code should call tf.saved_model.load instead; this
            # is the loader TF Serving keeps using, so the notice is noise in job output.
            tf_log = logging.getLogger("tensorflow")
            level = tf_log.level
            tf_log.setLevel(logging.ERROR)
            try:
                tf.compat.v1.saved_model.load(
                    self.session,
                    [tf.saved_model.SERVING],
                    str(saved_model_dir),
                    input_map=input_map,
                )
            finally:
                tf_log.setLevel(level)
            numeric_inputs = [n for n in self.signature.inputs if n not in string_inputs]
            placeholders += [
                self.graph.get_tensor_by_name(signature_def.inputs[n].name) for n in numeric_inputs
            ]
            self._order = [*string_inputs, *numeric_inputs]
            self._strings = set(string_inputs)
            self._output_names = sorted(signature_def.outputs)
            fetches = [
                self.graph.get_tensor_by_name(signature_def.outputs[n].name)
                for n in self._output_names
            ]
            self._run = self.session.make_callable(fetches, feed_list=placeholders)
        self.graph.finalize()

    def __call__(self, feeds: dict[str, Feed]) -> dict[str, np.ndarray]:
        """The signature's outputs for one batch of ``feeds`` (one entry per input)."""
        values: list[Any] = []
        for name in self._order:
            value = feeds[name]
            if name in self._strings:
                values += list(value)
            else:
                values.append(value)
        return dict(zip(self._output_names, self._run(*values), strict=True))


def _public(signatures: Any) -> list[str]:
    """Signature names a user gave (TensorFlow adds ``__saved_model_init_op``)."""
    return sorted(name for name in signatures if not name.startswith("__"))


def _serving_meta_graph(tf: Any, saved_model_dir: Path, label: str) -> Any:
    """The MetaGraph tagged ``serve`` of the SavedModel in ``saved_model_dir``."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    path = saved_model_dir / "saved_model.pb"
    text = saved_model_dir / "saved_model.pbtxt"
    try:
        if text.is_file() and not path.is_file():
            path = text
            text_format.Parse(text.read_text(), saved_model)
        else:
            saved_model.ParseFromString(path.read_bytes())
    except (OSError, ValueError, message.Error, text_format.ParseError) as exc:
        raise ModelError(
            f"model {label} ({saved_model_dir}): cannot read {path.name} ({exc}); expected a "
            "SavedModel written by tf.saved_model.save"
        ) from exc
    for meta_graph in saved_model.meta_graphs:
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ModelError(
        f"model {label} ({saved_model_dir}): no MetaGraph tagged '{tf.saved_model.SERVING}' "
        f"(found {found}); export it with tf.saved_model.save, which tags it so"
    )


def _signature_info(tf: Any, signature_def: Any, label: str) -> SignatureInfo:
    def describe(tensor: Any) -> TensorInfo:
        shape: tuple[int | None, ...] = ()
        if not tensor.tensor_shape.unknown_rank:
            shape = tuple(d.size if d.size >= 0 else None for d in tensor.tensor_shape.dim)
        return TensorInfo(tf.dtypes.as_dtype(tensor.dtype).name, shape)

    inputs = {}
    for name, tensor in sorted(signature_def.inputs.items()):
        info = describe(tensor)
        if len(info.shape) != 1:
            raise ModelError(
                f"model {label}: input '{name}' has shape {list(info.shape)}; batchscore feeds "
                "one 1-D tensor per column, so every serving_default input must have shape [None]"
            )
        inputs[name] = info
    outputs = {name: describe(tensor) for name, tensor in sorted(signature_def.outputs.items())}
    signature = SignatureInfo(inputs, outputs)
    try:
        signature.output_fields()
    except ValueError as exc:
        raise ModelError(f"model {label}: {exc}") from exc
    return signature


@dataclass(frozen=True)
class LoadedModel:
    model: ResolvedModel
    signature: SignatureInfo
    function: ServingFunction
    load_seconds: float
    # What was checked before it was loaded.
    verification: VerificationResult | None = None


_LOCK = threading.Lock()
_LOADED: dict[str, LoadedModel] = {}


def load_model(model: ResolvedModel, trust: TrustPolicy) -> LoadedModel:
    """The process-wide instance of ``model``: verified against ``trust`` and loaded on
    first use, shared by all threads.

    Verification comes first, in this process, before TensorFlow reads a byte of
    the model: every worker that loads a model has checked it itself. It runs
    once per process, model and policy (:func:`batch.signing.verify_once`); a
    model that fails raises a :class:`batch.signing.ModelVerificationError`.
    """
    with _LOCK:
        verification = verify_once(model, trust)
        cached = _LOADED.get(model.content_hash)
        if cached is None:
            cached = _load(model, verification)
            _LOADED[model.content_hash] = cached
        return cached


def _load(model: ResolvedModel, verification: VerificationResult) -> LoadedModel:
    tf = import_tensorflow()
    start = time.perf_counter()
    try:
        function = ServingFunction(tf, Path(model.saved_model_dir), model.label)
    except ModelError:
        raise
    except Exception as exc:  # TF raises many types for a broken SavedModel.
        raise ModelError(
            f"model {model.label} ({model.saved_model_dir}): TensorFlow could not load it: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    elapsed = time.perf_counter() - start
    log.info("loaded model %s in %.2fs", model.label, elapsed)
    return LoadedModel(model, function.signature, function, elapsed, verification)


def string_feed(column: pa.Array) -> tuple[bytes, np.ndarray]:
    """A string column (no nulls) as its values' bytes and int32 offsets from 0."""
    _, offsets_buffer, data = column.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        column.offset : column.offset + len(column) + 1
    ]
    first, last = int(offsets[0]), int(offsets[-1])
    values = data[first:last].to_pybytes() if data is not None else b""
    return values, offsets - first


_TF_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")


def tf_error_summary(message: str, limit: int = 300) -> str:
    """The line of a TensorFlow error that says what went wrong, without the trace."""
    for line in message.splitlines():
        text = line.strip()
        if text and not text.startswith(_TF_ERROR_NOISE) and not line.startswith((" ", "\t")):
            return text[:limit]
    return message.strip().splitlines()[0][:limit] if message.strip() else "(no message)"


def constant_string(value: str, length: int) -> pa.Array:
    """A string column holding ``value`` ``length`` times, built from buffers (no per-row objects)."""
    encoded = value.encode()
    offsets = np.arange(length + 1, dtype=np.int32) * len(encoded)
    return pa.StringArray.from_buffers(
        length, pa.py_buffer(offsets.tobytes()), pa.py_buffer(encoded * length)
    )


class BatchScorer:
    """Scores record batches with one loaded model; cheap to build, safe to share."""

    def __init__(self, loaded: LoadedModel, key_columns: Sequence[str], run_id: str) -> None:
        self.loaded = loaded
        self.key_columns = tuple(key_columns)
        self.run_id = run_id
        self._input_types = {
            name: ARROW_TYPE_FOR_DTYPE[info.dtype] for name, info in loaded.signature.inputs.items()
        }
        self._output_fields = loaded.signature.output_fields()
        self._tf = import_tensorflow()

    @property
    def input_types(self) -> dict[str, pa.DataType]:
        """Model input column -> the Arrow type it is cast to before it becomes a tensor."""
        return dict(self._input_types)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [input_schema.field(name) for name in self.key_columns]
        fields += self._output_fields
        fields += [
            pa.field(MODEL_NAME_COLUMN, pa.string()),
            pa.field(MODEL_VERSION_COLUMN, pa.string()),
            pa.field(RUN_ID_COLUMN, pa.string()),
        ]
        return pa.schema(fields)

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Predictions for every row of ``batch``, which must hold no invalid rows."""
        rows = batch.num_rows
        if rows == 0:
            predictions = [pa.array([], type=f.type) for f in self._output_fields]
        else:
            outputs = self.loaded.function(self._feeds(batch))
            predictions = [_to_arrow(outputs[f.name], f.type, rows) for f in self._output_fields]
        model = self.loaded.model
        columns = [batch.column(name) for name in self.key_columns]
        columns += predictions
        columns += [
            constant_string(model.name, rows),
            constant_string(model.version, rows),
            constant_string(self.run_id, rows),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema(batch.schema))

    def score_isolating(
        self, batch: pa.RecordBatch
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
        """Score ``batch``; if the model raises, bisect to the rows that make it raise.

        Returns (prediction batches, dead-letter batches). The rows on which the
        model itself fails (poison rows) are rejected with reason ``model_error``
        and TensorFlow's message; every other row of the batch is scored.
        """
        try:
            return [self.score(batch)], []
        except self._tf.errors.OpError as exc:
            if batch.num_rows == 1:
                message = (
                    f"model {self.loaded.model.label} raised {type(exc).__name__}: "
                    f"{tf_error_summary(exc.message or str(exc))}"
                )
                return [], [with_reasons(batch, MODEL_ERROR, message)]
        middle = batch.num_rows // 2
        scored_left, rejected_left = self.score_isolating(batch.slice(0, middle))
        scored_right, rejected_right = self.score_isolating(batch.slice(middle))
        return scored_left + scored_right, rejected_left + rejected_right

    def _feeds(self, batch: pa.RecordBatch) -> dict[str, Feed]:
        feeds: dict[str, Feed] = {}
        for name, arrow_type in self._input_types.items():
            column = batch.column(name)
            try:
                if column.type != arrow_type:
                    # float64 -> float32 is the models' convention, not a lossless cast.
                    options = pc.CastOptions(target_type=arrow_type, allow_float_truncate=True)
                    column = pc.cast(column, options=options)
            except pa.ArrowInvalid as exc:
                raise InputDataError(
                    f"column '{name}': cannot convert {batch.schema.field(name).type} to "
                    f"{arrow_type} for the model: {exc}"
                ) from exc
            if arrow_type == pa.string():
                feeds[name] = string_feed(column)
            else:
                feeds[name] = column.to_numpy(zero_copy_only=False)
        return feeds


def _to_arrow(values: np.ndarray, arrow_type: pa.DataType, rows: int) -> pa.Array:
    if pa.types.is_fixed_size_list(arrow_type):
        flat = pa.array(values.reshape(-1), type=arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size)
    flat_values = values.reshape(rows)
    if pa.types.is_string(arrow_type):
        return pc.cast(pa.array(flat_values, type=pa.binary()), pa.string())
    return pa.array(flat_values, type=arrow_type)


class CanaryScorer:
    """Scores each row with the production or the canary model, as the row's keys decide.

    A row goes to the canary when its key hash falls in ``fraction``
    (:func:`batch.routing.in_share`), so a key is scored by the same model on
    every runner, batch and rerun. Both scorers must give the same output schema;
    each prediction row names the model that scored it (model_name, model_version).
    """

    def __init__(
        self,
        production: BatchScorer,
        canary: BatchScorer,
        key_columns: Sequence[str],
        fraction: float,
    ) -> None:
        self.production = production
        self.canary = canary
        self.key_columns = tuple(key_columns)
        self.fraction = fraction

    @property
    def loaded(self) -> LoadedModel:
        """The production model: the one the run is named after."""
        return self.production.loaded

    @property
    def input_types(self) -> dict[str, pa.DataType]:
        return self.production.input_types

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return self.production.output_schema(input_schema)

    def score_isolating(
        self, batch: pa.RecordBatch
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
        mask = in_share(batch, self.key_columns, self.fraction)
        if not mask.any():
            return self.production.score_isolating(batch)
        if mask.all():
            return self.canary.score_isolating(batch)
        to_canary = pa.array(mask)
        scored, rejected = self.production.score_isolating(batch.filter(pc.invert(to_canary)))
        canary_scored, canary_rejected = self.canary.score_isolating(batch.filter(to_canary))
        return scored + canary_scored, rejected + canary_rejected
