"""A run's metrics in Prometheus exposition format: a textfile and a Pushgateway push.

Metric names (every sample has the labels ``model`` and ``model_version``):

    batchscore_rows_read_total                       counter
    batchscore_rows_scored_total                     counter
    batchscore_rows_rejected_total{reason}           counter, one sample per reject reason
    batchscore_batches_total                         counter
    batchscore_batch_latency_seconds                 histogram (validate + score, per batch)
    batchscore_model_load_seconds                    gauge, slowest worker's model load
    batchscore_wall_seconds                          gauge, process start to commit
    batchscore_predictions_per_second                gauge
    batchscore_error_rate                            gauge, rejected / read
    batchscore_drift_psi{feature}                    gauge, features and "prediction"
    batchscore_drift_unseen_share{feature}           gauge, categoricals with a full vocabulary
    batchscore_check_status{check}                   gauge, 0 ok, 1 warn, 2 fail
    batchscore_run_success                           gauge, 1 committed, 0 not
    batchscore_run_status{status}                    gauge, 1 for the run's status (ok|warn|fail)
    batchscore_last_run_timestamp_seconds            gauge, when the run ended

The textfile is for node_exporter's textfile collector (written atomically);
the push goes to a Pushgateway with job ``batchscore``, grouped by model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    push_to_gateway,
    write_to_textfile,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from batch.core import storage
from batch.core.errors import UsageError
from batch.observe.checks import STATUS_RANK

PUSH_JOB = "batchscore"
PUSH_TIMEOUT_S = 10.0


class RunCollector(Collector):
    """The metric families of one run, from its summary, metrics and drift sections."""

    def __init__(
        self,
        model_name: str,
        model_version: str,
        summary: Mapping[str, Any],
        metrics: Mapping[str, Any] | None,
        drift: Mapping[str, Any] | None,
        finished: float | None = None,
    ) -> None:
        self.labels = {"model": model_name, "model_version": model_version}
        self.summary = summary
        self.metrics = metrics or {}
        self.drift = drift or {}
        self.finished = time.time() if finished is None else finished

    def _family(self, kind: type, name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
        return kind(name, doc, labels=[*self.labels, *extra])

    def collect(self) -> Iterator[Metric]:
        base = list(self.labels.values())
        m = self.metrics
        for name, doc in (
            ("rows_read", "Input rows read"),
            ("rows_scored", "Rows scored and written to predictions/"),
            ("batches", "Record batches validated and scored"),
        ):
            if name in m:
                family = self._family(CounterMetricFamily, f"batchscore_{name}", doc)
                family.add_metric(base, m[name])
                yield family
        if "rows_rejected" in m:
            family = self._family(
                CounterMetricFamily,
                "batchscore_rows_rejected",
                "Rows written to rejected/, by reject reason",
                ("reason",),
            )
            for reason, count in sorted(m.get("rejected_by_reason", {}).items()):
                family.add_metric([*base, reason], count)
            yield family
        latency = m.get("batch_latency_seconds")
        if latency:
            cumulative, buckets = 0, []
            for bound, count in zip(latency["le"], latency["counts"], strict=False):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            buckets.append(("+Inf", latency["count"]))
            family = self._family(
                HistogramMetricFamily,
                "batchscore_batch_latency_seconds",
                "Seconds to validate and score one record batch",
            )
            family.add_metric(base, buckets, latency["sum"])
            yield family
        for name, doc in (
            ("model_load_seconds", "Seconds the slowest worker took to load the model"),
            ("wall_seconds", "Seconds from process start to commit"),
            ("predictions_per_second", "Rows scored per wall-clock second"),
        ):
            if name in m:
                family = self._family(GaugeMetricFamily, f"batchscore_{name}", doc)
                family.add_metric(base, m[name])
                yield family
        if self.summary.get("error_rate") is not None:
            family = self._family(
                GaugeMetricFamily, "batchscore_error_rate", "Rows rejected / rows read"
            )
            family.add_metric(base, self.summary["error_rate"])
            yield family
        entries = [*self.drift.get("features", [])]
        if self.drift.get("prediction"):
            entries.append(self.drift["prediction"])
        if entries:
            psi = self._family(
                GaugeMetricFamily,
                "batchscore_drift_psi",
                "Population stability index against the training baseline",
                ("feature",),
            )
            unseen = self._family(
                GaugeMetricFamily,
                "batchscore_drift_unseen_share",
                "Share of categorical values never seen in training",
                ("feature",),
            )
            for entry in entries:
                psi.add_metric([*base, entry["name"]], entry["psi"])
                if entry.get("unseen_share") is not None:
                    unseen.add_metric([*base, entry["name"]], entry["unseen_share"])
            yield psi
            yield unseen
        checks = self.summary.get("checks") or []
        if checks:
            family = self._family(
                GaugeMetricFamily,
                "batchscore_check_status",
                "Run-level check: 0 ok, 1 warn, 2 fail",
                ("check",),
            )
            for item in checks:
                family.add_metric([*base, item["name"]], float(STATUS_RANK[item["status"]]))
            yield family
        success = self._family(
            GaugeMetricFamily, "batchscore_run_success", "1 if the run was committed, else 0"
        )
        success.add_metric(base, 1.0 if self.summary.get("run_dir") else 0.0)
        yield success
        status = self._family(
            GaugeMetricFamily,
            "batchscore_run_status",
            "1 for the run's status (ok, warn, fail)",
            ("status",),
        )
        for value in STATUS_RANK:
            status.add_metric([*base, value], 1.0 if self.summary.get("status") == value else 0.0)
        yield status
        finished = self._family(
            GaugeMetricFamily,
            "batchscore_last_run_timestamp_seconds",
            "Unix time the run ended",
        )
        finished.add_metric(base, self.finished)
        yield finished


def _le(bound: float) -> str:
    return repr(float(bound))


def run_registry(collector: RunCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def write_textfile(path: Path | str, collector: RunCollector) -> None:
    """Write the run's metrics for node_exporter's textfile collector (atomic rename), or
    as one object to a gs:// / s3:// URI (an upload is whole or absent)."""
    if storage.is_uri(str(path)):
        try:
            storage.write_bytes(str(path), generate_latest(run_registry(collector)))
        except storage.StorageError as exc:
            raise UsageError(f"--metrics_textfile={path}: cannot write it: {exc}") from exc
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(target), run_registry(collector))
    except OSError as exc:
        raise UsageError(
            f"--metrics_textfile={path}: cannot write it ({exc.strerror or exc}); choose a "
            "writable path, e.g. node_exporter's --collector.textfile.directory/batchscore.prom"
        ) from exc


def push(url: str, collector: RunCollector) -> None:
    """Push the run's metrics to a Pushgateway (job ``batchscore``, grouped by model)."""
    try:
        push_to_gateway(
            url,
            job=PUSH_JOB,
            registry=run_registry(collector),
            grouping_key={"model": collector.labels["model"]},
            timeout=PUSH_TIMEOUT_S,
        )
    except OSError as exc:
        raise UsageError(
            f"--pushgateway={url}: the push failed ({exc}); check the URL "
            "(e.g. http://pushgateway:9091) and that the Pushgateway is up"
        ) from exc
