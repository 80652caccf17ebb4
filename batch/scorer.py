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


@dataclass(frozen=True)
class LoadedModel:
    model: ResolvedModel
    signature: SignatureInfo
    function: Any
    load_seconds: float
    # The loaded object owns the variables the signature function reads.
    _owner: Any
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
        owner = tf.saved_model.load(str(model.saved_model_dir))
    except Exception as exc:  # TF raises many types for a broken SavedModel.
        raise ModelError(
            f"model {model.label} ({model.saved_model_dir}): TensorFlow could not load it: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if SERVING_SIGNATURE not in owner.signatures:
        raise ModelError(
            f"model {model.label} ({model.saved_model_dir}): expected a '{SERVING_SIGNATURE}' "
            f"signature, found {sorted(owner.signatures) or 'none'}. Export the model with "
            "tf.saved_model.save(obj, path, signatures={'serving_default': fn})"
        )
    function = owner.signatures[SERVING_SIGNATURE]
    signature = describe_signature(function, model)
    elapsed = time.perf_counter() - start
    log.info("loaded model %s in %.2fs", model.label, elapsed)
    return LoadedModel(model, signature, function, elapsed, owner, verification)


def string_tensor(column: pa.Array) -> Any:
    """A string column (no nulls) as a ``tf.string`` tensor, value for value.

    Handing TensorFlow a string column as numpy builds a Python object per
    value, with the GIL held (about 50 ns per value, once the largest cost of
    feeding a batch). Instead the column's data buffer goes in as one scalar and
    ``tf.strings.substr`` cuts it at the column's offsets, in TensorFlow's
    kernel, without the GIL: about 15 ns per value.
    """
    tf = import_tensorflow()
    _, offsets_buffer, data = column.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        column.offset : column.offset + len(column) + 1
    ]
    first, last = int(offsets[0]), int(offsets[-1])
    values = data[first:last].to_pybytes() if data is not None else b""
    return tf.strings.substr(values, offsets[:-1] - first, np.diff(offsets))


def describe_signature(function: Any, model: ResolvedModel) -> SignatureInfo:
    _, kwargs = function.structured_input_signature
    inputs = {}
    for name, spec in sorted(kwargs.items()):
        shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
        if len(shape) != 1:
            raise ModelError(
                f"model {model.label}: input '{name}' has shape {list(shape)}; batchscore feeds "
                "one 1-D tensor per column, so every serving_default input must have shape [None]"
            )
        inputs[name] = TensorInfo(spec.dtype.name, shape)
    outputs = {
        name: TensorInfo(spec.dtype.name, tuple(spec.shape.as_list()))
        for name, spec in sorted(function.structured_outputs.items())
    }
    info = SignatureInfo(inputs, outputs)
    try:
        info.output_fields()
    except ValueError as exc:
        raise ModelError(f"model {model.label}: {exc}") from exc
    return info


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
            outputs = self.loaded.function(**self._feeds(batch))
            predictions = [
                _to_arrow(outputs[f.name].numpy(), f.type, rows) for f in self._output_fields
            ]
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

    def _feeds(self, batch: pa.RecordBatch) -> dict[str, Any]:
        feeds = {}
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
                feeds[name] = string_tensor(column)
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
