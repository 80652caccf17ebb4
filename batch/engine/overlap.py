"""Overlapping I/O with model calls: a read-ahead iterator and a background writer.

Parquet decoding, TensorFlow and Parquet encoding all release the GIL, so a
reader thread and a writer thread beside the scoring thread keep the cores
busy. Both are bounded (a few batches), so memory stays flat however large the
input is, and both re-raise a failure in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from batch.core.parallel import ordered_map

__all__ = ["BackgroundWriter", "ordered_map", "read_ahead"]

T = TypeVar("T")

_DONE = object()


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="batchscore-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundWriter:
    """Runs write calls one after another in a single thread, at most ``depth`` queued.

    The first failure is what the caller sees: the writes queued behind it fail too (on a
    writer the failure closed), and their errors are dropped."""

    def __init__(self, depth: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchscore-write")
        self._pending: list[Future[None]] = []
        self._depth = depth
        self._raised = False

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._executor.submit(write, *args))
        while len(self._pending) > self._depth:
            self._result(self._pending.pop(0))

    def _result(self, future: Future[None]) -> None:
        try:
            future.result()
        except BaseException:
            self._raised = True
            raise

    def drain(self) -> None:
        """Wait for every queued write; re-raise the first failure, unless :meth:`submit`
        raised it already (``drain`` then runs in the caller's cleanup)."""
        first: BaseException | None = None
        try:
            for future in self._pending:
                try:
                    future.result()
                except BaseException as exc:
                    first = first or exc
        finally:
            self._pending.clear()
            self._executor.shutdown(wait=True)
        if first is not None and not self._raised:
            self._raised = True
            raise first
