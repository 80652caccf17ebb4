"""What a model's serving signature takes and gives, without TensorFlow.

The description is plain data, so a registered model's metadata can be checked
against the input's Parquet schema before TensorFlow is even imported. It says
which input columns the model needs and what each must be (:class:`InputColumn`):
one per tensor input, or, for a signature whose one input is serialized tf.Examples,
one per feature the model parses from them (:class:`ExampleFeature`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from batch.contract.contract import ARROW_TYPE_FOR_DTYPE
from batch.core.errors import InputDataError

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_TAGS = ("serve",)

InputFormat = Literal["auto", "columns", "tf_example"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("auto", "columns", "tf_example")
FeatureKind = Literal["dense", "sparse", "ragged"]


@dataclass(frozen=True)
class SignatureChoice:
    """Which signature of which MetaGraph a job scores with, and how its input is fed.

    ``input_format``: ``auto`` recognises a signature whose one string input the graph
    parses as serialized tf.Examples; ``columns`` feeds every input from the column of its
    name; ``tf_example`` insists on the tf.Example reading (an error if the graph parses
    none).
    """

    name: str = DEFAULT_SIGNATURE
    tags: tuple[str, ...] = DEFAULT_TAGS
    input_format: InputFormat = "auto"

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_CHOICE

    def describe(self) -> str:
        return f"signature '{self.name}' of the MetaGraph tagged {','.join(self.tags)}"


DEFAULT_CHOICE = SignatureChoice()


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ExampleFeature:
    """A feature the model parses from its serialized tf.Example input (read from the
    graph's ParseExample op): ``dense`` (tf.io.FixedLenFeature, ``shape`` values per
    example; without a default it is required), ``sparse`` (VarLenFeature) or ``ragged``
    (RaggedFeature), which take any number of values, none included."""

    dtype: str  # int64, float32 or string: the tf.Example list it is read from
    kind: FeatureKind = "dense"
    shape: tuple[int | None, ...] = ()
    has_default: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "kind": self.kind,
            "shape": list(self.shape),
            "has_default": self.has_default,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> ExampleFeature:
        kind = str(payload.get("kind", "dense"))
        if kind not in ("dense", "sparse", "ragged"):
            raise ValueError(f"feature kind '{kind}'; expected dense, sparse or ragged")
        return cls(
            dtype=str(payload["dtype"]),
            kind="dense" if kind == "dense" else "sparse" if kind == "sparse" else "ragged",
            shape=tuple(payload.get("shape", ())),
            has_default=bool(payload.get("has_default", False)),
        )


# tf.Example value lists by the dtype a feature is parsed as.
EXAMPLE_LISTS = {"int64": "int64_list", "float32": "float_list", "string": "bytes_list"}


@dataclass(frozen=True)
class InputColumn:
    """What one input column must be to feed the model.

    ``width``: values per row: 1 (a plain column), k (a fixed-size list column of k), or
    None (any number: a plain column, whose null is no value, or a list column).
    ``required``: a null is refused (reason null_value); otherwise a null is an absent
    value (a sparse or ragged input, a tf.Example feature that is optional).
    ``example``: the column becomes a feature of the serialized tf.Examples the model
    takes, not a tensor of its own.
    """

    dtype: str
    width: int | None = 1
    required: bool = True
    example: bool = False

    def describe(self) -> str:
        """What the model expects, in words: ``float32`` or ``a tf.Example float_list
        feature (float32, optional)``."""
        shape = (
            ""
            if self.width == 1
            else f", {self.width} values a row"
            if self.width is not None
            else ", any number of values a row"
        )
        presence = "" if self.required else ", may be null"
        if self.example:
            return (
                f"a tf.Example {EXAMPLE_LISTS.get(self.dtype, self.dtype)} feature "
                f"({self.dtype}{shape}{presence})"
            )
        return f"{self.dtype}{shape}{presence}" if (shape or presence) else self.dtype


@dataclass(frozen=True)
class SignatureInfo:
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    # Set when the one (string) input is serialized tf.Examples: what the graph parses.
    examples: Mapping[str, ExampleFeature] | None = None
    # RaggedTensor inputs (a RaggedTensorSpec [None, None] argument): NAME, its flat
    # values, -> NAME_1, its row splits (see ragged_inputs).
    ragged: Mapping[str, str] = field(default_factory=dict)

    @property
    def example_input(self) -> str | None:
        """The input that takes serialized tf.Examples, if the model takes them."""
        return next(iter(self.inputs)) if self.examples is not None else None

    def input_columns(self) -> dict[str, InputColumn]:
        """Input column -> what it must be: the features the model parses from tf.Examples,
        else one column per input tensor. Raises ValueError for an input batchscore cannot
        feed (naming it, its shape and what to export instead)."""
        if self.examples is not None:
            return {
                name: InputColumn(
                    feature.dtype,
                    width=_feature_width(feature),
                    required=feature.kind == "dense" and not feature.has_default,
                    example=True,
                )
                for name, feature in self.examples.items()
            }
        sparse = sparse_inputs(self.inputs)
        components = {c for parts in sparse.values() for c in parts} | set(self.ragged.values())
        columns = {}
        for name, info in self.inputs.items():
            if name in sparse:
                values = self.inputs[sparse[name][1]]
                columns[name] = InputColumn(values.dtype, width=None, required=False)
            elif name in self.ragged:
                columns[name] = InputColumn(info.dtype, width=None, required=False)
            elif name not in components:
                columns[name] = InputColumn(info.dtype, input_width(name, info))
        return columns

    def optional_columns(self) -> frozenset[str]:
        """Input columns whose null is an absent value, not a rejected row."""
        return frozenset(n for n, c in self.input_columns().items() if not c.required)

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "inputs": {
                k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.inputs.items()
            },
            "outputs": {
                k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.outputs.items()
            },
        }
        if self.examples is not None:
            payload["tf_example_features"] = {k: v.to_json() for k, v in self.examples.items()}
        if self.ragged:
            payload["ragged_inputs"] = dict(sorted(self.ragged.items()))
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> SignatureInfo:
        def parse(section: Mapping[str, Any]) -> dict[str, TensorInfo]:
            return {
                name: TensorInfo(str(spec["dtype"]), tuple(spec.get("shape", [None])))
                for name, spec in section.items()
            }

        features = payload.get("tf_example_features")
        return cls(
            inputs=parse(payload["inputs"]),
            outputs=parse(payload["outputs"]),
            examples=(
                None
                if features is None
                else {k: ExampleFeature.from_json(v) for k, v in features.items()}
            ),
            ragged={str(k): str(v) for k, v in payload.get("ragged_inputs", {}).items()},
        )

    def output_fields(self) -> list[pa.Field]:
        """Arrow fields of the prediction columns: one per output key, in key order."""
        fields = []
        for name, info in self.outputs.items():
            value_type = ARROW_TYPE_FOR_DTYPE.get(info.dtype)
            if value_type is None:
                raise ValueError(
                    f"output '{name}' has dtype {info.dtype}, which batchscore cannot write"
                )
            try:
                width = output_width(info.shape)
            except ValueError as exc:
                raise ValueError(
                    f"output '{name}': {exc}; batchscore writes a fixed number of values per "
                    "row, so export the output with a known shape (e.g. [None, 2]) or pad it"
                ) from exc
            fields.append(pa.field(name, value_type if width == 1 else pa.list_(value_type, width)))
        return fields


def output_width(shape: Sequence[int | None]) -> int:
    """Values per row of an output: [batch] and [batch, 1] give one, [batch, k] gives k."""
    width = 1
    for dim in shape[1:]:
        if dim is None:
            raise ValueError(f"output shape {list(shape)} has an unknown inner dimension")
        width *= dim
    return width


def sparse_inputs(inputs: Mapping[str, TensorInfo]) -> dict[str, tuple[str, str, str]]:
    """The SparseTensor inputs of a signature, as TensorFlow saves a ``SparseTensorSpec``
    argument NAME: three tensors, NAME (indices, int64 [None, 2]), NAME_1 (values,
    [None]) and NAME_2 (dense shape, int64 [2]). NAME -> the three input names."""
    found = {}
    for name, info in inputs.items():
        values, shape = inputs.get(f"{name}_1"), inputs.get(f"{name}_2")
        if (
            info.dtype == "int64"
            and info.shape == (None, 2)
            and values is not None
            and len(values.shape) == 1
            and shape is not None
            and shape.dtype == "int64"
            and shape.shape == (2,)
        ):
            found[name] = (name, f"{name}_1", f"{name}_2")
    return found


def ragged_inputs(inputs: Mapping[str, TensorInfo], ragged_ranks: Sequence[int]) -> dict[str, str]:
    """The RaggedTensor inputs of a signature whose functions take ``ragged_ranks`` (one
    per RaggedTensorSpec argument the SavedModel's object graph records). TensorFlow
    saves a RaggedTensorSpec [None, None] argument NAME as two tensors: NAME (the flat
    values, [None]) and NAME_1 (the row splits, int64 [None]). NAME -> NAME_1. A ragged
    rank above 1 raises ValueError naming the input and what to export instead."""
    if not ragged_ranks:
        return {}

    def splits(name: str) -> bool:
        info = inputs.get(name)
        return info is not None and info.dtype == "int64" and info.shape == (None,)

    found: dict[str, str] = {}
    for name, info in inputs.items():
        if len(info.shape) != 1 or not splits(f"{name}_1") or name in found.values():
            continue
        if splits(f"{name}_2") and max(ragged_ranks) > 1:
            raise ValueError(
                f"input '{name}' is a RaggedTensor of ragged rank {max(ragged_ranks)} "
                f"(tensors {name}, {name}_1, {name}_2, ...); batchscore feeds a ragged input "
                "of shape [None, None] (ragged rank 1) from a list or nullable column. Export "
                "that, or one string input of serialized tf.Examples parsed with RaggedFeature"
            )
        found[name] = f"{name}_1"
    return found


def input_width(name: str, info: TensorInfo) -> int:
    """Values per row of a dense input: [None] and [None, 1] take one (a plain column),
    [None, k] takes k (a fixed-size list column of k). Anything else raises ValueError."""
    shape = info.shape
    if len(shape) == 1 and shape[0] is None:
        return 1
    if len(shape) == 2 and shape[0] is None and shape[1] is not None and shape[1] >= 1:
        return shape[1]
    raise ValueError(
        f"input '{name}' has shape {_shape_text(shape)}; batchscore feeds an input of shape "
        "[None] or [None, 1] from a plain column and [None, k] from a fixed-size list column. "
        "Export the signature with one such input per column, or with one string input of "
        "serialized tf.Examples that the model parses (tf.io.parse_example)"
    )


def _feature_width(feature: ExampleFeature) -> int | None:
    if feature.kind != "dense" or any(d is None for d in feature.shape):
        return None
    return math.prod(d for d in feature.shape if d is not None)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


_SIGNED = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
_UNSIGNED = (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_FLOATS = (pa.float16(), pa.float32(), pa.float64())
_TEXT = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())

# THE conversion table: model input dtype -> the column types that feed it, and how.
# Anything else is refused before compute, naming file, column, found and expected.
# README "Type conversions" is this table (tests/test_model_shapes.py compares them).
CONVERSIONS: dict[str, tuple[tuple[pa.DataType, ...], str]] = {
    "int64": ((*_SIGNED, *_UNSIGNED[:3]), "exact (widened)"),
    "int32": ((*_SIGNED[:3], *_UNSIGNED[:2]), "exact (widened)"),
    "float32": (
        (*_FLOATS, *_SIGNED, *_UNSIGNED),
        "float64 rounded to the nearest float32; integers exact up to 2^24 = 16,777,216 in "
        "magnitude, rounded beyond",
    ),
    "float64": ((*_FLOATS, *_SIGNED, *_UNSIGNED), "integers exact up to 2^53, rounded beyond"),
    "string": (_TEXT, "as is (binary values are fed as their bytes)"),
    "bool": ((pa.bool_(),), "as is"),
}


def castable(found: pa.DataType, dtype: str) -> bool:
    """Whether a column of Arrow type ``found`` may feed a model input of TensorFlow dtype
    ``dtype`` (by :data:`CONVERSIONS`)."""
    accepted = CONVERSIONS.get(dtype)
    return accepted is not None and found in accepted[0]


def convert_column(
    column: pa.Array, arrow_type: pa.DataType, name: str, purpose: str = "the model"
) -> pa.Array:
    """``column`` as ``arrow_type``, by :data:`CONVERSIONS` (which the schema check applied
    before compute): float64 rounds to the nearest float32, large integers to the nearest
    float. ``purpose`` says what the values are for, in the error."""
    if column.type == arrow_type:
        return column
    try:
        options = pc.CastOptions(target_type=arrow_type, allow_float_truncate=True)
        return pc.cast(column, options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputDataError(
            f"column '{name}': cannot convert {column.type} to {arrow_type} for {purpose}: {exc}"
        ) from exc


def conversion_hint(found: pa.DataType, dtype: str) -> str:
    """How to fix a column of type ``found`` that cannot feed ``dtype``."""
    if pa.types.is_floating(found) and dtype in ("int64", "int32"):
        return (
            "a float column never feeds an integer input (it would truncate values); round "
            "and cast the column to an integer type, or export the model with a float input"
        )
    accepted = CONVERSIONS.get(dtype)
    if accepted is None:
        return f"batchscore cannot feed a {dtype} input; export the model with another dtype"
    names = ", ".join(str(t) for t in accepted[0])
    return f"a {dtype} input takes {names}; cast the column to one of those"


def type_text(arrow_type: pa.DataType) -> str:
    """An Arrow type as messages show it: lists without their item field's name (Parquet
    files call it ``element``, Arrow ``item``)."""
    if pa.types.is_fixed_size_list(arrow_type):
        return f"fixed_size_list<{type_text(arrow_type.value_type)}>[{arrow_type.list_size}]"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        kind = "large_list" if pa.types.is_large_list(arrow_type) else "list"
        return f"{kind}<{type_text(arrow_type.value_type)}>"
    return str(arrow_type)


def column_problem(field: pa.Field, need: InputColumn) -> str | None:
    """Why a column of Arrow ``field`` cannot feed ``need``, in words; None if it can."""
    found = field.type
    shown = type_text(found)
    values = found
    if pa.types.is_fixed_size_list(found):
        if need.width is not None and found.list_size != need.width:
            return (
                f"is {shown}, {found.list_size} values a row; the model expects "
                f"{need.describe()}. Give it a column of {need.width} value(s) a row"
            )
        values = found.value_type
    elif pa.types.is_list(found) or pa.types.is_large_list(found):
        if need.width is not None:
            expected = "a plain column" if need.width == 1 else f"a fixed-size list of {need.width}"
            return (
                f"is {shown} (a variable number of values a row); the model expects "
                f"{need.describe()}: {expected}. Write the column as such"
            )
        values = found.value_type
    elif need.width is not None and need.width != 1:
        return (
            f"is {shown}, one value a row; the model expects {need.describe()}: a fixed-size "
            f"list column of {need.width} (pa.list_(type, {need.width}))"
        )
    if not castable(values, need.dtype):
        return f"is {shown}; the model expects {need.describe()}: {conversion_hint(values, need.dtype)}"
    return None


def schema_problems(
    schema: pa.Schema, signature: SignatureInfo, key_columns: Sequence[str], where: str
) -> list[str]:
    """Every way ``schema`` (of file ``where``) cannot feed ``signature``; empty if it can."""
    problems = []
    for name in key_columns:
        if schema.get_field_index(name) < 0:
            problems.append(f"{where}: key column '{name}' is missing")
    try:
        columns = signature.input_columns()
    except ValueError as exc:
        return [*problems, f"{where}: {exc}"]
    for name, need in columns.items():
        index = schema.get_field_index(name)
        if index < 0:
            problems.append(
                f"{where}: column '{name}' is missing; the model expects it as {need.describe()}"
                + (
                    f" (its tf.Example input '{signature.example_input}' is built from the "
                    "columns named like the features it parses)"
                    if need.example
                    else ""
                )
            )
            continue
        problem = column_problem(schema.field(index), need)
        if problem is not None:
            problems.append(f"{where}: column '{name}' {problem}")
    return problems


def signature_differences(expected: SignatureInfo, found: SignatureInfo) -> list[str]:
    """How ``found`` differs from ``expected``, one phrase per input or output; empty if
    they take and give the same tensors (names, dtypes, shapes)."""
    differences = []
    for kind, want, have in (
        ("input", expected.inputs, found.inputs),
        ("output", expected.outputs, found.outputs),
    ):
        for name in sorted(set(want) | set(have)):
            if name not in have:
                differences.append(f"{kind} '{name}' missing")
            elif name not in want:
                differences.append(f"extra {kind} '{name}'")
            elif want[name] != have[name]:
                differences.append(
                    f"{kind} '{name}' is {have[name].dtype}{list(have[name].shape)}, "
                    f"expected {want[name].dtype}{list(want[name].shape)}"
                )
    return differences
