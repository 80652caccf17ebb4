"""Run metrics with fixed names, counted per part and merged by the driver.

Every unit of work (a split on Beam, a task's partition on Spark) counts what
it did in a :class:`PartStats` and writes it, when the part is done, as
``_staging/run=<id>/_stats/part-NNNNN.json`` (atomic rename), exactly like its
Parquet parts: a retried bundle or task replaces its own file, so nothing is
counted twice. The driver merges the files into the manifest's ``metrics``
(:func:`merge_part_stats`, :func:`metrics_section`). Engine metrics (Beam
counters, Spark accumulators) are only for live visibility.

While a part runs, it also writes ``_progress/part-NNNNN.json`` (rows done)
about once a second, which the driver's progress display reads
(batch/observe/progress.py).

Metric names (manifest ``metrics`` keys; Prometheus names in batch/observe/prometheus.py):

    rows_read               input rows the parts read
    rows_scored             rows written to predictions/
    rows_rejected           rows written to rejected/
    rejected_by_reason      rows_rejected by reject reason
    batches                 record batches validated and scored
    batch_latency_seconds   per batch, validate + score: fixed-bucket histogram
    model_load_seconds      the slowest model load of any worker process
    model_loads             worker processes that loaded the model
    scoring_seconds         sum over parts of the time from a part's start to its end
    wall_seconds            the whole job, process start to commit
    predictions_per_second  rows_scored / wall_seconds
    timeline                (t, rows done) samples of the progress display

Also counted per part, reported in the manifest's ``batching`` section:

    out_of_memory_retries           model calls that ran out of memory, retried on halves
    batch_rows_after_out_of_memory  part -> the rows a call held for the rest of that part
    intake_waits                    times a part's reader waited near the memory budget
    intake_wait_seconds             how long they waited in all
    peak_rss_bytes                  the largest RSS a part's worker process was seen at
    worker_budget_bytes             the smallest memory budget a part's worker planned with

And in the manifest's ``model.serving.per_value`` (batch.model.distinct):

    per_value_ops                   string input -> its ops run once per distinct value
    per_value_parts                 parts whose worker ran them so (to the part's end)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch.core.fsutil import read_json, write_json_atomic
from batch.observe.drift import DriftCounts

STATS_FOLDER = "_stats"
PROGRESS_FOLDER = "_progress"
# One empty marker per execution of a part (batch.engine.job.score_split): a part that
# finds markers of earlier executions runs again after its worker died.
ATTEMPTS_FOLDER = "_attempts"
# Upper bounds (seconds) of the batch latency buckets; one more bucket counts the rest.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def process_id() -> str:
    """Names this worker process across hosts: model loads are counted once per process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class PartStats:
    """What one part did; :meth:`add` merges two (or a whole run's) exactly."""

    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    latency_counts: np.ndarray = field(
        default_factory=lambda: np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)
    )
    latency_sum: float = 0.0
    scoring_seconds: float = 0.0
    # worker process -> its model load seconds (the same load, whichever part reports it)
    model_loads: dict[str, float] = field(default_factory=dict)
    drift: DriftCounts | None = None
    out_of_memory_retries: int = 0
    batch_rows_after_out_of_memory: dict[str, int] = field(default_factory=dict)
    intake_waits: int = 0
    intake_wait_seconds: float = 0.0
    peak_rss_bytes: int = 0
    # 0: no part planned with a budget.
    worker_budget_bytes: int = 0
    per_value_ops: dict[str, int] = field(default_factory=dict)
    per_value_parts: int = 0
    # Column -> nulls replaced by the contract's fill value / unseen categories passed to
    # the model's OOV handling, among the rows scored.
    filled: Counter[str] = field(default_factory=Counter)
    passed_to_oov: Counter[str] = field(default_factory=Counter)
    # part -> {"attempt": executions before this one, "batch_rows": the halved size it
    # ran with}, for a part whose earlier execution died (e.g. killed by the kernel's OOM
    # killer).
    restarted_parts: dict[str, dict[str, int]] = field(default_factory=dict)

    def observe_batch(self, seconds: float) -> None:
        self.batches += 1
        self.latency_sum += seconds
        self.latency_counts[np.searchsorted(LATENCY_BUCKETS_S, seconds, side="left")] += 1

    def add(self, other: PartStats) -> None:
        self.rows_read += other.rows_read
        self.rows_scored += other.rows_scored
        self.rows_rejected += other.rows_rejected
        self.rejected_by_reason.update(other.rejected_by_reason)
        self.batches += other.batches
        self.latency_counts = self.latency_counts + other.latency_counts
        self.latency_sum += other.latency_sum
        self.scoring_seconds += other.scoring_seconds
        self.model_loads.update(other.model_loads)
        self.out_of_memory_retries += other.out_of_memory_retries
        self.batch_rows_after_out_of_memory.update(other.batch_rows_after_out_of_memory)
        self.intake_waits += other.intake_waits
        self.intake_wait_seconds += other.intake_wait_seconds
        self.peak_rss_bytes = max(self.peak_rss_bytes, other.peak_rss_bytes)
        budgets = [b for b in (self.worker_budget_bytes, other.worker_budget_bytes) if b]
        self.worker_budget_bytes = min(budgets, default=0)
        for name, ops in other.per_value_ops.items():
            self.per_value_ops[name] = max(ops, self.per_value_ops.get(name, 0))
        self.per_value_parts += other.per_value_parts
        self.filled.update(other.filled)
        self.restarted_parts.update(other.restarted_parts)
        self.passed_to_oov.update(other.passed_to_oov)
        if other.drift is not None:
            if self.drift is None:
                self.drift = DriftCounts()
            self.drift.add(other.drift)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_scored": self.rows_scored,
            "rows_rejected": self.rows_rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "batches": self.batches,
            "latency_counts": self.latency_counts.tolist(),
            "latency_sum": self.latency_sum,
            "scoring_seconds": self.scoring_seconds,
            "model_loads": self.model_loads,
            "drift": None if self.drift is None else self.drift.to_json(),
            "out_of_memory_retries": self.out_of_memory_retries,
            "batch_rows_after_out_of_memory": self.batch_rows_after_out_of_memory,
            "intake_waits": self.intake_waits,
            "intake_wait_seconds": self.intake_wait_seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
            "worker_budget_bytes": self.worker_budget_bytes,
            "per_value_ops": dict(sorted(self.per_value_ops.items())),
            "per_value_parts": self.per_value_parts,
            "filled": dict(sorted(self.filled.items())),
            "passed_to_oov": dict(sorted(self.passed_to_oov.items())),
            "restarted_parts": self.restarted_parts,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> PartStats:
        drift = payload.get("drift")
        return cls(
            rows_read=int(payload["rows_read"]),
            rows_scored=int(payload["rows_scored"]),
            rows_rejected=int(payload["rows_rejected"]),
            rejected_by_reason=_counter(payload["rejected_by_reason"]),
            batches=int(payload["batches"]),
            latency_counts=np.asarray(payload["latency_counts"], dtype=np.int64),
            latency_sum=float(payload["latency_sum"]),
            scoring_seconds=float(payload["scoring_seconds"]),
            model_loads={str(k): float(v) for k, v in payload["model_loads"].items()},
            drift=None if drift is None else DriftCounts.from_json(drift),
            out_of_memory_retries=int(payload.get("out_of_memory_retries", 0)),
            batch_rows_after_out_of_memory={
                str(k): int(v) for k, v in payload.get("batch_rows_after_out_of_memory", {}).items()
            },
            intake_waits=int(payload.get("intake_waits", 0)),
            intake_wait_seconds=float(payload.get("intake_wait_seconds", 0.0)),
            peak_rss_bytes=int(payload.get("peak_rss_bytes", 0)),
            worker_budget_bytes=int(payload.get("worker_budget_bytes", 0)),
            per_value_ops={str(k): int(v) for k, v in payload.get("per_value_ops", {}).items()},
            per_value_parts=int(payload.get("per_value_parts", 0)),
            filled=_counter(payload.get("filled", {})),
            passed_to_oov=_counter(payload.get("passed_to_oov", {})),
            restarted_parts={
                str(k): {str(f): int(n) for f, n in v.items()}
                for k, v in payload.get("restarted_parts", {}).items()
            },
        )


def _counter(payload: Mapping[str, Any]) -> Counter[str]:
    return Counter({str(k): int(v) for k, v in payload.items()})


def stats_path(staging_dir: Path, part_index: int) -> Path:
    return staging_dir / STATS_FOLDER / f"part-{part_index:05d}.json"


def progress_path(staging_dir: Path, part_index: int) -> Path:
    return staging_dir / PROGRESS_FOLDER / f"part-{part_index:05d}.json"


def write_part_stats(staging_dir: Path, part_index: int, stats: PartStats) -> None:
    write_json_atomic(stats_path(staging_dir, part_index), stats.to_json())


def write_progress(staging_dir: Path, part_index: int, rows: int) -> None:
    """Rows done so far by one part; atomic, not synced (a lost sample costs nothing)."""
    path = progress_path(staging_dir, part_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"rows": rows}))
    os.replace(tmp, path)


def start_attempt(staging_dir: Path, part_index: int) -> tuple[int, Path]:
    """Mark that an execution of part ``part_index`` starts: how many earlier executions
    did not finish (their markers are still there), and this one's marker, which
    :func:`end_attempt` removes when it finishes. An unfinished earlier execution died
    without a Python exception the engine could answer (the kernel's OOM killer, a lost
    worker) or raised one, and the engine (Beam's bundle retry, Spark's task retry) runs
    the part again; a bundle Beam runs twice on purpose finds none."""
    folder = staging_dir / ATTEMPTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    earlier = sum(1 for _ in folder.glob(f"part-{part_index:05d}.*"))
    marker = folder / f"part-{part_index:05d}.{secrets.token_hex(4)}"
    marker.touch()
    return earlier, marker


def end_attempt(marker: Path) -> None:
    marker.unlink(missing_ok=True)


def read_progress(staging_dir: Path) -> int | None:
    """Rows done by all parts so far; None when no part has reported yet (or the driver
    cannot see the workers' files, e.g. on a remote cluster without a shared disk)."""
    return ProgressReader(staging_dir)()


class ProgressReader:
    """:func:`read_progress` for a driver that asks every half second: each call reads
    only the progress files written since the call before (a file is replaced at every
    write, so its inode, size or modification time changes). A run of 10,000 parts,
    most of them finished, then costs one listing a poll instead of 10,000 reads."""

    def __init__(self, staging_dir: Path) -> None:
        self.folder = staging_dir / PROGRESS_FOLDER
        self._parts: dict[str, tuple[tuple[int, int, int], int]] = {}  # name -> (state, rows)

    def __call__(self) -> int | None:
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return None  # no part has written yet
        total, seen = 0, False
        for entry in entries:
            if not (entry.name.startswith("part-") and entry.name.endswith(".json")):
                continue
            known = self._parts.get(entry.name)
            try:
                stat = entry.stat()
                state = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if known is None or known[0] != state:
                    known = (state, int(json.loads(Path(entry.path).read_text())["rows"]))
                    self._parts[entry.name] = known
            except (OSError, ValueError, KeyError, TypeError):
                if known is None:
                    continue  # renamed away between listing and reading: next poll
            total += known[1]
            seen = True
        return total if seen else None


def merge_part_stats(staging_dir: Path) -> PartStats:
    """Every part's stats of a staged run, added up."""
    merged = PartStats()
    for path in sorted((staging_dir / STATS_FOLDER).glob("part-*.json")):
        merged.add(PartStats.from_json(read_json(path)))
    return merged


def latency_quantile(counts: Sequence[int] | np.ndarray, q: float) -> float:
    """The ``q`` quantile of a bucketed latency, interpolated within its bucket (as
    Prometheus' histogram_quantile does); the open last bucket reports its lower bound."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    rank = q * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index >= len(LATENCY_BUCKETS_S):
        return LATENCY_BUCKETS_S[-1]
    lower = LATENCY_BUCKETS_S[index - 1] if index > 0 else 0.0
    upper = LATENCY_BUCKETS_S[index]
    before = cumulative[index - 1] if index > 0 else 0.0
    inside = counts[index]
    fraction = (rank - before) / inside if inside else 1.0
    return float(lower + (upper - lower) * fraction)


def metrics_section(
    stats: PartStats, wall_seconds: float, timeline: Iterable[Mapping[str, float]] = ()
) -> dict[str, Any]:
    """The manifest's ``metrics``: the merged part stats plus the driver's timings.

    ``batch_latency_seconds.counts`` are per bucket (not cumulative); ``counts[i]``
    counts batches with ``le[i-1] < seconds <= le[i]``, and the one extra last
    count those above the last bound.
    """
    counts = stats.latency_counts.tolist()
    return {
        "rows_read": stats.rows_read,
        "rows_scored": stats.rows_scored,
        "rows_rejected": stats.rows_rejected,
        "rejected_by_reason": dict(sorted(stats.rejected_by_reason.items())),
        "batches": stats.batches,
        "batch_latency_seconds": {
            "le": list(LATENCY_BUCKETS_S),
            "counts": counts,
            "sum": round(stats.latency_sum, 6),
            "count": stats.batches,
            "p50": round(latency_quantile(counts, 0.50), 6),
            "p95": round(latency_quantile(counts, 0.95), 6),
            "p99": round(latency_quantile(counts, 0.99), 6),
        },
        "model_load_seconds": round(max(stats.model_loads.values(), default=0.0), 6),
        "model_loads": len(stats.model_loads),
        "scoring_seconds": round(stats.scoring_seconds, 6),
        "wall_seconds": round(wall_seconds, 6),
        "predictions_per_second": round(stats.rows_scored / max(wall_seconds, 1e-9), 3),
        "timeline": [{"t": round(s["t"], 3), "rows": int(s["rows"])} for s in timeline],
    }
