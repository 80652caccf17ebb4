"""How many rows a batch holds: chosen per split from the Parquet footers, by bytes.

A batch of 65,536 rows is right for narrow rows (the demo's ~190 bytes a row make 12 MB)
and wrong for rows that carry a 300 KB text or a long float list (20 GB). The planner
estimates each split's bytes per row of the columns read from its row groups' column
chunk metadata (uncompressed bytes, at least the column's Arrow fixed width: a
dictionary-encoded column decodes to more than it stores) and gives the split
``target_bytes / bytes_per_row`` rows a batch, within ``[min_rows, max_rows]``.
``--batch_size`` forces a row count instead. What was chosen is the manifest's
``batching`` section.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batch.core.errors import UsageError
from batch.engine.inputs import DEFAULT_BATCH_SIZE, InputFile, Split

# Bytes of input (the columns read, as Arrow holds them) per batch. A batch is held a few
# times over while it is read, scored and written, and the model's feeds copy it: 32 MiB
# keeps that within a few hundred MB, and the demo's 65,536-row batches (~12 MB) unchanged.
DEFAULT_BATCH_BYTES = 32 << 20
# Fewer rows than this pay a model call's overhead for too little work; a row so wide that
# 16 make more than the target is still read 16 at a time (a model call that runs out of
# memory on them is retried on halves: BatchScorer.score_isolating).
MIN_BATCH_ROWS = 16
# More rows than today's fixed size bring no measurable speed (batch.engine.inputs).
MAX_AUTO_BATCH_ROWS = DEFAULT_BATCH_SIZE

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``1.5GiB``, ``300000`` as bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"expected a positive size such as 4G, 512M or 1048576 (bytes), found '{text}'"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _arrow_width(arrow_type: pa.DataType) -> int:
    """Bytes a row of ``arrow_type`` takes in Arrow at least (offsets, fixed-width values)."""
    if pa.types.is_large_string(arrow_type) or pa.types.is_large_binary(arrow_type):
        return 8
    if pa.types.is_string(arrow_type) or pa.types.is_binary(arrow_type):
        return 4
    if pa.types.is_fixed_size_list(arrow_type):
        return arrow_type.list_size * _arrow_width(arrow_type.value_type)
    if pa.types.is_list(arrow_type) or pa.types.is_map(arrow_type):
        return 4
    if pa.types.is_large_list(arrow_type):
        return 8
    if pa.types.is_struct(arrow_type):
        return sum(_arrow_width(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    try:
        return max(1, arrow_type.bit_width // 8)
    except ValueError:
        return 0


def _widths(file: InputFile, columns: Sequence[str]) -> dict[str, int]:
    return {
        name: _arrow_width(file.schema.field(name).type)
        for name in columns
        if file.schema.get_field_index(name) >= 0
    }


def _group_bytes(file: InputFile, group: int, widths: Mapping[str, int]) -> int:
    """Estimated Arrow bytes of row group ``group``'s columns ``widths``."""
    rows = file.row_group_rows[group]
    sizes = file.row_group_bytes[group]
    return sum(max(sizes.get(name, 0), width * rows) for name, width in widths.items())


def bytes_per_row(file: InputFile, split: Split, columns: Sequence[str]) -> float | None:
    """The estimated Arrow bytes per row of ``columns`` in ``split`` (None: the footer
    has no row-group sizes, or the split no rows)."""
    if not file.row_group_bytes or split.num_rows == 0:
        return None
    widths = _widths(file, columns)
    return sum(_group_bytes(file, g, widths) for g in split.row_groups) / split.num_rows


def largest_row_group_bytes(files: Sequence[InputFile], columns: Sequence[str]) -> int:
    """The estimated Arrow bytes of the largest row group (the columns read) of any file:
    Parquet's reader decodes a row group's column chunks whole, whatever the batch size."""
    largest = 0
    for file in files:
        if file.row_group_bytes:
            widths = _widths(file, columns)
            for group in range(len(file.row_group_rows)):
                largest = max(largest, _group_bytes(file, group, widths))
    return largest


@dataclass(frozen=True)
class BatchSizing:
    """The rule: ``forced_rows`` (``--batch_size``) if given, else ``target_bytes`` of
    input a batch, within ``[min_rows, max_rows]`` rows."""

    target_bytes: int = DEFAULT_BATCH_BYTES
    min_rows: int = MIN_BATCH_ROWS
    max_rows: int = MAX_AUTO_BATCH_ROWS
    forced_rows: int | None = None

    def __post_init__(self) -> None:
        if self.target_bytes < 1:
            raise UsageError(
                f"--batch_bytes={self.target_bytes}: expected a positive size such as 32M"
            )

    def rows_for(self, row_bytes: float | None) -> int:
        if self.forced_rows is not None:
            return self.forced_rows
        if not row_bytes:
            return self.max_rows
        return int(max(self.min_rows, min(self.max_rows, self.target_bytes // row_bytes)))


@dataclass(frozen=True)
class BatchPlan:
    """The splits with their batch rows, the smallest of them, and the manifest section."""

    splits: list[Split]
    smallest_rows: int
    largest_bytes: int
    section: dict[str, Any]


def plan_batches(
    files: Sequence[InputFile], splits: Sequence[Split], columns: Sequence[str], sizing: BatchSizing
) -> BatchPlan:
    """Each split with the rows a batch of it holds (``Split.batch_rows``), chosen by
    ``sizing`` from its estimated bytes per row of ``columns``."""
    by_path = {file.path: file for file in files}
    sized: list[Split] = []
    estimates: list[float] = []
    chosen: Counter[int] = Counter()
    largest_bytes = 0
    for split in splits:
        row_bytes = bytes_per_row(by_path[split.path], split, columns)
        rows = sizing.rows_for(row_bytes)
        sized.append(dataclasses.replace(split, batch_rows=rows))
        chosen[rows] += 1
        if row_bytes is not None:
            estimates.append(row_bytes)
            # A batch holds no more rows than its split.
            largest_bytes = max(largest_bytes, int(min(rows, split.num_rows) * row_bytes))
    section: dict[str, Any] = {
        "rule": "rows (--batch_size)" if sizing.forced_rows is not None else "bytes",
        "forced_rows": sizing.forced_rows,
        "target_bytes": sizing.target_bytes,
        "min_rows": sizing.min_rows,
        "max_rows": sizing.max_rows,
        "estimated_bytes_per_row": (
            {"min": round(min(estimates), 1), "max": round(max(estimates), 1)}
            if estimates
            else None
        ),
        "largest_batch_bytes": largest_bytes,
        "batch_rows": {"min": min(chosen, default=0), "max": max(chosen, default=0)},
        "splits_by_batch_rows": {str(rows): count for rows, count in sorted(chosen.items())},
    }
    return BatchPlan(sized, min(chosen, default=sizing.rows_for(None)), largest_bytes, section)
