"""A memory budget per worker (issue 20 point 2): --worker_memory (default: the cgroup's
or machine's memory less headroom) bounds the batch bytes, read-ahead, concurrent model
calls and the write queue; the worker samples its RSS and waits before reading more near
the budget, never deadlocking. Splits scored at once share it: worker threads share their
process's budget, worker processes the machine's."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batch.engine.memory import (
    MODEL_CALL_COPIES,
    NOT_SHARED,
    Depths,
    IntakeGate,
    Sharing,
    WorkerMemory,
    _mem_total,
    default_budget,
    depth_choices,
    gated_map,
    plan_depths,
    rss_bytes,
    split_budget,
    target_batch_bytes,
    worker_budget,
)
from batch.engine.sizing import DEFAULT_BATCH_BYTES, MIN_BATCH_ROWS
from batch.output.commit import MANIFEST, list_committed_runs
from tests.conftest import new_python, score
from tests.memory_models import write_wide_data
from tests.plain_model import plain_model_expected, write_plain_data

MB = 1 << 20


def test_depths_shrink_to_fit_the_budget() -> None:
    deepest, middle, shallowest = depth_choices(2)
    assert deepest.batches() == 2 + 2 * MODEL_CALL_COPIES + 2 + 2
    assert plan_depths(2000 * MB, 1000 * MB, 10 * MB, 2) == (deepest, 1120 * MB)
    assert plan_depths(1100 * MB, 1000 * MB, 10 * MB, 2) == (middle, 1080 * MB)
    assert plan_depths(1060 * MB, 1000 * MB, 10 * MB, 2) == (shallowest, 1050 * MB)
    # Nothing fits: one batch in each place, over the budget (the gate and the halving
    # of calls that run out of memory protect the rest).
    assert plan_depths(1000 * MB, 1000 * MB, 10 * MB, 2) == (shallowest, 1050 * MB)
    # The batch target: the wanted bytes, or what lets the deepest choice fit.
    assert target_batch_bytes(8000 * MB, 1000 * MB, 32 * MB, 2) == 32 * MB
    assert target_batch_bytes(1120 * MB, 1000 * MB, 32 * MB, 2) == 10 * MB
    assert target_batch_bytes(900 * MB, 1000 * MB, 32 * MB, 2) == 1


def test_splits_at_once_share_the_budget() -> None:
    # Threads of one process: its start-up once, the rest shared.
    assert split_budget(3000 * MB, 1000 * MB, 1) == 3000 * MB
    assert split_budget(3000 * MB, 1000 * MB, 2) == 2000 * MB
    assert split_budget(3000 * MB, 1000 * MB, 4) == 1500 * MB
    assert split_budget(900 * MB, 1000 * MB, 2) == 1000 * MB  # spent: nothing to share
    # So the batch target of two threads is half a lone split's.
    alone = target_batch_bytes(split_budget(1240 * MB, 1000 * MB, 1), 1000 * MB, 64 * MB, 2)
    two = target_batch_bytes(split_budget(1240 * MB, 1000 * MB, 2), 1000 * MB, 64 * MB, 2)
    assert (alone, two) == (20 * MB, 10 * MB)
    # Processes of one machine: each its part of the default budget; --worker_memory is
    # already each process's.
    machine = default_budget()[0]
    assert WorkerMemory(None, MB).budget() == machine
    assert WorkerMemory(None, MB, sharing=Sharing(processes=4)).budget() == machine // 4
    assert WorkerMemory(None, MB, sharing=Sharing(splits=4)).budget() == machine
    assert WorkerMemory(2000 * MB, MB, sharing=Sharing(processes=4)).budget() == 2000 * MB
    assert Sharing(processes=1, splits=1) == NOT_SHARED
    with pytest.raises(ValueError):
        Sharing(processes=0)


def test_default_budget_is_below_what_the_machine_allows() -> None:
    budget, source = default_budget()
    assert 0 < budget < _mem_total()
    assert source.startswith(("MemTotal", "cgroup")) and "headroom" in source
    rss = rss_bytes()
    assert rss is not None and 50 * MB < rss < budget


def test_intake_waits_near_the_limit_and_never_deadlocks() -> None:
    gate = IntakeGate(soft_limit=1)  # always over it
    taken: list[int] = []
    done = threading.Event()

    def consume(items: list[int]) -> None:
        for item in gate.admitting(items):
            taken.append(item)
            # Freed by another thread a little later, as the writer frees a batch.
            threading.Timer(0.05, gate.release).start()
        done.set()

    worker = threading.Thread(target=consume, args=(list(range(6)),))
    worker.start()
    worker.join(timeout=30)
    assert done.is_set() and taken == list(range(6))
    assert gate.waits >= 1 and gate.wait_seconds > 0
    free = IntakeGate(soft_limit=None)
    assert list(free.admitting(range(3))) == [0, 1, 2] and free.waits == 0


def _manifest(output: Path) -> tuple[Path, dict]:
    (run,) = list_committed_runs(output)
    return run.run_dir, json.loads((run.run_dir / MANIFEST).read_text())


def test_a_budget_bounds_the_batch_bytes(plain_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_wide_data(data, files=2, rows=300, text_bytes=50_000)
    out = tmp_path / "out"
    fixed = max(rss_bytes() or 0, 1 << 30)
    # Room for 12 batches of about 8.7 MB (175 rows), less the reader's 15 MB. The job
    # measures its own RSS when it plans, which may be tens of MB lower than here (a long
    # session's process gives memory back): up to 75 MB less still keeps batches under
    # 300 rows (CI once saw 302 rows with 150 MB of room here).
    budget = fixed + 120 * MB
    options = ("--key_columns=id", f"--worker_memory={budget}")
    assert score(data, out, *options, model=plain_model) == 0
    run_dir, manifest = _manifest(out)
    batching = manifest["batching"]
    memory = batching["memory"]
    assert memory["budget_bytes"] == budget and memory["budget_source"] == "--worker_memory"
    room = budget - memory["fixed_bytes"] - memory["reader_bytes"]
    # The reader holds two row groups of 150 rows of id, x, n and s (about 50 KB a row).
    assert memory["reader_bytes"] == pytest.approx(2 * 150 * (50_000 + 24), rel=0.01)
    assert batching["target_bytes"] == min(DEFAULT_BATCH_BYTES, room // 12) < DEFAULT_BATCH_BYTES
    assert memory["depths"] == {"read_ahead": 2, "model_calls": 2, "queued": 2, "write_queue": 2}
    assert memory["estimated_peak_bytes"] <= budget
    assert batching["batch_rows"]["max"] < 300
    assert batching["batch_rows"]["max"] * 50_000 <= batching["target_bytes"]
    assert memory["peak_rss_bytes"] > 0
    predictions = pq.read_table(run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == list(range(600))


def test_a_budget_already_spent_scores_every_row_waiting(plain_model: Path, tmp_path: Path) -> None:
    """A budget below the worker's own start-up: the smallest batches, one in each place,
    intake waiting for every batch to be written before the next, every row once."""
    data = tmp_path / "data"
    table = write_plain_data(data, files=2, rows_per_file=400, row_group_rows=200)
    out = tmp_path / "out"
    assert score(data, out, "--key_columns=id", "--worker_memory=100M", model=plain_model) == 0
    run_dir, manifest = _manifest(out)
    batching = manifest["batching"]
    memory = batching["memory"]
    assert batching["batch_rows"] == {"min": MIN_BATCH_ROWS, "max": MIN_BATCH_ROWS}
    assert memory["depths"] == {"read_ahead": 1, "model_calls": 1, "queued": 0, "write_queue": 1}
    assert memory["estimated_peak_bytes"] > memory["budget_bytes"]
    assert memory["intake_waits"] > 0
    predictions = pq.read_table(run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == list(range(800))
    np.testing.assert_allclose(
        predictions.column("score").to_numpy(), plain_model_expected(table.sort_by("id")), atol=1e-6
    )


@pytest.mark.parametrize("depths", depth_choices(2))
def test_gated_map_over_the_limit_never_deadlocks(depths: Depths) -> None:
    """Always over the soft limit, with every depth setting: the reader waits for calls,
    which never wait for it; results come in order."""
    gate = IntakeGate(soft_limit=1)
    results: list[int] = []

    def slow_double(item: int) -> int:
        time.sleep(0.005)
        return item * 2

    worker = threading.Thread(
        target=lambda: results.extend(gated_map(slow_double, range(40), depths, gate)),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)
    assert results == [i * 2 for i in range(40)], "gated_map did not finish within 60 s"
    assert gate.waits > 0


THREADS = ("--direct_running_mode=multi_threading", "--direct_num_workers=2")


def test_worker_threads_share_their_process_budget(plain_model: Path, tmp_path: Path) -> None:
    """Two DirectRunner worker threads score two splits at once in this process: each is
    planned in half of what the budget leaves beside the process's start-up, so the
    batches are those a lone split gets from a budget with half the room."""
    data = tmp_path / "data"
    write_wide_data(data, files=2, rows=300, text_bytes=50_000)
    out = tmp_path / "out"
    fixed = max(rss_bytes() or 0, 1 << 30)
    # Each split's part: about 120 MB of room, as in test_a_budget_bounds_the_batch_bytes.
    budget = fixed + 240 * MB
    options = ("--key_columns=id", f"--worker_memory={budget}", "--split_rows=150", *THREADS)
    assert score(data, out, *options, model=plain_model) == 0
    run_dir, manifest = _manifest(out)
    batching = manifest["batching"]
    memory = batching["memory"]
    assert manifest["runner"]["name"] == "beam:DirectRunner"
    assert memory["budget_bytes"] == budget and memory["budget_source"] == "--worker_memory"
    shared = memory["shared"]
    assert shared["worker_processes"] == 1 and shared["splits_per_process"] == 2
    fixed, reader = memory["fixed_bytes"], memory["reader_bytes"]
    assert shared["split_budget_bytes"] == fixed + (budget - fixed) // 2
    room = shared["split_budget_bytes"] - fixed - reader
    assert batching["target_bytes"] == room // 12 < (budget - fixed - reader) // 12
    assert batching["batch_rows"]["max"] * 50_000 <= batching["target_bytes"]
    # Both splits' batches, the start-up once; the workers planned with the same budget.
    assert memory["estimated_peak_bytes"] <= budget
    assert memory["worker_budget_bytes"] == budget
    assert memory["depths"] == {"read_ahead": 2, "model_calls": 2, "queued": 2, "write_queue": 2}
    predictions = pq.read_table(run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == list(range(600))


def test_worker_processes_share_the_machine_budget() -> None:
    """The plan of a job whose runner has two worker processes on this machine: each gets
    half the machine's default budget (no --worker_memory), and says so."""
    from batch.engine.local import InProcessRunner
    from runners.beam import BeamRunner

    processes = BeamRunner(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert processes.memory_sharing == Sharing(processes=2)
    assert BeamRunner(list(THREADS)).memory_sharing == Sharing(splits=2)
    assert BeamRunner([]).memory_sharing == NOT_SHARED  # in_memory: one split at a time
    assert BeamRunner(["--runner=DataflowRunner"]).memory_sharing == NOT_SHARED
    assert InProcessRunner(1, 1).memory_sharing == NOT_SHARED
    machine, source = default_budget()
    budget, shared_source = worker_budget(None, processes.memory_sharing)
    assert budget == machine // 2
    assert shared_source == f"{source}, shared by 2 worker processes"
    assert worker_budget(4000 * MB, processes.memory_sharing) == (4000 * MB, "--worker_memory")
    assert worker_budget(None, Sharing(splits=2)) == (machine, source)


@pytest.mark.slow
def test_worker_processes_plan_with_their_part(plain_model: Path, tmp_path: Path) -> None:
    """Two DirectRunner worker processes (multi_processing) on this machine: the driver
    plans, and each worker process plans its own depths, with half the machine's default
    budget; every row is scored once."""
    data = tmp_path / "data"
    table = write_plain_data(data, files=2, rows_per_file=400, row_group_rows=200)
    out = tmp_path / "out"
    processes = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert (
        score(data, out, "--key_columns=id", "--split_rows=200", *processes, model=plain_model) == 0
    )
    run_dir, manifest = _manifest(out)
    memory = manifest["batching"]["memory"]
    half = default_budget()[0] // 2
    assert memory["budget_bytes"] == half and memory["worker_budget_bytes"] == half
    assert memory["shared"]["worker_processes"] == 2
    predictions = pq.read_table(run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == list(range(800))
    np.testing.assert_allclose(
        predictions.column("score").to_numpy(), plain_model_expected(table.sort_by("id")), atol=1e-6
    )


def test_a_scoring_process_takes_arrows_buffers_from_jemalloc() -> None:
    """batch.engine.memory.use_jemalloc (called as a process's scorer is made): jemalloc
    keeps freed pages for the next batch where mimalloc hands them back at once; a pool
    chosen with ARROW_DEFAULT_MEMORY_POOL is kept."""
    code = (
        "import os, sys\n"
        "if sys.argv[1]: os.environ['ARROW_DEFAULT_MEMORY_POOL'] = sys.argv[1]\n"
        "import pyarrow as pa\n"
        "from batch.engine.memory import use_jemalloc\n"
        "before = pa.default_memory_pool().backend_name\n"
        "use_jemalloc()\n"
        "use_jemalloc()\n"
        "kept = pa.array(range(1000))\n"
        "print(before, pa.default_memory_pool().backend_name, pa.jemalloc_memory_pool().bytes_allocated() > 0)\n"
    )
    assert new_python(code, "").stdout.split() == ["mimalloc", "jemalloc", "True"]
    assert new_python(code, "system").stdout.split() == ["system", "system", "False"]
