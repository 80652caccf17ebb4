"""batch.engine.overlap: ordered results, bounded queues, failures in the caller's thread.

Threads are real; uneven task times come from events and short sleeps, never from
the scheduler's luck, so each test asserts an exact order or an exact bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator

import pytest

from batch.engine.overlap import BackgroundWriter, ordered_map, read_ahead


class Pulled:
    """A producer that records how many items were taken from it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for item in range(self.count):
            self.pulled += 1
            yield item


class Boom(Exception):
    pass


def _ours() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("batchscore-")]


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    """Every test leaves none of its own overlap threads running (threads that earlier
    tests of the session left, e.g. a scorer cached per process, are not its own)."""
    before = set(_ours())
    yield
    _wait_until(lambda: not set(_ours()) - before)
    assert not set(_ours()) - before, set(_ours()) - before


class TestOrderedMap:
    def test_results_come_in_input_order_when_later_items_finish_first(self) -> None:
        def slow_for_small(item: int) -> int:
            time.sleep(0.002 * (20 - item % 20))  # item 0 is the slowest of each 20
            return item * item

        assert list(ordered_map(slow_for_small, range(100), workers=4)) == [
            i * i for i in range(100)
        ]

    def test_the_first_result_waits_for_the_first_item_not_the_fastest(self) -> None:
        first_may_finish = threading.Event()
        finished: list[int] = []

        def task(item: int) -> int:
            if item == 0:
                assert first_may_finish.wait(5)
            finished.append(item)
            if len(finished) == 3:  # items 1..3 done before item 0
                first_may_finish.set()
            return item

        assert list(ordered_map(task, range(4), workers=4)) == [0, 1, 2, 3]
        assert finished[-1] == 0, "item 0 finished last and still came first"

    @pytest.mark.parametrize(("workers", "depth", "bound"), [(3, None, 6), (3, 4, 4), (2, 1, 1)])
    def test_the_producer_is_never_more_than_depth_items_ahead(
        self, workers: int, depth: int | None, bound: int
    ) -> None:
        source = Pulled(50)
        results = ordered_map(lambda item: item, source, workers=workers, depth=depth)
        ahead = []
        for taken, result in enumerate(results, start=1):
            assert result == taken - 1
            ahead.append(source.pulled - taken)
            time.sleep(0.001)  # a slow consumer: the workers could run far ahead
        assert source.pulled == 50
        # While one result is with the consumer, ``bound - 1`` more are in flight.
        assert max(ahead) == bound - 1, ahead

    def test_a_worker_failure_reaches_the_caller(self) -> None:
        def task(item: int) -> int:
            if item == 7:
                raise Boom(f"item {item}")
            return item

        seen: list[int] = []
        with pytest.raises(Boom, match="item 7"):
            for result in ordered_map(task, range(100), workers=4):
                seen.append(result)
        assert seen == list(range(7)), "every result before the failing item, in order"

    def test_stopping_early_cancels_what_is_queued(self) -> None:
        calls: list[int] = []

        def task(item: int) -> int:
            calls.append(item)
            time.sleep(0.005)
            return item

        results = ordered_map(task, range(1000), workers=2, depth=4)
        assert [next(results), next(results)] == [0, 1]
        assert isinstance(results, Generator)
        results.close()
        assert len(calls) <= 2 + 4, "only the items taken or in flight ran, not the rest"

    def test_one_worker_is_plain_map_in_the_callers_thread(self) -> None:
        threads: set[str] = set()

        def task(item: int) -> int:
            threads.add(threading.current_thread().name)
            return -item

        assert list(ordered_map(task, range(5), workers=1)) == [0, -1, -2, -3, -4]
        assert threads == {threading.current_thread().name}


class TestReadAhead:
    def test_items_come_in_order(self) -> None:
        assert list(read_ahead(iter(range(500)), depth=3)) == list(range(500))

    @pytest.mark.parametrize("depth", [1, 2, 5])
    def test_the_reader_is_at_most_depth_items_ahead(self, depth: int) -> None:
        source = Pulled(40)
        items = read_ahead(source, depth=depth)
        assert next(items) == 0
        # The consumer holds 1, the queue ``depth``, the thread one it cannot yet queue.
        _wait_until(lambda: source.pulled == 1 + depth + 1)
        time.sleep(0.05)  # time enough to read everything, were it unbounded
        assert source.pulled == 1 + depth + 1
        assert list(items) == list(range(1, 40))

    def test_a_reader_failure_is_raised_in_the_consumer_after_the_good_items(self) -> None:
        def failing() -> Iterator[int]:
            yield 1
            yield 2
            raise Boom("bad file")

        seen: list[int] = []
        with pytest.raises(Boom, match="bad file"):
            for item in read_ahead(failing()):
                seen.append(item)
        assert seen == [1, 2]

    def test_closing_early_stops_the_reader_thread(self) -> None:
        before = set(_ours())  # earlier tests' threads may still be ending: not this one's
        source = Pulled(10_000)
        items = read_ahead(source, depth=2)
        assert next(items) == 0
        assert isinstance(items, Generator)
        items.close()  # joins the thread
        assert not set(_ours()) - before
        assert source.pulled < 10, source.pulled


class TestBackgroundWriter:
    def test_writes_run_in_submission_order_on_one_thread(self) -> None:
        written: list[int] = []
        threads: set[str] = set()

        def write(item: int) -> None:
            time.sleep(0.001 * (item % 3))
            threads.add(threading.current_thread().name)
            written.append(item)

        writer = BackgroundWriter(depth=2)
        for item in range(30):
            writer.submit(write, item)
        writer.drain()
        assert written == list(range(30))
        assert len(threads) == 1 and threads != {threading.current_thread().name}

    def test_submit_blocks_once_depth_writes_are_pending(self) -> None:
        release = threading.Event()
        started = threading.Event()

        def blocked(_: int) -> None:
            started.set()
            assert release.wait(5)

        writer = BackgroundWriter(depth=2)
        writer.submit(blocked, 0)
        assert started.wait(5)
        writer.submit(blocked, 1)  # two pending: submit returns at once

        done = threading.Event()

        def third() -> None:
            writer.submit(blocked, 2)
            done.set()

        thread = threading.Thread(target=third)
        thread.start()
        assert not done.wait(0.2), "a third pending write waits for the oldest to finish"
        release.set()
        assert done.wait(5)
        thread.join()
        writer.drain()

    def test_a_failed_write_surfaces_on_drain_and_the_thread_ends(self) -> None:
        def write(item: int) -> None:
            if item == 1:
                raise Boom("disk full")

        writer = BackgroundWriter(depth=5)
        for item in range(3):
            writer.submit(write, item)  # depth 5: nothing waited on yet
        with pytest.raises(Boom, match="disk full"):
            writer.drain()

    def test_a_failed_write_surfaces_on_a_later_submit(self) -> None:
        def write(item: int) -> None:
            if item == 0:
                raise Boom("first write")

        writer = BackgroundWriter(depth=1)
        writer.submit(write, 0)
        with pytest.raises(Boom, match="first write"):
            writer.submit(write, 1)  # two pending: waits on the first, which failed
        writer.drain()

    def test_the_first_failure_is_the_one_raised_not_what_follows_it(self) -> None:
        """A full disk fails one write; the writes queued behind it then fail on the closed
        file. The caller sees the first failure, once: from submit, not again from the
        drain in its cleanup, and from drain when submit never saw one."""

        def write(item: int) -> None:
            if item >= 1:
                raise Boom("disk full" if item == 1 else "closed file")

        writer = BackgroundWriter(depth=1)
        with pytest.raises(Boom, match="disk full"):
            try:
                for item in range(4):
                    writer.submit(write, item)
            finally:
                writer.drain()
        writer = BackgroundWriter(depth=5)
        for item in range(4):
            writer.submit(write, item)
        with pytest.raises(Boom, match="disk full"):
            writer.drain()
