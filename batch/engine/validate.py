"""Row validation, vectorized: which rows may reach the model, and why the others may not.

Each check turns whole columns into a boolean mask with pyarrow.compute; no
Python runs per row. A rejected row keeps its columns and gains a reason code
and a human message (with the offending value), and goes to the run's
dead-letter output. The first failing check, in the order below, names the
reason:

    invalid_utf8      a string column (any column read, keys included) holds bytes that
                      are not UTF-8; in the dead-letter such values are written escaped
                      (Python's "backslashreplace": the bytes 61 62 ff become the text
                      ab\\xff)
    null_value        a required column (or a model input) is null
    not_finite        a float is NaN or infinite
    out_of_range      a number is outside the contract's int/float domain
    unseen_category   a string outside the contract's string_domain (policy "reject"; with
                      policy "oov", the default without a rules.toml rule, the row goes on
                      to the model's OOV handling and is counted: Partitioned.passed_to_oov)
    bad_characters    a string does not match the contract's allowed-characters pattern
    model_error       the model itself raised on the row (found by bisecting a batch)
    non_finite_prediction  the model predicted NaN or an infinity for the row (unless the
                      job keeps such predictions: keep_non_finite)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.contract.contract import ColumnRule
from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.core.dictionaries import decode_dictionaries, per_value, row_flags
from batch.core.masks import false_rows, stored_values, to_arrow, to_numpy, valid_rows

INVALID_UTF8 = "invalid_utf8"
NULL_VALUE = "null_value"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
UNSEEN_CATEGORY = "unseen_category"
BAD_CHARACTERS = "bad_characters"
MODEL_ERROR = "model_error"
NON_FINITE_PREDICTION = "non_finite_prediction"
REASONS = (
    INVALID_UTF8,
    NULL_VALUE,
    NOT_FINITE,
    OUT_OF_RANGE,
    UNSEEN_CATEGORY,
    BAD_CHARACTERS,
    MODEL_ERROR,
    NON_FINITE_PREDICTION,
)


@dataclass(frozen=True)
class Partitioned:
    valid: pa.RecordBatch
    rejected: pa.RecordBatch  # the rejected rows + REASON_COLUMN + MESSAGE_COLUMN
    # Column -> nulls among the valid rows replaced by the contract's fill value.
    filled: Mapping[str, int] = field(default_factory=dict)
    # Column -> values among the valid rows outside its string_domain, passed on to the
    # model's OOV handling (unseen policy "oov").
    passed_to_oov: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Problem:
    mask: np.ndarray  # bool per row: true where the row fails
    reason: str
    # One message per failing row (in row order), or one message for all of them.
    message: pa.Array | str


# One check of one column: its problem, or None when every row passes.
ColumnCheck = Callable[[pa.Array, str, ColumnRule | None], _Problem | None]


def _failing(column: pa.Array, mask: np.ndarray) -> pa.Array:
    """The failing values as text, for messages; only the failing rows are formatted."""
    return pc.fill_null(pc.cast(column.filter(to_arrow(mask)), pa.string()), "null")


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


@lru_cache(maxsize=256)
def _value_set(categories: tuple[str, ...], arrow_type: pa.DataType) -> pa.Array:
    return pa.array(categories, arrow_type)


def _unseen(values: pa.Array, categories: tuple[str, ...]) -> np.ndarray:
    """Bool per value: not one of ``categories`` (use through :func:`row_flags`, which
    leaves null rows out)."""
    return ~to_numpy(pc.is_in(values, _value_set(categories, values.type)))


def _text_bytes(column: pa.Array) -> tuple[np.ndarray, memoryview]:
    """A string column's offsets (one per value, plus the end) and the bytes its values
    span, without a copy."""
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    _, offsets_buffer, data = column.buffers()
    if len(column) == 0 or offsets_buffer is None or data is None:
        return np.zeros(1, offset_type), memoryview(b"")
    width = np.dtype(offset_type).itemsize
    offsets = np.frombuffer(
        offsets_buffer, offset_type, count=len(column) + 1, offset=column.offset * width
    )
    return offsets, memoryview(data)[offsets[0] : offsets[-1]]


def _is_ascii(column: pa.Array) -> bool:
    """Whether every byte of a string column's values is ASCII (so valid UTF-8): one pass
    at memory speed, about 8x quicker than Arrow's full validation of each value."""
    _, data = _text_bytes(column)
    return len(data) == 0 or int(np.frombuffer(data, np.uint8).max()) < 0x80


# A pattern that only says which characters a value may hold: ^[...]+$ or ^[...]*$.
_CHARACTER_CLASS = re.compile(r"\^(\[(?:\\.|[^\\\]])+\])([+*])\$")


@dataclass(frozen=True)
class _CharacterClass:
    """What a pattern of the form ``^[...]+$`` or ``^[...]*$`` allows."""

    allowed: bytes  # the ASCII characters the class allows
    empty_matches: bool  # '*'


@lru_cache(maxsize=256)
def _character_class(pattern: str) -> _CharacterClass | None:
    """The class of a pattern that only restricts characters, None for any other pattern.
    The regex engine itself answers for each of the 128 ASCII characters; no other byte
    is taken as allowed."""
    found = _CHARACTER_CLASS.fullmatch(pattern)
    if found is None:
        return None
    characters = pa.array([chr(code) for code in range(0x80)], pa.string())
    matched = pc.match_substring_regex(characters, f"^{found.group(1)}$").to_pylist()
    allowed = bytes(code for code, ok in enumerate(matched) if ok)
    return _CharacterClass(allowed, found.group(2) == "*")


def _suspects(column: pa.Array, pattern: str) -> np.ndarray | None:
    """The rows of ``column`` that may not match a pattern that only restricts characters
    (``^[...]+$``): those with a byte that is not an ASCII character the class allows, and
    non-null empty values when ``+`` needs one. Every other row surely matches. A clean
    column costs one ``bytes.translate`` over its bytes, about 10x quicker than the regex
    over every value. None (run the regex on every row) for a pattern of another form, a
    column that is not text, or one where suspect bytes are common."""
    found = _character_class(pattern)
    if found is None or not _is_text(column):
        return None
    offsets, data = _text_bytes(column)
    raw = bytes(data)
    rows = np.zeros(0, np.int64)
    outside = raw.translate(None, found.allowed)  # the bytes the class does not allow
    if outside:
        distinct = set(outside)
        if len(outside) > len(column) // _SUSPECT_SHARE or len(distinct) > _SUSPECT_BYTES:
            return None
        where = []
        for byte in distinct:  # each found by memchr, one pass over the bytes
            at = raw.find(byte)
            while at >= 0:
                where.append(at)
                at = raw.find(byte, at + 1)
        rows = np.unique(np.searchsorted(offsets, np.add(where, offsets[0]), side="right") - 1)
    if not found.empty_matches:
        empty = np.diff(offsets) == 0
        if column.null_count:
            empty &= valid_rows(column)
        if empty.any():
            rows = np.union1d(rows, np.flatnonzero(empty))
    return rows


# Above one suspect byte in this many rows, or more distinct suspect bytes than this, the
# regex runs on every row instead.
_SUSPECT_SHARE = 16
_SUSPECT_BYTES = 8


def _mismatches(column: pa.Array, pattern: str) -> np.ndarray:
    """Bool per row: the value is not null and does not match ``pattern`` (RE2, as
    ``pc.match_substring_regex``); the regex runs on the suspect rows only when the pattern
    just restricts characters."""
    if pa.types.is_dictionary(column.type):
        return row_flags(column, partial(_mismatches, pattern=pattern))
    suspects = _suspects(column, pattern)
    if suspects is None:
        return false_rows(_matches(column, pattern))
    mask = np.zeros(len(column), dtype=bool)
    if len(suspects):
        matched = pc.match_substring_regex(column.take(pa.array(suspects)), pattern)
        mask[suspects] = false_rows(matched)
    return mask


def _matches(column: pa.Array, pattern: str) -> pa.Array:
    """``pc.match_substring_regex(column, pattern)``, matching each distinct value once
    when the column repeats its values (codes, ids): a regex costs ~50 ns a value,
    hashing a value to find the repeats ~20 ns."""
    sample = column.slice(0, _DISTINCT_SAMPLE)
    if len(sample) < _DISTINCT_SAMPLE or len(pc.unique(sample)) > _DISTINCT_SAMPLE // 2:
        return pc.match_substring_regex(column, pattern)
    return per_value(
        pc.dictionary_encode(column), lambda values: pc.match_substring_regex(values, pattern)
    )


# Rows looked at to decide whether a column repeats its values enough.
_DISTINCT_SAMPLE = 2048


def _extremes(column: pa.Array, values: np.ndarray) -> tuple[float, float] | None:
    """The smallest and the largest value of a numeric column that is not all null (NaN
    left out, infinities kept), where one pass each finds them: numpy's on the stored
    values without nulls (fmin / fmax for floats), Arrow's min_max (which leaves nulls
    out) on integers with nulls. None for floats with nulls, where Arrow's min_max costs
    more than comparing every value."""
    if column.null_count == 0:
        if pa.types.is_floating(column.type):
            return float(np.fmin.reduce(values)), float(np.fmax.reduce(values))
        return values.min(), values.max()
    if pa.types.is_floating(column.type):
        return None
    low, high = pc.min_max(column).values()
    return low.as_py(), high.as_py()


@dataclass(frozen=True)
class RowValidator:
    """The checks for one set of columns: model inputs and the contract's rules.

    Whether a null is rejected (null_value): a column the contract fills (rules.toml
    [fill]) never is, its nulls become the fill value in the rows passed on; otherwise a
    column the contract requires always is; a model input always is, unless it is in
    ``optional`` (a sparse or ragged input, a tf.Example feature that may be absent),
    whose null the model gets as no value.

    Every check first asks cheaply whether any row fails (null count, min/max,
    one vectorized pass) and builds messages for the failing rows only, so a
    clean batch costs a few passes over its columns and no string formatting.

    A text column may come dictionary-encoded (batch.core.dictionaries: jobs read category
    columns so): the UTF-8, category and pattern checks then look at each distinct value
    once. :meth:`partition` returns every column decoded, but the rows passed on keep the
    encoding of the columns in ``keep_encoded`` (those the scorer feeds the model from the
    dictionary, batch.engine.scorer.BatchScorer.takes_encoded) unless a fill value
    replaces their nulls; dead-letter rows are always decoded.
    """

    input_types: Mapping[str, pa.DataType]
    rules: tuple[ColumnRule, ...] = ()
    optional: frozenset[str] = frozenset()
    keep_encoded: frozenset[str] = frozenset()

    def problems(self, batch: pa.RecordBatch) -> list[_Problem]:
        # First: no other check may turn a value that is not UTF-8 into text.
        found = [p for p in map(_invalid_utf8, batch.columns, batch.schema.names) if p]
        names, rules = self.checked_columns(batch)
        for check in self.column_checks().values():
            for name in names:
                problem = check(batch.column(name), name, rules.get(name))
                if problem is not None:
                    found.append(problem)
        return found

    def checked_columns(self, batch: pa.RecordBatch) -> tuple[list[str], dict[str, ColumnRule]]:
        """The columns of ``batch`` the checks look at (model inputs, then the contract's
        other columns), and the rules of those the contract names."""
        rules = {r.name: r for r in self.rules if batch.schema.get_field_index(r.name) >= 0}
        return list(dict.fromkeys([*self.input_types, *rules])), rules

    def column_checks(self) -> dict[str, ColumnCheck]:
        """Reason -> the check that finds it, in precedence order (after invalid_utf8)."""
        return {
            NULL_VALUE: self._nulls,
            NOT_FINITE: self._not_finite,
            OUT_OF_RANGE: self._range,
            UNSEEN_CATEGORY: self._categories,
            BAD_CHARACTERS: self._pattern,
        }

    def _nulls(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if column.null_count == 0 or (rule is not None and rule.fill is not None):
            return None
        model_needs = name in self.input_types and name not in self.optional
        if not model_needs and not (rule is not None and rule.required):
            return None
        hint = (
            "; the contract allows a null, but the model cannot take one: give the column a "
            f"fill value in rules.toml ([fill] {name} = ...)"
            if rule is not None and not rule.required
            else ""
        )
        return _Problem(
            ~valid_rows(column), NULL_VALUE, f"column '{name}' is null; it is required{hint}"
        )

    def _passed_on(
        self, batch: pa.RecordBatch, rejected: pa.RecordBatch | None = None
    ) -> Partitioned:
        """``batch``, the rows that may reach the model, with the contract's fill values in
        place of nulls, beside ``rejected`` (none: an empty dead-letter batch); counts the
        fills and the unseen categories passed to the model's OOV handling."""
        filled: dict[str, int] = {}
        oov: dict[str, int] = {}
        keep = self.keep_encoded - {r.name for r in self.rules if r.fill is not None}
        encoded, batch = batch, decode_dictionaries(batch, keep)
        columns = list(batch.columns)
        for rule in self.rules:
            index = batch.schema.get_field_index(rule.name)
            if index < 0:
                continue
            column = columns[index]
            if (
                rule.categories is not None
                and rule.unseen == "oov"
                and column.null_count < len(column)
            ):
                unseen = row_flags(
                    encoded.column(index), partial(_unseen, categories=rule.categories)
                )
                if unseen.any():
                    oov[rule.name] = int(np.count_nonzero(unseen))
            if rule.fill is not None and column.null_count:
                filled[rule.name] = column.null_count
                columns[index] = pc.fill_null(column, pa.scalar(rule.fill).cast(column.type))
        if filled:
            batch = pa.RecordBatch.from_arrays(columns, schema=batch.schema)
        if rejected is None:
            rejected = empty_rejects(batch.schema)
        return Partitioned(batch, rejected, filled, oov)

    def _not_finite(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if not pa.types.is_floating(column.type):
            return None
        if column.null_count == 0:
            mask = ~np.isfinite(column.to_numpy(zero_copy_only=False))
        else:
            mask = false_rows(pc.is_finite(column))
        if not mask.any():
            return None
        return _Problem(
            mask,
            NOT_FINITE,
            _join(f"column '{name}' is ", _failing(column, mask), "; expected a finite number"),
        )

    def _range(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if rule is None or rule.minimum is None or rule.maximum is None:
            return None
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            return None
        floating = pa.types.is_floating(column.type)
        if column.null_count == len(column):
            return None
        # The values as stored (no copy, no conversion to float64 where there are nulls);
        # a null's slot holds whatever the writer left there, masked below.
        values = stored_values(column)
        extremes = _extremes(column, values)
        if extremes is not None and extremes[0] >= rule.minimum and extremes[1] <= rule.maximum:
            return None  # a batch within its bounds, as nearly all are
        with np.errstate(invalid="ignore"):
            mask = (values < rule.minimum) | (values > rule.maximum)
        if column.null_count:
            mask &= valid_rows(column)  # a null is null_value's row, never out of range
        if floating and mask.any():  # NaN and inf are not_finite, not out_of_range
            mask &= np.isfinite(values)
        if not mask.any():
            return None
        bounds = f"; expected [{_number(rule.minimum)}, {_number(rule.maximum)}]"
        return _Problem(
            mask, OUT_OF_RANGE, _join(f"column '{name}' = ", _failing(column, mask), bounds)
        )

    def _categories(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if rule is None or rule.categories is None or rule.unseen != "reject":
            return None
        # A null is no category: whether it may be there is the null check's business (an
        # optional column's null is a missing value, not an unseen category).
        mask = row_flags(column, partial(_unseen, categories=rule.categories))
        if not mask.any():
            return None
        shown = ", ".join(rule.categories[:8]) + (", ..." if len(rule.categories) > 8 else "")
        return _Problem(
            mask,
            UNSEEN_CATEGORY,
            _join(
                f"column '{name}' = '",
                _failing(column, mask),
                f"' is not a known category ({shown})",
            ),
        )

    def _pattern(self, column: pa.Array, name: str, rule: ColumnRule | None) -> _Problem | None:
        if rule is None or rule.pattern is None:
            return None
        mask = _mismatches(column, rule.pattern)
        if not mask.any():
            return None
        return _Problem(
            mask,
            BAD_CHARACTERS,
            _join(
                f"column '{name}' = '",
                _failing(column, mask),
                f"' has characters outside {rule.pattern}",
            ),
        )

    def partition(self, batch: pa.RecordBatch) -> Partitioned:
        """Split ``batch`` into rows the model may take and rejected rows with reasons."""
        problems = self.problems(batch)
        if not problems:
            return self._passed_on(batch)
        # Per row, the first problem in precedence order (-1: none).
        first = np.full(batch.num_rows, -1, dtype=np.int64)
        for index in range(len(problems) - 1, -1, -1):
            first[problems[index].mask] = index
        bad = first >= 0
        bad_rows = np.flatnonzero(bad)
        reasons = np.empty(len(bad_rows), dtype=object)
        messages = np.empty(len(bad_rows), dtype=object)
        for index, problem in enumerate(problems):
            mine = first[bad_rows] == index
            if not mine.any():
                continue
            reasons[mine] = problem.reason
            if isinstance(problem.message, str):
                messages[mine] = problem.message
            else:
                # The problem's messages are in the order of its failing rows.
                position = np.searchsorted(np.flatnonzero(problem.mask), bad_rows[mine])
                messages[mine] = problem.message.take(pa.array(position)).to_numpy(
                    zero_copy_only=False
                )
        rejected = decode_dictionaries(batch.take(pa.array(bad_rows)))
        if any(p.reason == INVALID_UTF8 for p in problems):
            rejected = escape_invalid_utf8(rejected)
        return self._passed_on(
            filter_rows(batch, ~bad),
            with_reasons(rejected, pa.array(reasons, pa.string()), pa.array(messages, pa.string())),
        )


def _is_text(column: pa.Array) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def _utf8_ok(column: pa.Array) -> bool:
    # Parquet readers hand over a string column's bytes unchecked; full validation is one
    # vectorized pass over them, which ASCII values (nearly all, in most data) skip.
    if _is_ascii(column):
        return True
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _raw_values(column: pa.Array) -> list[bytes | None]:
    binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
    return column.view(binary).to_pylist()


def _decodes(value: bytes | None) -> bool:
    if value is None:
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _invalid_utf8(column: pa.Array, name: str) -> _Problem | None:
    if pa.types.is_dictionary(column.type):
        if _is_text(column.dictionary) and _utf8_ok(column.dictionary):
            return None
        column = column.dictionary_decode()
    if not _is_text(column) or _utf8_ok(column):
        return None
    # Only a batch that holds such bytes gets here: finding the rows may take Python.
    raw = _raw_values(column)
    mask = np.array([not _decodes(v) for v in raw], dtype=bool)
    messages = [
        f"column '{name}' = '{v.decode('utf-8', 'backslashreplace')}' is not valid UTF-8 "
        "(the bytes that are not are shown as \\xNN); fix the writer's encoding"
        for v, bad in zip(raw, mask, strict=True)
        if bad and v is not None
    ]
    return _Problem(mask, INVALID_UTF8, pa.array(messages, pa.string()))


def escape_invalid_utf8(rows: pa.RecordBatch) -> pa.RecordBatch:
    """``rows`` with every string value that is not UTF-8 written escaped (backslashreplace),
    so that the dead-letter file is readable; valid values are unchanged."""
    columns = []
    for column in rows.columns:
        if _is_text(column) and not _utf8_ok(column):
            column = pa.array(
                [
                    None if v is None else v.decode("utf-8", "backslashreplace")
                    for v in _raw_values(column)
                ],
                column.type,
            )
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=rows.schema)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def reject_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(REASON_COLUMN, pa.string())).append(
        pa.field(MESSAGE_COLUMN, pa.string())
    )


def with_reasons(
    rows: pa.RecordBatch, reason: pa.Array | str, message: pa.Array | str
) -> pa.RecordBatch:
    """``rows`` as dead-letter rows: their columns (decoded), a reason code and a message."""
    rows = decode_dictionaries(rows)
    count = rows.num_rows
    if isinstance(reason, str):
        reason = pa.array(np.full(count, reason, dtype=object), pa.string())
    if isinstance(message, str):
        message = pa.array(np.full(count, message, dtype=object), pa.string())
    return pa.RecordBatch.from_arrays(
        [*rows.columns, reason, message], schema=reject_schema(rows.schema)
    )


def filter_rows(batch: pa.RecordBatch, keep: np.ndarray) -> pa.RecordBatch:
    """The rows of ``batch`` where ``keep`` (bool per row) is true: ``batch.filter(keep)``
    one column at a time, which in Arrow 25 costs about half of filtering the record batch
    whole (0.47 s against 0.87 s per 10M rows of the loans input, 19 columns)."""
    mask = to_arrow(keep)
    return pa.RecordBatch.from_arrays([c.filter(mask) for c in batch.columns], schema=batch.schema)


def empty_rejects(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=reject_schema(schema))
