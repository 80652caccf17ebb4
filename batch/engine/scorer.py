"""Scoring Arrow record batches with a loaded model: feeds built from Arrow buffers (or
serialized tf.Examples built from the batch, for a model that takes them), predictions
returned as Arrow, poison rows isolated by bisection, and a call that runs out of memory
retried on halves (the smaller size kept for the rest of the split)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.contract.contract import ARROW_TYPE_FOR_DTYPE
from batch.core.columns import MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, RUN_ID_COLUMN
from batch.core.dictionaries import decoded, dictionary_indices
from batch.core.errors import InputDataError
from batch.core.masks import to_arrow, valid_rows
from batch.engine.examples import serialize_examples
from batch.engine.validate import MODEL_ERROR, NON_FINITE_PREDICTION, filter_rows, with_reasons
from batch.model.loading import (
    DistinctFeed,
    Feed,
    LoadedModel,
    StringFeed,
    import_tensorflow,
    tf_error_summary,
)
from batch.model.signature import InputColumn, SignatureInfo, convert_column, sparse_inputs

log = logging.getLogger(__name__)


def string_feed(column: pa.Array) -> StringFeed:
    """A string or binary column (no nulls) as its values' bytes and each value's start and
    length in them."""
    _, offsets_buffer, data = column.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        column.offset : column.offset + len(column) + 1
    ]
    first, last = int(offsets[0]), int(offsets[-1])
    values = data[first:last].to_pybytes() if data is not None else b""
    return values, offsets[:-1] - first, np.diff(offsets)


def dictionary_feed(dictionary: pa.Array, indices: np.ndarray) -> DistinctFeed:
    """A dictionary-encoded string column (no nulls; ``dictionary``: its distinct values,
    string or binary) as the distinct values' bytes, starts and lengths, then each row's
    index into them: the rows are neither decoded nor copied, the model's string work runs
    once per distinct value where it can (batch.model.distinct), and otherwise its cut
    reads bytes that stay in cache (docs/benchmarks.md)."""
    values, starts, lengths = string_feed(dictionary)
    return values, starts, lengths, indices.astype(np.int32, copy=False)


def _error_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return tf_error_summary(message)


def _is_list(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def serialized_examples(batch: pa.RecordBatch, columns: dict[str, InputColumn]) -> pa.Array:
    """One serialized tf.Example per row of ``batch``: feature = column name, integers as
    int64_list, floats as float_list, strings and binary as bytes_list, list columns
    multi-valued, a null left out (batch.engine.examples, vectorised with numpy: no
    Python object per row). One binary column, fed to the model as bytes and offsets."""
    return serialize_examples(
        {name: (batch.column(name), need.dtype) for name, need in columns.items()},
        batch.num_rows,
    )


def sparse_parts(
    column: pa.Array, name: str, arrow_type: pa.DataType
) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """A plain or list column as a SparseTensor's indices ([nnz, 2] int64), values (as
    ``arrow_type``; a string column as string or binary) and dense shape ([rows, the
    longest row's length, at least 1]). A null row, and a null inside a list, is no
    value."""
    rows = len(column)
    if _is_list(column.type):
        values = pc.list_flatten(column)
        parents = np.asarray(pc.list_parent_indices(column).to_numpy(zero_copy_only=False))
        positions = np.arange(len(parents)) - np.searchsorted(parents, parents)
        width = int(pc.max(pc.list_value_length(column)).as_py() or 0)
    else:
        values = column
        parents = np.arange(rows)
        positions = np.zeros(rows, dtype=np.int64)
        width = 1
    if values.null_count:
        present = valid_rows(values)
        values = values.filter(to_arrow(present))
        parents, positions = parents[present], positions[present]
    if arrow_type == pa.string():
        values = _string_values(values, name)
    else:
        values = convert_column(values, arrow_type, name)
    indices = np.stack([parents, positions], axis=1).astype(np.int64).reshape(-1, 2)
    return indices, values, np.array([rows, max(width, 1)], dtype=np.int64)


def _string_values(column: pa.Array, name: str) -> pa.Array:
    """The values of a column for a string input, with int32 offsets: text as string, any
    other type as binary (a string input takes bytes)."""
    text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    return convert_column(column, pa.string() if text else pa.binary(), name)


def _fixed_width_values(column: pa.Array, name: str, width: int | None) -> pa.Array:
    """The values of a list column whose every row holds ``width`` values, flat. A
    fixed-size list is checked before compute; a variable-size list (an engine may hand a
    fixed-size list over as one) is checked here."""
    if not pa.types.is_fixed_size_list(column.type):
        lengths = pc.list_value_length(column)
        low, high = (v.as_py() for v in pc.min_max(lengths).values())
        if len(column) and (low != width or high != width):
            raise InputDataError(
                f"column '{name}': rows hold {low} to {high} values; the model's input takes "
                f"exactly {width} a row. Write the column as a fixed-size list of {width}"
            )
    return column.flatten()


# The type of the columns the scorer adds (model name, version, run id): one value each,
# dictionary-encoded, which Parquet writes as that value and the indices without hashing
# every row's text (batch.output.commit.PartWriter; read back, they are strings).
CONSTANT_TYPE = pa.dictionary(pa.int32(), pa.string())


def constant_strings(values: Sequence[str], length: int) -> list[pa.Array]:
    """One column per value, holding it ``length`` times: a one-value dictionary and
    ``length`` zero indices (shared by the columns), no per-row copy of the text."""
    zeros = pa.array(np.zeros(length, dtype=np.int32))
    return [pa.DictionaryArray.from_arrays(zeros, pa.array([v], pa.string())) for v in values]


def dictionary_inputs(
    signature: SignatureInfo, key_columns: Sequence[str], passthrough: Sequence[str] = ()
) -> frozenset[str]:
    """The input columns a :class:`BatchScorer` feeds from their dictionary when they come
    dictionary-encoded (:func:`dictionary_feed`): the model's dense string inputs, but not
    a key or passthrough column, which the outputs show decoded. A job reads them encoded
    where the file stores them so (batch.engine.job.ScoringJob.encoded)."""
    if signature.example_input is not None:
        return frozenset()
    sparse = sparse_inputs(signature.inputs)
    return frozenset(
        name
        for name, need in signature.input_columns().items()
        if ARROW_TYPE_FOR_DTYPE[need.dtype] == pa.string()
        and name not in sparse
        and name not in signature.ragged
        and name not in key_columns
        and name not in passthrough
    )


class MemoryBackoff:
    """The most rows a model call may hold once one ran out of memory (None: no limit),
    shared by the scorers and threads of one split; ``retries`` counts the calls that ran
    out of memory and were retried on halves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: int | None = None
        self.retries = 0

    def shrink(self, failed_rows: int) -> int:
        """A call of ``failed_rows`` ran out of memory: at most half as many from now on."""
        with self._lock:
            half = max(1, failed_rows // 2)
            self.rows = half if self.rows is None else min(self.rows, half)
            self.retries += 1
            return self.rows


class BatchScorer:
    """Scores record batches with one loaded model; cheap to build, safe to share."""

    def __init__(
        self,
        loaded: LoadedModel,
        key_columns: Sequence[str],
        run_id: str,
        keep_non_finite: bool = False,
        passthrough: Sequence[str] = (),
        backoff: MemoryBackoff | None = None,
    ) -> None:
        self.loaded = loaded
        # Rows a call may hold after one ran out of memory (per split; see score_isolating).
        self.backoff = backoff or MemoryBackoff()
        # Whether rows with a NaN or infinite prediction are written (True) or go to the
        # dead-letter with reason non_finite_prediction (False, the default).
        self.keep_non_finite = keep_non_finite
        self.key_columns = tuple(key_columns)
        # Input columns copied into the prediction rows beside the keys.
        self.passthrough = tuple(passthrough)
        self.run_id = run_id
        signature = loaded.signature
        self._columns = signature.input_columns()
        self._example_input = signature.example_input
        self._shapes = {name: info.shape for name, info in signature.inputs.items()}
        self._sparse = sparse_inputs(signature.inputs)
        self._ragged = dict(signature.ragged)
        self._input_types = {
            name: ARROW_TYPE_FOR_DTYPE[need.dtype] for name, need in self._columns.items()
        }
        self._output_fields = signature.output_fields()
        # Input columns fed straight from their dictionary when encoded (dictionary_feed).
        self.takes_encoded = dictionary_inputs(signature, self.key_columns, self.passthrough)
        self._tf = import_tensorflow()
        self._out_of_memory = (self._tf.errors.ResourceExhaustedError, MemoryError)

    @property
    def input_types(self) -> dict[str, pa.DataType]:
        """Model input column -> the Arrow type its values are cast to before they become a
        tensor (or a tf.Example feature)."""
        return dict(self._input_types)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [input_schema.field(name) for name in (*self.key_columns, *self.passthrough)]
        fields += self._output_fields
        fields += [
            pa.field(MODEL_NAME_COLUMN, CONSTANT_TYPE),
            pa.field(MODEL_VERSION_COLUMN, CONSTANT_TYPE),
            pa.field(RUN_ID_COLUMN, CONSTANT_TYPE),
        ]
        return pa.schema(fields)

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Predictions for every row of ``batch``, which must hold no invalid rows."""
        rows = batch.num_rows
        if rows == 0:
            predictions = [pa.array([], type=f.type) for f in self._output_fields]
        else:
            outputs = self.loaded.function(self.feeds(batch))
            predictions = [_to_arrow(outputs[f.name], f.type, rows) for f in self._output_fields]
        model = self.loaded.model
        columns = [decoded(batch.column(name)) for name in (*self.key_columns, *self.passthrough)]
        columns += predictions
        columns += constant_strings((model.name, model.version, self.run_id), rows)
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema(batch.schema))

    def score_isolating(
        self, batch: pa.RecordBatch
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
        """Score ``batch``; if the model raises, bisect to the rows that make it raise.

        Returns (prediction batches, dead-letter batches). The rows on which the
        model itself fails (poison rows) are rejected with reason ``model_error``
        and TensorFlow's message; every other row of the batch is scored. Unless
        ``keep_non_finite``, rows with a NaN or infinite prediction are rejected with
        reason ``non_finite_prediction``.

        A call that runs out of memory (TensorFlow's ResourceExhaustedError, Python's
        MemoryError) is retried on halves, down to one row before that row is declared
        poison; the halved size is kept (``backoff``) for every later call of the split.
        """
        limit = self.backoff.rows
        if limit is not None and batch.num_rows > limit:
            return self._in_pieces(batch, limit)
        try:
            scored = self.score(batch)
        except self._out_of_memory as exc:
            if batch.num_rows == 1:
                message = (
                    f"model {self.loaded.model.label} ran out of memory on this one row "
                    f"({type(exc).__name__}: {_error_line(exc)})"
                )
                return [], [with_reasons(batch, MODEL_ERROR, message)]
            rows = self.backoff.shrink(batch.num_rows)
            log.warning(
                "model %s ran out of memory on %d rows (%s); retrying in batches of %d rows "
                "for the rest of this split",
                self.loaded.model.label,
                batch.num_rows,
                _error_line(exc),
                rows,
            )
            return self.score_isolating(batch)
        except self._tf.errors.OpError as exc:
            if batch.num_rows == 1:
                message = (
                    f"model {self.loaded.model.label} raised {type(exc).__name__}: "
                    f"{tf_error_summary(exc.message or str(exc))}"
                )
                return [], [with_reasons(batch, MODEL_ERROR, message)]
        else:
            if self.keep_non_finite:
                return [scored], []
            return self._rejecting_non_finite(batch, scored)
        middle = batch.num_rows // 2
        scored_left, rejected_left = self.score_isolating(batch.slice(0, middle))
        scored_right, rejected_right = self.score_isolating(batch.slice(middle))
        return scored_left + scored_right, rejected_left + rejected_right

    def _in_pieces(
        self, batch: pa.RecordBatch, rows: int
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
        """``batch`` scored ``rows`` rows at a time, in order."""
        scored: list[pa.RecordBatch] = []
        rejected: list[pa.RecordBatch] = []
        for start in range(0, batch.num_rows, rows):
            piece_scored, piece_rejected = self.score_isolating(batch.slice(start, rows))
            scored += piece_scored
            rejected += piece_rejected
        return scored, rejected

    def _rejecting_non_finite(
        self, batch: pa.RecordBatch, scored: pa.RecordBatch
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
        """``scored`` without its rows that hold a NaN or infinite prediction; those rows
        of ``batch`` as dead-letter rows naming the output and the value."""
        bad = np.zeros(batch.num_rows, dtype=bool)
        messages = np.empty(batch.num_rows, dtype=object)
        for field in reversed(self._output_fields):  # the first output's message wins
            values = _float_values(scored.column(field.name))
            if values is None:
                continue
            failing = ~np.isfinite(values)
            if not failing.any():
                continue
            rows = failing.any(axis=1) if values.ndim == 2 else failing
            bad |= rows
            for row in np.flatnonzero(rows):
                value = (
                    values[row][~np.isfinite(values[row])][0] if values.ndim == 2 else values[row]
                )
                messages[row] = (
                    f"model {self.loaded.model.label} predicted {value} for output "
                    f"'{field.name}'; expected a finite number"
                )
        if not bad.any():
            return [scored], []
        rejected = with_reasons(
            filter_rows(batch, bad),
            NON_FINITE_PREDICTION,
            pa.array(messages[bad].tolist(), pa.string()),
        )
        return [filter_rows(scored, ~bad)], [rejected]

    def feeds(self, batch: pa.RecordBatch) -> dict[str, Feed]:
        """What one model call on ``batch`` is fed (one entry per signature input)."""
        if self._example_input is not None:
            return {self._example_input: string_feed(serialized_examples(batch, self._columns))}
        feeds: dict[str, Feed] = {}
        for name, arrow_type in self._input_types.items():
            column = batch.column(name)
            if pa.types.is_dictionary(column.type):
                # The dictionary pays where it holds fewer values than the batch has rows
                # (a row group's dictionary of long unique texts, cut into small batches,
                # would be copied whole for each).
                if (
                    name in self.takes_encoded
                    and not column.null_count
                    and len(column.dictionary) <= len(column)
                ):
                    feeds[name] = dictionary_feed(
                        _string_values(column.dictionary, name), dictionary_indices(column)
                    )
                    continue
                column = column.dictionary_decode()
            if name in self._sparse or name in self._ragged:
                indices, values, dense_shape = sparse_parts(column, name, arrow_type)
                if name in self._sparse:
                    indices_input, values_input, shape_input = self._sparse[name]
                    feeds[indices_input], feeds[shape_input] = indices, dense_shape
                else:  # a RaggedTensor: its flat values and row splits
                    values_input = name
                    per_row = np.bincount(indices[:, 0], minlength=len(column))
                    feeds[self._ragged[name]] = np.concatenate(([0], np.cumsum(per_row)))
                feeds[values_input] = (
                    string_feed(values)
                    if arrow_type == pa.string()
                    else values.to_numpy(zero_copy_only=False)
                )
                continue
            if _is_list(column.type):  # [None, k]: the rows' values, flat
                column = _fixed_width_values(column, name, self._shapes[name][-1])
            if arrow_type == pa.string():
                feeds[name] = string_feed(_string_values(column, name))
            else:
                values = convert_column(column, arrow_type, name).to_numpy(zero_copy_only=False)
                shape = self._shapes[name]
                feeds[name] = values.reshape(-1, *shape[1:]) if len(shape) > 1 else values
        return feeds


def _float_values(column: pa.Array) -> np.ndarray | None:
    """A float output as numpy (rows, or rows x size for a fixed-size list); None if the
    output is not floating point."""
    if pa.types.is_fixed_size_list(column.type):
        if not pa.types.is_floating(column.type.value_type):
            return None
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(column), column.type.list_size)
    if not pa.types.is_floating(column.type):
        return None
    return column.to_numpy(zero_copy_only=False)


def _to_arrow(values: np.ndarray, arrow_type: pa.DataType, rows: int) -> pa.Array:
    if pa.types.is_fixed_size_list(arrow_type):
        flat = pa.array(values.reshape(-1), type=arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size)
    flat_values = values.reshape(rows)
    if pa.types.is_string(arrow_type):
        return pc.cast(pa.array(flat_values, type=pa.binary()), pa.string())
    return pa.array(flat_values, type=arrow_type)
