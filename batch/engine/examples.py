"""Serialized tf.Examples from Arrow columns, written as protobuf wire format with numpy.

No Python object per row and no protobuf message per row: each column's bytes are
computed for all rows at once (value bytes, then the varint lengths and tags that frame
them), and one scatter per piece lays every row's Example out in a single buffer, which
becomes a binary Arrow column (its bytes and offsets are what the model is fed).

The wire format (tensorflow/core/example/example.proto, feature.proto):

    Example   = 0x0A len Features
    Features  = entry*                      (map<string, Feature>, field 1)
    entry     = 0x0A len (0x0A len key 0x12 len Feature)
    Feature   = 0x0A len BytesList | 0x12 len FloatList | 0x1A len Int64List
    BytesList = (0x0A len bytes)*           FloatList/Int64List = 0x0A len packed values

A null row leaves its feature out; a list column gives as many values as the row holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.core.errors import InputDataError
from batch.core.masks import to_arrow, valid_rows
from batch.model.signature import convert_column

# Feature field tag by the list it holds.
_TAGS = {"string": 0x0A, "float32": 0x12, "int64": 0x1A}
_VALUE_TYPES = {"string": pa.binary(), "float32": pa.float32(), "int64": pa.int64()}
_MAX_BYTES = 2**31 - 1


@dataclass(frozen=True)
class _Piece:
    """Per-row byte strings of one kind: ``data`` holds them back to back in row order,
    ``lengths`` says how many bytes each row has (0: none)."""

    data: np.ndarray
    lengths: np.ndarray


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    sizes = np.ones(len(values), dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    for shift in range(7, 64, 7):
        if top < 1 << shift:
            break
        sizes += values >= (np.uint64(1) << np.uint64(shift))
    return sizes


def _varints(values: np.ndarray) -> _Piece:
    """Each unsigned value as a protobuf varint."""
    values = values.astype(np.uint64, copy=False)
    sizes = _varint_sizes(values)
    width = int(sizes.max()) if len(sizes) else 1
    if width == 1:
        return _Piece(values.astype(np.uint8), sizes)
    matrix = np.empty((len(values), width), dtype=np.uint8)
    for index in range(width):
        byte = (values >> np.uint64(7 * index)) & np.uint64(0x7F)
        matrix[:, index] = byte | np.where(sizes > index + 1, 0x80, 0).astype(np.uint64)
    return _Piece(matrix[np.arange(width) < sizes[:, None]], sizes)


def _constant(value: bytes, rows: int, present: np.ndarray) -> _Piece:
    """``value`` on every present row."""
    count = int(present.sum())
    data = np.tile(np.frombuffer(value, dtype=np.uint8), count)
    return _Piece(data, np.where(present, len(value), 0))


def _gather(piece: _Piece, present: np.ndarray) -> _Piece:
    """``piece`` (computed for every row) keeping only the present rows' bytes."""
    if present.all():
        return piece
    keep = np.repeat(present, piece.lengths)
    return _Piece(piece.data[keep], np.where(present, piece.lengths, 0))


def _interleave(pieces: Sequence[_Piece], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row r of the result is piece 0's row r, then piece 1's row r, ...: returns the
    bytes and the int64 row offsets (rows + 1)."""
    lengths = np.zeros(rows, dtype=np.int64)
    for piece in pieces:
        lengths += piece.lengths
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total > _MAX_BYTES:
        raise InputDataError(
            f"a batch's serialized tf.Examples would take {total:,} bytes, more than a "
            "binary column holds (2 GiB); lower --batch_size"
        )
    out = np.empty(total, dtype=np.uint8)
    start = offsets[:-1].copy()
    for piece in pieces:
        width = int(piece.lengths[0]) if rows else 0
        if piece.data.size == width * rows and width and (piece.lengths == width).all():
            # Every row has ``width`` bytes: one 2-D scatter, no per-byte index to build.
            out[start[:, None] + np.arange(width)] = piece.data.reshape(rows, width)
        elif piece.data.size:
            source = np.zeros(rows, dtype=np.int64)
            np.cumsum(piece.lengths[:-1], out=source[1:])
            shift = np.repeat(start - source, piece.lengths)
            shift += np.arange(piece.data.size, dtype=np.int64)
            out[shift] = piece.data
        start += piece.lengths
    return out, offsets


def _value_bytes(values: pa.Array, dtype: str) -> _Piece:
    """Each value's bytes inside its list: packed float32 or varint, or 0x0A len bytes."""
    if dtype == "float32":
        floats = np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype="<f4")
        return _Piece(floats.view(np.uint8), np.full(len(floats), 4, dtype=np.int64))
    if dtype == "int64":
        ints = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        return _varints(ints.view(np.uint64))
    binary = values.cast(pa.binary()) if values.type != pa.binary() else values
    _, offsets_buffer, data_buffer = binary.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        binary.offset : binary.offset + len(binary) + 1
    ].astype(np.int64)
    raw = (
        np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
        if data_buffer is not None
        else np.zeros(0, dtype=np.uint8)
    )
    sizes = np.diff(offsets)
    present = np.ones(len(sizes), dtype=bool)
    data, offsets = _interleave(
        [_constant(b"\x0a", len(sizes), present), _varints(sizes), _Piece(raw, sizes)],
        len(sizes),
    )
    return _Piece(data, np.diff(offsets))


def _column_pieces(column: pa.Array, name: str, dtype: str) -> list[_Piece]:
    """The pieces one column adds to every row: its map entry, or nothing for a null."""
    rows = len(column)
    value_type = _VALUE_TYPES[dtype]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or (pa.types.is_fixed_size_list(column.type))
    ):
        lists = convert_column(column, pa.large_list(value_type), name, "a tf.Example feature")
        present = valid_rows(lists)
        values = pc.list_flatten(lists)
        counts = np.asarray(
            pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False),
            dtype=np.int64,
        )
        if values.null_count:  # a null inside a list is no value
            valid = valid_rows(values)
            parents = np.repeat(np.arange(rows), counts)
            counts = np.bincount(parents[valid], minlength=rows).astype(np.int64)
            values = values.filter(to_arrow(valid))
    else:
        scalars = convert_column(column, value_type, name, "a tf.Example feature")
        present = valid_rows(scalars)
        values = scalars.drop_null() if scalars.null_count else scalars
        counts = present.astype(np.int64)
    per_value = _value_bytes(values, dtype)
    ends = np.cumsum(counts)
    value_ends = np.concatenate([[0], np.cumsum(per_value.lengths)])
    content = value_ends[ends] - value_ends[ends - counts]  # bytes of each row's values
    packed = dtype != "string"
    # A numeric list is one packed field (0x0A len values), left out when it is empty.
    prefix_present = present & (content > 0) if packed else np.zeros(rows, dtype=bool)
    prefix = _gather(_varints(content), prefix_present)
    list_length = content + np.where(prefix_present, 1 + prefix.lengths, 0)
    feature_length = 1 + _varint_sizes(list_length.astype(np.uint64)) + list_length
    key = name.encode()
    key_part = b"\x0a" + bytes(_varints(np.array([len(key)])).data) + key + b"\x12"
    entry_length = len(key_part) + _varint_sizes(feature_length.astype(np.uint64))
    entry_length += feature_length
    content_piece = _Piece(per_value.data, np.where(present, content, 0))
    if (int(entry_length.max(initial=0)) < 128 and (prefix_present == present).all()) or (
        int(entry_length.max(initial=0)) < 128 and not packed
    ):
        # Every length is one byte: the entry's header has one width, built as a matrix.
        header = _short_header(
            key_part, _TAGS[dtype], entry_length, feature_length, list_length, content, packed
        )
        return [_gather(header, present), content_piece]
    return [
        _constant(b"\x0a", rows, present),
        _gather(_varints(entry_length), present),
        _constant(key_part, rows, present),
        _gather(_varints(feature_length), present),
        _constant(bytes([_TAGS[dtype]]), rows, present),
        _gather(_varints(list_length), present),
        _constant(b"\x0a", rows, prefix_present),
        prefix,
        content_piece,
    ]


def _short_header(
    key_part: bytes,
    tag: int,
    entry_length: np.ndarray,
    feature_length: np.ndarray,
    list_length: np.ndarray,
    content: np.ndarray,
    packed: bool,
) -> _Piece:
    """The bytes before a row's values when every length fits one byte:
    0x0A E key_part V TAG L [0x0A C]."""
    template = bytes([0x0A, 0]) + key_part + bytes([0, tag, 0]) + (b"\x0a\x00" if packed else b"")
    rows = len(entry_length)
    matrix = np.empty((rows, len(template)), dtype=np.uint8)
    matrix[:] = np.frombuffer(template, dtype=np.uint8)
    at = 2 + len(key_part)
    matrix[:, 1] = entry_length
    matrix[:, at] = feature_length
    matrix[:, at + 2] = list_length
    if packed:
        matrix[:, at + 4] = content
    return _Piece(matrix.reshape(-1), np.full(rows, len(template), dtype=np.int64))


def serialize_examples(columns: Mapping[str, tuple[pa.Array, str]], rows: int) -> pa.Array:
    """One serialized tf.Example per row: feature NAME from ``columns[NAME] = (column,
    dtype)``, dtype ``int64``, ``float32`` or ``string`` (the list the model parses it
    from); a plain column gives one value a row, a list column its values, a null row
    no feature. Returned as a binary column."""
    pieces: list[_Piece] = []
    for name, (column, dtype) in columns.items():
        pieces += _column_pieces(column, name, dtype)
    features = np.zeros(rows, dtype=np.int64)
    for piece in pieces:
        features += piece.lengths
    everyone = np.ones(rows, dtype=bool)
    data, offsets = _interleave(
        [_constant(b"\x0a", rows, everyone), _varints(features), *pieces], rows
    )
    return pa.BinaryArray.from_buffers(
        pa.binary(),
        rows,
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
    )
