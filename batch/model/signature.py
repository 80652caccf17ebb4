"""What a model's ``serving_default`` signature takes and gives, without TensorFlow.

The description is plain data, so a registered model's metadata can be checked
against the input's Parquet schema before TensorFlow is even imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batch.contract.contract import ARROW_TYPE_FOR_DTYPE


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class SignatureInfo:
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": {
                k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.inputs.items()
            },
            "outputs": {
                k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.outputs.items()
            },
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> SignatureInfo:
        def parse(section: Mapping[str, Any]) -> dict[str, TensorInfo]:
            return {
                name: TensorInfo(str(spec["dtype"]), tuple(spec.get("shape", [None])))
                for name, spec in section.items()
            }

        return cls(inputs=parse(payload["inputs"]), outputs=parse(payload["outputs"]))

    def output_fields(self) -> list[pa.Field]:
        """Arrow fields of the prediction columns: one per output key, in key order."""
        fields = []
        for name, info in self.outputs.items():
            value_type = ARROW_TYPE_FOR_DTYPE.get(info.dtype)
            if value_type is None:
                raise ValueError(
                    f"output '{name}' has dtype {info.dtype}, which batchscore cannot write"
                )
            width = output_width(info.shape)
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


# Integers that fit a float's mantissa exactly (24 bits for float32, 53 for float64).
_MANTISSA_BITS = {32: 24, 64: 53}


def castable(found: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column of type ``found`` may feed a model input of type ``wanted``.

    Only lossless widening (int32 -> int64, int16 -> float32, string -> string),
    plus one documented convention: a float64 column feeds a float32 input, as
    tf.Transform and Keras models take float32 features.
    """
    if found == wanted:
        return True
    if pa.types.is_string(wanted):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_integer(wanted):
        if not pa.types.is_integer(found):
            return False
        if pa.types.is_signed_integer(found) == pa.types.is_signed_integer(wanted):
            return found.bit_width <= wanted.bit_width
        # unsigned -> signed needs one more bit; signed -> unsigned never fits.
        return pa.types.is_signed_integer(wanted) and found.bit_width < wanted.bit_width
    if pa.types.is_floating(wanted):
        if pa.types.is_floating(found):
            return True
        return pa.types.is_integer(found) and found.bit_width < _MANTISSA_BITS[wanted.bit_width]
    return False


def schema_problems(
    schema: pa.Schema, signature: SignatureInfo, key_columns: Sequence[str], where: str
) -> list[str]:
    """Every way ``schema`` (of file ``where``) cannot feed ``signature``; empty if it can."""
    problems = []
    for name in key_columns:
        if schema.get_field_index(name) < 0:
            problems.append(f"{where}: key column '{name}' is missing")
    for name, info in signature.inputs.items():
        wanted = ARROW_TYPE_FOR_DTYPE.get(info.dtype)
        index = schema.get_field_index(name)
        if index < 0:
            problems.append(
                f"{where}: column '{name}' is missing; the model expects it as {info.dtype}"
            )
        elif wanted is None:
            problems.append(f"{where}: model input '{name}' has dtype {info.dtype}, not supported")
        elif not castable(schema.field(index).type, wanted):
            problems.append(
                f"{where}: column '{name}' is {schema.field(index).type}; "
                f"the model expects {info.dtype}; cast the column to {wanted} "
                "(only lossless widening is applied automatically)"
            )
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
