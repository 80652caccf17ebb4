"""Live progress of a run, read by the driver from the parts' progress files.

Workers write their rows done about once a second (batch.observe.metrics.write_progress);
:class:`ProgressMonitor` polls the staging folder from a driver thread and
shows rows done of the total (from the Parquet footers), the rate and the
time left: a rich progress bar on a terminal, else one concise line every
:data:`LOG_EVERY_S` seconds. Its samples become the manifest's
``metrics.timeline``.

Where the driver cannot see the workers' files (a remote cluster without a
shared disk) the display says it is waiting and the timeline stays empty;
nothing fails.
"""

from __future__ import annotations

import bisect
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

from batch.observe.metrics import ProgressReader

ProgressMode = Literal["auto", "bar", "log", "off"]
POLL_S = 0.5
LOG_EVERY_S = 5.0
MAX_TIMELINE_POINTS = 240


def format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_line(rows: int | None, total: int, elapsed: float, rate: float) -> str:
    """``progress: 1,200,000/2,000,000 rows (60.0%), 180,000 rows/s, ETA 0m04s``."""
    if rows is None:
        return f"progress: waiting for the first part to report ({elapsed:.0f}s elapsed)"
    share = rows / total if total else 1.0
    eta = format_duration((total - rows) / rate) if rate > 0 and rows < total else "-"
    return (
        f"progress: {rows:,}/{total:,} rows ({share:.1%}), {rate:,.0f} rows/s, "
        f"ETA {eta}, {elapsed:.0f}s elapsed"
    )


class ProgressMonitor:
    """Polls ``staging_dir`` while a runner executes (None: no shared disk to poll, e.g. a
    run written to a bucket; only the elapsed time is shown); a context manager."""

    def __init__(
        self,
        staging_dir: Path | None,
        total_rows: int,
        mode: ProgressMode = "auto",
        *,
        stream: TextIO | None = None,
        poll_s: float = POLL_S,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.staging_dir = staging_dir
        self.total_rows = total_rows
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.poll_s = min(poll_s, log_every_s)
        self.log_every_s = log_every_s
        self.clock = clock
        self.samples: list[tuple[float, int]] = []
        self._read = None if staging_dir is None else ProgressReader(staging_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._bar: Any = None

    def __enter__(self) -> ProgressMonitor:
        self._started = self.clock()
        if self.mode != "off":
            if self.mode == "bar":
                self._bar = _RichBar(self.total_rows, self.stream)
            self._thread = threading.Thread(
                target=self._run, name="batchscore-progress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
        if exc_type is None:
            rows = self._sample()
            if self.mode == "log":  # the last word in a scheduler's log: where it ended
                self._print_line(rows)

    def _print_line(self, rows: int | None) -> None:
        elapsed = self.clock() - self._started
        print(
            progress_line(rows, self.total_rows, elapsed, self._rate()),
            file=self.stream,
            flush=True,
        )

    def timeline(self) -> list[dict[str, float]]:
        """(seconds since start, cumulative rows) samples, thinned to at most
        :data:`MAX_TIMELINE_POINTS` (the last one kept)."""
        samples = self.samples
        if len(samples) > MAX_TIMELINE_POINTS:
            step = len(samples) / (MAX_TIMELINE_POINTS - 1)
            samples = [samples[int(i * step)] for i in range(MAX_TIMELINE_POINTS - 1)]
            samples.append(self.samples[-1])
        return [{"t": t, "rows": rows} for t, rows in samples]

    def _sample(self) -> int | None:
        rows = None if self._read is None else self._read()
        if rows is not None and (not self.samples or self.samples[-1][1] != rows):
            self.samples.append((self.clock() - self._started, rows))
        return rows

    def _rate(self) -> float:
        # Over the last ~10 s of samples: recent speed, not the average since start-up.
        if not self.samples:
            return 0.0
        last_t, last_rows = self.samples[-1]
        if len(self.samples) == 1:
            return last_rows / last_t if last_t > 0 else 0.0
        # The first sample of the window, found by bisection: a long run has many samples.
        first = bisect.bisect_left(self.samples, last_t - 10.0, key=lambda s: s[0])
        first_t, first_rows = self.samples[first if first < len(self.samples) - 1 else -2]
        return (last_rows - first_rows) / (last_t - first_t) if last_t > first_t else 0.0

    def _run(self) -> None:
        next_log = self._started + self.log_every_s
        wait = self.poll_s
        while not self._stop.wait(wait):
            began = self.clock()
            rows = self._sample()
            # A run of very many parts makes a poll slower: poll less often, so that the
            # driver spends at most a fifth of its time on progress.
            wait = max(self.poll_s, 4 * (self.clock() - began))
            if self._bar is not None:
                self._bar.update(rows, self._rate())
            elif self.clock() >= next_log:
                self._print_line(rows)
                next_log = self.clock() + self.log_every_s


class _RichBar:
    """rich's progress bar: rows done of total, rate, time left."""

    def __init__(self, total: int, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task = self._progress.add_task("scoring", total=total, rate="")
        self._progress.start()

    def update(self, rows: int | None, rate: float) -> None:
        if rows is not None:
            self._progress.update(self._task, completed=rows, rate=f"{rate:,.0f} rows/s")

    def close(self) -> None:
        self._progress.stop()
