"""A run's metrics in Prometheus exposition format: a textfile and a Pushgateway push.

Every sample has the labels ``model``, ``model_version``, ``dataset`` (the input root:
the input path without its ``dt=`` partition) and ``partition`` (the ``dt=`` value, or
empty), so that parallel backfill days and different datasets never overwrite each
other: the Pushgateway group is ``job=batchscore, model, dataset, partition``, and a
textfile path that is a folder gets a file name made of the same labels.

What each outcome exports (Prometheus' conventions for batch jobs):

- a **committed** run replaces its group (HTTP PUT; the whole textfile): every metric
  below, ``batchscore_run_success`` 1, ``batchscore_up_to_date`` 0 and
  ``batchscore_last_success_timestamp_seconds``;
- an **up-to-date** rerun (nothing to score) leaves the last run's numbers in place and
  sets only ``batchscore_up_to_date`` 1, ``batchscore_run_success`` 1 and the two
  timestamps (HTTP POST, which replaces only the metrics it sends; the textfile is
  merged);
- a **failed** run exports no row counts (nothing was scored): only
  ``batchscore_run_success`` 0, ``batchscore_run_status``, ``batchscore_check_status``,
  the error rate and drift that made it fail, and
  ``batchscore_last_run_timestamp_seconds``, merged the same way, so the last
  success's numbers and timestamp stay for alerting.

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
    batchscore_run_success                           gauge, 1 the last run succeeded, 0 not
    batchscore_run_status{status}                    gauge, 1 for the run's status (ok|warn|fail)
    batchscore_up_to_date                            gauge, 1 the last run found nothing to score
    batchscore_last_run_timestamp_seconds            gauge, when the last run ended
    batchscore_last_success_timestamp_seconds        gauge, when the last successful run ended

The textfile is for node_exporter's textfile collector (written atomically).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    push_to_gateway,
    pushadd_to_gateway,
    write_to_textfile,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from batch.core import storage
from batch.core.errors import UsageError
from batch.observe.checks import STATUS_RANK

PUSH_JOB = "batchscore"
PUSH_TIMEOUT_S = 10.0


Outcome = Literal["committed", "up_to_date", "failed"]
_PARTITION = re.compile(r"^(?P<root>.*?)/+dt=(?P<day>[^/]+)/*$")


def run_labels(model_name: str, model_version: str, input_spec: str | None) -> dict[str, str]:
    """The labels that tell runs apart: model, version, dataset (the input root) and
    partition (the input's trailing ``dt=`` folder, if any)."""
    spec = (input_spec or "").rstrip("/")
    found = _PARTITION.match(spec)
    dataset, partition = (found["root"], found["day"]) if found else (spec, "")
    return {
        "model": model_name,
        "model_version": model_version,
        "dataset": dataset,
        "partition": partition,
    }


class RunCollector(Collector):
    """The metric families of one run's outcome, from its summary, metrics and drift
    sections (which families: see the module docstring)."""

    def __init__(
        self,
        labels: Mapping[str, str],
        summary: Mapping[str, Any],
        metrics: Mapping[str, Any] | None,
        drift: Mapping[str, Any] | None,
        outcome: Outcome,
        finished: float | None = None,
    ) -> None:
        self.labels = dict(labels)
        self.summary = summary
        self.metrics = metrics or {}
        self.drift = drift or {}
        self.outcome = outcome
        self.finished = time.time() if finished is None else finished

    @classmethod
    def for_run(
        cls,
        labels: Mapping[str, str],
        summary: Mapping[str, Any],
        metrics: Mapping[str, Any] | None,
        drift: Mapping[str, Any] | None,
    ) -> RunCollector:
        """A run that reached its commit point: committed, or refused by a check."""
        outcome: Outcome = "committed" if summary.get("run_dir") else "failed"
        return cls(labels, summary, metrics, drift, outcome)

    @property
    def replaces_group(self) -> bool:
        """Whether the export replaces every earlier metric of the run's group (a
        committed run) or only the ones it sends (up to date, failed)."""
        return self.outcome == "committed"

    def _family(self, kind: type, name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
        return kind(name, doc, labels=[*self.labels, *extra])

    def collect(self) -> Iterator[Metric]:
        base = list(self.labels.values())
        if self.outcome == "committed":
            yield from self._run_families(base)
        if self.outcome != "up_to_date":
            yield from self._quality_families(base)
            yield from self._status_families(base)
        success = self._family(
            GaugeMetricFamily,
            "batchscore_run_success",
            "1 if the last run succeeded (committed, or found its input up to date), else 0",
        )
        success.add_metric(base, 0.0 if self.outcome == "failed" else 1.0)
        yield success
        if self.outcome != "failed":
            up_to_date = self._family(
                GaugeMetricFamily,
                "batchscore_up_to_date",
                "1 if the last run found its input already scored (nothing to do), else 0",
            )
            up_to_date.add_metric(base, 1.0 if self.outcome == "up_to_date" else 0.0)
            yield up_to_date
            last_success = self._family(
                GaugeMetricFamily,
                "batchscore_last_success_timestamp_seconds",
                "Unix time the last successful run ended",
            )
            last_success.add_metric(base, self.finished)
            yield last_success
        finished = self._family(
            GaugeMetricFamily,
            "batchscore_last_run_timestamp_seconds",
            "Unix time the last run ended",
        )
        finished.add_metric(base, self.finished)
        yield finished

    def _status_families(self, base: list[str]) -> Iterator[Metric]:
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
        status = self._family(
            GaugeMetricFamily,
            "batchscore_run_status",
            "1 for the run's status (ok, warn, fail)",
            ("status",),
        )
        for value in STATUS_RANK:
            status.add_metric([*base, value], 1.0 if self.summary.get("status") == value else 0.0)
        yield status

    def _run_families(self, base: list[str]) -> Iterator[Metric]:
        """Rows, batches, latency and timings: a committed run's only."""
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

    def _quality_families(self, base: list[str]) -> Iterator[Metric]:
        """The error rate and drift: what made a run fail, if it did."""
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


def _le(bound: float) -> str:
    return repr(float(bound))


def run_registry(collector: RunCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def textfile_path(path: Path | str, labels: Mapping[str, str]) -> str:
    """Where the run's textfile goes: ``path`` itself, or, when ``path`` is a folder
    (an existing one, or one written with a trailing slash), a file in it named by the
    run's labels, so runs of other models, datasets and days keep their own files."""
    text = str(path)
    folder = text.endswith("/") or (not storage.is_uri(text) and Path(text).is_dir())
    if not folder:
        return text
    parts = [labels["model"], labels["dataset"], labels["partition"]]
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p).strip("_") for p in parts if p)
    name = f"batchscore-{slug}.prom"
    return storage.join(text, name) if storage.is_uri(text) else str(Path(text) / name)


class _Merged(Collector):
    """The families of an earlier textfile that ``collector`` does not replace, then
    ``collector``'s."""

    def __init__(self, earlier: str, collector: RunCollector) -> None:
        self.earlier = earlier
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        fresh = list(self.collector.collect())
        names = {family.name for family in fresh}
        try:
            kept = [f for f in text_string_to_metric_families(self.earlier) if f.name not in names]
        except ValueError:
            kept = []  # not exposition text: replaced whole
        yield from kept
        yield from fresh


def _previous_text(target: str) -> str:
    try:
        if storage.is_uri(target):
            return storage.read_bytes(target).decode()
        return Path(target).read_text()
    except (OSError, UnicodeDecodeError, storage.StorageError):
        return ""


def write_textfile(path: Path | str, collector: RunCollector) -> str:
    """Write the run's metrics for node_exporter's textfile collector (atomic rename), or
    as one object to a gs:// / s3:// URI (an upload is whole or absent); the path
    written. An up-to-date or failed run merges into the file's earlier metrics."""
    target = textfile_path(path, collector.labels)
    source: Collector = (
        collector if collector.replaces_group else _Merged(_previous_text(target), collector)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(source)
    if storage.is_uri(target):
        try:
            storage.write_bytes(target, generate_latest(registry))
        except storage.StorageError as exc:
            raise UsageError(f"--metrics_textfile={target}: cannot write it: {exc}") from exc
        return target
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(target, registry)
    except OSError as exc:
        raise UsageError(
            f"--metrics_textfile={target}: cannot write it ({exc.strerror or exc}); choose a "
            "writable path, e.g. node_exporter's --collector.textfile.directory/ (a folder: "
            "one file per model, dataset and day)"
        ) from exc
    return target


def grouping_key(labels: Mapping[str, str]) -> dict[str, str]:
    """The run's Pushgateway group (beside job=batchscore): model, dataset, partition."""
    return {k: labels[k] for k in ("model", "dataset", "partition") if labels.get(k)}


def push(url: str, collector: RunCollector) -> None:
    """Push the run's metrics to a Pushgateway (job ``batchscore``, grouped by model,
    dataset and partition): PUT for a committed run, POST otherwise."""
    send = push_to_gateway if collector.replaces_group else pushadd_to_gateway
    try:
        send(
            url,
            job=PUSH_JOB,
            registry=run_registry(collector),
            grouping_key=grouping_key(collector.labels),
            timeout=PUSH_TIMEOUT_S,
        )
    except OSError as exc:
        raise UsageError(
            f"--pushgateway={url}: the push failed ({exc}); check the URL "
            "(e.g. http://pushgateway:9091) and that the Pushgateway is up"
        ) from exc
