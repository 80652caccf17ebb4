"""batch.core.fsutil: the one record hash behind every fingerprint, and the one flock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

import pytest

from batch.core.fsutil import directory_sha256, file_sha256, locked, records_sha256


class TestRecordsSha256:
    def test_fields_joined_by_nul_and_records_ended_by_newline(self) -> None:
        expected = hashlib.sha256(b"a\x001\x00-\nb\x002\x00-\n").hexdigest()
        assert records_sha256([("a", 1, "-"), ("b", 2, "-")]) == expected

    def test_order_matters_and_no_records_is_the_empty_hash(self) -> None:
        assert records_sha256([("a",), ("b",)]) != records_sha256([("b",), ("a",)])
        assert records_sha256([]) == hashlib.sha256(b"").hexdigest()

    def test_directory_hash_is_relative_path_and_content_hash_per_file(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "b.bin").write_bytes(b"bb")
        (tmp_path / "a.txt").write_text("a")
        lines = "".join(f"{rel}\0{file_sha256(tmp_path / rel)}\n" for rel in ("a.txt", "sub/b.bin"))
        assert directory_sha256(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()


class TestLocked:
    def test_creates_the_lock_and_its_folder(self, tmp_path: Path) -> None:
        path = tmp_path / "new" / "x.lock"
        with locked(path):
            assert path.is_file()

    def test_excludes_another_holder_until_the_block_ends(self, tmp_path: Path) -> None:
        path = tmp_path / "x.lock"

        def try_lock() -> bool:
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            finally:
                os.close(fd)
            return True

        with locked(path):
            assert not try_lock()
        assert try_lock()

    def test_a_second_taker_waits_for_the_first(self, tmp_path: Path) -> None:
        path = tmp_path / "x.lock"
        order: list[str] = []
        with locked(path):
            waiter = threading.Thread(target=lambda: _take(path, order))
            waiter.start()
            waiter.join(timeout=0.2)
            assert waiter.is_alive()  # blocked on the lock
            order.append("first released")
        waiter.join(timeout=5)
        assert order == ["first released", "second"]

    def test_released_when_the_block_raises(self, tmp_path: Path) -> None:
        path = tmp_path / "x.lock"
        with pytest.raises(RuntimeError), locked(path):
            raise RuntimeError("boom")
        with locked(path):
            pass


def _take(path: Path, order: list[str]) -> None:
    with locked(path):
        order.append("second")
