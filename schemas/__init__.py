"""batchscore schemas: the data contracts, one folder per dataset.

``schemas/<name>/schema.pbtxt`` is a tensorflow_metadata ``Schema`` text proto
(the TFX convention): every column of the dataset (raw features, the label and
the row key) with its type, presence (``min_fraction: 1`` = required) and domain
(``int_domain``/``float_domain`` ranges, ``string_domain`` for small categoricals).
It is the one place the columns are declared; training, the transform's raw
feature spec and the demo data generator all derive from it.

The cleaning rules the Schema proto cannot express (allowed-character
patterns, the policy for unseen categories, key and label columns) live beside
it in ``schemas/<name>/rules.toml``; ``schemas.contract.load_contract`` reads
both into one contract that training and scoring share.

This package never imports TensorFlow (only the protobuf classes of
tensorflow_metadata), so reading a contract is cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tensorflow_metadata.proto.v0 import schema_pb2

from batch.errors import UsageError
from schemas.contract import parse_schema_file

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
    return parse_schema_file(path)


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
