"""Dictionary-encoded columns: how the engine reads a column of few distinct values.

Parquet writers store such columns (categories, codes, states) as a dictionary of their
distinct values and one small index per row. Read that way, a check of each value
(is it a known category, does it match a pattern) runs once per distinct value instead
of once per row: :func:`per_value`. Outputs get plain columns (:func:`decode_dictionaries`),
so a dictionary never shows in a schema the user sees; a string input of the model is fed
from the dictionary itself (batch.engine.scorer.dictionary_feed).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.core.masks import stored_values, valid_rows


def decoded_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as the engine sees it: a dictionary-encoded column (pandas ``category``,
    Spark's dictionary pages kept by Arrow) as its value type; the engine decodes such
    columns (:func:`decode_dictionaries`) before the model or an output sees them."""
    if not any(pa.types.is_dictionary(f.type) for f in schema):
        return schema
    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def decode_dictionaries(batch: pa.RecordBatch, keep: Collection[str] = ()) -> pa.RecordBatch:
    """``batch`` with dictionary-encoded columns decoded to their value type, except the
    columns named in ``keep``."""
    if not any(pa.types.is_dictionary(f.type) and f.name not in keep for f in batch.schema):
        return batch
    columns = [
        column if name in keep else decoded(column)
        for column, name in zip(batch.columns, batch.schema.names, strict=True)
    ]
    schema = pa.schema(
        [f.with_type(c.type) for f, c in zip(batch.schema, columns, strict=True)],
        metadata=batch.schema.metadata,
    )
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def decoded(column: pa.Array) -> pa.Array:
    """``column`` with its values in place of a dictionary's indices (as it is if plain)."""
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def per_value(column: pa.Array, compute: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``compute(column)`` for a function of each value alone (one result per value,
    null for a null value): for a dictionary-encoded column, computed once per distinct
    value and spread to the rows by their indices."""
    if not pa.types.is_dictionary(column.type):
        return compute(column)
    return pc.take(compute(column.dictionary), column.indices)


def dictionary_indices(column: pa.DictionaryArray) -> np.ndarray:
    """The indices of a dictionary-encoded column as numpy, without a copy. A null row's
    index is whatever the writer left there: mask it with the column's validity."""
    return stored_values(column.indices)


def row_flags(column: pa.Array, flags: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
    """Bool per row: ``flags`` (a bool per value of the array it is given) is true for the
    row's value; a null row never is. For a dictionary-encoded column ``flags`` looks at
    each distinct value once and the rows pick their answer up by index (numpy, no Arrow
    take); a column none of whose distinct values is flagged costs nothing per row."""
    if pa.types.is_dictionary(column.type):
        per_distinct = flags(column.dictionary)
        if len(column) == 0 or not per_distinct.any():
            return np.zeros(len(column), dtype=bool)
        mask = np.take(per_distinct, dictionary_indices(column), mode="clip")
    else:
        mask = flags(column)
    if column.null_count:
        mask = mask & valid_rows(column)
    return mask
