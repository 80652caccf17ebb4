"""Versioned, immutable run outputs: the layout, staging writes and the commit.

Layout of one output root::

    OUTPUT/<model name>/<model version>/
        run=<run id>/                  a committed run (has _SUCCESS)
            predictions/part-NNNNN.parquet
            rejected/part-NNNNN.parquet    dead-letter rows, with reason and message
            _MANIFEST.json
            _SUCCESS                   written last: the run is committed
        _LATEST                        the newest committed run id of this version
        _staging/run=<run id>/         a run being written; never read by anyone

Parts are named after their input split, and each is written to a temporary
name and renamed, so a split scored twice (a retried bundle or task) replaces
its own part and never adds a second copy of its rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import secrets
import shutil
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.core import storage
from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.core.dictionaries import decode_dictionaries, decoded_schema
from batch.core.errors import CommitError, ErrorBudgetExceeded
from batch.core.faults import COMMIT_MANIFEST, COMMIT_MOVED, PART_WRITTEN, fault_point
from batch.core.fsutil import file_sha256, locked, read_json, write_json_atomic
from batch.core.parallel import map_io
from batch.observe.checks import error_rate, over_error_budget
from batch.observe.metrics import ATTEMPTS_FOLDER, PROGRESS_FOLDER, STATS_FOLDER
from batch.output.manifest import MANIFEST, Manifest, OutputPart, read_manifest

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
REJECTED = "rejected"
SUCCESS = "_SUCCESS"
LATEST = "_LATEST"
# Beside the manifest (which is final once written): what went wrong after the commit.
COMMIT_WARNINGS = "_WARNINGS.json"
STAGING = "_staging"
RUN_PREFIX = "run="


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable by start time (to the microsecond), unique across concurrent jobs:
    ``20261126T081500.123456Z-3fa2c1``."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunLayout:
    output_root: Path
    model_name: str
    model_version: str
    run_id: str

    @property
    def version_dir(self) -> Path:
        return self.output_root / self.model_name / self.model_version

    @property
    def staging_dir(self) -> Path:
        return self.version_dir / STAGING / f"{RUN_PREFIX}{self.run_id}"

    @property
    def run_dir(self) -> Path:
        return self.version_dir / f"{RUN_PREFIX}{self.run_id}"

    def staged_part(self, kind: str, split_index: int) -> Path:
        return self.staging_dir / kind / f"part-{split_index:05d}.parquet"


def _is_text_dictionary(arrow_type: pa.DataType) -> bool:
    return pa.types.is_dictionary(arrow_type) and pa.types.is_string(arrow_type.value_type)


def _parquet_keeps(field: pa.Field) -> bool:
    """Whether a Parquet column of ``field`` reads back as ``field`` without Arrow's
    schema stored in the file: types that Parquet's own logical types name exactly (not,
    e.g., a timestamp's time zone, large_string or a field's metadata)."""
    t = field.type
    return not field.metadata and (
        pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_float32(t)
        or pa.types.is_float64(t)
        or pa.types.is_date32(t)
        or pa.types.is_decimal128(t)
    )


class PartWriter:
    """Writes record batches to one Parquet part; the part appears only when complete."""

    def __init__(
        self,
        path: Path | str,
        schema: pa.Schema,
        *,
        create_empty: bool,
        dictionary_columns: Sequence[str] | bool = True,
    ) -> None:
        self.path: Path | str = path
        self.schema = schema
        self.create_empty = create_empty
        # Text columns that come dictionary-encoded (the constant columns the scorer adds)
        # are written as their dictionary and indices, without hashing each row's value.
        # Read back they are strings as long as Arrow's own schema is not stored in the
        # file (it would make them dictionaries again): it is left out where every other
        # column comes back as written without it; otherwise they are decoded first.
        encoded = [f.name for f in schema if _is_text_dictionary(f.type)]
        self._store_schema = not encoded or not all(
            _parquet_keeps(f) for f in schema if f.name not in encoded
        )
        self._decode = bool(encoded) and self._store_schema
        # Dictionary-encoding unique values (scores, keys) costs time for no gain;
        # callers name the low-cardinality columns where it pays.
        self.dictionary_columns = (
            dictionary_columns if isinstance(dictionary_columns, bool) else list(dictionary_columns)
        )
        self.rows = 0
        # In a bucket (a URI) the part is written in place under a name no other attempt
        # uses (batch.output.objstore): an upload becomes visible only once complete.
        self.remote = storage.is_uri(path)
        self._tmp: Path | str = (
            path
            if isinstance(path, str)
            else path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        )
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None

    def describe(self) -> dict[str, Any]:
        """What an attempt record says of a part written to a bucket (sha256 hashed as
        the bytes went out)."""
        return {"rows": self.rows, "bytes": self._sink.size, "sha256": self._sink.sha256()}

    @property
    def written(self) -> bool:
        return self._writer is not None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """An OS error while writing (disk full, no permission, a quota) as one line
        naming the part, instead of an error from deep inside Arrow."""
        try:
            yield
        except OSError as exc:
            folder = storage.parent(str(self.path))
            raise CommitError(
                f"{self.path}: cannot write this output part ({exc.strerror or exc}); nothing "
                f"was committed. Free space in, or fix the permissions of, {folder} "
                "and rerun"
            ) from exc

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            with self._writing():
                if isinstance(self.path, str):
                    from batch.output.objstore import HashingSink

                    fs, fs_path = storage.filesystem(self.path)
                    self._sink = HashingSink(fs.open_output_stream(fs_path))
                    where: Any = self._sink
                else:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    where = self._tmp
                self._writer = pq.ParquetWriter(
                    where,
                    decoded_schema(self.schema) if self._decode else self.schema,
                    compression="snappy",
                    use_dictionary=self.dictionary_columns,
                    store_schema=self._store_schema,
                )
        return self._writer

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            writer = self._open()
            with self._writing():
                writer.write_batch(decode_dictionaries(batch) if self._decode else batch)
            self.rows += batch.num_rows

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is None and self.create_empty and exc_type is None:
            self._open()
        if self._writer is None:
            return
        if exc_type is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._discard()
            return
        try:
            with self._writing():
                self._writer.close()
                if isinstance(self.path, str):
                    self._sink.close()
                    return
                fault_point(PART_WRITTEN)
                os.replace(self._tmp, self.path)
        except CommitError:
            self._discard()
            raise

    def _discard(self) -> None:
        if isinstance(self._tmp, str):
            with contextlib.suppress(OSError, storage.StorageError):
                if self._sink is not None and not self._sink.closed:
                    self._sink.close()
                storage.delete(self._tmp)
        else:
            self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class CommittedRun:
    run_dir: Path
    run_id: str
    model_name: str
    model_version: str
    # What went wrong after the commit point (e.g. _LATEST not advanced); the run stands.
    warnings: tuple[str, ...] = ()

    def manifest(self) -> Manifest:
        return read_manifest(self.run_dir)


@dataclass(frozen=True)
class ObjectCommittedRun(CommittedRun):
    """A committed run in a bucket (batch.output.objstore): ``run_dir`` is its URI, kept a
    string (``Path`` would fold ``gs://`` into ``gs:/``); ``str()`` of either kind names
    the run."""

    run_dir: str  # type: ignore[assignment]


def _describe_parts(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Each part's entry in the manifest (path, rows, bytes, sha256), sorted by path.

    The parts are read and hashed on a bounded thread pool (batch.core.parallel):
    ``hashlib`` and pyarrow release the GIL, so the commit hashes on every core instead
    of one, and the entries are the same, in the same order, as a serial pass."""

    def describe(path: Path) -> dict[str, Any]:
        return {
            "path": path.relative_to(run_dir).as_posix(),
            "rows": pq.read_metadata(path).num_rows,
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }

    return map_io(describe, sorted((run_dir / kind).glob("part-*.parquet")), name="hash-parts")


def count_reasons(rejected: Iterable[pa.RecordBatch | pa.Table]) -> Counter[str]:
    """Rows of ``rejected`` (batches or tables with a reason column) by reject reason."""
    counts: Counter[str] = Counter()
    for rows in rejected:
        if rows.num_rows:
            counted = pc.value_counts(rows.column(REASON_COLUMN))
            counts.update(
                dict(
                    zip(
                        counted.field("values").to_pylist(),
                        counted.field("counts").to_pylist(),
                        strict=True,
                    )
                )
            )
    return counts


PartReader = Callable[[str, Sequence[str]], pa.Table]
"""Reads columns of a part, given its path relative to the run folder."""


def _reject_reasons(read: PartReader, parts: list[dict[str, Any]]) -> dict[str, int]:
    counts = count_reasons(read(part["path"], [REASON_COLUMN]) for part in parts)
    return dict(sorted(counts.items()))


def _example_rejects(
    read: PartReader, parts: list[dict[str, Any]], key_columns: Sequence[str], limit: int = 3
) -> str:
    examples: list[str] = []
    for part in parts:
        table = read(part["path"], [*key_columns, MESSAGE_COLUMN])
        for row in table.slice(0, limit - len(examples)).to_pylist():
            keys = ", ".join(f"{k}={row[k]}" for k in key_columns)
            examples.append(f"[{keys}] {row[MESSAGE_COLUMN]}")
        if len(examples) >= limit:
            break
    return "; ".join(examples)


def commit_run(
    layout: RunLayout, manifest: dict[str, Any], rows_in: int, max_error_rate: float
) -> CommittedRun:
    """Reconcile the staged parts with ``rows_in``, check the error budget, and make the
    run visible.

    Order: reconcile, check the budget, rename the staging folder into place,
    write the manifest, write ``_SUCCESS`` (the commit point), then move the
    ``_LATEST`` pointer. A crash before ``_SUCCESS`` leaves a folder that no
    reader treats as a run.
    """
    staging = layout.staging_dir
    predictions = _describe_parts(staging, PREDICTIONS)
    rejected = _describe_parts(staging, REJECTED)

    def read(rel: str, columns: Sequence[str]) -> pa.Table:
        return pq.read_table(staging / rel, columns=list(columns))

    counts = check_counts(
        layout.run_id, predictions, rejected, rows_in, max_error_rate, manifest, read, staging
    )
    # The parts' stats and progress files are merged into the manifest by now.
    for scratch in (STATS_FOLDER, PROGRESS_FOLDER, ATTEMPTS_FOLDER):
        shutil.rmtree(staging / scratch, ignore_errors=True)
    return _move_and_mark(layout, manifest, counts, predictions, rejected)


def check_counts(
    run_id: str,
    predictions: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    rows_in: int,
    max_error_rate: float,
    manifest: dict[str, Any],
    read: PartReader,
    staging: Path | str,
) -> dict[str, Any]:
    """Reconcile the parts' rows with ``rows_in`` and check the error budget (both
    protocols); the manifest's counts, or an error that commits nothing."""
    rows_scored = sum(p["rows"] for p in predictions)
    rows_rejected = sum(p["rows"] for p in rejected)
    rejected_dir = storage.join(str(staging), REJECTED)
    if rows_scored + rows_rejected != rows_in:
        raise CommitError(
            f"run {run_id}: {rows_in} rows were read but {rows_scored} scored + "
            f"{rows_rejected} rejected = {rows_scored + rows_rejected} were written; "
            f"nothing was committed (staged files kept in {staging} for inspection)"
        )
    counts = {
        "rows_in": rows_in,
        "rows_scored": rows_scored,
        "rows_rejected": rows_rejected,
        "rejected_by_reason": _reject_reasons(read, rejected),
        "error_rate": error_rate(rows_rejected, rows_in),
        "max_error_rate": max_error_rate,
    }
    if over_error_budget(counts["error_rate"], max_error_rate):
        by_reason = ", ".join(f"{k}: {v:,}" for k, v in counts["rejected_by_reason"].items())
        examples = _example_rejects(read, rejected, manifest.get("key_columns", []))
        raise ErrorBudgetExceeded(
            f"run {run_id}: {rows_rejected:,} of {rows_in:,} rows rejected "
            f"({counts['error_rate']:.3%}), above --max_error_rate={max_error_rate:g}; "
            f"nothing was committed. By reason: {by_reason}. Examples: {examples}. "
            f"The rejected rows are in {rejected_dir} for inspection; fix the data "
            "or raise --max_error_rate"
        )
    return counts


def _move_and_mark(
    layout: RunLayout,
    manifest: dict[str, Any],
    counts: dict[str, Any],
    predictions: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
) -> CommittedRun:
    staging = layout.staging_dir
    final = layout.run_dir
    if final.exists():
        raise CommitError(
            f"run {layout.run_id}: {final} already exists; a run is never overwritten"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    fault_point(COMMIT_MOVED)
    Manifest.from_json(
        {
            **manifest,
            "run_id": layout.run_id,
            "counts": counts,
            "outputs": {PREDICTIONS: predictions, REJECTED: rejected},
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    ).write(final)
    fault_point(COMMIT_MANIFEST)
    (final / SUCCESS).touch()
    # The commit point is behind us: nothing may turn the run into a failure now.
    warnings = tuple(w for w in [_advance_latest(layout)] if w)
    if warnings:
        with contextlib.suppress(OSError):
            write_json_atomic(final / COMMIT_WARNINGS, {"warnings": list(warnings)})
    return CommittedRun(final, layout.run_id, layout.model_name, layout.model_version, warnings)


def _advance_latest(layout: RunLayout) -> str | None:
    """Point ``_LATEST`` at this run if it is the newest; serialized across processes.

    A pointer that cannot be read (garbage, a folder) is rebuilt from the committed runs.
    Runs after the commit point, so it never raises: a pointer that cannot be written is
    returned as a warning (the run stays committed; readers can list the runs).
    """
    pointer = layout.version_dir / LATEST
    lock = layout.version_dir / f"{LATEST}.lock"
    try:
        with locked(lock):
            current = _pointer_run_id(pointer)
            if current is None:  # missing or unreadable: the newest committed run wins
                log.warning("%s: unreadable; rebuilding it from the committed runs", pointer)
                current = ""
                newest = _newest_committed(layout.version_dir)
                if newest is not None and newest.name > layout.run_dir.name:
                    write_json_atomic(pointer, _pointer(newest))
                    return None
            if layout.run_id > current:
                write_json_atomic(pointer, _pointer(layout.run_dir))
    except OSError as exc:
        warning = (
            f"run {layout.run_id} is committed, but {pointer} could not be advanced to it "
            f"({exc.strerror or exc}: {exc.filename or pointer}); readers that follow "
            f"{LATEST} see an older run. Fix the permissions or remove {pointer} (and "
            f"{lock}); the next run rebuilds it"
        )
        log.warning("%s", warning)
        return warning
    return None


def _pointer(run_dir: Path) -> dict[str, str]:
    return {"run_id": run_dir.name.removeprefix(RUN_PREFIX), "run_dir": run_dir.name}


def _pointer_run_id(pointer: Path) -> str | None:
    """The run id ``_LATEST`` names; "" when there is none yet, None when unreadable."""
    if not pointer.exists() and not pointer.is_symlink():
        return ""
    try:
        value = read_json(pointer).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _newest_committed(version_dir: Path) -> Path | None:
    """The folder of the newest committed run of this model version (run ids sort by time)."""
    committed = [marker.parent for marker in version_dir.glob(f"{RUN_PREFIX}*/{SUCCESS}")]
    return max(committed, key=lambda run_dir: run_dir.name, default=None)


class RunLock:
    """Marks a run as live from its first staged byte until it is committed.

    The driver holds an exclusive ``flock`` on ``_staging/run=<id>.lock``; the
    kernel drops it the moment the process dies, however it dies. A run folder
    (staged or moved into place) without ``_SUCCESS`` whose lock nobody holds
    belongs to a dead job and may be removed.
    """

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout
        self.path = _lock_path(layout.version_dir, layout.run_id)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        """Take the lock, then make the run's staging folder."""
        version_dir = self.layout.version_dir
        try:
            self._lock()
            self.layout.staging_dir.mkdir(parents=True)
        except OSError as exc:
            self.__exit__(None, None, None)
            raise CommitError(
                f"{version_dir}: cannot stage a run there ({exc.strerror or exc}: "
                f"{exc.filename or version_dir}); nothing was committed. Make it a folder "
                "you can write (or choose another --output) and rerun"
            ) from exc
        return self

    def _lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A cleaner may have unlinked the file between open and flock; a lock
            # on an unlinked inode protects nothing, so take it again.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        os.write(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode())
        self._fd = fd

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):  # only if no other run is staged
                self.path.parent.rmdir()


def _lock_path(version_dir: Path, run_id: str) -> Path:
    return version_dir / STAGING / f"{RUN_PREFIX}{run_id}.lock"


def _owner_alive(lock: Path) -> bool:
    """Whether a live process holds ``lock``. A lock this user cannot open (another
    user's, 0600) counts as held: what cannot be checked is never removed, and it blocks
    nothing but itself."""
    try:
        fd = os.open(lock, os.O_RDONLY)  # flock needs no write access
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("%s: cannot check this run lock (%s); leaving its run alone", lock, exc)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale_runs(version_dir: Path) -> list[str]:
    """Remove what dead jobs left under ``version_dir``: staged runs and runs moved into
    place but never committed (no ``_SUCCESS``). A run whose driver still holds its
    lock is never touched. Returns the run ids removed."""
    removed = []
    candidates = [(p, p.name) for p in (version_dir / STAGING).glob(f"{RUN_PREFIX}*") if p.is_dir()]
    candidates += [
        (p, p.name)
        for p in version_dir.glob(f"{RUN_PREFIX}*")
        if p.is_dir() and not (p / SUCCESS).exists()
    ]
    for folder, name in candidates:
        run_id = name.removeprefix(RUN_PREFIX)
        lock = _lock_path(version_dir, run_id)
        if _owner_alive(lock):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        removed.append(run_id)
    # Locks of runs that committed but died before removing their lock.
    for lock in (version_dir / STAGING).glob(f"{RUN_PREFIX}*.lock"):
        run_id = lock.name.removeprefix(RUN_PREFIX).removesuffix(".lock")
        staged = version_dir / STAGING / f"{RUN_PREFIX}{run_id}"
        if not staged.exists() and not _owner_alive(lock):
            lock.unlink(missing_ok=True)
    return sorted(set(removed))


def list_committed_runs(output_root: Path | str) -> list[CommittedRun]:
    """Every committed run under ``output_root``, oldest first within each model version."""
    if storage.is_uri(output_root):
        from batch.output.objstore import list_committed_object_runs

        return list_committed_object_runs(str(output_root))
    root = Path(output_root)
    runs = []
    for marker in sorted(root.glob(f"*/*/{RUN_PREFIX}*/{SUCCESS}")):
        run_dir = marker.parent
        runs.append(
            CommittedRun(
                run_dir=run_dir,
                run_id=run_dir.name.removeprefix(RUN_PREFIX),
                model_name=run_dir.parent.parent.name,
                model_version=run_dir.parent.name,
            )
        )
    return runs


class _RunFiles:
    """The files of a run folder on disk or in a bucket, as :func:`verify_run` reads them."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = run_dir
        self.remote = storage.is_uri(run_dir)

    def size(self, rel: str) -> int | None:
        if self.remote:
            found = storage.info(storage.join(str(self.run_dir), rel))
            return None if found is None or found.is_dir else found.size
        path = Path(self.run_dir) / rel
        return path.stat().st_size if path.is_file() else None

    def sha256(self, rel: str) -> str:
        if self.remote:
            from batch.output.objstore import object_sha256

            return object_sha256(storage.join(str(self.run_dir), rel))
        return file_sha256(Path(self.run_dir) / rel)

    def rows(self, rel: str) -> int:
        if self.remote:
            source = storage.open_input(storage.join(str(self.run_dir), rel))
            return int(pq.ParquetFile(source).metadata.num_rows)
        return int(pq.read_metadata(Path(self.run_dir) / rel).num_rows)

    def parquet(self) -> set[str]:
        if self.remote:
            from batch.output.objstore import iter_run_parquet

            return set(iter_run_parquet(str(self.run_dir)))
        root = Path(self.run_dir)
        return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet")}


def verify_run(run_dir: Path | str) -> list[str]:
    """Every way ``run_dir`` (a folder, or a run's URI in a bucket) differs from its
    manifest; empty when it matches."""
    files = _RunFiles(run_dir)
    if files.size(MANIFEST) is None:
        return [f"no {MANIFEST}: not a committed run (or not a run folder)"]
    problems = []
    if files.size(SUCCESS) is None:
        problems.append(f"no {SUCCESS}: the run was never committed")
    try:
        manifest = read_manifest(run_dir)
    except CommitError as exc:
        return [*problems, str(exc)]
    listed = {}
    for kind in (PREDICTIONS, REJECTED):
        for part in manifest.outputs.get(kind, []):
            listed[part.path] = part
    present = files.parquet()
    for extra in sorted(present - listed.keys()):
        problems.append(f"{extra}: present but not in the manifest")

    def check_part(entry: tuple[str, OutputPart]) -> list[str]:
        rel, part = entry
        size = files.size(rel)
        if size is None:
            return [f"{rel}: listed in the manifest but missing"]
        found = [f"{rel}: {size} bytes, manifest says {part.bytes}"] if size != part.bytes else []
        digest = files.sha256(rel)
        if digest != part.sha256:
            return [*found, f"{rel}: sha256 {digest[:16]}..., manifest says {part.sha256[:16]}..."]
        rows = files.rows(rel)
        return (
            [*found, f"{rel}: {rows} rows, manifest says {part.rows}"]
            if rows != part.rows
            else found
        )

    # Every part hashed on a bounded thread pool, the problems in the order of the parts.
    for part_problems in map_io(check_part, sorted(listed.items()), name="verify-parts"):
        problems += part_problems
    counts = manifest.counts
    for kind, key in ((PREDICTIONS, "rows_scored"), (REJECTED, "rows_rejected")):
        total = sum(p.rows for p in manifest.outputs.get(kind, []))
        if total != getattr(counts, key):
            problems.append(
                f"counts.{key} = {getattr(counts, key)}, but its files hold {total} rows"
            )
    if counts.rows_in != counts.rows_scored + counts.rows_rejected:
        problems.append("counts do not reconcile: rows_in != rows_scored + rows_rejected")
    inputs = manifest.input.get("files")
    if isinstance(inputs, list):
        read = sum(int(f.get("rows", 0)) for f in inputs if isinstance(f, dict))
        if read != counts.rows_in:
            problems.append(
                f"counts.rows_in = {counts.rows_in}, but the input files the manifest lists "
                f"hold {read} rows"
            )
    return problems
