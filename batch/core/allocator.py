"""Arrow's allocator in a process that scores: jemalloc rather than pyarrow's default.

A worker allocates and frees every batch's buffers. mimalloc (pyarrow's default) hands
freed pages back to the kernel within milliseconds, so the next batch faults them in
again, zeroed; jemalloc keeps them for about a second. On the 10M-row benchmark that is
about 0.4 s less kernel time and 100-150 MB less peak RSS (docs/benchmarks.md, twentieth
and twenty-first looks). ``ARROW_DEFAULT_MEMORY_POOL``, where the environment sets it,
chooses instead, and a pyarrow built without jemalloc keeps its default.

Arrow's C++ library chooses its default pool once, as pyarrow loads, from that variable;
Parquet's reader takes its pages and decompression buffers from that pool whatever
pyarrow's own default is later set to (``pa.set_memory_pool`` only changes the pool
pyarrow's calls pass). So there are two steps:

- :func:`prefer_jemalloc`, before pyarrow loads: sets the variable, for this process and
  the processes it starts (Beam's worker processes, local Spark's Python workers). The
  scoring commands import this module first (``jobs.score``, ``jobs.backfill``); this
  module imports no pyarrow.
- :func:`use_jemalloc`, in a process where pyarrow has loaded already (a worker on a
  cluster, a library caller): makes jemalloc pyarrow's default, which covers every buffer
  pyarrow's calls allocate (batches read, computed and written) but not Parquet's own.
"""

from __future__ import annotations

import os
import sys

POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_jemalloc() -> bool:
    """Choose jemalloc for Arrow's default pool before pyarrow loads: set
    ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` unless the environment sets it, pyarrow has
    loaded already (too late: :func:`use_jemalloc` then) or this is not Linux (the
    platform whose pyarrow wheels are built with jemalloc; elsewhere Arrow would warn that
    the pool is unknown). True where it set the variable."""
    if POOL_VARIABLE in os.environ or "pyarrow" in sys.modules:
        return False
    if not sys.platform.startswith("linux"):
        return False
    os.environ[POOL_VARIABLE] = "jemalloc"
    return True


def use_jemalloc() -> None:
    """Make jemalloc pyarrow's default pool in a process where pyarrow has loaded, once,
    unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool or this pyarrow lacks jemalloc. The
    intake gate still hands unused memory back before it makes the reader wait
    (batch.engine.memory.IntakeGate.admit)."""
    import pyarrow as pa

    if os.environ.get(POOL_VARIABLE):
        return
    if pa.default_memory_pool().backend_name == "jemalloc":
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return
    pa.set_memory_pool(pool)


prefer_jemalloc()
