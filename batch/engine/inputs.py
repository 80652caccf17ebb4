"""Finding input Parquet files and cutting them into splits, from footers only.

A split is a range of row groups of one file: the unit of work a runner hands
to a worker. Planning reads Parquet footers (a few KB per file), never data.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch.core import storage
from batch.core.dictionaries import decoded_schema
from batch.core.errors import InputDataError, UsageError
from batch.core.fsutil import absolute, records_sha256
from batch.core.parallel import map_io

log = logging.getLogger(__name__)

DEFAULT_SPLIT_ROWS = 1 << 18
# Rows per Arrow batch and model call. Per-call costs (tensor conversion, the
# signature call, one validation pass per column) are paid per batch: 65536 rows
# ran the demo model 10-15% faster than 16384 at 10M rows, for ~0.1 GB more memory.
DEFAULT_BATCH_SIZE = 1 << 16
# The most rows one model call or one split may hold (16,777,216): beyond it Arrow's and
# TensorFlow's row counts stop fitting the types they use, and no worker has the memory.
MAX_BATCH_ROWS = 1 << 24
# Where --split_rows is not given and the engine is known to score few splits at once
# (Beam's DirectRunner in this process: one), a split gets up to 1/SPLITS_PER_SLOT of each
# slot's rows. Every split's start (its file opened, its first batch read on one thread)
# and end (the last calls, the writer drained) leave a core idle, and with one split at a
# time nothing else fills it: 40 splits of 262,144 rows cost about 0.8 s of a 12 s job on
# 10M rows against 8 (docs/benchmarks.md, issue 21's thirteenth look). Eight a slot still
# even out the slots' finish where several run at once.
SPLITS_PER_SLOT = 8


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    mtime_ns: int
    num_rows: int
    row_group_rows: tuple[int, ...]
    schema: pa.Schema
    # Nulls per column from the footer statistics, where the writer recorded them.
    null_counts: Mapping[str, int] = field(default_factory=dict)
    # Per row group: top-level column -> its column chunks' uncompressed bytes (the
    # footer's total_uncompressed_size), which batch sizing reads (batch.engine.sizing).
    row_group_bytes: tuple[Mapping[str, int], ...] = ()
    # An object's version in its bucket (S3 ETag, GCS generation); "" for a local file.
    version: str = ""


@dataclass(frozen=True)
class BadFile:
    """An input file that cannot be scored, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Split:
    """Row groups ``row_groups`` of file ``path``; ``index`` names its output part."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    num_rows: int
    # The file as planned: reading checks it is still that file (None: not checked).
    size: int | None = None
    mtime_ns: int | None = None
    # Rows per Arrow batch chosen for this split (batch.engine.sizing; None: the job's).
    batch_rows: int | None = None


DATA_SUFFIXES = (".parquet", ".parq", ".pq")


@dataclass(frozen=True)
class IgnoredFile:
    """Something under the input root that looks like data but is not read, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class InputListing:
    """The data files of ``--input`` (each file once) and what looks like data but is not read."""

    files: list[Path]
    ignored: list[IgnoredFile] = field(default_factory=list)
    # Objects in a bucket (gs://, s3://), as URIs; ``files`` is then empty.
    uris: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[Path | str]:
        return [*self.files, *self.uris]


def _looks_like_data(name: str) -> bool:
    return name.lower().endswith(DATA_SUFFIXES)


def _is_data_name(name: str) -> bool:
    # Hidden and underscore names are metadata by the Hadoop/Spark convention (_SUCCESS,
    # .crc, _temporary/): never read, but listed when they look like data.
    return name.endswith(DATA_SUFFIXES) and not name.startswith(("_", "."))


def _ignored_reason(path: Path) -> str | None:
    """Why a data-looking file found in a folder is not read, or None if it is read."""
    name = path.name
    if not _looks_like_data(name):
        return None
    if not path.exists():
        return "a symbolic link whose target does not exist"
    if name.startswith(("_", ".")):
        return "its name starts with '_' or '.', which marks metadata (Hadoop/Spark convention)"
    if not name.endswith(DATA_SUFFIXES):
        suffix = name[name.rfind(".") :]
        return (
            f"its extension {suffix} is not one of {', '.join(DATA_SUFFIXES)} (they are "
            "case-sensitive); rename it to score it"
        )
    return None


def list_data_files(root: Path) -> InputListing:
    """Every data file under folder ``root`` (recursive, hive partitions included), sorted.

    The one place that decides what a folder of Parquet data holds:

    - Files are identified by their real path and each is listed once: a file reachable
      through two paths (a symlinked alias, a symlinked folder) is read once, under the
      path that has no symbolic link if there is one, else the first in sorted order.
    - Symlinked folders are followed (a partition ``dt=... -> elsewhere`` is read); a
      folder already visited (a loop such as ``loop -> .``) is not entered again.
    - Names ending ``.parquet``, ``.parq`` or ``.pq`` (lower case) are data. Names starting
      with ``_`` or ``.`` (files and folders: ``_SUCCESS``, ``_temporary/``, ``.crc``) are
      metadata. What looks like data but is not read (another extension case, hidden or
      underscore names, broken symbolic links) is returned in ``ignored`` with the reason,
      one entry per metadata folder.
    """
    chosen: dict[str, tuple[tuple[int, bool, str], Path]] = {}
    ignored: list[IgnoredFile] = []
    visited: set[str] = set()
    pending: list[Path] = [root]
    phase = 0
    # Phase 0 walks the real tree; each later phase walks the symlinked folders found in
    # the one before, so a file's path without links wins over an alias through a link.
    while pending:
        linked: list[Path] = []
        for top in sorted(pending):
            real_top = os.path.realpath(top)
            if real_top in visited:
                continue
            for folder, dirnames, filenames in os.walk(top, followlinks=False):
                real = os.path.realpath(folder)
                if real in visited:
                    dirnames.clear()
                    continue
                visited.add(real)
                here = Path(folder)
                for name in sorted(dirnames):
                    child = here / name
                    if name.startswith(("_", ".")):
                        hidden = _count_data_like(child)
                        if hidden:
                            ignored.append(
                                IgnoredFile(
                                    str(child),
                                    f"{hidden} Parquet file(s) in a folder whose name starts "
                                    "with '_' or '.', which marks metadata or unfinished "
                                    "output (Hadoop/Spark convention)",
                                )
                            )
                    elif child.is_symlink():
                        linked.append(child)
                dirnames[:] = [
                    d
                    for d in sorted(dirnames)
                    if not d.startswith(("_", ".")) and not (here / d).is_symlink()
                ]
                for name in sorted(filenames):
                    path = here / name
                    if _is_data_name(name) and path.is_file():
                        rank = (phase, path.is_symlink(), str(path))
                        key = os.path.realpath(path)
                        if key not in chosen or rank < chosen[key][0]:
                            chosen[key] = (rank, path)
                    else:
                        reason = _ignored_reason(path)
                        if reason is not None:
                            ignored.append(IgnoredFile(str(path), reason))
        pending = linked
        phase += 1
    files = sorted(path for _, path in chosen.values())
    return InputListing(files, sorted(ignored, key=lambda i: i.path))


def _count_data_like(folder: Path) -> int:
    if not folder.is_dir():
        return 1 if _looks_like_data(folder.name) else 0
    return sum(
        1
        for _, _, names in os.walk(folder, followlinks=False)
        for name in names
        if _looks_like_data(name)
    )


def scan_inputs(spec: str) -> InputListing:
    """What ``--input`` names: a Parquet file, a folder (see :func:`list_data_files`) or a
    glob (its files as matched, its folders listed like a folder). Each file is listed
    once, identified by its real path. ``gs://`` and ``s3://`` URIs name an object or a
    prefix (:func:`list_object_files`). Raises :class:`UsageError` if no file matches."""
    if storage.is_uri(spec):
        return list_object_files(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return InputListing([path])
    if path.is_dir():
        listing = list_data_files(path)
        if not listing.files:
            raise UsageError(
                f"--input={spec}: the directory holds no *.parquet files "
                "(searched recursively; names starting with '_' or '.' are ignored)"
                + _ignored_note(listing.ignored)
            )
        return listing
    # A `**` glob follows symlinked folders, loops included: duplicates are dropped below.
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
    found = [p for p in matches if p.is_file()]
    ignored: list[IgnoredFile] = []
    for directory in (p for p in matches if p.is_dir()):
        listing = list_data_files(directory)
        found.extend(listing.files)
        ignored.extend(listing.ignored)
    files = _once_each(found)
    if not files:
        raise UsageError(
            f"--input={spec}: no such file or directory, and no file matches it as a glob"
        )
    unique_ignored = {i.path: i for i in ignored}
    return InputListing(files, sorted(unique_ignored.values(), key=lambda i: i.path))


def list_object_files(uri: str) -> InputListing:
    """The data files of a bucket URI: the object itself, or every object under the
    prefix, by the rules of :func:`list_data_files` (names ending ``.parquet``, ``.parq``
    or ``.pq``; a name or folder starting with ``_`` or ``.`` is metadata)."""
    found = storage.info(uri)
    if found is not None and not found.is_dir:
        return _object_listing(uri, [found])
    return _object_listing(uri, storage.list_files(uri))


def _object_listing(uri: str, objects: Sequence[storage.ObjectInfo]) -> InputListing:
    prefix = uri.rstrip("/") + "/"
    files: list[str] = []
    ignored: list[IgnoredFile] = []
    for obj in objects:
        rel = obj.uri[len(prefix) :] if obj.uri.startswith(prefix) else storage.name(obj.uri)
        parts = rel.split("/")
        if _is_data_name(parts[-1]) and not any(p.startswith(("_", ".")) for p in parts[:-1]):
            files.append(obj.uri)
        elif _looks_like_data(parts[-1]):
            ignored.append(
                IgnoredFile(
                    obj.uri,
                    "its name or a folder above it starts with '_' or '.', which marks "
                    "metadata (Hadoop/Spark convention), or its extension's case differs",
                )
            )
    if not files:
        raise UsageError(
            f"--input={uri}: no *.parquet objects there (listed recursively; names starting "
            "with '_' or '.' are ignored). Check the bucket and prefix" + _ignored_note(ignored)
        )
    return InputListing([], ignored, uris=files)


def _once_each(paths: Sequence[Path]) -> list[Path]:
    """``paths`` without repeats of one real file; a path without symbolic links wins,
    else the shortest."""

    def rank(path: Path) -> tuple[bool, int, str]:
        linked = os.path.realpath(path) != os.path.abspath(path)
        return linked, len(path.parts), str(path)

    chosen: dict[str, Path] = {}
    for path in sorted(paths, key=rank):
        chosen.setdefault(os.path.realpath(path), path)
    return sorted(chosen.values())


def _ignored_note(ignored: Sequence[IgnoredFile]) -> str:
    if not ignored:
        return ""
    shown = "; ".join(f"{i.path}: {i.reason}" for i in ignored[:5])
    return f". Found but not read: {shown}"


def find_input_files(spec: str) -> list[Path]:
    """Files named by ``--input`` (see :func:`scan_inputs`), each once."""
    return scan_inputs(spec).files


def _file_state(path: Path | str) -> tuple[int, int]:
    """(size, modification time in ns) of a local file or a bucket object."""
    if storage.is_uri(path):
        found = storage.info(str(path))
        if found is None or found.is_dir:
            raise FileNotFoundError(2, "no such object", str(path))
        return found.size, found.mtime_ns
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def open_parquet(
    path: Path | str, encoded: Collection[str] = (), batch_rows: int = 0
) -> pq.ParquetFile:
    """A Parquet file on disk or in a bucket (read through batch.core.storage).

    The text columns named in ``encoded`` that every row group stores as a dictionary page
    and indices (:func:`_dictionary_only`) are read dictionary-encoded: a lookup in them
    then runs once per distinct value (batch.core.dictionaries). A column stored plain (a
    writer that keeps no dictionary, or one whose dictionary outgrew its page and wrote the
    rest plain) is read plain: encoding it would hash every value; so is a large_string
    column, which would come back as string. Each row group's dictionary ends a batch, so
    a file read in batches of ``batch_rows`` whose row groups hold on average fewer than
    half that many rows is read plain: its batches would shrink to the row groups."""
    bucket = storage.is_uri(path)
    source = storage.open_input(str(path)) if bucket else path
    parquet = pq.ParquetFile(source, pre_buffer=bucket)
    metadata = parquet.metadata
    small_groups = metadata.num_rows < metadata.num_row_groups * batch_rows // 2
    dictionaries = [] if small_groups else _dictionary_columns(metadata, encoded)
    if not dictionaries:
        return parquet
    return pq.ParquetFile(
        source, metadata=parquet.metadata, read_dictionary=dictionaries, pre_buffer=bucket
    )


def _dictionary_only(chunk: pq.ColumnChunkMetaData) -> bool:
    """Whether a column chunk holds a dictionary page and data pages of indices only, as
    its footer tells: the data pages' bytes (the chunk's uncompressed bytes less the
    dictionary page's compressed bytes, an upper bound) stay within what an index and its
    levels take a row. A writer whose dictionary outgrows its page limit (1 MiB in Arrow
    and parquet-mr) writes the chunk's later pages plain: values of several bytes each."""
    start = chunk.dictionary_page_offset
    if not chunk.has_dictionary_page or start is None or chunk.data_page_offset <= start:
        return False
    data_bytes = chunk.total_uncompressed_size - (chunk.data_page_offset - start)
    return data_bytes <= _INDEX_BYTES_PER_ROW * max(chunk.num_values, 1)


# At most 4 bytes of a bit-packed index a row (2^32 distinct values), plus the levels of a
# nullable column and page headers.
_INDEX_BYTES_PER_ROW = 6


def _dictionary_columns(metadata: pq.FileMetaData, names: Collection[str]) -> list[str]:
    """The columns of ``names`` stored as text, every row group as a dictionary page and
    indices. A large_string column is left out: read encoded, it would come back as
    string."""
    arrow = metadata.schema.to_arrow_schema()
    found = []
    for index in range(metadata.num_columns):
        name = metadata.schema.column(index).path
        if name not in names or arrow.get_field_index(name) < 0:
            continue
        kind = arrow.field(name).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if kind not in (pa.string(), pa.binary()):
            continue
        groups = range(metadata.num_row_groups)
        if all(_dictionary_only(metadata.row_group(g).column(index)) for g in groups):
            found.append(name)
    return found


def read_input_file(path: Path | str) -> InputFile:
    """Footer facts of one file; a file that is not readable Parquet fails naming it. An
    object in a bucket costs one request on S3 and two on GCS (:func:`_object_footer`)."""
    local = not storage.is_uri(path)
    size, mtime_ns = _file_state(path) if local else (0, 0)
    version = ""
    try:
        if local:
            metadata = open_parquet(path).metadata
        else:
            metadata, tail = _object_footer(str(path))
            size, mtime_ns, version = tail.size, tail.mtime_ns, tail.version
        schema = metadata.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(
            f"{path}: expected a Parquet file, but it cannot be read as one ({exc}). "
            "Remove or replace the file"
        ) from exc
    return InputFile(
        path=str(path),
        size=size,
        mtime_ns=mtime_ns,
        num_rows=metadata.num_rows,
        row_group_rows=tuple(
            metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)
        ),
        schema=decoded_schema(schema),
        null_counts=footer_null_counts(metadata),
        row_group_bytes=_row_group_bytes(metadata, schema),
        version=version,
    )


# The bytes at an object's end read for its footer (pyarrow's own first read): most
# footers fit, and a longer one costs one more request.
FOOTER_READ_BYTES = 64 * 1024
_FOOTER_END = 8  # the footer's length (4 bytes, little-endian) and the magic "PAR1"


def _object_footer(uri: str) -> tuple[pq.FileMetaData, storage.ObjectTail]:
    """The Parquet footer of a bucket object, parsed from its last bytes (one ranged read;
    a second for a footer longer than FOOTER_READ_BYTES), and the object's facts as that
    read returned them. Opening the object with pyarrow would look up its metadata first,
    and the version would be one more lookup: each a round trip per file."""
    tail = storage.read_tail(uri, FOOTER_READ_BYTES)
    data = tail.data
    if len(data) >= _FOOTER_END and data.endswith(b"PAR1"):
        needed = int.from_bytes(data[-_FOOTER_END:-4], "little") + _FOOTER_END
        if len(data) < needed <= tail.size:
            longer = storage.read_tail(uri, needed)
            if (longer.size, longer.version) != (tail.size, tail.version):
                raise InputDataError(
                    f"{uri}: the object was replaced while its footer was read; rerun once "
                    "its writer has finished"
                )
            data = longer.data
    return pq.ParquetFile(pa.BufferReader(data)).metadata, tail


def footer_null_counts(metadata: pq.FileMetaData) -> dict[str, int]:
    """Nulls per column from the footer statistics; a column that lacks them in any row
    group is left out (its count is unknown)."""
    counts: dict[str, int] = {}
    unknown: set[str] = set()
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            name = chunk.path_in_schema
            stats = chunk.statistics
            if stats is None or not stats.has_null_count:
                unknown.add(name)
            else:
                counts[name] = counts.get(name, 0) + stats.null_count
    return {name: count for name, count in counts.items() if name not in unknown}


def _leaf_count(arrow_type: pa.DataType) -> int:
    """How many Parquet leaf columns (column chunks) a field of ``arrow_type`` is stored as."""
    if pa.types.is_struct(arrow_type):
        return sum(_leaf_count(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_map(arrow_type):
        return _leaf_count(arrow_type.key_type) + _leaf_count(arrow_type.item_type)
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    ):
        return _leaf_count(arrow_type.value_type)
    return 1


def _row_group_bytes(metadata: pq.FileMetaData, schema: pa.Schema) -> tuple[dict[str, int], ...]:
    """Per row group, each top-level column's uncompressed bytes (its leaves summed)."""
    owners = [field.name for field in schema for _ in range(_leaf_count(field.type))]
    groups = []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        sizes: dict[str, int] = {}
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            name = (
                owners[index]
                if len(owners) == row_group.num_columns
                else chunk.path_in_schema.split(".")[0]
            )
            sizes[name] = sizes.get(name, 0) + chunk.total_uncompressed_size
        groups.append(sizes)
    return tuple(groups)


def inspect_inputs(paths: Sequence[Path | str]) -> tuple[list[InputFile], list[BadFile]]:
    """Read every footer; a file is bad if it is not readable Parquet, or if its columns
    differ from those of most of its siblings (a stray file from another dataset).

    Footers are read on a bounded thread pool (batch.core.parallel): each read is a
    round trip in a bucket, and one after another they were the driver's longest wait
    before any worker started. The result is the same, in the same order, as a serial
    pass."""
    found = map_io(_inspect_one, paths, name="footers")
    files = [item for item in found if isinstance(item, InputFile)]
    bad = [item for item in found if isinstance(item, BadFile)]
    if len(files) < 2:
        return files, bad
    columns = [_columns(f.schema) for f in files]
    shapes = Counter(columns)
    usual, count = shapes.most_common(1)[0]
    good = []
    for file, shape in zip(files, columns, strict=True):
        if shape == usual:
            good.append(file)
        else:
            bad.append(BadFile(file.path, _schema_difference(shape, usual, count)))
    return good, sorted(bad, key=lambda b: b.path)


def _inspect_one(path: Path | str) -> InputFile | BadFile:
    try:
        return read_input_file(path)
    except InputDataError as exc:
        return BadFile(str(path), str(exc).removeprefix(f"{path}: "))


def _columns(schema: pa.Schema) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((f.name, str(f.type)) for f in schema))


def _schema_difference(
    columns: tuple[tuple[str, str], ...], usual: tuple[tuple[str, str], ...], siblings: int
) -> str:
    mine, theirs = dict(columns), dict(usual)
    parts = [f"column '{n}' is missing" for n in theirs if n not in mine]
    parts += [f"column '{n}' is extra" for n in mine if n not in theirs]
    parts += [
        f"column '{n}' is {mine[n]}, not {theirs[n]}"
        for n in theirs
        if n in mine and mine[n] != theirs[n]
    ]
    return f"its schema differs from its {siblings} sibling file(s): " + "; ".join(parts)


def engine_split_rows(total_rows: int, splits_at_once: int | None) -> int:
    """Rows per split where ``--split_rows`` is not given: DEFAULT_SPLIT_ROWS, or for an
    engine that scores ``splits_at_once`` splits at a time (known before it starts) as
    many as give each of them about SPLITS_PER_SLOT splits; never fewer than the default
    (small inputs keep their parallelism) nor more than MAX_BATCH_ROWS."""
    if not splits_at_once or splits_at_once < 1:
        return DEFAULT_SPLIT_ROWS
    share = -(-total_rows // (splits_at_once * SPLITS_PER_SLOT))
    return min(MAX_BATCH_ROWS, max(DEFAULT_SPLIT_ROWS, share))


def plan_splits(files: Sequence[InputFile], split_rows: int = DEFAULT_SPLIT_ROWS) -> list[Split]:
    """Consecutive row groups of each file, about ``split_rows`` rows per split."""
    splits: list[Split] = []
    for file in files:
        group: list[int] = []
        rows = 0
        for index, group_rows in enumerate(file.row_group_rows):
            if group_rows == 0:
                continue
            if group and rows + group_rows > split_rows:
                splits.append(
                    Split(len(splits), file.path, tuple(group), rows, file.size, file.mtime_ns)
                )
                group, rows = [], 0
            group.append(index)
            rows += group_rows
        if group:
            splits.append(
                Split(len(splits), file.path, tuple(group), rows, file.size, file.mtime_ns)
            )
    return splits


def fingerprint(files: Sequence[InputFile]) -> str:
    """Identity of an input set: every file's path, size, mtime and row count, and for an
    object in a bucket its version (ETag, generation), which changes on every rewrite even
    within one second of modification time.

    Cheap (footers only) and changes whenever a file is rewritten, added or removed.
    Paths are made absolute: the same files are the same input from any working folder.
    """
    return records_sha256(
        (absolute(file.path), file.size, file.mtime_ns, file.num_rows)
        + ((file.version,) if file.version else ())
        for file in sorted(files, key=lambda f: absolute(f.path))
    )


def _input_root(spec: str) -> Path:
    """The folder (or file) ``--input`` reads from: a glob's part before its first wildcard."""
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        static: list[str] = []
        for part in Path(expanded).parts:
            if glob.has_magic(part):
                break
            static.append(part)
        return Path(*static) if static else Path(".")
    return Path(expanded)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_input_output_disjoint(input_spec: str, output_root: Path | str) -> None:
    """Refuse an output root inside the input (the next run would read its own predictions)
    and an input inside an output root (it would read runs this output commits). Compared by
    real paths, so symbolic links do not hide an overlap (bucket URIs by prefix). Raises
    :class:`UsageError`."""
    if storage.is_uri(input_spec) or storage.is_uri(str(output_root)):
        source, target = str(_input_root(input_spec)), str(output_root)
        if storage.is_uri(input_spec):
            source = input_spec.split("*", 1)[0].rstrip("/")
        source, target = source.rstrip("/") + "/", target.rstrip("/") + "/"
        if source.startswith(target) or target.startswith(source):
            raise UsageError(
                f"--output={output_root} and --input={input_spec} overlap: a run would read "
                "its own predictions, or the runs it commits, as input. Choose an output "
                "prefix outside the input"
            )
        return
    source = os.path.realpath(_input_root(input_spec))
    target = os.path.realpath(output_root)
    if _within(target, source):
        raise UsageError(
            f"--output={output_root} is inside --input={input_spec} (both reach {target}): a "
            "later run would read these predictions as input. Choose an output folder outside "
            "the input"
        )
    if _within(source, target):
        raise UsageError(
            f"--input={input_spec} is inside --output={output_root} (both reach {source}): "
            "batchscore would read the runs it commits there as input. Copy the data out of "
            "the output folder, or choose another --output"
        )


def check_split_unchanged(split: Split) -> None:
    """Fail naming the file if it is no longer the file the run planned (another size or
    modification time): rows rewritten mid-run would be scored from two versions."""
    if split.size is None and split.mtime_ns is None:
        return
    try:
        size, mtime_ns = _file_state(split.path)
    except OSError as exc:
        raise InputDataError(
            f"{split.path}: it was removed or became unreadable while the run was scoring "
            f"({exc.strerror or exc}); rerun once the input is complete"
        ) from exc
    if (size, mtime_ns) != (split.size, split.mtime_ns):
        raise InputDataError(
            f"{split.path}: the file changed while the run was scoring (planned with "
            f"{split.size} bytes, modified at {split.mtime_ns} ns; now {size} bytes, "
            f"{mtime_ns} ns); nothing is committed from a run whose input changes. "
            "Rerun once the writer has finished"
        )


def open_split(split: Split, encoded: Collection[str] = (), batch_rows: int = 0) -> pq.ParquetFile:
    """The split's file, opened after checking it is the file that was planned (``encoded``
    and ``batch_rows``: as :func:`open_parquet`)."""
    check_split_unchanged(split)
    return open_parquet(split.path, encoded, batch_rows)


def null_counts_from_data(file: InputFile, columns: Sequence[str]) -> dict[str, int | None]:
    """Nulls per column: the footer's count where the writer recorded statistics, else
    counted by reading just that column (None: it could not be read, so not checked)."""
    counts: dict[str, int | None] = {}
    for name in columns:
        if name in file.null_counts:
            counts[name] = file.null_counts[name]
        elif file.schema.get_field_index(name) >= 0:
            try:
                column = open_parquet(file.path).read(columns=[name]).column(name)
                counts[name] = column.null_count
            except (OSError, pa.ArrowException) as exc:
                log.warning(
                    "%s: column '%s' has no null count in its footer statistics and cannot "
                    "be read to count them (%s); whether it is entirely null was not checked",
                    file.path,
                    name,
                    " ".join(str(exc).split()),
                )
                counts[name] = None
    return counts


def complete_null_counts(file: InputFile, columns: Sequence[str]) -> dict[str, int]:
    """``file.null_counts`` completed for ``columns`` (see :func:`null_counts_from_data`)."""
    counted = null_counts_from_data(file, columns)
    return {
        **file.null_counts,
        **{name: count for name, count in counted.items() if count is not None},
    }
