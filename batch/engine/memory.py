"""A memory budget per worker: how many batches a worker holds at once, and intake that
waits before the worker's resident memory reaches the budget.

A worker holds batches in four places: read ahead of the model, in model calls (each
call holds its batch, the feeds copied from it and the model's activations:
``MODEL_CALL_COPIES`` batches' worth, an estimate), queued for a free scoring thread, and
queued for the writer. With the process's resident memory after the model is loaded
(``fixed``) and the largest batch the planner chose, the estimated peak is

    fixed + batch_bytes * (read_ahead + model_calls * MODEL_CALL_COPIES + queued + write_queue)

and :func:`plan_depths` picks the deepest of ``DEPTHS`` whose peak fits the budget. While
it runs, the worker samples its RSS before it takes each batch and, above
``SOFT_LIMIT`` of the budget, waits for a batch it read to be scored
(:class:`IntakeGate`) instead of reading more.

The budget is ``--worker_memory``, else what the worker's cgroup allows (memory.max,
memory.limit_in_bytes) or the machine's MemTotal, less headroom.

Several splits scored at once share memory where the runner says so (:class:`Sharing`):
worker processes on one machine share its default budget (each gets an equal part; a
``--worker_memory`` is already each process's), and splits one process scores at once
(worker threads) share that process's budget: its start-up counted once, each split
planned in an equal part of the rest (:func:`split_budget`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from batch.engine.overlap import ordered_map, read_ahead

# A batch in a model call is held about three times: its Arrow data, the feeds built from
# it (strings copied into one buffer, numbers converted), and the model's activations and
# outputs (model-dependent; three is the estimate for tabular models).
MODEL_CALL_COPIES = 3
# Parquet's reader decodes a row group's column chunks whole, and holds about twice the
# row group's bytes of a wide column while it cuts batches from it (measured: 150 MB row
# groups of 250 KB strings, 32 MB batches: 319 MB allocated by Arrow's reader).
ROW_GROUP_COPIES = 2
# Intake waits once the worker's RSS passes this share of the budget.
SOFT_LIMIT = 0.9
# Left to the OS, other processes and allocator slack: 10% of the limit, at least 256 MiB.
HEADROOM_FRACTION = 0.1
MIN_HEADROOM = 256 << 20
_NO_LIMIT = 1 << 60
# What a worker process holds before its first batch (Python, TensorFlow, Arrow, Beam or
# Spark's worker, the model): ~1 GB measured with the demo model. The driver plans with
# the larger of this and its own RSS; each worker measures its own.
WORKER_FIXED_ESTIMATE = 1 << 30

T = TypeVar("T")
R = TypeVar("R")


def use_jemalloc() -> None:
    """Arrow's buffers from jemalloc rather than its default (mimalloc), once per process,
    unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool or this pyarrow lacks jemalloc.

    A worker allocates and frees every batch's buffers: mimalloc hands freed pages back
    to the kernel within milliseconds, so the next batch faults them in again, zeroed;
    jemalloc keeps them for about a second. On the 10M-row benchmark that is about 0.4 s
    less kernel time and 100 MB less peak RSS (docs/benchmarks.md, twentieth look). The
    intake gate still hands unused memory back before it makes the reader wait
    (:meth:`IntakeGate.admit`).

    This is pyarrow's default only: Parquet's reader keeps taking its pages and
    decompression buffers from Arrow's C++ default, chosen as pyarrow loads. Making that
    jemalloc too (``ARROW_DEFAULT_MEMORY_POOL`` set before pyarrow loads) was tried and
    dropped: jemalloc keeps a row group's freed buffers for its decay time, and a job of
    150 MB row groups that commits under a 1.7 GB cgroup with mimalloc was killed by the
    OOM killer (tests/test_memory_limit.py; docs/benchmarks.md, twenty-first look)."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    if pa.default_memory_pool().backend_name == "jemalloc":
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return
    pa.set_memory_pool(pool)


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc/self/statm; None elsewhere)."""
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _limits_up_from(root: Path, path: str, name: str) -> list[int]:
    """The limits in file ``name`` of cgroup ``path`` and its ancestors under ``root``.
    Without a cgroup namespace ``path`` starts with folders the mount does not show: the
    first suffix of it that exists under ``root`` is the process's cgroup."""
    parts = [part for part in path.split("/") if part]
    for skip in range(len(parts) + 1):
        folder = root.joinpath(*parts[skip:])
        if folder.is_dir():
            break
    else:
        return []
    limits = []
    while True:
        try:
            text = (folder / name).read_text().strip()
        except OSError:
            text = ""
        if text.isdigit() and int(text) < _NO_LIMIT:
            limits.append(int(text))
        if folder == root:
            return limits
        folder = folder.parent


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max, v1 limit_in_bytes), the
    smallest of it and its ancestors'."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            limits += _limits_up_from(Path("/sys/fs/cgroup"), path, "memory.max")
        elif "memory" in controllers.split(","):
            limits += _limits_up_from(Path("/sys/fs/cgroup/memory"), path, "memory.limit_in_bytes")
    return min(limits) if limits else None


def default_budget() -> tuple[int, str]:
    """What this process may use, less headroom, and where the limit came from."""
    total = _mem_total()
    limit, source = total, "MemTotal"
    cgroup = _cgroup_limit()
    if cgroup is not None and cgroup < total:
        limit, source = cgroup, "cgroup"
    headroom = max(MIN_HEADROOM, int(limit * HEADROOM_FRACTION))
    return max(limit - headroom, limit // 2), f"{source} {limit} bytes less {headroom} headroom"


@dataclass(frozen=True)
class Depths:
    """How many batches a worker holds in each place, and the estimated peak."""

    read_ahead: int
    model_calls: int
    queued: int
    write_queue: int

    def batches(self) -> int:
        return (
            self.read_ahead + self.model_calls * MODEL_CALL_COPIES + self.queued + self.write_queue
        )

    def to_json(self) -> dict[str, int]:
        return {
            "read_ahead": self.read_ahead,
            "model_calls": self.model_calls,
            "queued": self.queued,
            "write_queue": self.write_queue,
        }


def depth_choices(threads: int) -> tuple[Depths, ...]:
    """From the deepest (today's overlap) to the shallowest (one batch in each place)."""
    return (
        Depths(2, threads, threads, 2),
        Depths(1, threads, 0, 1),
        Depths(1, 1, 0, 1),
    )


def plan_depths(budget: int, fixed: int, batch_bytes: int, threads: int) -> tuple[Depths, int]:
    """The deepest choice whose estimated peak fits ``budget``, and that peak (the
    shallowest choice if none fits)."""
    choices = depth_choices(threads)
    for depths in choices:
        peak = fixed + batch_bytes * depths.batches()
        if peak <= budget:
            return depths, peak
    return choices[-1], fixed + batch_bytes * choices[-1].batches()


def target_batch_bytes(budget: int, fixed: int, wanted: int, threads: int) -> int:
    """``wanted`` bytes a batch, or less so that the deepest choice fits the budget (1 if
    the budget is already spent: the smallest batches)."""
    room = budget - fixed
    return max(1, min(wanted, room // depth_choices(threads)[0].batches()))


@dataclass(frozen=True)
class Sharing:
    """Who shares a worker's memory, where the runner knows it before the job starts.

    ``processes``: worker processes on one machine, each with its own start-up, sharing
    the machine's (or cgroup's) default budget: the DirectRunner's multi_processing
    workers, a local Spark master's Python workers (one a task slot). ``splits``: splits
    one worker process scores at once, sharing its budget: the DirectRunner's
    multi_threading workers."""

    processes: int = 1
    splits: int = 1

    def __post_init__(self) -> None:
        if self.processes < 1 or self.splits < 1:
            raise ValueError(f"{self}: expected at least one process and one split")

    def to_json(self) -> dict[str, int]:
        return {"worker_processes": self.processes, "splits_per_process": self.splits}


NOT_SHARED = Sharing()


def worker_budget(worker_memory: int | None, sharing: Sharing) -> tuple[int, str]:
    """A worker process's budget and where it came from: ``--worker_memory``, else its
    part of the machine's (or cgroup's) default budget. The driver plans with it and each
    worker takes it again itself (:meth:`WorkerMemory.budget`)."""
    if worker_memory:
        return worker_memory, "--worker_memory"
    budget, source = default_budget()
    if sharing.processes > 1:
        return (
            budget // sharing.processes,
            f"{source}, shared by {sharing.processes} worker processes",
        )
    return budget, source


def split_budget(budget: int, fixed: int, splits: int) -> int:
    """What one of ``splits`` splits a process scores at once may plan with, out of the
    process's ``budget``: the process's ``fixed`` memory (its start-up, counted once) and
    an equal part of the rest."""
    return fixed + max(0, budget - fixed) // splits


@dataclass(frozen=True)
class WorkerMemory:
    """What a worker needs to keep within its budget; small and picklable.

    ``budget_bytes``: --worker_memory, or None (each worker takes its own cgroup's or
    machine's limit less headroom, its part of it where ``sharing`` has several worker
    processes). ``batch_bytes``: the largest batch the planner chose. ``reader_bytes``:
    what the Parquet reader holds besides for one split (ROW_GROUP_COPIES row groups).
    ``sharing``: the worker processes and the splits in each that share memory.
    """

    budget_bytes: int | None
    batch_bytes: int
    reader_bytes: int = 0
    sharing: Sharing = NOT_SHARED

    def budget(self) -> int:
        """This worker process's budget."""
        return worker_budget(self.budget_bytes, self.sharing)[0]


class IntakeGate:
    """Counts the batches a worker has read and not yet scored and, once its RSS passes
    the soft limit, makes the reader wait until one is scored (never when none is held:
    it could free nothing). Scoring never waits for the reader, so the wait always ends;
    scored batches wait only for the writer, whose queue is bounded."""

    def __init__(self, soft_limit: int | None, budget: int | None = None) -> None:
        self.soft_limit = soft_limit
        # The budget the worker planned with (recorded in its part's stats).
        self.budget = budget
        self._held = 0
        self._changed = threading.Condition()
        self.waits = 0
        self.wait_seconds = 0.0
        self.peak_rss = rss_bytes() or 0

    def _sample(self) -> int | None:
        rss = rss_bytes()
        if rss is not None and rss > self.peak_rss:
            self.peak_rss = rss
        return rss

    def admit(self) -> None:
        """Before the reader takes a batch: wait while the worker is over the soft limit
        and holds batches that will be freed."""
        rss = self._sample()
        if self.soft_limit is not None and rss is not None and rss >= self.soft_limit:
            # Memory Arrow freed but kept for reuse goes back to the OS first.
            pa.default_memory_pool().release_unused()
            began = time.perf_counter()
            waited = False
            with self._changed:
                while self._held > 0:
                    rss = self._sample()
                    if rss is None or rss < self.soft_limit:
                        break
                    waited = True
                    self._changed.wait(timeout=0.05)
            if waited:
                self.waits += 1
                self.wait_seconds += time.perf_counter() - began
        with self._changed:
            self._held += 1

    def admitting(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, each taken only once :meth:`admit` lets it in."""
        iterator = iter(batches)
        while True:
            self.admit()
            try:
                batch = next(iterator)
            except StopIteration:
                with self._changed:
                    self._held -= 1
                return
            yield batch

    def release(self) -> None:
        """A batch the worker read is scored (its results go to the bounded writer)."""
        with self._changed:
            self._held -= 1
            self._changed.notify_all()
        self._sample()


def gated_map(
    function: Callable[[T], R], items: Iterable[T], depths: Depths, gate: IntakeGate
) -> Iterator[R]:
    """``function`` over ``items`` in order, overlapped as ``depths`` allow: ``items`` read
    ``read_ahead`` ahead in a thread, ``model_calls`` calls at once and ``queued`` more
    waiting; each item taken once ``gate`` admits it and released once ``function`` is
    done with it (so intake waits only for calls, which never wait for intake)."""

    def released(item: T) -> R:
        try:
            return function(item)
        finally:
            gate.release()

    return ordered_map(
        released,
        read_ahead(gate.admitting(items), depths.read_ahead),
        workers=depths.model_calls,
        depth=depths.model_calls + depths.queued,
    )


def memory_section(
    budget: int,
    source: str,
    fixed: int,
    reader: int,
    depths: Depths,
    peak: int,
    batch_bytes: int,
    sharing: Sharing = NOT_SHARED,
) -> dict[str, Any]:
    """The manifest's ``batching.memory`` as the driver planned it: ``budget`` is a
    worker process's, ``peak`` its estimate with every split it scores at once."""
    return {
        "budget_bytes": budget,
        "budget_source": source,
        "fixed_bytes": fixed,
        "reader_bytes": reader,
        "largest_batch_bytes": batch_bytes,
        "depths": depths.to_json(),
        "estimated_peak_bytes": peak,
        "soft_limit_bytes": int(budget * SOFT_LIMIT),
        "shared": {
            **sharing.to_json(),
            "split_budget_bytes": split_budget(budget, fixed, sharing.splits),
        },
    }
