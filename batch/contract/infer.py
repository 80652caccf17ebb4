"""A contract from data, as TFDV's ``infer_schema`` would write it (TFDV does not install
here): a tensorflow_metadata ``Schema`` and a commented ``rules.toml`` skeleton.

Per column of the Parquet files (read in record batches, nothing held but running
statistics): the type (INT, FLOAT, BYTES), the presence (``min_fraction`` 1 and
``shape {}`` when no value is null, a required scalar; otherwise the observed share, no
shape: an optional VarLenFeature), the int/float domain from min and max, and a
``string_domain`` for a string column with at most :data:`MAX_CATEGORIES` distinct values.
Columns of other types (bool, timestamps, lists) are left out and named in a comment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from batch.contract.contract import Kind, arrow_kind
from batch.core.errors import InputDataError

MAX_CATEGORIES = 50
_TYPES = {"int": schema_pb2.INT, "float": schema_pb2.FLOAT, "string": schema_pb2.BYTES}


@dataclass
class ColumnStats:
    """Running statistics of one column."""

    name: str
    kind: Kind
    rows: int = 0
    nulls: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    values: set[str] | None = field(default_factory=set)  # None once past MAX_CATEGORIES
    unique: bool = True  # no value seen twice (a key candidate)

    def add(self, column: pa.Array) -> None:
        self.rows += len(column)
        self.nulls += column.null_count
        present = pc.drop_null(column)
        if self.kind == "float":
            present = pc.filter(present, pc.invert(pc.is_nan(present)))
        if not len(present):
            return
        if self.kind in ("int", "float"):
            low, high = pc.min_max(present).values()
            self.minimum = min(self.minimum, float(low.as_py()))
            self.maximum = max(self.maximum, float(high.as_py()))
        distinct = pc.unique(present)
        if len(distinct) < len(present):
            self.unique = False
        if self.kind == "string" and self.values is not None:
            self.values.update(distinct.to_pylist())
            if len(self.values) > MAX_CATEGORIES:
                self.values = None

    def feature(self) -> schema_pb2.Feature:
        feature = schema_pb2.Feature(name=self.name, type=_TYPES[self.kind])
        if self.nulls == 0 and self.rows:
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
            feature.shape.SetInParent()
        else:
            share = (self.rows - self.nulls) / self.rows if self.rows else 0.0
            feature.presence.min_fraction = math.floor(share * 100) / 100
        if self.maximum >= self.minimum:
            if self.kind == "int":
                feature.int_domain.min = int(self.minimum)
                feature.int_domain.max = int(self.maximum)
            elif self.kind == "float":
                feature.float_domain.min = _float32_outward(self.minimum, -math.inf)
                feature.float_domain.max = _float32_outward(self.maximum, math.inf)
        if self.kind == "string" and self.values and not self.unique:
            feature.string_domain.value.extend(sorted(self.values))
        return feature


def _float32_outward(value: float, direction: float) -> float:
    """``value`` as the float32 a proto ``float`` field stores, rounded away from the data
    (so the observed min and max stay inside the domain)."""
    single = np.float32(value)
    if (direction < 0 and float(single) > value) or (direction > 0 and float(single) < value):
        single = np.nextafter(single, np.float32(direction))
    return float(single)


@dataclass(frozen=True)
class InferredContract:
    schema: schema_pb2.Schema
    rows: int
    skipped: tuple[str, ...]  # columns of types a contract cannot declare
    stats: tuple[ColumnStats, ...]

    def schema_text(self, source: str) -> str:
        skipped = (
            f"# Left out (types a contract cannot declare): {', '.join(self.skipped)}\n"
            if self.skipped
            else ""
        )
        return (
            f"# Inferred by `python -m jobs.contract infer` from {source} ({self.rows:,} rows).\n"
            "# Review it: domains are the observed min/max, presence the observed share of\n"
            "# non-null values (min_fraction 1 + shape {} = required), string_domain lists\n"
            f"# the values of string columns with at most {MAX_CATEGORIES} distinct ones.\n"
            f"{skipped}\n" + text_format.MessageToString(self.schema)
        )

    def rules_text(self) -> str:
        keys = [s.name for s in self.stats if s.unique and s.nulls == 0 and s.kind != "float"]
        free = [s.name for s in self.stats if s.kind == "string" and s.values is None]
        categorical = [s.name for s in self.stats if s.kind == "string" and s.values]
        lines = [
            "# Cleaning rules that a Schema proto cannot express (a skeleton: uncomment and edit).",
            "",
            "# Columns that identify a row; copied to every output and dead-letter row.",
            f"# Columns whose values were all distinct: {', '.join(keys) or 'none'}",
            f"# key_columns = [{', '.join(repr(k) for k in keys[:1])}]",
            "",
            "# The training label; scoring does not need it.",
            '# label = "COLUMN"',
            "",
            "# Allowed characters of free-text string columns (no string_domain); a value that",
            "# does not match is rejected with reason bad_characters.",
            "[patterns]",
            *(f"# {name} = '^[\\w\\-\\s]+$'" for name in free),
            "",
            "# A value outside a string_domain: 'oov' (the default) passes it to the model's",
            "# OOV bucket and counts it in the manifest, 'reject' dead-letters the row",
            "# (training always drops it). The domains above come from a sample: a rare",
            "# category it missed is unseen too.",
            "[unseen_categories]",
            'default = "oov"',
            *(f'# {name} = "reject"' for name in categorical),
            "",
        ]
        return "\n".join(lines)


def infer_contract(files: Sequence[Path], max_rows: int | None = None) -> InferredContract:
    """Statistics of every supported column of ``files`` (the first ``max_rows`` rows)."""
    if not files:
        raise InputDataError("no Parquet files to infer a contract from")
    first = pq.read_schema(files[0])
    stats: dict[str, ColumnStats] = {}
    skipped = []
    for arrow_field in first:
        kind = arrow_kind(arrow_field.type)
        if kind is None:
            skipped.append(f"{arrow_field.name} ({arrow_field.type})")
        else:
            stats[arrow_field.name] = ColumnStats(arrow_field.name, kind)
    rows = 0
    for batch in _batches(files, list(stats)):
        if max_rows is not None and rows >= max_rows:
            break
        if max_rows is not None:
            batch = batch.slice(0, max_rows - rows)
        for name, column_stats in stats.items():
            column_stats.add(batch.column(name))
        rows += batch.num_rows
    schema = schema_pb2.Schema(feature=[s.feature() for s in stats.values()])
    return InferredContract(schema, rows, tuple(skipped), tuple(stats.values()))


def _batches(files: Iterable[Path], columns: list[str]) -> Iterable[pa.RecordBatch]:
    for path in files:
        parquet = pq.ParquetFile(path)
        missing = [c for c in columns if parquet.schema_arrow.get_field_index(c) < 0]
        if missing:
            raise InputDataError(
                f"{path}: expected the columns of the first file; missing {', '.join(missing)}. "
                "Infer from files of one layout"
            )
        yield from parquet.iter_batches(batch_size=65536, columns=columns)
