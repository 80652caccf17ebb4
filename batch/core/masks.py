"""Row masks between numpy and Arrow at memory speed.

The engine's row masks are numpy bool arrays (a byte a row: what numpy's comparisons
give and what it indexes with); Arrow keeps a boolean array, and every column's
validity, as bits. pyarrow converts between the two value by value: ``pa.array(mask)``
takes about 46 us for a batch of 62,500 rows, ``BooleanArray.to_numpy`` about 60 us,
and a check of one batch converts a dozen masks or more. numpy's ``packbits`` and
``unpackbits`` do the same in 4-6 us.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_arrow(mask: np.ndarray) -> pa.BooleanArray:
    """``mask`` (bool per row) as an Arrow boolean array without nulls, for
    ``Array.filter`` and ``RecordBatch.filter``."""
    mask = np.asarray(mask, dtype=bool)
    packed = np.packbits(mask, bitorder="little")
    return pa.BooleanArray.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(packed)])


def _bits(buffer: pa.Buffer, offset: int, length: int) -> np.ndarray:
    """``length`` bits of ``buffer`` from bit ``offset`` (Arrow's order: least significant
    first), one bool each."""
    first = offset // 8
    skip = offset % 8
    end = first + (skip + length + 7) // 8
    data = np.frombuffer(buffer, np.uint8)[first:end]
    return np.unpackbits(data, count=skip + length, bitorder="little")[skip:].view(bool)


def _value_bits(array: pa.Array) -> np.ndarray | None:
    """A boolean Arrow array's value bits, one bool each (a null's is whatever the writer
    left); None when every value is null and no values are stored."""
    if not pa.types.is_boolean(array.type):
        raise TypeError(f"expected a boolean array, got {array.type}")
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    values = array.buffers()[1]
    return None if values is None else _bits(values, array.offset, len(array))


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as a numpy bool array, a null counting as false."""
    if isinstance(array, pa.ChunkedArray):
        parts = [to_numpy(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    bits = _value_bits(array)
    if bits is None:
        return np.zeros(len(array), dtype=bool)
    return bits & valid_rows(array) if array.null_count else bits


def false_rows(array: pa.Array) -> np.ndarray:
    """Bool per value of a boolean Arrow array: the value is false (a null is not)."""
    bits = _value_bits(array)
    if bits is None:
        return np.zeros(len(array), dtype=bool)
    return ~bits & valid_rows(array) if array.null_count else ~bits


def stored_values(array: pa.Array) -> np.ndarray:
    """An integer or float array's values as numpy, as stored: no copy, no conversion
    (``to_numpy`` turns integers with nulls into float64, about 90 us for 65,536 rows). A
    null row's value is whatever the writer left there: mask it with :func:`valid_rows`."""
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise TypeError(f"expected an integer or float array, got {array.type}")
    dtype = np.dtype(array.type.to_pandas_dtype())
    data = array.buffers()[1]
    if len(array) == 0 or data is None:
        return np.zeros(len(array), dtype)
    return np.frombuffer(data, dtype, count=len(array), offset=array.offset * dtype.itemsize)


def valid_rows(column: pa.Array) -> np.ndarray:
    """Bool per row of ``column``: the value is not null (read from its validity bitmap)."""
    if column.null_count == 0:
        return np.ones(len(column), dtype=bool)
    if column.null_count == len(column):
        return np.zeros(len(column), dtype=bool)
    validity = column.buffers()[0]
    if validity is None:  # a type whose nulls are not in a bitmap (unions)
        return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return _bits(validity, column.offset, len(column))
