"""Row validation, vectorized: which rows may reach the model, and why the others may not.

Each check turns whole columns into a boolean mask with pyarrow.compute; no
Python runs per row. A rejected row keeps its columns and gains a reason code
and a human message, and goes to the run's dead-letter output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

REASON_COLUMN = "reject_reason"
MESSAGE_COLUMN = "reject_message"

NULL_VALUE = "null_value"
NOT_FINITE = "not_finite"


@dataclass(frozen=True)
class Partitioned:
    valid: pa.RecordBatch
    rejected: pa.RecordBatch  # the rejected rows + REASON_COLUMN + MESSAGE_COLUMN


def _problems(
    batch: pa.RecordBatch, input_types: Mapping[str, pa.DataType]
) -> list[tuple[pa.Array, str, str]]:
    """(mask of bad rows, reason, message) for each check, in order of precedence."""
    found = []
    for name, wanted in input_types.items():
        column = batch.column(name)
        if column.null_count:
            found.append(
                (
                    column.is_null(),
                    NULL_VALUE,
                    f"column '{name}' is null; the model needs a {wanted}",
                )
            )
        if pa.types.is_floating(column.type):
            bad = pc.invert(pc.is_finite(column))
            if pc.any(bad).as_py():
                found.append(
                    (pc.fill_null(bad, False), NOT_FINITE, f"column '{name}' is NaN or infinite")
                )
    return found


def partition_rows(batch: pa.RecordBatch, input_types: Mapping[str, pa.DataType]) -> Partitioned:
    """Split ``batch`` into rows the model can take and rejected rows with reasons."""
    problems = _problems(batch, input_types)
    if not problems:
        return Partitioned(batch, empty_rejects(batch.schema))
    reason: pa.Array = pa.nulls(batch.num_rows, pa.string())
    message: pa.Array = pa.nulls(batch.num_rows, pa.string())
    # Walk in reverse so that the first check in precedence order wins.
    for mask, code, text in reversed(problems):
        reason = pc.if_else(mask, pa.scalar(code), reason)
        message = pc.if_else(mask, pa.scalar(text), message)
    bad = pc.is_valid(reason)
    rejected = batch.filter(bad)
    rejected = pa.RecordBatch.from_arrays(
        [*rejected.columns, reason.filter(bad), message.filter(bad)],
        schema=reject_schema(batch.schema),
    )
    return Partitioned(batch.filter(pc.invert(bad)), rejected)


def reject_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(REASON_COLUMN, pa.string())).append(
        pa.field(MESSAGE_COLUMN, pa.string())
    )


def empty_rejects(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=reject_schema(schema))
