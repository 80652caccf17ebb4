"""Bounded thread pools that keep results in input order.

Two uses: the scoring threads of a split (``batch.engine.overlap``) and the driver's
many small waits, one per file: Parquet footers read while planning (a round trip each
in a bucket) and output parts hashed at the commit. pyarrow's reads and ``hashlib``
release the GIL, so threads overlap the waits and use every core; the results come back
in the order of the input, so what the driver builds from them (splits, the manifest)
is the same as a serial pass would build.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Threads for the driver's per-file work: enough to hide most of a bucket's round trips
# (tens of ms each) behind the others; local disks gain less (the Python part of each
# read holds the GIL) and lose nothing. At most 10: the boto3 and google-cloud-storage
# clients keep 10 connections per host, and more threads would open and discard extra
# ones (a warning line each from urllib3).
IO_THREADS = 8


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    depth: int | None = None,
    name: str = "batchscore-score",
) -> Iterator[R]:
    """``map(function, items)`` on ``workers`` threads, results in input order.

    At most ``depth`` (default ``2 * workers``) items are in flight, so a slow
    consumer holds back the producer instead of piling up results. A failure is
    raised when its result's turn comes (the first failing item in input order that is
    reached); the items not started yet are cancelled.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    limit = depth or 2 * workers
    in_flight: collections.deque[Future[R]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                in_flight.append(pool.submit(function, item))
                if len(in_flight) >= limit:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()


def map_io(
    function: Callable[[T], R], items: Sequence[T], threads: int = IO_THREADS, name: str = "io"
) -> list[R]:
    """``[function(item) for item in items]`` on up to ``threads`` threads: the same list,
    in the same order, and the same first exception (in input order) as that loop."""
    return list(ordered_map(function, items, min(threads, len(items)), name=f"batchscore-{name}"))
