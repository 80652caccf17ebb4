"""Deterministic routing of rows by their keys: samples for comparisons, shares for canaries.

Every row gets a 64-bit **key hash** computed from its key columns only, so
whether a row is "in" does not depend on the runner, the batch boundaries, the
file order, the process or the Python/pandas version. The same rule serves
``jobs.compare --sample=F`` (which rows are compared) and ``jobs.score
--canary_fraction=F`` (which rows the candidate scores): a row is in the share
``F`` exactly when

    key_hash(row) < floor(F * 2**64)

so the rows a comparison with ``--sample=0.1`` looked at are the rows a canary
with ``--canary_fraction=0.1`` routes to the candidate, and raising the fraction
only adds rows (0.1 is a subset of 0.2).

The hash (version 1, :data:`ROUTING_HASH`), all arithmetic modulo 2**64::

    mix(x)     = splitmix64's finalizer:
                 x += 0x9E3779B97F4A7C15
                 x = (x ^ x >> 30) * 0xBF58476D1CE4E5B9
                 x = (x ^ x >> 27) * 0x94D049BB133111EB
                 x ^ x >> 31
    value hash = integers, booleans, dates, timestamps, durations: mix(v)
                   (v as a two's-complement 64-bit integer; dates as days, timestamps
                   in their column's unit)
                 floats: mix(the IEEE-754 float64 bits), -0.0 as 0.0, every NaN alike
                 strings (UTF-8) and binaries, bytes b_0..b_{n-1}:
                   mix(poly ^ mix(n)) with poly = sum b_i * P**(n-1-i), P = 0x100000001B3
                 null: NULL_HASH = 0x6A09E667F3BCC909
    key_hash   = h = 0; for each key column in order: h = mix(h ^ value_hash); h

:func:`key_hash` computes it vectorized with numpy over whole Arrow columns (no
Python objects per row); :func:`reference_key_hash` is the same definition
written plainly, one row at a time, for anyone reproducing a split elsewhere.

This module imports neither TensorFlow nor any engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.core.errors import UsageError
from batch.core.masks import valid_rows

if TYPE_CHECKING:
    pass

ROUTING_HASH = "batchscore-key-hash-v1"

_M = 1 << 64
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
POLY_BASE = 0x100000001B3
NULL_HASH = 0x6A09E667F3BCC909
_CANONICAL_NAN = 0x7FF8000000000000
_BYTES_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
)


def share_threshold(fraction: float) -> int:
    """The key-hash bound of a share: rows with ``key_hash < share_threshold(F)`` are in it."""
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise UsageError(f"a routing fraction must be in [0, 1], found {fraction}")
    return min(math.floor(fraction * _M), _M)


def in_share(batch: pa.RecordBatch | pa.Table, key_columns: Sequence[str], fraction: float) -> Any:
    """A numpy bool mask: True for the rows whose keys fall in the share ``fraction``."""
    threshold = share_threshold(fraction)
    if threshold >= _M:
        return np.ones(batch.num_rows, dtype=bool)
    result: np.ndarray = key_hash(batch, key_columns) < np.uint64(threshold)
    return result


def key_hash(batch: pa.RecordBatch | pa.Table, key_columns: Sequence[str]) -> Any:
    """The key hash (module docstring) of every row of ``batch``, as a numpy uint64 array."""
    if not key_columns:
        raise UsageError("routing rows needs at least one key column; pass --key_columns")
    h = np.zeros(batch.num_rows, dtype=np.uint64)
    for name in key_columns:
        if name not in batch.schema.names:
            raise UsageError(
                f"key column '{name}' is not in the data (columns: {', '.join(batch.schema.names)})"
            )
        h = _mix(h ^ _column_hash(batch.column(name), name))
    return h


def _mix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    result: np.ndarray = x ^ (x >> np.uint64(31))
    return result


def _column_hash(column: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pa.types.is_null(kind):
        return np.full(len(column), NULL_HASH, dtype=np.uint64)
    nulls = ~valid_rows(column) if column.null_count else None
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = pc.fill_null(column.cast(pa.int64()) if pa.types.is_boolean(kind) else column, 0)
        hashed = _mix(values.to_numpy(zero_copy_only=False).astype(np.uint64))
    elif pa.types.is_temporal(kind) and not pa.types.is_time(kind):
        storage = pa.int32() if pa.types.is_date32(kind) else pa.int64()
        values = pc.fill_null(column.view(storage), 0)
        hashed = _mix(values.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64))
    elif pa.types.is_floating(kind):
        floats = pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        floats = floats + 0.0  # -0.0 + 0.0 == +0.0
        bits = floats.view(np.uint64).copy()
        bits[np.isnan(floats)] = np.uint64(_CANONICAL_NAN)
        hashed = _mix(bits)
    elif any(test(kind) for test in _BYTES_TYPES):
        hashed = _bytes_hash(column.cast(pa.large_binary()))
    else:
        raise UsageError(
            f"key column '{name}' has type {kind}; routing by key supports integer, boolean, "
            "float, string, binary, date and timestamp key columns. Choose other --key_columns"
        )
    if nulls is not None:
        hashed = hashed.copy()
        hashed[nulls] = np.uint64(NULL_HASH)
    return hashed


def _bytes_hash(column: pa.Array) -> np.ndarray:
    """mix(poly(bytes) ^ mix(length)) for a large_binary array, without per-row Python."""
    rows = len(column)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[
        column.offset : column.offset + rows + 1
    ]
    lengths = np.diff(offsets)
    start, end = int(offsets[0]), int(offsets[-1])
    poly = np.zeros(rows, dtype=np.uint64)
    if end > start:
        data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[start:end].astype(np.uint64)
        longest = int(lengths.max())
        powers = np.ones(longest, dtype=np.uint64)
        if longest > 1:
            powers[1:] = np.cumprod(np.full(longest - 1, POLY_BASE, dtype=np.uint64))
        # Byte i of a string of n bytes is weighted by P**(n-1-i): its distance to the end.
        string_ends = np.repeat(offsets[1:] - start, lengths)
        exponents = string_ends - 1 - np.arange(end - start, dtype=np.int64)
        terms = data * powers[exponents]
        nonempty = lengths > 0
        # Empty strings own no bytes, so consecutive non-empty starts delimit the segments.
        poly[nonempty] = np.add.reduceat(terms, (offsets[:-1] - start)[nonempty])
    return _mix(poly ^ _mix(lengths.astype(np.uint64)))


# -- the same definition, one row at a time --------------------------------------------


def _mix_scalar(x: int) -> int:
    x = (x + _GOLDEN) % _M
    x = ((x ^ (x >> 30)) * _MIX1) % _M
    x = ((x ^ (x >> 27)) * _MIX2) % _M
    return x ^ (x >> 31)


def reference_value_hash(value: Any) -> int:
    """The value hash of one Python value (None, bool, int, float, str, bytes)."""
    if value is None:
        return NULL_HASH
    if isinstance(value, bool | int):
        return _mix_scalar(int(value) % _M)
    if isinstance(value, float):
        if math.isnan(value):
            return _mix_scalar(_CANONICAL_NAN)
        bits = int(np.array([value + 0.0], dtype=np.float64).view(np.uint64)[0])
        return _mix_scalar(bits)
    if isinstance(value, str | bytes):
        data = value.encode() if isinstance(value, str) else value
        poly = 0
        for byte in data:
            poly = (poly * POLY_BASE + byte) % _M
        return _mix_scalar(poly ^ _mix_scalar(len(data)))
    raise TypeError(f"no reference hash for {type(value).__name__}")


def reference_key_hash(values: Sequence[Any]) -> int:
    """The key hash of one row, given its key values in key-column order."""
    h = 0
    for value in values:
        h = _mix_scalar(h ^ reference_value_hash(value))
    return h
