"""Wide rows under a hard memory limit (issue 20 point 4): a job in a memory cgroup that
its forced 65,536-row batches would need more than is killed by the kernel's OOM killer;
the same job with batches sized by bytes (and the budget read from the cgroup) commits
every key once, with the model's predictions.

The test creates a cgroup (v1 memory controller, or v2 with memory enabled) where the
machine lets it (root, a writable cgroup filesystem) and skips elsewhere. Measured on a
2-core development machine, 1,200 rows of 250 KB strings (300 MB in one file, row groups
of 150 MB): forced 65,536-row batches peak at 2.5 GB RSS / 2.1 GB charged to the cgroup;
sized by bytes (46-row batches) 1.5 GB RSS / 1.2 GB charged; the limit is 1.7 GB.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batch.output.commit import MANIFEST, list_committed_runs
from tests.conftest import score_args
from tests.memory_models import write_wide_data
from tests.plain_model import plain_model_expected

PROJECT = Path(__file__).resolve().parent.parent
LIMIT = 1700 << 20
V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def memory_cgroup(name: str, limit: int) -> Iterator[Path]:
    """A new memory cgroup limited to ``limit`` bytes (swap included where the kernel
    counts it); its cgroup.procs file is what a process writes its pid to, to join."""
    if (V1_ROOT / "memory.limit_in_bytes").exists():
        folder, limit_files = V1_ROOT / name, ["memory.limit_in_bytes"]
        swap = ["memory.memsw.limit_in_bytes"]
    elif "memory" in (V2_ROOT / "cgroup.controllers").read_text().split():
        folder, limit_files, swap = V2_ROOT / name, ["memory.max"], ["memory.swap.max"]
    else:
        pytest.skip("no memory cgroup controller on this machine")
    try:
        folder.mkdir()
        for file in limit_files:
            (folder / file).write_text(str(limit))
    except OSError as exc:
        with contextlib.suppress(OSError):
            folder.rmdir()
        pytest.skip(f"cannot create a memory cgroup here ({exc})")
    for file in swap:
        with contextlib.suppress(OSError):
            (folder / file).write_text(str(limit) if file.startswith("memory.memsw") else "0")
    try:
        yield folder / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _score_in(procs: Path, data: Path, output: Path, model: Path, *options: str) -> int:
    def join() -> None:
        procs.write_text(str(os.getpid()))

    args = score_args(data, output, "--key_columns=id", "--progress=off", *options, model=model)
    result = subprocess.run(
        [sys.executable, "-m", "jobs.score", *args],
        cwd=PROJECT,
        preexec_fn=join,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.returncode


@pytest.mark.slow
def test_wide_rows_commit_under_a_memory_limit_that_fixed_batches_exceed(
    plain_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    table = write_wide_data(data, files=1, rows=1200, text_bytes=250_000)
    with memory_cgroup(f"batchscore-test-{os.getpid()}", LIMIT) as procs:
        forced = tmp_path / "forced"
        code = _score_in(procs, data, forced, plain_model, "--batch_size=65536")
        assert code == -signal.SIGKILL, f"expected the OOM killer's SIGKILL, got exit {code}"
        assert not list_committed_runs(forced)

        sized = tmp_path / "sized"
        assert _score_in(procs, data, sized, plain_model) == 0
    (run,) = list_committed_runs(sized)
    manifest = json.loads((run.run_dir / MANIFEST).read_text())
    memory = manifest["batching"]["memory"]
    assert memory["budget_source"].startswith("cgroup 1782579200 bytes")
    assert manifest["batching"]["batch_rows"]["max"] < 200
    predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
    assert predictions.column("id").to_pylist() == list(range(1200))
    with np.errstate(over="ignore"):  # long texts: sigmoid of a large negative number
        expected = plain_model_expected(table.sort_by("id"))
    np.testing.assert_allclose(predictions.column("score").to_numpy(), expected, atol=1e-6)
