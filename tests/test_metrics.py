"""Run metrics on pure numbers: merging part stats, latency buckets, progress, Prometheus."""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch.observe.metrics import (
    LATENCY_BUCKETS_S,
    PartStats,
    ProgressReader,
    latency_quantile,
    merge_part_stats,
    metrics_section,
    read_progress,
    write_part_stats,
    write_progress,
)
from batch.observe.progress import ProgressMonitor, progress_line
from batch.observe.prometheus import RunCollector, run_labels, run_registry


def _part(rows: int, rejected: dict[str, int], latencies: list[float], process: str) -> PartStats:
    stats = PartStats(
        rows_read=rows,
        rows_scored=rows - sum(rejected.values()),
        rows_rejected=sum(rejected.values()),
        rejected_by_reason=Counter(rejected),
        model_loads={process: 1.5},
    )
    for seconds in latencies:
        stats.observe_batch(seconds)
    return stats


class TestPartStats:
    def test_merge_adds_counts_and_counts_each_process_load_once(self, tmp_path: Path) -> None:
        write_part_stats(tmp_path, 0, _part(100, {"null_value": 2}, [0.02, 0.2], "h:1"))
        write_part_stats(tmp_path, 1, _part(50, {"null_value": 1, "out_of_range": 4}, [3.0], "h:1"))
        write_part_stats(tmp_path, 2, _part(10, {}, [100.0], "h:2"))
        # A retried part replaces its own file: still three parts.
        write_part_stats(tmp_path, 2, _part(10, {}, [100.0], "h:2"))
        merged = merge_part_stats(tmp_path)
        assert (merged.rows_read, merged.rows_scored, merged.rows_rejected) == (160, 153, 7)
        assert merged.rejected_by_reason == {"null_value": 3, "out_of_range": 4}
        assert merged.batches == 4
        section = metrics_section(merged, wall_seconds=2.0)
        latency = section["batch_latency_seconds"]
        assert len(latency["counts"]) == len(latency["le"]) + 1
        assert latency["counts"][LATENCY_BUCKETS_S.index(0.025)] == 1
        assert latency["counts"][-1] == 1  # 100 s: above the last bound
        assert latency["count"] == 4 and latency["sum"] == pytest.approx(103.22)
        assert section["model_loads"] == 2 and section["model_load_seconds"] == 1.5
        assert section["predictions_per_second"] == pytest.approx(76.5)

    def test_latency_quantiles_interpolate_within_buckets(self) -> None:
        counts = np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)
        counts[LATENCY_BUCKETS_S.index(0.1)] = 100  # all in (0.05, 0.1]
        assert latency_quantile(counts, 0.5) == pytest.approx(0.075)
        assert latency_quantile(counts, 0.99) == pytest.approx(0.0995)
        assert latency_quantile(np.zeros(3), 0.5) == 0.0


class TestProgress:
    def test_log_lines_when_not_a_terminal(self, tmp_path: Path) -> None:
        stream = io.StringIO()  # not a TTY: auto means log lines
        stop = threading.Event()

        def worker() -> None:
            rows = 0
            while not stop.is_set():
                rows += 1000
                write_progress(tmp_path, 0, rows)
                time.sleep(0.05)

        thread = threading.Thread(target=worker)
        with ProgressMonitor(
            tmp_path, 1_000_000, "auto", stream=stream, poll_s=0.05, log_every_s=0.2
        ) as monitor:
            thread.start()
            time.sleep(1.0)
            stop.set()
            thread.join()
        assert monitor.mode == "log"
        lines = [line for line in stream.getvalue().splitlines() if line]
        assert len(lines) >= 3
        assert all(line.startswith("progress: ") for line in lines)
        assert "/1,000,000 rows" in lines[-1] and "rows/s" in lines[-1] and "ETA" in lines[-1]
        timeline = monitor.timeline()
        assert timeline and all(a["rows"] <= b["rows"] for a, b in itertools.pairwise(timeline))

    def test_bar_mode_follows_the_parts(self, tmp_path: Path) -> None:
        stream = io.StringIO()
        with ProgressMonitor(tmp_path, 100, "bar", stream=stream, poll_s=0.05) as monitor:
            write_progress(tmp_path, 0, 40)
            write_progress(tmp_path, 1, 60)
            time.sleep(0.3)
        assert monitor.mode == "bar"
        assert monitor.timeline()[-1]["rows"] == 100

    def test_line_before_any_part_reports(self) -> None:
        assert "waiting" in progress_line(None, 100, 3.0, 0.0)


class TestPrometheus:
    def test_exposition_parses_with_the_documented_names(self) -> None:
        stats = _part(100, {"null_value": 2}, [0.02, 0.2], "h:1")
        metrics = metrics_section(stats, 1.0)
        summary = {
            "status": "warn",
            "run_dir": "/x",
            "error_rate": 0.02,
            "checks": [{"name": "error_rate", "status": "ok"}],
        }
        drift = {"features": [{"name": "x", "psi": 0.3, "unseen_share": None}], "prediction": None}
        labels = run_labels("m", "1", "/data/loans/dt=2026-01-02")
        text = _exposition(RunCollector.for_run(labels, summary, metrics, drift))
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["batchscore_rows_read"].samples[0].value == 100
        rejected = families["batchscore_rows_rejected"].samples
        assert [(s.labels["reason"], s.value) for s in rejected] == [("null_value", 2.0)]
        buckets = [
            s
            for s in families["batchscore_batch_latency_seconds"].samples
            if s.name.endswith("_bucket")
        ]
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 2
        assert families["batchscore_drift_psi"].samples[0].labels["feature"] == "x"
        assert families["batchscore_run_success"].samples[0].value == 1
        status = {s.labels["status"]: s.value for s in families["batchscore_run_status"].samples}
        assert status == {"ok": 0.0, "warn": 1.0, "fail": 0.0}
        sample = families["batchscore_rows_read"].samples[0]
        assert sample.labels == {
            "model": "m",
            "model_version": "1",
            "dataset": "/data/loans",
            "partition": "2026-01-02",
        }

    def test_a_failed_run_exports_no_rows_and_an_up_to_date_one_only_its_status(self) -> None:
        stats = _part(100, {"null_value": 2}, [0.02], "h:1")
        metrics = metrics_section(stats, 1.0)
        labels = run_labels("m", "1", "/data")
        failed: dict[str, object] = {
            "status": "fail",
            "run_dir": None,
            "error_rate": 0.02,
            "checks": [],
        }
        names = {
            f.name
            for f in text_string_to_metric_families(
                _exposition(RunCollector.for_run(labels, failed, metrics, None))
            )
        }
        assert "batchscore_rows_scored" not in names and "batchscore_rows_read" not in names
        assert "batchscore_last_success_timestamp_seconds" not in names
        assert {"batchscore_run_success", "batchscore_error_rate"} <= names
        up_to_date = RunCollector(labels, {}, None, None, "up_to_date")
        names = {f.name for f in text_string_to_metric_families(_exposition(up_to_date))}
        assert names == {
            "batchscore_run_success",
            "batchscore_up_to_date",
            "batchscore_last_success_timestamp_seconds",
            "batchscore_last_run_timestamp_seconds",
        }


def _exposition(collector: RunCollector) -> str:
    from prometheus_client import generate_latest

    return generate_latest(run_registry(collector)).decode()


def test_progress_polls_of_10000_parts_read_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver polls progress every half second while parts finish: a poll reads the
    files written since the last one, not every part's file again (which made a run's
    driver work grow with parts x polls)."""
    import json

    from batch.observe import metrics

    for part in range(10_000):
        write_progress(tmp_path, part, 10)
    reads = Counter[str]()
    loads = json.loads

    def counted(text: str | bytes) -> object:
        reads["json"] += 1
        return loads(text)

    monkeypatch.setattr(metrics.json, "loads", counted)
    poll = ProgressReader(tmp_path)
    assert poll() == 100_000 and reads["json"] == 10_000
    assert poll() == 100_000 and reads["json"] == 10_000, "nothing changed: nothing read"
    for part in (7, 4_321, 9_999):
        write_progress(tmp_path, part, 15)  # same size, new file
    write_progress(tmp_path, 10_000, 5)
    assert poll() == 100_000 + 3 * 5 + 5 and reads["json"] == 10_004
    assert poll() == read_progress(tmp_path) == 100_020
