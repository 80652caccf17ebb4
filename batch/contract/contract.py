"""A dataset's contract: its Schema proto plus the cleaning rules beside it, as plain data.

``schemas/<name>/schema.pbtxt`` (tensorflow_metadata Schema: types, presence,
domains) and ``schemas/<name>/rules.toml`` (what the proto cannot say: allowed
characters, the policy for unseen categories, key and label columns) are read
into one :class:`Contract`. Training and scoring both use it; nothing about a
column is declared twice. A contract is small and picklable, so a scoring job
ships it to its workers instead of every worker reading files.
"""

from __future__ import annotations

import functools
import importlib.resources
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from batch.core.errors import UsageError
from batch.core.fsutil import file_sha256, records_sha256

# The contracts that ship with batchscore: package data of ``schemas`` (also inside a zip
# or wheel, where there is no folder beside this file).
SCHEMAS_DIR = Path(str(importlib.resources.files("schemas")))
SCHEMA_FILE = "schema.pbtxt"
RULES_FILE = "rules.toml"

Kind = Literal["int", "float", "string"]
UnseenPolicy = Literal["oov", "reject"]
_KINDS: dict[int, Kind] = {
    schema_pb2.INT: "int",
    schema_pb2.FLOAT: "float",
    schema_pb2.BYTES: "string",
}


# The tensor dtype a column of each kind becomes in a model (TFT's raw feature spec).
TENSOR_DTYPES: dict[Kind, str] = {"int": "int64", "float": "float32", "string": "string"}

# TensorFlow dtype name -> the Arrow type a column is cast to before it becomes a tensor
# (and the type of a prediction column of that dtype).
ARROW_TYPE_FOR_DTYPE: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
}


def arrow_kind(arrow_type: pa.DataType) -> Kind | None:
    """The contract kind of an Arrow type: any integer is ``int``, any float ``float``,
    string and large_string ``string``; None for anything else."""
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


@dataclass(frozen=True)
class ColumnRule:
    """Everything the contract says about one column."""

    name: str
    kind: Kind
    required: bool
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] | None = None
    unseen: UnseenPolicy = "reject"
    pattern: str | None = None


@dataclass(frozen=True)
class Contract:
    name: str
    source: str
    columns: Mapping[str, ColumnRule]
    key_columns: tuple[str, ...] = ()
    label: str | None = None

    def schema_problems(
        self, schema: pa.Schema, null_counts: Mapping[str, int], rows: int, where: str
    ) -> list[str]:
        """How a file's Parquet schema breaks this contract (columns it lacks are not
        listed: only the model's inputs and the keys must be present)."""
        problems = []
        for rule in self.columns.values():
            index = schema.get_field_index(rule.name)
            if index < 0:
                continue
            found = schema.field(index).type
            if arrow_kind(found) != rule.kind:
                problems.append(
                    f"{where}: column '{rule.name}' is {found}; contract '{self.name}' declares "
                    f"it {rule.kind.upper()} ({self.source}/{SCHEMA_FILE})"
                )
            elif rule.required and rows and null_counts.get(rule.name) == rows:
                problems.append(
                    f"{where}: column '{rule.name}' is null in all {rows} rows; contract "
                    f"'{self.name}' declares it required"
                )
        return problems


def schema_names() -> list[str]:
    """Names of the datasets whose contract ships in ``schemas/``."""
    return sorted(p.parent.name for p in SCHEMAS_DIR.glob(f"*/{SCHEMA_FILE}"))


def contract_dir(spec: str) -> Path:
    """``spec`` is a contract name under schemas/ or a directory holding schema.pbtxt."""
    path = Path(spec).expanduser()
    if (path / SCHEMA_FILE).is_file():
        return path
    if (SCHEMAS_DIR / spec / SCHEMA_FILE).is_file():
        return SCHEMAS_DIR / spec
    known = ", ".join(schema_names())
    raise UsageError(
        f"contract '{spec}': expected a name under {SCHEMAS_DIR} ({known or 'none'}) or a "
        f"directory holding {SCHEMA_FILE}; found neither"
    )


def parse_schema_file(path: Path) -> schema_pb2.Schema:
    """A tensorflow_metadata Schema from its text-format file."""
    try:
        return text_format.Parse(path.read_text(), schema_pb2.Schema())
    except text_format.ParseError as exc:
        raise UsageError(
            f"{path}: expected a tensorflow_metadata Schema in protobuf text format; "
            f"found a syntax error: {exc}. Fix the file"
        ) from exc


def load_schema(spec: str) -> schema_pb2.Schema:
    """The Schema proto of a contract (name or folder); a fresh copy each call, so callers
    may mutate it."""
    schema = schema_pb2.Schema()
    schema.CopyFrom(_load_schema_cached(contract_dir(spec) / SCHEMA_FILE))
    return schema


@functools.cache
def _load_schema_cached(path: Path) -> schema_pb2.Schema:
    return parse_schema_file(path)


def _kind(feature: schema_pb2.Feature, where: Path) -> Kind:
    kind = _KINDS.get(feature.type)
    if kind is None:
        raise UsageError(
            f"{where}: feature '{feature.name}' has type "
            f"{schema_pb2.FeatureType.Name(feature.type)}; expected INT, FLOAT or BYTES"
        )
    return kind


def feature_columns(spec: str) -> dict[str, Kind]:
    """Column name -> ``"int"``, ``"float"`` or ``"string"``, in schema order: every
    column the contract's schema declares (features, label and key)."""
    path = contract_dir(spec) / SCHEMA_FILE
    return {f.name: _kind(f, path) for f in _load_schema_cached(path).feature}


def contract_sha256(contract: Contract) -> str:
    """Content hash of a contract's files (schema.pbtxt and rules.toml)."""
    files = ((name, Path(contract.source) / name) for name in (SCHEMA_FILE, RULES_FILE))
    return records_sha256(
        (name, file_sha256(path) if path.is_file() else "-") for name, path in files
    )


def load_contract(spec: str) -> Contract:
    folder = contract_dir(spec)
    schema_path = folder / SCHEMA_FILE
    schema = load_schema(str(folder))
    rules_path = folder / RULES_FILE
    try:
        rules = tomllib.loads(rules_path.read_text()) if rules_path.is_file() else {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{rules_path}: expected TOML; found a syntax error: {exc}") from exc
    patterns: dict[str, str] = dict(rules.get("patterns", {}))
    unseen: dict[str, str] = dict(rules.get("unseen_categories", {}))
    default_unseen = unseen.pop("default", "reject")
    declared = {f.name for f in schema.feature}
    for section, names in (("patterns", patterns), ("unseen_categories", unseen)):
        for name in names:
            if name not in declared:
                raise UsageError(
                    f"{rules_path}: [{section}] names column '{name}', which {schema_path} "
                    "does not declare; declare it there or remove the rule"
                )
    columns: dict[str, ColumnRule] = {}
    for feature in schema.feature:
        kind = _kind(feature, schema_path)
        minimum = maximum = None
        if feature.HasField("int_domain"):
            minimum, maximum = float(feature.int_domain.min), float(feature.int_domain.max)
        elif feature.HasField("float_domain"):
            minimum, maximum = feature.float_domain.min, feature.float_domain.max
        categories = (
            tuple(feature.string_domain.value) if feature.HasField("string_domain") else None
        )
        policy = unseen.get(feature.name, default_unseen)
        if policy not in ("oov", "reject"):
            raise UsageError(
                f"{rules_path}: unseen_categories.{feature.name} = '{policy}'; "
                "expected 'oov' or 'reject'"
            )
        pattern = patterns.get(feature.name)
        if pattern is not None:
            try:  # the pattern runs in Arrow's RE2 engine, so that is the one to ask
                pc.match_substring_regex(pa.array([""]), pattern)
            except pa.ArrowInvalid as exc:
                raise UsageError(
                    f"{rules_path}: patterns.{feature.name} is not a valid regex ({exc})"
                ) from exc
        columns[feature.name] = ColumnRule(
            name=feature.name,
            kind=kind,
            required=feature.presence.min_fraction >= 1.0,
            minimum=minimum,
            maximum=maximum,
            categories=categories,
            unseen="oov" if policy == "oov" else "reject",
            pattern=pattern,
        )
    return Contract(
        name=folder.name,
        source=str(folder),
        columns=columns,
        key_columns=tuple(rules.get("key_columns", ())),
        label=rules.get("label"),
    )
