"""Training rows as a contract describes them: the raw feature spec, reading, cleaning,
the held-out split, and the TFXIO form tf.Transform analyzes.

The raw feature spec comes from the contract's ``schema.pbtxt`` through TFT's own
``schema_utils`` (as TFX does): a required scalar feature (``presence { min_fraction: 1 }``
and ``shape {}``) is a ``FixedLenFeature([])``, an optional one (``min_fraction < 1``, no
``shape``) a ``VarLenFeature``, which a ``preprocessing_fn`` receives as a SparseTensor
(a missing value is an absent entry). Everything here is TensorFlow and Arrow; Beam
is ``training/trainer.py``'s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.tfxio import tensor_adapter

from batch.contract.contract import (
    ARROW_TYPE_FOR_DTYPE,
    SCHEMA_FILE,
    Contract,
    arrow_kind,
    load_schema,
)
from batch.core.errors import InputDataError, UsageError
from batch.core.fsutil import file_sha256, records_sha256
from batch.engine.validate import RowValidator
from batch.output.commit import count_reasons

Feature: TypeAlias = "tf.io.FixedLenFeature | tf.io.VarLenFeature"
HELDOUT_BUCKETS = 10  # 1 of 10 hash buckets of the key is held out
RECORD_BATCH_ROWS = 8192
_KEY_SEPARATOR = "\x1f"
# What stands for a missing value of an optional feature in the raw-column signature.
MISSING_MARKERS: dict[str, float | str] = {"float32": float("nan"), "string": ""}


@dataclass(frozen=True)
class CleanResult:
    table: pa.Table
    dropped: int
    reasons: dict[str, int] = field(default_factory=dict)


def feature_spec(contract: Contract) -> dict[str, Feature]:
    """Every column of the contract's schema (features, label, keys) as TFT's schema_utils
    parses it, schema order; a feature whose presence and shape disagree is a UsageError."""
    where = f"{contract.source}/{SCHEMA_FILE}"
    schema = load_schema(contract.source)
    parsed = schema_utils.schema_as_feature_spec(schema).feature_spec
    spec: dict[str, Feature] = {}
    for feature in schema.feature:
        value = parsed.get(feature.name)
        rule = contract.columns[feature.name]
        if rule.required:
            if not isinstance(value, tf.io.FixedLenFeature) or list(value.shape) != []:
                raise UsageError(
                    f"{where}: feature '{feature.name}' is required (presence min_fraction 1) "
                    f"and must be a scalar with `shape {{}}`; found {value}. Add `shape {{}}` "
                    "or make it optional (min_fraction < 1, no shape)"
                )
        elif not isinstance(value, tf.io.VarLenFeature):
            raise UsageError(
                f"{where}: feature '{feature.name}' is optional (presence min_fraction "
                f"{feature.presence.min_fraction}) but declares a fixed shape, so a missing "
                "value could not be represented; remove its `shape` (it becomes a VarLenFeature)"
            )
        elif value.dtype == tf.int64:
            raise UsageError(
                f"{where}: feature '{feature.name}' is an optional INT; batchscore's raw-column "
                "signature has no missing marker for integers. Declare it FLOAT (NaN = missing) "
                "or required"
            )
        spec[feature.name] = value
    return spec


def raw_features(spec: Mapping[str, Feature], exclude: Sequence[str]) -> dict[str, Feature]:
    """``spec`` without ``exclude`` (the label and the keys): what serving takes."""
    return {name: f for name, f in spec.items() if name not in exclude}


def is_optional(feature: Feature) -> bool:
    return isinstance(feature, tf.io.VarLenFeature)


# -- files ---------------------------------------------------------------------------


def parquet_files(input_dir: Path) -> list[Path]:
    """The Parquet files under ``input_dir``, found as scoring finds them
    (batch.engine.inputs.list_data_files: each real file once, symlinked folders followed)."""
    from batch.engine.inputs import list_data_files

    if not input_dir.is_dir():
        raise UsageError(
            f"--input={input_dir}: expected a folder of Parquet files; it does not exist. "
            "Run `python -m jobs.make_demo` or pass --input=DIR"
        )
    files = list_data_files(input_dir).files
    if not files:
        raise UsageError(
            f"--input={input_dir}: expected *.parquet files under it; found none. "
            "Run `python -m jobs.make_demo` or pass the folder that holds the data"
        )
    return files


def data_fingerprint(input_dir: Path, files: Sequence[Path]) -> str:
    """sha256 over the sorted (relative path, size, content sha256) of the input files."""
    return snapshot(input_dir, files)["fingerprint"]


# -- training data versions ----------------------------------------------------------

SNAPSHOT_FORMAT = 1


def snapshot(input_dir: Path, files: Sequence[Path]) -> dict[str, Any]:
    """The training data version: every input file with its size and content sha256 (the
    lineage's ``training_data``, which ``--input_manifest`` reads back), and the
    fingerprint over them."""
    entries = [
        {
            "path": path.relative_to(input_dir).as_posix(),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        for path in sorted(files)
    ]
    return {
        "format": SNAPSHOT_FORMAT,
        "path": str(input_dir.resolve()),
        "fingerprint": records_sha256((e["path"], e["bytes"], e["sha256"]) for e in entries),
        "files": entries,
    }


def read_snapshot(manifest: Path) -> dict[str, Any]:
    """A snapshot from ``manifest``: a file :func:`snapshot` wrote, or a registered version's
    metadata.json (its ``lineage.training_data``)."""
    try:
        payload = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"--input_manifest={manifest}: expected a readable JSON file ({exc}); pass a "
            "model version's metadata.json or the training_data JSON of its lineage"
        ) from exc
    found = payload.get("lineage", {}).get("training_data", payload)
    if not isinstance(found, dict) or not isinstance(found.get("files"), list):
        raise UsageError(
            f"--input_manifest={manifest}: expected a training data snapshot (keys path, "
            "fingerprint, files) or a metadata.json whose lineage has one; found neither "
            "(versions trained before data snapshots record only a fingerprint)"
        )
    return found


def snapshot_files(manifest: Path, snapshot_: Mapping[str, Any], root: Path | None) -> list[Path]:
    """The files of a snapshot under ``root`` (default: where it was taken), each checked to
    be unchanged: same size and content sha256. A changed or missing file is an
    InputDataError naming it and what differs."""
    base = root if root is not None else Path(snapshot_["path"])
    files = []
    for entry in snapshot_["files"]:
        path = base / entry["path"]
        if not path.is_file():
            raise InputDataError(
                f"{path}: listed in --input_manifest={manifest} ({entry['bytes']} bytes) but "
                "missing; restore the snapshot's files, or pass --input=DIR where they are"
            )
        size = path.stat().st_size
        digest = file_sha256(path) if size == entry["bytes"] else None
        if size != entry["bytes"] or digest != entry["sha256"]:
            raise InputDataError(
                f"{path}: changed since the snapshot --input_manifest={manifest}: expected "
                f"{entry['bytes']} bytes, sha256 {entry['sha256'][:12]}; found {size} bytes"
                + (f", sha256 {digest[:12]}" if digest else "")
                + ". Restore that file, or train on the current data without --input_manifest"
            )
        files.append(path)
    if not files:
        raise UsageError(f"--input_manifest={manifest}: the snapshot lists no files")
    return files


def check_files(
    files: Sequence[Path], contract: Contract, spec: Mapping[str, Feature], label: str
) -> None:
    """Before anything heavy: every file has every contract column (the label included)
    with a type the contract allows. One line naming the file, the column and the fix."""
    schema_file = f"{contract.source}/{SCHEMA_FILE}"
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputDataError(f"{path}: not a readable Parquet file ({exc})") from exc
        if schema.get_field_index(label) < 0:
            raise InputDataError(
                f"{path}: expected the label column '{label}'; the file has no such column "
                f"(found: {', '.join(schema.names)}). Pass --label=COLUMN or other --input"
            )
        missing = [name for name in spec if schema.get_field_index(name) < 0]
        if missing:
            raise InputDataError(
                f"{path}: expected the columns of {schema_file}; missing {', '.join(missing)} "
                f"(found: {', '.join(schema.names)}). Pass an --input written for this "
                "contract, or --contract=DIR for this data (`python -m jobs.contract infer`)"
            )
        for name, feature in spec.items():
            found = schema.field(name).type
            wanted = contract.columns[name].kind
            if arrow_kind(found) != wanted:
                raise InputDataError(
                    f"{path}: column '{name}' expected {feature.dtype.name} ({wanted.upper()} "
                    f"in {schema_file}); found {found}. Fix the data or the schema"
                )


def read_rows(
    files: Sequence[Path], spec: Mapping[str, Feature], limit: int | None = None
) -> pa.Table:
    """The first ``limit`` rows of ``files`` (in order), the spec's columns cast to their
    tensor types (float64 -> float32); nulls stay nulls."""
    tables: list[pa.Table] = []
    rows = 0
    for path in files:
        if limit is not None and rows >= limit:
            break
        table = pq.ParquetFile(path).read(columns=list(spec))
        if limit is not None:
            table = table.slice(0, limit - rows)
        tables.append(cast_to_spec(table, spec))
        rows += table.num_rows
    return pa.concat_tables(tables)


def cast_to_spec(table: pa.Table, spec: Mapping[str, Feature]) -> pa.Table:
    columns = []
    for name, feature in spec.items():
        target = ARROW_TYPE_FOR_DTYPE[feature.dtype.name]
        # float64 -> float32 may round; that is the model's input type.
        columns.append(table.column(name).cast(target, safe=feature.dtype != tf.float32))
    return pa.table(columns, names=list(spec))


def clean_rows(table: pa.Table, contract: Contract) -> CleanResult:
    """Drop rows that are dirty for training: the contract's row checks, the same code
    scoring uses (batch.engine.validate), except that an unseen category is always dirty here.
    ``reasons`` counts the dropped rows by reason code. A null in an optional column is not
    dirty (it is a missing value)."""
    validator = RowValidator(
        {}, tuple(dataclasses.replace(rule, unseen="reject") for rule in contract.columns.values())
    )
    if not table.num_rows:
        return CleanResult(table, 0, {})
    part = validator.partition(table.combine_chunks().to_batches()[0])
    reasons = count_reasons([part.rejected])
    clean = pa.Table.from_batches([part.valid])
    return CleanResult(clean, part.rejected.num_rows, dict(sorted(reasons.items())))


def key_hash_buckets(table: pa.Table, key_columns: Sequence[str], buckets: int) -> np.ndarray:
    """A stable bucket per row from its key, whatever the key columns' types: the values as
    text (joined by a separator when there are several), hashed with TensorFlow's
    ``to_hash_bucket_fast`` (FarmHash)."""
    texts = [pc.cast(table.column(name), pa.string()) for name in key_columns]
    text = texts[0] if len(texts) == 1 else pc.binary_join_element_wise(*texts, _KEY_SEPARATOR)
    values = pc.fill_null(text, "").to_numpy(zero_copy_only=False).astype(object)
    return np.asarray(tf.strings.to_hash_bucket_fast(values, buckets).numpy())


def split_heldout(table: pa.Table, key_columns: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """(train, held-out): a row is held out when its key hashes to bucket 0 of 10."""
    heldout = pa.array(key_hash_buckets(table, key_columns, HELDOUT_BUCKETS) == 0)
    return table.filter(pc.invert(heldout)), table.filter(heldout)


# -- the TFXIO form of the rows ------------------------------------------------------


def tensor_adapter_config(spec: Mapping[str, Feature]) -> tensor_adapter.TensorAdapterConfig:
    """Arrow schema (a list column per feature) and tensor representations: a dense
    scalar per required feature, a VarLen sparse tensor per optional one."""
    arrow_schema = pa.schema(
        [pa.field(name, pa.list_(ARROW_TYPE_FOR_DTYPE[f.dtype.name])) for name, f in spec.items()]
    )
    representations = {}
    for name, feature in spec.items():
        if is_optional(feature):
            representations[name] = schema_pb2.TensorRepresentation(
                varlen_sparse_tensor=schema_pb2.TensorRepresentation.VarLenSparseTensor(
                    column_name=name
                )
            )
        else:
            representations[name] = schema_pb2.TensorRepresentation(
                dense_tensor=schema_pb2.TensorRepresentation.DenseTensor(
                    column_name=name, shape=schema_pb2.FixedShape()
                )
            )
    return tensor_adapter.TensorAdapterConfig(arrow_schema, representations)


def to_record_batches(
    table: pa.Table, spec: Mapping[str, Feature], rows: int = RECORD_BATCH_ROWS
) -> list[pa.RecordBatch]:
    """The TFXIO form of ``table``: every column a list<value>, one value per row (none
    where an optional feature is missing: null, NaN or "")."""
    batches = []
    for batch in table.select(list(spec)).to_batches(max_chunksize=rows):
        arrays = []
        for name in spec:
            column = batch.column(name)
            present = pc.invert(_missing(column, is_optional(spec[name])))
            if present.false_count == 0:
                offsets = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32))
                arrays.append(pa.ListArray.from_arrays(offsets, column))
                continue
            counts = present.to_numpy(zero_copy_only=False).astype(np.int32)
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            arrays.append(pa.ListArray.from_arrays(offsets, column.filter(present)))
        batches.append(pa.RecordBatch.from_arrays(arrays, names=list(spec)))
    return batches


def _missing(column: pa.Array, optional: bool) -> pa.Array:
    """Where a value is absent: null; for an optional feature also NaN (float) and ""
    (string), the raw-column signature's markers of a missing value."""
    missing = column.is_null()
    if optional and pa.types.is_floating(column.type):
        missing = pc.or_(missing, pc.fill_null(pc.is_nan(column), False))
    elif optional and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        missing = pc.or_(missing, pc.fill_null(pc.equal(column, ""), False))
    return missing


def raw_inputs(table: pa.Table, spec: Mapping[str, Feature]) -> dict[str, tf.Tensor]:
    """The raw-column serving signature's inputs for the rows of ``table``: one 1-D tensor
    per feature of ``spec``; a missing optional value is NaN (float) or "" (string), which
    the signature passes to the transform as absent."""
    out = {}
    for name, feature in spec.items():
        column = table.column(name).cast(ARROW_TYPE_FOR_DTYPE[feature.dtype.name]).combine_chunks()
        if column.null_count and is_optional(feature):
            column = pc.fill_null(column, MISSING_MARKERS[feature.dtype.name])
        values = column.to_numpy(zero_copy_only=False)
        if feature.dtype == tf.string:
            values = values.astype(object)
        out[name] = tf.constant(values, dtype=feature.dtype)
    return out
