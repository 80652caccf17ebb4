"""A dataset's contract: its Schema proto plus the cleaning rules beside it, as plain data.

``schemas/<name>/schema.pbtxt`` (tensorflow_metadata Schema: types, presence,
domains, inline or by name as TFX SchemaGen writes them) and
``schemas/<name>/rules.toml`` (what the proto cannot say: allowed characters, the
policy for unseen categories, fill values for optional columns, key and label
columns) are read into one :class:`Contract`. Training and scoring both use it; nothing about a
column is declared twice. A contract is small and picklable, so a scoring job
ships it to its workers instead of every worker reading files.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from batch.core.errors import UsageError
from batch.core.fsutil import file_sha256, records_sha256

SCHEMA_FILE = "schema.pbtxt"
RULES_FILE = "rules.toml"

Kind = Literal["int", "float", "string"]
UnseenPolicy = Literal["oov", "reject"]
# Without a rules.toml rule, an unseen category goes to the model's OOV handling and is
# counted in the manifest (contract.passed_to_oov), as TFX's Transform treats it.
DEFAULT_UNSEEN: UnseenPolicy = "oov"
FillValue = int | float | str
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
    unseen: UnseenPolicy = DEFAULT_UNSEEN
    pattern: str | None = None
    # rules.toml [fill]: a null becomes this value before the model (the column is then
    # optional); None: a null is rejected if the column is required or the model needs it.
    fill: FillValue | None = None


@dataclass(frozen=True)
class Contract:
    name: str
    source: str
    columns: Mapping[str, ColumnRule]
    key_columns: tuple[str, ...] = ()
    label: str | None = None

    def fills(self) -> dict[str, FillValue]:
        """Column -> the value its nulls become before the model (rules.toml [fill])."""
        return {r.name: r.fill for r in self.columns.values() if r.fill is not None}

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


@functools.cache
def packaged_contracts() -> Path:
    """The folder of the contracts that ship with batchscore (package data of ``schemas``).

    Read through importlib.resources: from a source checkout or an installed wheel it is
    the package's own folder; when the code is imported from a zip (spark-submit
    --py-files batchscore.zip) there is no such folder, so the contracts' files are
    copied once per process into a temporary one named by their content hash."""
    package = importlib.resources.files("schemas")
    if isinstance(package, Path):
        return package
    found = sorted(
        (folder.name, name, (folder / name).read_bytes())
        for folder in package.iterdir()
        if folder.is_dir() and (folder / SCHEMA_FILE).is_file()
        for name in (SCHEMA_FILE, RULES_FILE)
        if (folder / name).is_file()
    )
    digest = hashlib.sha256(repr(found).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"batchscore-schemas-{digest}"
    for folder, name, content in found:
        path = target / folder / name
        if not path.is_file() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{name}.{os.getpid()}")
            partial.write_bytes(content)
            partial.replace(path)  # atomic: concurrent processes agree on the content
    return target


def schema_names() -> list[str]:
    """Names of the datasets whose contract ships in ``schemas/``."""
    return sorted(p.parent.name for p in packaged_contracts().glob(f"*/{SCHEMA_FILE}"))


def contract_dir(spec: str) -> Path:
    """``spec`` is a contract name under schemas/ or a directory holding schema.pbtxt."""
    path = Path(spec).expanduser()
    if (path / SCHEMA_FILE).is_file():
        return path
    packaged = packaged_contracts()
    if (packaged / spec / SCHEMA_FILE).is_file():
        return packaged / spec
    known = ", ".join(schema_names())
    raise UsageError(
        f"contract '{spec}': expected the name of a contract that ships with batchscore "
        f"({known or 'none'}) or a directory holding {SCHEMA_FILE}; found neither"
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
    fills: dict[str, object] = dict(rules.get("fill", {}))
    default_unseen = unseen.pop("default", DEFAULT_UNSEEN)
    declared = {f.name for f in schema.feature}
    domains = _named_domains(schema)
    for section, names in (
        ("patterns", patterns),
        ("unseen_categories", unseen),
        ("fill", fills),
    ):
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
        int_domain, float_domain, string_domain = _domains(feature, domains, schema_path)
        if int_domain is not None:
            minimum, maximum = float(int_domain.min), float(int_domain.max)
        elif float_domain is not None:
            minimum, maximum = float_domain.min, float_domain.max
        categories = tuple(string_domain.value) if string_domain is not None else None
        fill = _fill_value(fills.get(feature.name), feature.name, kind, rules_path)
        policy = unseen.get(feature.name, default_unseen)
        if policy not in ("oov", "reject"):
            raise UsageError(
                f"{rules_path}: unseen_categories.{feature.name} = '{policy}'; "
                "expected 'oov' or 'reject'"
            )
        pattern = patterns.get(feature.name)
        if pattern is not None:
            # The pattern runs in Arrow's RE2 engine, so that is the one to ask; on a null
            # (an array from a Python list would import pandas, before TensorFlow starts).
            try:
                pc.match_substring_regex(pa.nulls(1, pa.string()), pattern)
            except pa.ArrowInvalid as exc:
                raise UsageError(
                    f"{rules_path}: patterns.{feature.name} is not a valid regex ({exc})"
                ) from exc
        columns[feature.name] = ColumnRule(
            name=feature.name,
            kind=kind,
            required=feature.presence.min_fraction >= 1.0 and fill is None,
            minimum=minimum,
            maximum=maximum,
            categories=categories,
            unseen="oov" if policy == "oov" else "reject",
            pattern=pattern,
            fill=fill,
        )
    return Contract(
        name=folder.name,
        source=str(folder),
        columns=columns,
        key_columns=tuple(rules.get("key_columns", ())),
        label=rules.get("label"),
    )


_Domains = dict[str, dict[str, object]]


def _named_domains(schema: schema_pb2.Schema) -> _Domains:
    """The schema-level domains (TFX SchemaGen writes string domains there, and features
    name them with ``domain: "NAME"``), by kind and name."""
    return {
        "int_domain": {d.name: d for d in schema.int_domain},
        "float_domain": {d.name: d for d in schema.float_domain},
        "string_domain": {d.name: d for d in schema.string_domain},
    }


def _domains(feature: schema_pb2.Feature, named: _Domains, where: Path) -> tuple[Any, Any, Any]:
    """The feature's (int, float, string) domain: its own, or the schema-level domain its
    ``domain: "NAME"`` names (which must exist)."""
    found: dict[str, Any] = {k: None for k in ("int_domain", "float_domain", "string_domain")}
    inline = feature.WhichOneof("domain_info")
    if inline in found:
        found[inline] = getattr(feature, inline)
    elif inline == "domain":
        for kind, domains in named.items():
            if feature.domain in domains:
                found[kind] = domains[feature.domain]
                break
        else:
            known = sorted(name for domains in named.values() for name in domains)
            raise UsageError(
                f"{where}: feature '{feature.name}' names domain '{feature.domain}', which the "
                f"schema does not define (it defines {', '.join(known) or 'none'}); add a "
                f'string_domain {{ name: "{feature.domain}" ... }} or fix the name'
            )
    return found["int_domain"], found["float_domain"], found["string_domain"]


def _fill_value(value: object, column: str, kind: Kind, where: Path) -> FillValue | None:
    """A rules.toml [fill] value, checked against the column's kind."""
    if value is None:
        return None
    fits = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
    }[kind]
    if not fits:
        example = {"int": "0", "float": "0.0", "string": '""'}[kind]
        raise UsageError(
            f"{where}: fill.{column} = {value!r}; the column is {kind.upper()}, so its fill "
            f"must be {'an integer' if kind == 'int' else 'a number' if kind == 'float' else 'a string'} "
            f"(e.g. {column} = {example})"
        )
    return float(value) if kind == "float" else value  # type: ignore[arg-type, return-value]
