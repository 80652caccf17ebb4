"""Row validation, vectorized: which rows may reach the model, and why the others may not.

Each check turns whole columns into a boolean mask with pyarrow.compute; no
Python runs per row. A rejected row keeps its columns and gains a reason code
and a human message (with the offending value), and goes to the run's
dead-letter output. The first failing check, in the order below, names the
reason:

    null_value        a required column (or a model input) is null
    not_finite        a float is NaN or infinite
    out_of_range      a number is outside the contract's int/float domain
    unseen_category   a string outside the contract's string_domain (policy "reject")
    bad_characters    a string does not match the contract's allowed-characters pattern
    model_error       the model itself raised on the row (found by bisecting a batch)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.contract import ColumnRule

REASON_COLUMN = "reject_reason"
MESSAGE_COLUMN = "reject_message"

NULL_VALUE = "null_value"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
UNSEEN_CATEGORY = "unseen_category"
BAD_CHARACTERS = "bad_characters"
MODEL_ERROR = "model_error"
REASONS = (NULL_VALUE, NOT_FINITE, OUT_OF_RANGE, UNSEEN_CATEGORY, BAD_CHARACTERS, MODEL_ERROR)


@dataclass(frozen=True)
class Partitioned:
    valid: pa.RecordBatch
    rejected: pa.RecordBatch  # the rejected rows + REASON_COLUMN + MESSAGE_COLUMN


@dataclass(frozen=True)
class _Problem:
    mask: pa.Array  # true where the row fails; never null
    reason: str
    message: pa.Array | pa.Scalar


def _quoted(column: pa.Array, mask: pa.Array) -> pa.Array:
    """The failing values as text, for messages (computed on whole columns)."""
    text = pc.cast(column, pa.string())
    return pc.if_else(mask, pc.fill_null(text, "null"), pa.scalar("", pa.string()))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


@dataclass(frozen=True)
class RowValidator:
    """The checks for one set of columns: model inputs and the contract's rules."""

    input_types: Mapping[str, pa.DataType]
    rules: tuple[ColumnRule, ...] = ()

    def problems(self, batch: pa.RecordBatch) -> list[_Problem]:
        found: list[_Problem] = []
        rules = {r.name: r for r in self.rules if batch.schema.get_field_index(r.name) >= 0}
        names = list(dict.fromkeys([*self.input_types, *rules]))
        checks = (self._nulls, self._not_finite, self._range, self._categories, self._pattern)
        for check in checks:
            for name in names:
                problem = check(batch.column(name), name, rules.get(name))
                if problem is not None:
                    found.append(problem)
        return found

    def _nulls(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        required = name in self.input_types or (rule is not None and rule.required)
        if not required or column.null_count == 0:
            return None
        return _Problem(
            column.is_null(), NULL_VALUE, pa.scalar(f"column '{name}' is null; it is required")
        )

    def _not_finite(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if not pa.types.is_floating(column.type):
            return None
        mask = pc.fill_null(pc.invert(pc.is_finite(column)), False)
        if not pc.any(mask).as_py():
            return None
        return _Problem(
            mask,
            NOT_FINITE,
            _join(f"column '{name}' is ", _quoted(column, mask), "; expected a finite number"),
        )

    def _range(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if rule is None or rule.minimum is None or rule.maximum is None:
            return None
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            return None
        inside = pc.and_(
            pc.greater_equal(column, rule.minimum), pc.less_equal(column, rule.maximum)
        )
        mask = pc.fill_null(pc.invert(inside), False)
        if pa.types.is_floating(column.type):  # NaN is not_finite, not out_of_range
            mask = pc.and_(mask, pc.fill_null(pc.is_finite(column), False))
        if not pc.any(mask).as_py():
            return None
        bounds = f"; expected [{_number(rule.minimum)}, {_number(rule.maximum)}]"
        return _Problem(
            mask, OUT_OF_RANGE, _join(f"column '{name}' = ", _quoted(column, mask), bounds)
        )

    def _categories(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if rule is None or rule.categories is None or rule.unseen != "reject":
            return None
        known = pc.is_in(column, value_set=pa.array(rule.categories, column.type))
        mask = pc.fill_null(pc.invert(known), False)
        if not pc.any(mask).as_py():
            return None
        shown = ", ".join(rule.categories[:8]) + (", ..." if len(rule.categories) > 8 else "")
        return _Problem(
            mask,
            UNSEEN_CATEGORY,
            _join(
                f"column '{name}' = '",
                _quoted(column, mask),
                f"' is not a known category ({shown})",
            ),
        )

    def _pattern(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if rule is None or rule.pattern is None:
            return None
        mask = pc.fill_null(pc.invert(pc.match_substring_regex(column, rule.pattern)), False)
        if not pc.any(mask).as_py():
            return None
        return _Problem(
            mask,
            BAD_CHARACTERS,
            _join(
                f"column '{name}' = '",
                _quoted(column, mask),
                f"' has characters outside {rule.pattern}",
            ),
        )

    def partition(self, batch: pa.RecordBatch) -> Partitioned:
        """Split ``batch`` into rows the model may take and rejected rows with reasons."""
        problems = self.problems(batch)
        if not problems:
            return Partitioned(batch, empty_rejects(batch.schema))
        reason: pa.Array = pa.nulls(batch.num_rows, pa.string())
        message: pa.Array = pa.nulls(batch.num_rows, pa.string())
        # Walk in reverse so that the first problem in precedence order wins.
        for problem in reversed(problems):
            reason = pc.if_else(problem.mask, pa.scalar(problem.reason), reason)
            message = pc.if_else(problem.mask, problem.message, message)
        bad = pc.is_valid(reason)
        return Partitioned(
            batch.filter(pc.invert(bad)),
            with_reasons(batch.filter(bad), reason.filter(bad), message.filter(bad)),
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def reject_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(REASON_COLUMN, pa.string())).append(
        pa.field(MESSAGE_COLUMN, pa.string())
    )


def with_reasons(
    rows: pa.RecordBatch, reason: pa.Array | str, message: pa.Array | str
) -> pa.RecordBatch:
    """``rows`` as dead-letter rows: their columns, a reason code and a message."""
    count = rows.num_rows
    if isinstance(reason, str):
        reason = pa.array(np.full(count, reason, dtype=object), pa.string())
    if isinstance(message, str):
        message = pa.array(np.full(count, message, dtype=object), pa.string())
    return pa.RecordBatch.from_arrays(
        [*rows.columns, reason, message], schema=reject_schema(rows.schema)
    )


def empty_rejects(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=reject_schema(schema))


def concat_rejects(parts: Iterable[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    batches = [p for p in parts if p.num_rows]
    if not batches:
        return empty_rejects(schema)
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
