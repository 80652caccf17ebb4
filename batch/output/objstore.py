"""The commit protocol for object stores (``gs://``, ``s3://``): no rename, no locks.

Layout of one output root in a bucket::

    OUTPUT/<model name>/<model version>/
        run=<run id>/
            predictions/part-NNNNN-<attempt>.parquet   written by a worker, in place
            rejected/part-NNNNN-<attempt>.parquet
            _attempts/part-NNNNN-<attempt>.json        written last by the attempt: its
                                                       files (rows, bytes, sha256), stats
            _LEASE                                     the driver's heartbeat while it lives
            _MANIFEST.json                             lists exactly the committed files
            _SUCCESS                                   written last: the run is committed
        _LATEST                                        newest committed run id, moved with
                                                       conditional writes

Every execution of a unit of work (a Beam split, a Spark task; retries and speculative
copies included) writes its parts under its own attempt name, so no two executions ever
write the same object. An attempt is complete once its ``_attempts/`` record exists;
the driver picks one complete attempt per unit (the first by name), writes the manifest
naming exactly those files, removes every other attempt's files and the scratch records,
and writes ``_SUCCESS``. Readers trust ``_MANIFEST.json`` (and ``_SUCCESS``), never a
listing. See docs/commit-protocol.md for the crash table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.core import storage
from batch.core.errors import CommitError
from batch.core.faults import COMMIT_CLEANED, COMMIT_MANIFEST, fault_point
from batch.core.parallel import map_io
from batch.observe.metrics import PartStats
from batch.output.commit import (
    COMMIT_WARNINGS,
    LATEST,
    PREDICTIONS,
    REJECTED,
    RUN_PREFIX,
    SUCCESS,
    CommittedRun,
    ObjectCommittedRun,
    check_counts,
)
from batch.output.manifest import MANIFEST, Manifest

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"
LEASE = "_LEASE"
LEASE_ENV = "BATCHSCORE_LEASE_SECONDS"
# A run whose lease was last renewed longer ago than this (by the store's clock) is dead.
DEFAULT_LEASE_S = 600.0
_POINTER_TRIES = 20


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)


def new_attempt_id() -> str:
    """Unique per execution of a unit of work: 12 random hex digits."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class ObjectRunLayout:
    """Where one run's objects go; every location is a URI."""

    output_root: str
    model_name: str
    model_version: str
    run_id: str

    @property
    def version_dir(self) -> str:
        return storage.join(self.output_root, self.model_name, self.model_version)

    @property
    def run_dir(self) -> str:
        return storage.join(self.version_dir, f"{RUN_PREFIX}{self.run_id}")

    @property
    def staging_dir(self) -> str:
        """Where workers write: the run's own prefix (nothing is moved at the commit)."""
        return self.run_dir

    def attempt_part(self, kind: str, part_index: int, attempt: str) -> str:
        return storage.join(self.run_dir, kind, f"part-{part_index:05d}-{attempt}.parquet")

    def attempt_record(self, part_index: int, attempt: str) -> str:
        return storage.join(self.run_dir, ATTEMPTS, f"part-{part_index:05d}-{attempt}.json")


class HashingSink:
    """A writable file for pyarrow that hashes what passes through it, so that a worker
    records its part's sha256 without reading the object back."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self.size += view.nbytes
        self._stream.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._stream.flush()

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self._stream.close()

    @property
    def closed(self) -> bool:
        return bool(self._stream.closed)

    def writable(self) -> bool:
        return True

    def sha256(self) -> str:
        return self._digest.hexdigest()


def write_attempt(
    layout: ObjectRunLayout,
    part_index: int,
    attempt: str,
    stats: PartStats,
    files: Sequence[Mapping[str, Any]],
) -> None:
    """Mark an attempt complete: its record names its files and carries its stats."""
    storage.write_json(
        layout.attempt_record(part_index, attempt),
        {"part": part_index, "attempt": attempt, "files": list(files), "stats": stats.to_json()},
    )


@dataclass
class ChosenAttempts:
    """One complete attempt per unit of work, and what the others left."""

    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    losers: list[str] = field(default_factory=list)

    def parts(self, kind: str) -> list[dict[str, Any]]:
        return sorted(
            (dict(f) for r in self.records.values() for f in r["files"] if f["kind"] == kind),
            key=lambda f: str(f["path"]),
        )

    def stats(self) -> PartStats:
        merged = PartStats()
        for index in sorted(self.records):
            merged.add(PartStats.from_json(self.records[index]["stats"]))
        return merged


def choose_attempts(layout: ObjectRunLayout) -> ChosenAttempts:
    """Per unit of work, the complete attempt whose name sorts first; every object under
    the run's part folders that no chosen attempt names is a loser (a retried or
    speculative execution, or one that died mid-write)."""
    chosen = ChosenAttempts()
    listed = storage.list_files(storage.join(layout.run_dir, ATTEMPTS))
    # One round trip a record: read on a bounded pool, chosen in the listing's order.
    for record in map_io(lambda obj: storage.read_json(obj.uri), listed, name="attempts"):
        index = int(record["part"])
        if index not in chosen.records:
            chosen.records[index] = record
    named = {
        storage.join(layout.run_dir, f["path"]) for r in chosen.records.values() for f in r["files"]
    }
    for kind in (PREDICTIONS, REJECTED):
        for obj in storage.list_files(storage.join(layout.run_dir, kind)):
            if obj.uri not in named:
                chosen.losers.append(obj.uri)
    return chosen


def _read_columns(run_dir: str, rel: str, columns: Sequence[str]) -> pa.Table:
    return pq.read_table(storage.open_input(storage.join(run_dir, rel)), columns=list(columns))


def commit_object_run(
    layout: ObjectRunLayout,
    manifest: dict[str, Any],
    rows_in: int,
    max_error_rate: float,
    chosen: ChosenAttempts,
) -> CommittedRun:
    """Reconcile the chosen attempts with ``rows_in``, check the error budget, then:
    write ``_MANIFEST.json``, remove the losers and the attempt records, write
    ``_SUCCESS`` (the commit point), advance ``_LATEST`` and drop the lease."""
    run_dir = layout.run_dir
    predictions = chosen.parts(PREDICTIONS)
    rejected = chosen.parts(REJECTED)
    parts = [*predictions, *rejected]
    stored = map_io(lambda part: storage.info(storage.join(run_dir, part["path"])), parts)
    for part, found in zip(parts, stored, strict=True):
        if found is None or found.size != part["bytes"]:
            raise CommitError(
                f"{storage.join(run_dir, part['path'])}: the attempt recorded {part['bytes']} "
                f"bytes, the store holds {'nothing' if found is None else found.size}; "
                "nothing was committed, rerun the job"
            )
        part.pop("kind", None)
    counts = check_counts(
        layout.run_id,
        predictions,
        rejected,
        rows_in,
        max_error_rate,
        manifest,
        lambda rel, columns: _read_columns(run_dir, rel, columns),
        run_dir,
    )
    storage.write_json(
        storage.join(run_dir, MANIFEST),
        Manifest.from_json(
            {
                **manifest,
                "run_id": layout.run_id,
                "counts": counts,
                "outputs": {PREDICTIONS: predictions, REJECTED: rejected},
                "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        ).to_json(),
    )
    fault_point(COMMIT_MANIFEST)
    records = [obj.uri for obj in storage.list_files(storage.join(run_dir, ATTEMPTS))]
    map_io(storage.delete, [*chosen.losers, *records], name="clean")
    fault_point(COMMIT_CLEANED)
    if storage.info(storage.join(run_dir, LEASE)) is None:
        raise CommitError(
            f"run {layout.run_id}: its lease {storage.join(run_dir, LEASE)} is gone: another "
            f"run took it for dead (this driver stalled for longer than the lease time, "
            f"{lease_seconds():g} s; {LEASE_ENV}) and removed its objects; nothing was "
            "committed. Rerun"
        )
    storage.write_bytes(storage.join(run_dir, SUCCESS), b"")
    warnings = tuple(w for w in [advance_latest(layout)] if w)
    if warnings:
        try:
            storage.write_json(storage.join(run_dir, COMMIT_WARNINGS), {"warnings": list(warnings)})
        except storage.StorageError as exc:
            log.warning("%s", exc)
    return ObjectCommittedRun(
        run_dir, layout.run_id, layout.model_name, layout.model_version, warnings
    )


def advance_latest(layout: ObjectRunLayout) -> str | None:
    """Point ``_LATEST`` at this run if it is the newest, with conditional writes (S3
    If-None-Match / If-Match, GCS generation preconditions): read the pointer and its
    version, write only if it is unchanged, read again when another writer got there
    first. Runs after the commit point, so it never raises: a failure is a warning."""
    pointer = storage.join(layout.version_dir, LATEST)
    try:
        for _ in range(_POINTER_TRIES):
            current = storage.read_versioned(pointer)
            token = None if current is None else current[1]
            named = _pointer_run_id(current[0]) if current is not None else ""
            target = layout.run_id
            if named is None:  # unreadable: rebuilt from the newest committed run
                log.warning("%s: unreadable; rebuilding it from the committed runs", pointer)
                newest = newest_committed(layout.version_dir)
                target = max(target, newest or "")
                named = ""
            if named >= target:
                return None
            payload = {"run_id": target, "run_dir": f"{RUN_PREFIX}{target}"}
            try:
                storage.put_if(pointer, (_json(payload)).encode(), token)
                return None
            except storage.PreconditionFailed:
                continue
        raise storage.StorageError(
            f"{pointer}: lost {_POINTER_TRIES} conditional writes in a row to other runs"
        )
    except storage.StorageError as exc:
        warning = (
            f"run {layout.run_id} is committed, but {pointer} could not be advanced to it "
            f"({exc}); readers that follow {LATEST} see an older run. The next run rebuilds it"
        )
        log.warning("%s", warning)
        return warning


def _json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True) + "\n"


def _pointer_run_id(data: bytes) -> str | None:
    try:
        value = json.loads(data).get("run_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _runs(version_dir: str) -> dict[str, list[storage.ObjectInfo]]:
    """Objects of every run folder under ``version_dir``, by run id."""
    runs: dict[str, list[storage.ObjectInfo]] = defaultdict(list)
    prefix = version_dir.rstrip("/") + "/"
    for obj in storage.list_files(version_dir):
        top = obj.uri[len(prefix) :].split("/", 1)[0]
        if top.startswith(RUN_PREFIX) and "/" in obj.uri[len(prefix) :]:
            runs[top.removeprefix(RUN_PREFIX)].append(obj)
    return runs


def newest_committed(version_dir: str) -> str | None:
    """The id of the newest committed run of this model version (run ids sort by time)."""
    runs = _runs(version_dir)
    return max(
        (r for r, objects in runs.items() if _committed(version_dir, r, objects)), default=None
    )


def _committed(version_dir: str, run_id: str, objects: Sequence[storage.ObjectInfo]) -> bool:
    marker = storage.join(version_dir, f"{RUN_PREFIX}{run_id}", SUCCESS)
    return any(o.uri == marker for o in objects)


class RunLease:
    """Marks a run as live in the store: ``run=<id>/_LEASE``, rewritten every third of
    the lease time by a thread of the driver. A run without ``_SUCCESS`` whose lease is
    older than the lease time (by the store's clock: the age is measured against this
    run's own freshly written lease) or missing belongs to a dead job; entering the lease
    removes such runs' objects, never a live run's."""

    def __init__(self, layout: ObjectRunLayout) -> None:
        self.layout = layout
        self.uri = storage.join(layout.run_dir, LEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cleaned: list[str] = []

    def _renew(self) -> None:
        storage.write_json(
            self.uri,
            {"pid": os.getpid(), "host": socket.gethostname(), "renewed": time.time()},
        )

    def __enter__(self) -> RunLease:
        try:
            self._renew()
        except storage.StorageError as exc:
            raise CommitError(
                f"{self.layout.version_dir}: cannot stage a run there ({exc}); nothing was "
                "committed. Check the bucket and that you may write to it, and rerun"
            ) from exc
        self.cleaned = clean_stale_object_runs(self.layout.version_dir, self.layout.run_id)
        self._thread = threading.Thread(target=self._keep_alive, daemon=True, name="lease")
        self._thread.start()
        return self

    def _keep_alive(self) -> None:
        while not self._stop.wait(lease_seconds() / 3):
            try:
                self._renew()
            except storage.StorageError as exc:
                log.warning("cannot renew the run lease: %s", exc)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # Committed: the lease is a leftover. Failed: without it the run is an orphan that
        # the next run of this model version removes (kept for inspection until then).
        try:
            storage.delete(self.uri)
        except storage.StorageError as error:
            log.warning("%s", error)


def clean_stale_object_runs(version_dir: str, own_run_id: str) -> list[str]:
    """Remove the objects of runs without ``_SUCCESS`` whose lease expired or is gone,
    and leases left in committed runs. Returns the run ids removed."""
    runs = _runs(version_dir)
    own = runs.get(own_run_id, [])
    now = max((o.mtime_ns for o in own if storage.name(o.uri) == LEASE), default=0)
    if not now:
        found = storage.info(storage.join(version_dir, f"{RUN_PREFIX}{own_run_id}", LEASE))
        now = found.mtime_ns if found else time.time_ns()
    limit_ns = int(lease_seconds() * 1e9)
    removed = []
    for run_id, objects in sorted(runs.items()):
        if run_id == own_run_id:
            continue
        lease = storage.join(version_dir, f"{RUN_PREFIX}{run_id}", LEASE)
        leases = [o for o in objects if o.uri == lease]
        if _committed(version_dir, run_id, objects):
            if leases and now - leases[0].mtime_ns > limit_ns:
                storage.delete(lease)
            continue
        if leases and now - leases[0].mtime_ns <= limit_ns:
            continue  # a live run
        # The lease goes last, so that a cleaner that dies midway leaves a run that the
        # next cleaner still sees as dead.
        for obj in sorted(objects, key=lambda o: o.uri == lease):
            storage.delete(obj.uri)
        removed.append(run_id)
    return removed


def list_committed_object_runs(output_root: str) -> list[CommittedRun]:
    """Every committed run under ``output_root`` (a bucket URI), oldest first within each
    model version."""
    runs: list[CommittedRun] = []
    prefix = output_root.rstrip("/") + "/"
    for obj in storage.list_files(output_root):
        parts = obj.uri[len(prefix) :].split("/")
        if len(parts) == 4 and parts[2].startswith(RUN_PREFIX) and parts[3] == SUCCESS:
            run_dir = storage.parent(obj.uri)
            runs.append(
                ObjectCommittedRun(
                    run_dir=run_dir,
                    run_id=parts[2].removeprefix(RUN_PREFIX),
                    model_name=parts[0],
                    model_version=parts[1],
                )
            )
    return runs


def object_sha256(uri: str) -> str:
    digest = hashlib.sha256()
    with storage.open_input(uri) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def iter_run_parquet(run_dir: str) -> Iterator[str]:
    """Relative paths of the Parquet objects of a run folder."""
    prefix = run_dir.rstrip("/") + "/"
    for obj in storage.list_files(run_dir):
        if obj.uri.endswith(".parquet"):
            yield obj.uri[len(prefix) :]
