"""batchscore schemas: the data contracts, one folder per dataset.

``schemas/<name>/schema.pbtxt`` is a tensorflow_metadata ``Schema`` text proto
(the TFX convention): every column of the dataset (raw features, the label and
the row key) with its type, presence (``min_fraction: 1`` = required) and domain
(``int_domain``/``float_domain`` ranges, ``string_domain`` for small categoricals).
It is the one place the columns are declared; training, the transform's raw
feature spec and the demo data generator all derive from it.

Cleaning rules (which rows are dirty, and why) will live beside the schema in
``schemas/<name>/rules.py``; until then training derives its row filter from the
domains declared here (see ``jobs/train.py``).

This package never imports TensorFlow (only the protobuf classes of
tensorflow_metadata), so reading a contract is cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from batch.errors import UsageError

SCHEMAS_DIR = Path(__file__).resolve().parent
SCHEMA_FILE = "schema.pbtxt"

# tensorflow_metadata feature type -> the column type batchscore uses.
_COLUMN_TYPES: dict[int, str] = {
    schema_pb2.INT: "int64",
    schema_pb2.FLOAT: "float32",
    schema_pb2.BYTES: "string",
}


def schema_names() -> list[str]:
    """Names of the datasets that have a schema here."""
    return sorted(p.parent.name for p in SCHEMAS_DIR.glob(f"*/{SCHEMA_FILE}"))


def schema_path(name: str) -> Path:
    return SCHEMAS_DIR / name / SCHEMA_FILE


def load_schema(name: str) -> schema_pb2.Schema:
    """Parse ``schemas/<name>/schema.pbtxt`` (a fresh copy each call: callers may mutate it)."""
    schema = schema_pb2.Schema()
    schema.CopyFrom(_load_cached(name))
    return schema


@functools.cache
def _load_cached(name: str) -> schema_pb2.Schema:
    path = schema_path(name)
    if not path.is_file():
        known = ", ".join(schema_names()) or "none"
        raise UsageError(
            f"schema '{name}': expected the file {path}; it does not exist "
            f"(schemas here: {known}). Add schemas/{name}/{SCHEMA_FILE} or use a known name"
        )
    try:
        return text_format.Parse(path.read_text(), schema_pb2.Schema())
    except text_format.ParseError as exc:
        raise UsageError(
            f"{path}: expected a tensorflow_metadata Schema in protobuf text format; "
            f"found a syntax error: {exc}. Fix the file"
        ) from exc


def feature_columns(name: str) -> dict[str, str]:
    """Column name -> ``"int64"``, ``"float32"`` or ``"string"``, in schema order.

    Includes every column the schema declares (features, label and key).
    """
    columns: dict[str, str] = {}
    for feature in _load_cached(name).feature:
        column_type = _COLUMN_TYPES.get(feature.type)
        if column_type is None:
            raise UsageError(
                f"{schema_path(name)}: feature '{feature.name}' has type "
                f"{schema_pb2.FeatureType.Name(feature.type)}; expected INT, FLOAT or BYTES"
            )
        columns[feature.name] = column_type
    return columns
